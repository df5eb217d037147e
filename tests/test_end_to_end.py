"""Every step of the method end to end on the tiny config, in fresh processes: the pipeline, then
``translate`` and ``evaluate`` on the run it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import sacrebleu_scores

from jax_namnmt.config import load_config
from jax_namnmt.method.allocation import load_masks

pytestmark = pytest.mark.slow  # the pipeline and the doors in fresh processes

REPO = Path(__file__).resolve().parent.parent
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
def pipeline(tmp_path_factory, tiny_corpus) -> dict:
    root = tmp_path_factory.mktemp("e2e")
    data = tiny_corpus
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
        for key in PAIRS + ["avg", "chrf_avg"]:
            assert isinstance(row[key], float), (name, key, row)
        assert row["avg"] == pytest.approx(np.mean([row[p] for p in PAIRS])), name
        # (that each number is sacreBLEU's of the system's translations: test_evaluate_matches_the_pipeline_and_sacrebleu)
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


@pytest.mark.parametrize("system", ["method_te", "multilingual"])
def test_evaluate_matches_the_pipeline_and_sacrebleu(pipeline, results, tmp_path, system):
    out = tmp_path / "scores.json"
    proc = ok(door("evaluate", "--checkpoint", pipeline["workdir"] / system, "--quiet", "--out", out))
    assert "BLEU" in proc.stdout and "chrF" in proc.stdout and "signature:" in proc.stdout
    header = next(line for line in proc.stdout.splitlines() if line.startswith("system"))
    assert header.split()[1:] == PAIRS + ["avg"]
    scores = json.loads(out.read_text(encoding="utf-8"))
    row, lines = results["systems"][system], load_config("tiny").decode.test_max_lines
    chrf = []
    for pair in PAIRS:
        # the same test lines, the same beam search: the pipeline's numbers again
        assert scores[pair]["bleu"] == pytest.approx(row[pair], abs=1e-9), pair
        # and they are sacreBLEU's own numbers for the written translations against the corpus's references
        hyps = scores["hypotheses"][pair]
        assert len(hyps) == scores[pair]["lines"] == lines, pair
        bleu, chrf_pair = sacrebleu_scores(hyps, pipeline["data"], "test", pair, lines)
        assert scores[pair]["bleu"] == pytest.approx(bleu, abs=1e-9), pair
        assert scores[pair]["chrf"] == pytest.approx(chrf_pair, abs=1e-9), pair
        chrf.append(chrf_pair)
    assert row["chrf_avg"] == pytest.approx(np.mean(chrf), abs=1e-9)
