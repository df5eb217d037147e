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
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import test_jit as fast_jit

from jax_namnmt import workflow
from jax_namnmt.config import load_config
from jax_namnmt.errors import TrainingDiverged, UserError
from jax_namnmt.training.checkpoint import Checkpointer
from jax_namnmt.training.step import init_state, make_optimizer, make_train_step, schedule_args

REPO = Path(__file__).resolve().parents[1]
# seconds: a guard against a hung subprocess, never a timing check (on a loaded 2-core machine the
# tiny runs below take minutes where they take seconds on an idle one)
HANG = 600


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


def test_clipped_step_equals_optax_clip_by_global_norm_then_adam(tiny_config, tiny_params, pack, example):
    """``train.clip_norm`` > 0: two steps of the jitted step equal, on the same gradients (the same
    loss, the same dropout key), optax's ``clip_by_global_norm`` followed by Adam and the schedule's
    learning rate; the reported gradient norm is the one before clipping, and the clipping did bite."""
    import optax

    from jax_namnmt.model.transformer import Transformer
    from jax_namnmt.training.step import batch_loss, inverse_sqrt_lr, loss_chunk_for

    clip, b1, b2, eps, smoothing = 0.05, 0.9, 0.98, 1e-9, 0.1
    rng = np.random.default_rng(5)
    batches = [pack([[example(rng, 4, 5, 0), example(rng, 3, 4, 1)], [example(rng, 6, 6, 2)], [example(rng, 5, 7, 1)]],
                    16, 16),
               pack([[example(rng, 7, 3, 2)], [example(rng, 2, 6, 0), example(rng, 5, 5, 1)], [example(rng, 6, 4, 0)]],
                    16, 16)]
    schedule, key = schedule_args(1e-2, 0, 0.0), jax.random.key(3)
    model, chunk = Transformer(tiny_config), loss_chunk_for(None)

    @fast_jit
    def grads_of(params, batch, step):  # the step's loss: label-smoothed, per target token, its dropout
        def loss_fn(p):
            loss, _, ntokens = batch_loss(model, p, batch, None, smoothing, chunk, deterministic=False,
                                          rngs={"dropout": jax.random.fold_in(key, step)})
            return loss / jnp.maximum(ntokens, 1.0)
        return jax.grad(loss_fn)(params)

    step_fn = make_train_step(tiny_config, smoothing, b1, b2, eps, clip)
    state = init_state(jax.tree.map(np.array, tiny_params), make_optimizer(b1, b2, eps, clip))
    reference = optax.chain(optax.clip_by_global_norm(clip), optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
    ref_params = jax.tree.map(np.array, tiny_params)
    ref_state = reference.init(ref_params)
    # the reference's updates jitted too (backend optimizations off, as conftest's helpers): one
    # program each, where running them eagerly compiled every op apart
    update, norm_of = fast_jit(reference.update), fast_jit(optax.tree.norm)
    apply = fast_jit(lambda params, direction, lr: jax.tree.map(lambda p, d: p - lr * d, params, direction))
    for step, batch in enumerate(batches):
        grads = grads_of(ref_params, batch, step)
        norm = float(norm_of(grads))
        direction, ref_state = update(grads, ref_state, ref_params)
        lr = inverse_sqrt_lr(step, *schedule)
        ref_params = apply(ref_params, direction, lr)

        state, metrics = step_fn(state, batch, None, key, schedule)
        metrics = jax.device_get(metrics)
        assert float(metrics["skipped"]) == 0.0
        assert norm > 4 * clip, norm  # clipping bites: the gradient is scaled down (by its own factor per step)
        np.testing.assert_allclose(float(metrics["grad_norm"]), norm, rtol=1e-5)  # reported before clipping
        adam = state["opt_state"][1]
        want_adam = ref_state[1]
        for got, want, what in ((adam.mu, want_adam.mu, "mu"), (adam.nu, want_adam.nu, "nu")):
            got, want = _host(got), _host(want)
            scale = max(float(np.max(np.abs(v))) for v in want.values())  # (key biases: rounding noise)
            for name in want:
                np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=1e-6 * scale,
                                           err_msg=f"step {step + 1}: {what}{name}")
        if step == 0:  # Adam's first moment is (1 - b1) times the clipped gradient, not the gradient
            mu = _host(adam.mu)
            clipped = _host(jax.tree.map(lambda g: g * (clip / norm), grads))
            for name in clipped:
                np.testing.assert_allclose(mu[name], (1 - b1) * clipped[name], rtol=2e-5,
                                           atol=1e-6 * (1 - b1) * clip, err_msg=name)
    got, want = _host(state["params"]), _host(ref_params)
    for name in want:
        if name.endswith("['k']['dense']['bias']"):
            # a key bias's gradient is zero in exact arithmetic (a softmax shift), rounding noise in
            # floats, which Adam turns into steps of about +-lr (see tests/test_sharding.py)
            assert np.max(np.abs(got[name] - want[name])) <= 2 * 1e-2 * len(batches), name
        else:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


