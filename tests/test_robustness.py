"""Robustness of training: non-finite steps are skipped inside the jitted step and stop the loop
with a clear error after ``train.max_bad_steps`` in a row (nothing bad is saved); a run killed
with SIGKILL resumes, by re-running the same command, to the same parameters as an
uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jax_namnmt import workflow
from jax_namnmt.config import load_config
from jax_namnmt.data.multiway import MULTI30K_SPLITS, build_from_multiway, multi30k_dir
from jax_namnmt.errors import TrainingDiverged, UserError
from jax_namnmt.training.checkpoint import Checkpointer
from jax_namnmt.training.step import init_state, make_optimizer, make_train_step, schedule_args

REPO = Path(__file__).resolve().parents[1]
TINY_LINES = {"train": 300, "valid": 40, "test": 20}


def _host(tree) -> dict[str, np.ndarray]:
    """Path -> a host copy of every leaf (copied: the step donates its input buffers)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.array(leaf, copy=True) for path, leaf in flat}


def _bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# -- the jitted step -------------------------------------------------------------------------------


def test_non_finite_step_is_skipped_then_a_good_step_updates(tiny_config, tiny_params, pack, example):
    rng = np.random.default_rng(0)
    good = pack([[example(rng, 4, 5, 0), example(rng, 3, 4, 1)], [example(rng, 6, 6, 2)]], 16, 16)
    bad = {k: np.array(v, copy=True) for k, v in good.items()}
    # a target label outside the vocabulary (a corrupt batch): log-probability gathers NaN
    first_real = int(np.argmax(bad["tgt_segments"][0] > 0))
    bad["tgt_labels"][0, first_real] = tiny_config.vocab_size + 7

    step_fn = make_train_step(tiny_config, 0.1)
    schedule = schedule_args(1e-2, 0, 0.0)
    key = jax.random.key(0)
    state = init_state(jax.tree.map(np.array, tiny_params), make_optimizer())
    # one good step first, so the optimizer moments are not all zeros
    state, m0 = step_fn(state, good, None, key, schedule)
    assert float(m0["skipped"]) == 0.0
    before = _host(state)

    state, m1 = step_fn(state, bad, None, key, schedule)
    m1 = jax.device_get(m1)
    assert not np.isfinite(m1["loss"]), m1  # the fault is real
    assert float(m1["skipped"]) == 1.0
    after = _host(state)
    for name in before:
        if name.startswith("['params']") or name.startswith("['opt_state']"):
            assert _bitwise_equal(after[name], before[name]), name
    assert int(state["step"]) == 2  # the step counter (data position, dropout key) moved on
    assert int(state["bad_steps"]) == 1 and int(state["skipped_steps"]) == 1

    state, m2 = step_fn(state, bad, None, key, schedule)
    assert float(m2["skipped"]) == 1.0 and int(state["bad_steps"]) == 2

    state, m3 = step_fn(state, good, None, key, schedule)
    assert float(m3["skipped"]) == 0.0 and np.isfinite(float(m3["loss"]))
    final = _host(state)
    assert int(state["bad_steps"]) == 0 and int(state["skipped_steps"]) == 2 and int(state["step"]) == 4
    params = [n for n in before if n.startswith("['params']")]
    assert any(not _bitwise_equal(final[n], before[n]) for n in params)
    assert all(np.isfinite(final[n]).all() for n in params)


def test_nan_in_params_is_skipped(tiny_config, tiny_params, pack, example):
    rng = np.random.default_rng(1)
    batch = pack([[example(rng, 4, 5, 0)], [example(rng, 5, 3, 1)]], 16, 16)
    params = jax.tree.map(np.array, tiny_params)
    leaves, treedef = jax.tree.flatten(params)
    kernel = next(i for i, leaf in enumerate(leaves) if leaf.ndim == 2 and leaf.shape[0] < 100)
    leaves[kernel] = leaves[kernel].copy()
    leaves[kernel][0, 0] = np.nan
    params = jax.tree.unflatten(treedef, leaves)
    state = init_state(params, make_optimizer())
    before = _host(state)
    state, m = make_train_step(tiny_config, 0.1)(state, batch, None, jax.random.key(0), schedule_args(1e-2, 0, 0.0))
    assert float(m["skipped"]) == 1.0
    after = _host(state)
    for name in before:
        if name.startswith("['params']") or name.startswith("['opt_state']"):
            assert _bitwise_equal(after[name], before[name]), name


