"""Every step of the method end to end on the tiny config, in fresh processes: the pipeline, then
``translate`` and ``evaluate`` on the run it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jax_namnmt.config import load_config
from jax_namnmt.data.multiway import MULTI30K_SPLITS, build_from_multiway, multi30k_dir
from jax_namnmt.method.allocation import load_masks

REPO = Path(__file__).resolve().parent.parent
TINY_LINES = {"train": 300, "valid": 40, "test": 20}
PAIRS = list(load_config("tiny").data.pairs)


def door(name: str, *args, stdin: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", f"jax_namnmt.{name}", *map(str, args)], cwd=REPO, env=env,
                          input=stdin if stdin is not None else "", capture_output=True, text=True,
                          timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("e2e")
    data = build_from_multiway(multi30k_dir(), root / "tinydata", PAIRS, MULTI30K_SPLITS,
                               max_lines=TINY_LINES).resolve()
    workdir = root / "work"
    proc = door("pipeline", "--config", "configs/tiny.py", "--workdir", workdir, "--data", data, "--quiet",
                timeout=600)
    return {"proc": proc, "workdir": workdir, "data": data}


@pytest.fixture(scope="module")
def results(pipeline) -> dict:
    ok(pipeline["proc"])
    return json.loads((pipeline["workdir"] / "results.json").read_text(encoding="utf-8"))


def test_pipeline_writes_results_for_both_systems(pipeline, results):
    systems = results["systems"]
    assert set(systems) == {"multilingual", "method_te"}
    for name, row in systems.items():
        for key in PAIRS + ["avg"]:
            assert isinstance(row[key], (int, float)) and 0.0 <= row[key] <= 100.0, (name, key, row)
        assert row["params"] > 0
        run_dir = Path(row["checkpoint"])
        assert run_dir == (pipeline["workdir"] / name).resolve()
        assert (run_dir / "config.json").is_file() and (run_dir / "checkpoints").is_dir()
    # masks are data: the method costs no parameters
    assert systems["multilingual"]["params"] == systems["method_te"]["params"]
    assert (pipeline["workdir"] / "method_te" / "masks.npz").is_file()
    assert not (pipeline["workdir"] / "multilingual" / "masks.npz").exists()
    _, mask_pairs, _ = load_masks(pipeline["workdir"] / "method_te" / "masks.npz")
    assert mask_pairs == PAIRS
    # the BLEU table was printed
    assert "method_te" in pipeline["proc"].stdout and "multilingual" in pipeline["proc"].stdout
    assert all(pair in pipeline["proc"].stdout for pair in PAIRS)


def test_pipeline_validation_loss_went_down(pipeline, results):
    path = pipeline["workdir"] / "pretrain" / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    losses = [r["loss"] for r in records if r["phase"] == "pretrain_valid"]
    assert len(losses) >= 2, records
    assert losses[-1] < losses[0], losses
    # the fine-tuned runs were validated too
    for name, phase in (("method_te", "finetune_valid"), ("multilingual", "continue_valid")):
        text = (pipeline["workdir"] / name / "metrics.jsonl").read_text(encoding="utf-8")
        assert any(json.loads(line)["phase"] == phase for line in text.splitlines() if line.strip()), name


def test_translate_keeps_line_count_and_order(pipeline, results):
    lines = ["Zwei Hunde spielen im Schnee.", "", "Ein Mann fährt mit dem Fahrrad."]
    proc = ok(door("translate", "--checkpoint", pipeline["workdir"] / "method_te", "--src", "de", "--tgt", "en",
                   "--quiet", stdin="".join(line + "\n" for line in lines)))
    assert proc.stdout.endswith("\n")
    outputs = proc.stdout[:-1].split("\n")
    assert len(outputs) == len(lines), proc.stdout
    assert outputs[1] == ""


def test_evaluate_prints_bleu_table(pipeline, results, tmp_path):
    out = tmp_path / "scores.json"
    proc = ok(door("evaluate", "--checkpoint", pipeline["workdir"] / "method_te", "--quiet", "--out", out))
    assert "BLEU" in proc.stdout and "chrF" in proc.stdout and "signature:" in proc.stdout
    header = next(line for line in proc.stdout.splitlines() if line.startswith("system"))
    assert header.split()[1:] == PAIRS + ["avg"]
    scores = json.loads(out.read_text(encoding="utf-8"))
    # the same test lines, the same beam search: the pipeline's numbers again
    for pair in PAIRS:
        assert scores[pair]["bleu"] == pytest.approx(results["systems"]["method_te"][pair])