# -- the loop and the command line ------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_corpus) -> tuple[Path, Path, object]:
    """(work directory prepared with the tiny vocabulary, tiny corpus directory, config)."""
    root = tmp_path_factory.mktemp("robust")
    config = load_config("tiny", [f"data.data_dir={tiny_corpus}"])
    work = root / "work"
    workflow.prepare(config, work, quiet=True)
    return work, tiny_corpus, config


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


# Runs `python -m MODULE ARGS` (the first three arguments: MODULE, a marker file, N) with the training
# loop's step wrapped: once the N-th update is done, the marker is written and the process waits for
# its kill. With checkpoints every 5 steps and N = 7, the kill lands every time after checkpoint 5
# and before checkpoint 10, with steps 6 and 7 done in memory only (lost), however fast or loaded the
# machine: a poll for the first checkpoint could see the run finish first.
_PAUSE_AFTER_STEP = """
import os, runpy, sys, time
from pathlib import Path
import jax
from jax_namnmt.training import loop
module, marker, after = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
del sys.argv[1:4]
real_make = loop.make_train_step
def make_train_step(*args, **kwargs):
    step = real_make(*args, **kwargs)
    calls = [0]
    def paused(*a, **k):
        out = jax.block_until_ready(step(*a, **k))
        calls[0] += 1
        if calls[0] == after:
            tmp = marker.with_name(marker.name + ".tmp")
            tmp.write_text(str(after))
            os.replace(tmp, marker)
            time.sleep(600)
        return out
    for name in ("state_shardings", "mesh", "rules"):
        setattr(paused, name, getattr(step, name, None))
    return paused
loop.make_train_step = make_train_step
sys.argv = [module] + sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""
KILL_AFTER = 7  # updates; checkpoints every 5


def _paused(command: list[str], marker: Path) -> list[str]:
    """``command`` (``python -m MODULE ARGS``) under ``_PAUSE_AFTER_STEP``."""
    assert command[1] == "-m"
    return [sys.executable, "-c", _PAUSE_AFTER_STEP, command[2], str(marker), str(KILL_AFTER), *command[3:]]


@pytest.mark.slow
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
    reference = subprocess.run(command(clean), cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG)
    assert reference.returncode == 0, reference.stdout + reference.stderr

    marker = tmp_path / "paused"
    _kill_when(_paused(command(killed), marker), env, marker.exists)  # after update 7 (see _PAUSE_AFTER_STEP)
    assert _checkpoint_steps(killed / "pretrain") == [5]

    resumed = subprocess.run(command(killed), cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG)
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


# -- fine-tuning and importance, killed and re-run -------------------------------------------------


@pytest.fixture(scope="module")
def source_run(prepared, tmp_path_factory) -> tuple[Path, Path, Path, dict]:
    """A run directory to start from (the tiny model at its initialisation, saved as the training loop
    saves, so no step is compiled), random masks for it, and the environment for the subprocesses:
    one persistent compilation cache shared by the tests below, so every process after the first of
    each command skips compiling and all run the same executables."""
    from jax_namnmt.method.allocation import save_masks
    from jax_namnmt.method.masks import module_sizes
    from jax_namnmt.model.transformer import init_params
    from jax_namnmt.training.loop import write_run_files

    work, _, config = prepared
    root = tmp_path_factory.mktemp("source")
    run = work / "pretrain0"
    write_run_files(run, config, work / "spm.model", {"kind": "pretrain"})
    with Checkpointer(run) as ckpt:
        ckpt.save(0, init_state(init_params(config.model, 0), make_optimizer()),
                  {"data": {"epoch": 0, "index": 0}, "step": 0, "phase": "pretrain", "config": config.to_dict()})
    rng = np.random.default_rng(0)
    masks = root / "masks.npz"
    save_masks(masks, {name: rng.random((len(config.data.pairs), n)) < 0.8
                       for name, n in module_sizes(config.model).items()}, list(config.data.pairs), {"rho": "test"})
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}
    return work, run, masks, env


def _kill_when(cmd: list[str], env: dict, ready, timeout: float = HANG) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` (polled every 10 ms) is true; fails if it was
    not killed (the process ended on its own first)."""
    victim = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not ready() and victim.poll() is None:
            assert time.monotonic() < deadline, f"not ready after {timeout} s"
            time.sleep(0.01)
    finally:
        if victim.poll() is None:
            os.kill(victim.pid, signal.SIGKILL)
    output = victim.communicate(timeout=30)[0].decode()
    assert victim.returncode == -signal.SIGKILL, f"the process finished before it was killed:\n{output}"