# -- the loop and the command line ------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path, object]:
    """(work directory prepared with the tiny vocabulary, tiny corpus directory, config)."""
    root = tmp_path_factory.mktemp("robust")
    data = build_from_multiway(multi30k_dir(), root / "tinydata", load_config("tiny").data.pairs, MULTI30K_SPLITS,
                               max_lines=TINY_LINES)
    config = load_config("tiny", [f"data.data_dir={data.resolve()}"])
    work = root / "work"
    workflow.prepare(config, work, quiet=True)
    return work, data.resolve(), config


def _records(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_loop_stops_after_max_bad_steps_and_keeps_the_last_good_checkpoint(prepared, tmp_path):
    work, _, config = prepared
    out = tmp_path / "diverge"
    base = ["data.train_max_lines=40", "train.log_every=1", "train.save_every=100", "train.max_bad_steps=3"]
    workflow.run_pretrain(config.override(base + ["train.steps=5"]).validate(), work, out, quiet=True)
    assert Checkpointer(out).all_steps() == [5]
    good = workflow.load_run(out).params

    # resume with an absurd learning rate: the first update blows the parameters up, every later
    # loss overflows (a real divergence, not a mocked one)
    blowup = config.override(base + ["train.steps=30", "train.learning_rate=1e30"]).validate()
    with pytest.raises(TrainingDiverged) as err:
        workflow.run_pretrain(blowup, work, out, quiet=True)
    assert isinstance(err.value, UserError)
    message = str(err.value)
    assert "diverged at step 9" in message, message  # step 6 exploded, 7, 8, 9 were skipped
    assert "3 consecutive steps" in message, message
    assert str(out / "checkpoints" / "5") in message, message
    assert "kept" in message

    assert Checkpointer(out).all_steps() == [5]  # nothing newer than the last good checkpoint
    assert not [p for p in (out / "checkpoints").iterdir() if p.name != "5"]
    kept = workflow.load_run(out).params
    for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(good)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    records = [r for r in _records(out) if r["phase"] == "pretrain"]
    assert all("skipped_steps" in r and "skipped" in r for r in records)
    assert [r["skipped_steps"] for r in records if r["step"] > 5] == [0, 1, 2, 3]
    assert records[-1]["bad_steps"] == 3


def test_config_rejects_max_bad_steps_below_one():
    with pytest.raises(UserError, match="max_bad_steps"):
        load_config("tiny", ["train.max_bad_steps=0"])


def _checkpoint_steps(run_dir: Path) -> list[int]:
    ckpts = run_dir / "checkpoints"
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.exists() else []


def test_sigkill_then_resume_equals_uninterrupted_run(prepared, tmp_path):
    work, data, _ = prepared
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    shutil.copytree(work, killed)  # the same vocabulary in both work directories
    shutil.copytree(work, clean)

    def command(workdir: Path) -> list[str]:
        return [sys.executable, "-m", "jax_namnmt.train", "--config", "configs/tiny.py", "--workdir", str(workdir),
                "--data", str(data), "--set", "train.steps=40", "--set", "train.save_every=5", "--quiet"]

    # one persistent compilation cache for the three processes: the later two skip compiling
    # (~10 s each) and all three run the same executables
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
    reference = subprocess.run(command(clean), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert reference.returncode == 0, reference.stdout + reference.stderr

    victim = subprocess.Popen(command(killed), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not _checkpoint_steps(killed / "pretrain") and victim.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint after 60 s"
            time.sleep(0.01)
    finally:
        if victim.poll() is None:
            os.kill(victim.pid, signal.SIGKILL)
    output = victim.communicate(timeout=30)[0].decode()
    assert victim.returncode == -signal.SIGKILL, f"the run finished before it was killed:\n{output}"
    at_kill = _checkpoint_steps(killed / "pretrain")
    assert at_kill and at_kill[-1] < 40, at_kill

    resumed = subprocess.run(command(killed), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # it resumed from a checkpoint rather than starting over: step 5 was logged once
    logged = [r["step"] for r in _records(killed / "pretrain") if r["phase"] == "pretrain"]
    assert logged.count(5) == 1 and logged[-1] == 40, logged

    a, b = workflow.load_run(killed / "pretrain"), workflow.load_run(clean / "pretrain")
    assert a.step == b.step == 40
    got, want = _host(a.params), _host(b.params)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
