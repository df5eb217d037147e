"""Validation curves averaged per direction, then over directions (analysis/curves.py): against
hand-computed means, for all-direction runs and one-direction (specialist) runs alike; and
scripts/valid_curves.py over them (differences with --minus, a PNG, bad input named)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jax_namnmt.analysis.curves import curves_by_pair, mean_curve, pair_nlls
from jax_namnmt.errors import DataError


def _run(path, pairs, records):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"data": {"pairs": pairs}}))
    (path / "metrics.jsonl").write_text("".join(json.dumps({"phase": "finetune_valid", **r}) + "\n" for r in records)
                                        + json.dumps({"phase": "finetune", "step": 1, "nll": 99.0}) + "\n")
    return path


def test_runs_on_all_directions_and_on_one_average_alike(tmp_path):
    both = [_run(tmp_path / f"ml-s{seed}", ["a-b", "a-c"],
                 [{"step": 0, "nll": 0.0, "nll_a-b": 1.0 + seed, "nll_a-c": 3.0},
                  {"step": 10, "nll": 0.0, "nll_a-b": 2.0, "nll_a-c": 4.0 + seed}]) for seed in (1, 2)]
    assert pair_nlls(both[0]) == {"a-b": {0: 2.0, 10: 2.0}, "a-c": {0: 3.0, 10: 5.0}}
    # a-b: mean(2, 3) = 2.5 at 0, 2 at 10; a-c: 3 at 0, mean(5, 6) = 5.5 at 10
    assert mean_curve(curves_by_pair(both)) == {0: (2.5 + 3.0) / 2, 10: (2.0 + 5.5) / 2}
    alone = [_run(tmp_path / "a-b-s1", ["a-b"], [{"step": 0, "nll": 1.0}, {"step": 10, "nll": 0.5}]),
             _run(tmp_path / "a-c-s1", ["a-c"], [{"step": 0, "nll": 3.0}, {"step": 10, "nll": 2.0},
                                                 {"step": 20, "nll": 1.0}]),
             _run(tmp_path / "a-c-s2", ["a-c"], [{"step": 0, "nll": 5.0}, {"step": 10, "nll": 4.0}])]
    # step 20: not every run validated there; a-c's seeds are averaged before the directions are
    assert mean_curve(curves_by_pair(alone)) == {0: (1.0 + 4.0) / 2, 10: (0.5 + 3.0) / 2}


def test_bad_runs_are_named(tmp_path):
    with pytest.raises(DataError, match="no config.json"):
        curves_by_pair([tmp_path])
    run = _run(tmp_path / "r", ["a-b"], [])
    with pytest.raises(DataError, match="r/metrics.jsonl has no validation records"):
        curves_by_pair([run])
    with pytest.raises(DataError, match="no runs"):
        curves_by_pair([])
    two = _run(tmp_path / "two", ["a-b", "a-c"], [{"step": 0, "nll": 1.0, "nll_a-b": 1.0}])
    with pytest.raises(DataError, match="no validation NLL of a-c"):
        curves_by_pair([two])


def test_valid_curves(tmp_path):
    _run(tmp_path / "ml-s1", ["a-b", "a-c"], [{"step": 0, "nll": 2.0, "nll_a-b": 1.0, "nll_a-c": 3.0},
                                             {"step": 10, "nll": 1.5, "nll_a-b": 0.5, "nll_a-c": 2.5}])
    _run(tmp_path / "a-b-s1", ["a-b"], [{"step": 0, "nll": 1.0}, {"step": 10, "nll": 0.25}])
    _run(tmp_path / "a-c-s1", ["a-c"], [{"step": 0, "nll": 3.0}, {"step": 10, "nll": 2.25}])
    png, out = tmp_path / "c.png", tmp_path / "c.json"
    cmd = [sys.executable, str(Path(__file__).resolve().parent.parent / "scripts" / "valid_curves.py"), str(png), str(out), f"ml={tmp_path}/ml-s*",
           f"alone={tmp_path}/a-?-s1", "--minus", "ml"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    curves = json.loads(out.read_text())
    assert curves["ml"]["curve"] == {"0": 2.0, "10": 1.5}
    assert curves["alone"]["curve"] == {"0": 2.0, "10": 1.25} and curves["alone"]["pairs"] == ["a-b", "a-c"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # systems on different directions, an empty pattern and an unknown --minus are refused by name
    for bad, message in ((f"one={tmp_path}/a-b-s1", "cover different directions"),
                         (f"none={tmp_path}/zz*", "none: no run directories match")):
        done = subprocess.run(cmd[:4] + [f"ml={tmp_path}/ml-s*", bad], capture_output=True, text=True)
        assert done.returncode != 0 and message in done.stderr
    done = subprocess.run(cmd[:6] + ["--minus", "ML"], capture_output=True, text=True)
    assert done.returncode != 0 and "--minus ML: no such system" in done.stderr