def _run_ok(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.slow
def test_sigkill_during_masked_finetuning_then_resume_equals_uninterrupted_run(source_run, prepared, tmp_path):
    work, source, masks, env = source_run
    _, data, _ = prepared
    killed, clean = tmp_path / "killed", tmp_path / "clean"

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "jax_namnmt.finetune", "--config", "configs/tiny.py", "--from", str(source),
                "--masks", str(masks), "--out", str(out), "--workdir", str(work), "--data", str(data),
                "--set", "finetune.steps=20", "--set", "train.save_every=5", "--quiet"]

    _run_ok(command(clean), env)
    marker = tmp_path / "paused"
    _kill_when(_paused(command(killed), marker), env, marker.exists)  # after update 7 (see _PAUSE_AFTER_STEP)
    assert _checkpoint_steps(killed) == [5]
    _run_ok(command(killed), env)
    logged = [r["step"] for r in _records(killed) if r["phase"] == "finetune"]
    assert logged.count(5) == 1 and logged[-1] == 20, logged  # resumed, not started over

    a, b = workflow.load_run(killed), workflow.load_run(clean)
    assert a.step == b.step == 20
    assert a.masks is not None and all(np.array_equal(a.masks[k], b.masks[k]) for k in b.masks)
    got, want = _host(a.params), _host(b.params)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


# Runs `python -m jax_namnmt.importance` with numpy's savez replaced by one that writes half of the
# file it is given and then SIGKILLs the process: a kill in the middle of writing the output.
_DIE_WHILE_WRITING = """
import os, runpy, signal, sys
import numpy as np
real_savez = np.savez
def savez(file, *args, **kwargs):
    real_savez(file, *args, **kwargs)
    file.flush()  # an open file (errors.atomic_write's temporary)
    os.ftruncate(file.fileno(), os.fstat(file.fileno()).st_size // 2)
    os.kill(os.getpid(), signal.SIGKILL)
np.savez = savez
sys.argv = ["jax_namnmt.importance"] + sys.argv[1:]
runpy.run_module("jax_namnmt.importance", run_name="__main__", alter_sys=True)
"""


