"""The experiment scripts in scripts/: every shell script parses, and valid_curves.py writes what it
says (the curves of analysis/curves.py, differences with --minus, a PNG) and names bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.sh")))
def test_shell_scripts_parse(script):
    subprocess.run(["bash", "-n", str(SCRIPTS / script)], check=True)


def _run(path, pairs, records):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"data": {"pairs": pairs}}))
    (path / "metrics.jsonl").write_text("".join(json.dumps({"phase": "finetune_valid", **r}) + "\n" for r in records))


def test_valid_curves(tmp_path):
    _run(tmp_path / "ml-s1", ["a-b", "a-c"], [{"step": 0, "nll": 2.0, "nll_a-b": 1.0, "nll_a-c": 3.0},
                                             {"step": 10, "nll": 1.5, "nll_a-b": 0.5, "nll_a-c": 2.5}])
    _run(tmp_path / "a-b-s1", ["a-b"], [{"step": 0, "nll": 1.0}, {"step": 10, "nll": 0.25}])
    _run(tmp_path / "a-c-s1", ["a-c"], [{"step": 0, "nll": 3.0}, {"step": 10, "nll": 2.25}])
    png, out = tmp_path / "c.png", tmp_path / "c.json"
    cmd = [sys.executable, str(SCRIPTS / "valid_curves.py"), str(png), str(out), f"ml={tmp_path}/ml-s*",
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
