"""Packages (``export``): a run's parameters in bfloat16 with its config and vocabulary, read back like a
run directory; corruption and misfit are refused by name; the pipeline can start from one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest

from jax_namnmt import packaged, workflow
from jax_namnmt.config import load_config
from jax_namnmt.errors import CheckpointError, ConfigError
from jax_namnmt.pipeline import Pipeline


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_corpus) -> dict:
    root = tmp_path_factory.mktemp("pkg")
    data = tiny_corpus
    config = load_config("tiny", [f"data.data_dir={data}", "train.steps=4", "finetune.steps=2"])
    workdir = root / "work"
    workflow.prepare(config, workdir, quiet=True)
    run_dir = workflow.run_pretrain(config, workdir, workdir / "pretrain", quiet=True)
    package = workflow.export_run(run_dir, root / "package", "bfloat16", {"note": "test"})
    return {"root": root, "data": data, "config": config, "run": run_dir, "package": package}


def test_package_holds_bfloat16_of_the_run(trained):
    run = workflow.load_run(trained["run"])
    pkg = workflow.load_run(trained["package"])
    info = packaged.read_package_info(trained["package"])
    assert info["dtype"] == "bfloat16" and info["step"] == 4 and info["note"] == "test"
    assert pkg.config == run.config and pkg.step == run.step
    for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(pkg.params)):
        a = np.asarray(a)
        assert b.dtype == np.float32
        np.testing.assert_array_equal(np.asarray(b), a.astype(ml_dtypes.bfloat16).astype(np.float32))
    assert jax.tree.structure(run.params) == jax.tree.structure(pkg.params)


def test_package_translates_like_the_rounded_run(trained):
    run = workflow.load_run(trained["run"])
    pkg = workflow.load_run(trained["package"])
    run.params = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), run.params)
    lines = ["Ein Mann fährt Fahrrad.", "", "Zwei Hunde spielen im Schnee."]
    out = workflow.translate_lines(pkg, lines, "de", "en")
    assert out == workflow.translate_lines(run, lines, "de", "en")
    assert len(out) == 3 and out[1] == ""


def test_float32_package_is_exact(trained, tmp_path):
    path = workflow.export_run(trained["run"], tmp_path / "f32", "float32")
    run, pkg = workflow.load_run(trained["run"]), workflow.load_run(path)
    for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(pkg.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_corrupted_package_is_refused(trained, tmp_path):
    copy = Path(shutil.copytree(trained["package"], tmp_path / "pkg"))
    params = copy / packaged.PARAMS_FILE
    raw = bytearray(params.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    params.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="SHA-256"):
        workflow.load_run(copy)
    params.write_bytes(bytes(raw[: len(raw) // 3]))
    with pytest.raises(CheckpointError, match=str(params)):
        workflow.load_run(copy)


def test_package_of_another_shape_is_refused(trained, tmp_path):
    copy = Path(shutil.copytree(trained["package"], tmp_path / "pkg"))
    config = json.loads((copy / "config.json").read_text())
    config["model"]["ffn_dim"] *= 2
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="fc1"):
        workflow.load_run(copy)


def test_pipeline_starts_from_a_package(trained):
    config = load_config(str(trained["package"] / "config.json"), ["finetune.steps=2"])
    workdir = trained["root"] / "from_package"
    results = Pipeline(config, workdir, trained["package"], quiet=True).run(["multilingual", "method_te"])
    pairs = list(config.data.pairs)
    for name in ("multilingual", "method_te"):
        assert set(pairs) <= set(results[name]) and results[name]["params"] > 0
        assert np.isclose(results[name]["avg"], np.mean([results[name][p] for p in pairs]))
    saved = json.loads((workdir / "results.json").read_text())
    assert saved["start"] == str(trained["package"])
    assert not (workdir / "pretrain").exists()  # nothing was pre-trained
    # the package itself was only read
    assert sorted(p.name for p in trained["package"].iterdir()) == sorted(
        ["config.json", "spm.model", packaged.PARAMS_FILE, packaged.PACKAGE_FILE])
    assert (workdir / "multilingual" / "checkpoints").is_dir()


def test_pipeline_fine_tunes_from_the_package_parameters(trained):
    """The pipeline's fine-tuning starts from the package's parameters: one step at learning rate 0
    leaves them where they started, so the fine-tuned run holds the package's parameters bit for bit
    (and the step did run: a finite loss, not skipped)."""
    config = load_config(str(trained["package"] / "config.json"),
                         ["finetune.steps=1", "finetune.learning_rate=0", "finetune.warmup_init_lr=0"])
    workdir = trained["root"] / "from_package_lr0"
    Pipeline(config, workdir, trained["package"], quiet=True).run(["multilingual"])
    run, pkg = workflow.load_run(workdir / "multilingual"), workflow.load_run(trained["package"])
    assert run.step == 1
    flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(x)  # noqa: E731
                         for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
    got, want = flat(run.params), flat(pkg.params)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].tobytes() == want[name].tobytes(), name
    # not the pre-trained run's float32 parameters either (the package rounded them to bfloat16)
    original = flat(workflow.load_run(trained["run"]).params)
    assert any(original[name].tobytes() != want[name].tobytes() for name in want)
    records = [json.loads(line) for line in (workdir / "multilingual" / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    steps = [r for r in records if r["phase"] == "continue"]
    assert [r["step"] for r in steps] == [1] and steps[0]["skipped"] == 0.0 and np.isfinite(steps[0]["loss"])


@pytest.mark.slow
def test_pipeline_refuses_scratch_systems_on_a_package(trained, tmp_path):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "jax_namnmt.pipeline", "--pretrained", str(trained["package"]),
                           "--systems", "ts,method_te", "--workdir", str(tmp_path / "w"), "--quiet"],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 2, proc.stderr
    assert "ts" in proc.stderr and "--from-scratch" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_system_is_named():
    from jax_namnmt.systems import parse_systems
    with pytest.raises(ConfigError, match="method_xx"):
        parse_systems("multilingual,method_xx")
    assert parse_systems("all")[0] == "individual" and len(parse_systems("all")) == 7
    assert parse_systems("method_te,multilingual") == ["multilingual", "method_te"]