# Runs `python -m jax_namnmt.importance` (the first argument: a marker file, taken off the command
# line) with the scoring's batches wrapped: once the first batch has been scored and the second is
# asked for, the marker is written and the process waits, in the middle of computing, for its kill;
# so the kill lands while computing every time, however fast the machine.
_PAUSE_WHILE_COMPUTING = """
import os, runpy, sys, time
from pathlib import Path
from jax_namnmt import workflow
marker = Path(sys.argv.pop(1))
def pause():
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text("computing")
    os.replace(tmp, marker)  # whole or not at all: the test kills as soon as the name exists
    time.sleep(600)
real_compute = workflow.compute_importance
def compute_importance(params, batches, *args, **kwargs):
    def paused():
        for i, batch in enumerate(batches):
            if i == 1:
                pause()
            yield batch
        pause()  # (one batch in all: the loop asks for another once it is scored)
    return real_compute(params, paused(), *args, **kwargs)
workflow.compute_importance = compute_importance
sys.argv = ["jax_namnmt.importance"] + sys.argv[1:]
runpy.run_module("jax_namnmt.importance", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_importance_killed_while_computing_or_writing_then_rerun_gives_the_same_file(source_run, prepared, tmp_path):
    work, source, _, env = source_run
    _, data, _ = prepared
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    shutil.copytree(source, killed)
    shutil.copytree(source, clean)
    args = ["--config", "configs/tiny.py", "--workdir", str(work), "--data", str(data), "--quiet"]

    def command(run: Path) -> list[str]:
        return [sys.executable, "-m", "jax_namnmt.importance", "--checkpoint", str(run), *args]

    _run_ok(command(clean), env)
    reference = clean / "importance_taylor.npz"
    want = workflow.load_importance(reference)
    final = killed / "importance_taylor.npz"

    def same_as_reference(path: Path) -> None:
        theta, pairs = workflow.load_importance(path)
        assert pairs == want[1] and theta.keys() == want[0].keys()
        for name in want[0]:
            np.testing.assert_array_equal(theta[name], want[0][name], err_msg=name)

    # killed while computing (the first batch scored, the next not yet: see _PAUSE_WHILE_COMPUTING): no
    # output at all, neither under the final name nor half-written beside it
    marker = tmp_path / "computing"
    pause = [sys.executable, "-c", _PAUSE_WHILE_COMPUTING, str(marker), "--checkpoint", str(killed), *args]
    _kill_when(pause, env, marker.exists)
    assert marker.read_text() == "computing"  # the kill came after the scoring had started
    assert not [p for p in killed.iterdir() if p.name.startswith("importance_")], list(killed.iterdir())
    # killed in the middle of writing: the half-written file is not under the final name
    die = [sys.executable, "-c", _DIE_WHILE_WRITING, "--checkpoint", str(killed), *args]
    assert subprocess.run(die, cwd=REPO, env=env, capture_output=True, timeout=HANG).returncode == -signal.SIGKILL
    assert not final.exists()
    leftovers = [p for p in killed.iterdir() if p.name.startswith(".importance_") and p.name.endswith(".npz")]
    assert leftovers, "the simulated kill did not write anything"

    _run_ok(command(killed), env)  # re-run: the same file as the uninterrupted run, nothing left over
    same_as_reference(final)
    assert sorted(p.name for p in killed.iterdir() if "importance_" in p.name) == ["importance_taylor.npz"]

    # a kill while rewriting leaves the previous complete file in place
    assert subprocess.run(die, cwd=REPO, env=env, capture_output=True, timeout=HANG).returncode == -signal.SIGKILL
    same_as_reference(final)


def test_corrupted_latest_checkpoint_resumes_from_the_previous_one(prepared, tmp_path, caplog):
    """A truncated newest checkpoint: re-running the command warns, resumes from the one before, saves
    that step anew (the bad directory moved aside) and ends with the parameters of an uninterrupted run."""
    import logging

    work, _, config = prepared
    run_config = config.override(["data.train_max_lines=40", "train.log_every=1", "train.save_every=5",
                                  "train.keep_checkpoints=3", "train.steps=10"]).validate()
    clean, bad = tmp_path / "clean", tmp_path / "bad"
    workflow.run_pretrain(run_config, work, clean, quiet=True)
    assert Checkpointer(clean).all_steps() == [5, 10]
    shutil.copytree(clean, bad)
    for f in (bad / "checkpoints" / "10" / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(UserError, match=str(bad / "checkpoints" / "10")):
        Checkpointer(bad).restore_params(step=10)

    with caplog.at_level(logging.WARNING):
        workflow.run_pretrain(run_config, work, bad, quiet=True)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert f"{bad / 'checkpoints' / '10'} is corrupted" in warned, warned
    assert (bad / "checkpoints" / "10.corrupt").is_dir()
    assert Checkpointer(bad).all_steps() == [5, 10]
    logged = [r["step"] for r in _records(bad) if r["phase"] == "pretrain"]
    assert logged == list(range(1, 11)) + list(range(6, 11)), logged  # steps 6..10 were trained again
    a, b = workflow.load_run(bad), workflow.load_run(clean)
    assert a.step == b.step == 10
    got, want = _host(a.params), _host(b.params)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
