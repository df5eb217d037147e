"""Writes that fail part-way: checkpoint, importance, mask, package and JSON writes stop with a
``WriteError`` naming the path and the cause, leave the previous complete file (or checkpoint)
as it was and nothing half-written, and the same call succeeds once the cause is gone.

A full disk is simulated with RLIMIT_FSIZE (``ulimit -f``) set around the real write only, with
SIGXFSZ ignored: every file the write grows past the limit fails with EFBIG in the real writer
(tensorstore's C++ for checkpoints, numpy/zipfile for .npz), where a full disk fails with
ENOSPC; the JSON writer gets a real ENOSPC from a patched ``open``."""

from __future__ import annotations

import errno
import functools
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import file_size_limit
from jax_namnmt import packaged, run_lock, workflow
from jax_namnmt.config import load_config
from jax_namnmt.errors import UserError, WriteError, atomic_write
from jax_namnmt.method.allocation import allocate, load_masks
from jax_namnmt.method.masks import module_sizes
from jax_namnmt.training import checkpoint
from jax_namnmt.training.checkpoint import Checkpointer, save_json, verify_manifest

REPO = Path(__file__).resolve().parents[1]
LIMIT = 1024  # bytes: every file of the failing write below is larger


def limited(fn, nbytes: int = LIMIT):
    """``fn`` run under ``file_size_limit`` (the disk is full only while it writes)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with file_size_limit(nbytes):
            return fn(*args, **kwargs)
    return wrapper


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _host(tree) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.array(leaf, copy=True) for path, leaf in flat}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_corpus):
    """(work directory with the tiny vocabulary, a 4-step config saving every 2 steps, a trained run)."""
    config = load_config("tiny", [f"data.data_dir={tiny_corpus}", "data.train_max_lines=40", "train.log_every=1",
                                  "train.save_every=2", "train.steps=4", "train.keep_checkpoints=3",
                                  "train.eval_every=100"])
    work = tmp_path_factory.mktemp("writes") / "work"
    workflow.prepare(config, work, quiet=True)
    run = work / "clean"
    workflow.run_pretrain(config, work, run, quiet=True)
    return work, config, run


def _theta(config, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.random((len(config.data.pairs), n)).astype(np.float32)
            for name, n in module_sizes(config.model).items()}


# -- checkpoints -----------------------------------------------------------------------------------


def test_checkpoint_write_that_fails_keeps_the_previous_one_and_the_same_command_resumes(prepared, tmp_path,
                                                                                         monkeypatch):
    work, config, clean = prepared
    full = tmp_path / "full"
    real_save = Checkpointer.save

    def save(self, step, *args, **kwargs):  # the disk is full when step 4 is saved
        return (limited(real_save) if step == 4 else real_save)(self, step, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "save", save)
    with pytest.raises(WriteError) as err:
        workflow.run_pretrain(config, work, full, quiet=True)
    message = str(err.value)
    assert f"cannot write checkpoint {full / 'checkpoints' / '4'}: File too large (EFBIG)" in message, message
    assert f"the previous checkpoint {full / 'checkpoints' / '2'} is intact" in message, message
    assert "run the same command again" in message
    # step 2 is intact and the only one listed, the lock is released
    assert Checkpointer(full).all_steps() == [2]
    assert verify_manifest(full / "checkpoints" / "2")
    assert not run_lock.lock_path(full).exists()

    monkeypatch.setattr(Checkpointer, "save", real_save)  # space freed: the same call resumes from step 2
    workflow.run_pretrain(config, work, full, quiet=True)
    # nothing half-written is left (whatever orbax's writer threads left of 4.orbax-checkpoint-tmp
    # after the failure went with the resumed run's first save)
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == ["2", "4"]
    assert Checkpointer(full).all_steps() == [2, 4]
    got, want = _host(workflow.load_run(full).params), _host(workflow.load_run(clean).params)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_a_dead_writers_unfinished_step_is_never_read_and_is_removed_by_the_next_writer(prepared, tmp_path):
    _, config, clean = prepared
    import shutil

    run = tmp_path / "run"
    shutil.copytree(clean, run)
    partial = run / "checkpoints" / "6.orbax-checkpoint-tmp"  # what kill -9 during a save leaves
    shutil.copytree(run / "checkpoints" / "4", partial)
    for f in partial.rglob("*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert Checkpointer(run).all_steps() == [2, 4]  # a reader never lists it
    assert workflow.load_run(run).step == 4
    assert partial.exists()  # and, without the lock, never removes it (a writer may be at work)
    state = Checkpointer(run).restore_params()[0]
    with run_lock.hold(run):
        with Checkpointer(run) as ckpt:
            ckpt.save(6, {"params": state}, {"step": 6})
    assert not partial.exists()
    assert Checkpointer(run).all_steps() == [2, 4, 6]


# -- importance, masks ------------------------------------------------------------------------------


def test_importance_write_that_fails_keeps_the_previous_file(prepared, tmp_path, monkeypatch):
    work, config, run = prepared
    out = tmp_path / "importance_taylor.npz"
    first, second = _theta(config, 0), _theta(config, 1)
    monkeypatch.setattr(workflow, "compute_importance", lambda *a, **k: first)  # the scores: not under test
    workflow.run_importance(run, config, work, "taylor", quiet=True, out=out)
    before = out.read_bytes()

    monkeypatch.setattr(workflow, "compute_importance", lambda *a, **k: second)
    monkeypatch.setattr(np, "savez", limited(np.savez))
    with pytest.raises(WriteError, match=f"cannot write importance file {out}: File too large"):
        workflow.run_importance(run, config, work, "taylor", quiet=True, out=out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary file, no lock
    assert out.read_bytes() == before

    monkeypatch.undo()
    monkeypatch.setattr(workflow, "compute_importance", lambda *a, **k: second)
    workflow.run_importance(run, config, work, "taylor", quiet=True, out=out)
    theta, pairs = workflow.load_importance(out)
    assert pairs == list(config.data.pairs)
    for name in second:
        np.testing.assert_array_equal(theta[name], second[name])


def test_mask_write_that_fails_keeps_the_previous_file(prepared, tmp_path, monkeypatch):
    _, config, _ = prepared
    importance, out = tmp_path / "importance.npz", tmp_path / "masks.npz"
    pairs = list(config.data.pairs)
    theta = _theta(config, 2)
    np.savez(importance, __pairs__=np.asarray(__import__("json").dumps(pairs)), **theta)
    workflow.run_allocate(importance, out, 0.5, 0.7, "pair", quiet=True)
    before = out.read_bytes()

    monkeypatch.setattr(np, "savez", limited(np.savez))
    with pytest.raises(WriteError, match=f"cannot write mask file {out}: File too large"):
        workflow.run_allocate(importance, out, 0.9, 0.7, "pair", quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["importance.npz", "masks.npz"]
    assert out.read_bytes() == before

    monkeypatch.undo()
    workflow.run_allocate(importance, out, 0.9, 0.7, "pair", quiet=True)
    masks, got_pairs, meta = load_masks(out)
    want = allocate(theta, pairs, 0.9, 0.7, "pair")
    assert got_pairs == pairs and meta["rho"] == 0.9
    for name in want:
        np.testing.assert_array_equal(masks[name], want[name])


# -- packages, JSON ---------------------------------------------------------------------------------


def test_package_write_that_fails_keeps_the_previous_package(prepared, tmp_path, monkeypatch):
    _, _, run = prepared
    out = tmp_path / "package"
    workflow.export_run(run, out, "float32")
    before = _files(out)
    assert run_lock.LOCK_NAME not in before  # released

    monkeypatch.setattr(np, "savez", limited(np.savez))
    with pytest.raises(WriteError) as err:
        workflow.export_run(run, out, "bfloat16")
    message = str(err.value)
    assert f"cannot write package {out}: writing {tmp_path / '.package.tmp' / 'params.npz'} failed: File too " \
           "large" in message, message
    assert f"the package in {out} is unchanged" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["package"]  # no .package.tmp left
    assert _files(out) == before

    monkeypatch.undo()
    workflow.export_run(run, out, "bfloat16")
    assert packaged.read_package_info(out)["dtype"] == "bfloat16"
    assert workflow.load_run(out).step == 4
    assert sorted(_files(out)) == ["config.json", "package.json", "params.npz", "spm.model"]


def test_replacing_a_package_keeps_its_lock_held(prepared, tmp_path):
    """The new package is swapped in with the lock file linked into it: the exporting process
    holds the lock of ``out`` from before the swap to its release."""
    _, _, run = prepared
    out = tmp_path / "package"
    workflow.export_run(run, out, "float32")
    with run_lock.hold(out):
        workflow.export_run(run, out, "bfloat16")
        assert packaged.read_package_info(out)["dtype"] == "bfloat16"
        probe = subprocess.run([sys.executable, "-c", "import sys; from jax_namnmt import run_lock; "
                                "print(run_lock.holder(sys.argv[1])['pid'])", str(out)],
                               cwd=REPO, capture_output=True, text=True, timeout=600)
        assert probe.stdout.strip() == str(os.getpid()), probe.stderr
    assert not run_lock.lock_path(out).exists()


def test_json_write_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    save_json(path, {"a": 1})

    class FullDisk:
        def __init__(self, *args, **kwargs):
            self.file = open(*args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "open", FullDisk, raising=False)
    with pytest.raises(WriteError, match=f"cannot write {path}: No space left on device \\(ENOSPC\\)"):
        save_json(path, {"a": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    assert checkpoint.load_json(path) == {"a": 1}


def test_atomic_write_that_fails_halfway_keeps_the_previous_file(tmp_path):
    """``errors.atomic_write``, every atomic writer's: a write that fails part-way raises WriteError
    naming the file, leaves the previous file as it was and no temporary file beside it."""
    path = tmp_path / "table.npz"
    path.write_bytes(b"old contents")

    def only_the_old_file():
        assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
        assert path.read_bytes() == b"old contents"

    with file_size_limit(LIMIT), pytest.raises(WriteError, match=f"^cannot write {path}: File too large \\(EFBIG\\)"):
        with atomic_write(path) as f:
            f.write(b"x" * (LIMIT // 2))
            f.flush()  # half of it is on disk in the temporary file
            f.write(b"x" * LIMIT)
    only_the_old_file()
    # an OS error raised in the block, a library writing by name (the path form), the caller's name
    with pytest.raises(WriteError, match=f"^cannot write mask file {path}: No space left on device \\(ENOSPC\\); "
                                         "free some space"):
        with atomic_write(path, None, f"mask file {path}") as tmp:
            assert tmp.parent == tmp_path and tmp.name.endswith(".npz")  # savez keeps the name
            np.savez(tmp, a=np.arange(10))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    only_the_old_file()
    with pytest.raises(ZeroDivisionError):  # not a write error: passes through, nothing written either
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.write("new")
            1 / 0
    only_the_old_file()
    # the rename fails (a directory is in the way): WriteError, the temporary file removed
    blocked = tmp_path / "blocked"
    (blocked / "inside").mkdir(parents=True)
    with pytest.raises(WriteError, match=f"^cannot write {blocked}: Is a directory"):
        with atomic_write(blocked, "w", encoding="utf-8") as f:
            f.write("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked", path.name]
    blocked.joinpath("inside").rmdir()
    blocked.rmdir()
    # a write that completes replaces the file, in both forms
    with atomic_write(path, None) as tmp:
        np.savez(tmp, a=np.arange(3))
    with np.load(path) as data:
        np.testing.assert_array_equal(data["a"], np.arange(3))
    with atomic_write(tmp_path / "new" / "lines.txt", "w", encoding="utf-8") as f:  # parents created
        f.write("ä\n")
    assert (tmp_path / "new" / "lines.txt").read_text(encoding="utf-8") == "ä\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", path.name]


def test_vocabulary_copy_into_a_run_is_atomic_and_skipped_when_unchanged(tmp_path):
    """``write_run_files`` copies the vocabulary into the run at every (re)start: on a full disk a
    resume must not truncate the run's good copy."""
    src, dst = tmp_path / "spm.model", tmp_path / "run" / "spm.model"
    dst.parent.mkdir()
    src.write_bytes(os.urandom(8192))
    checkpoint.copy_file(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    with file_size_limit(LIMIT):
        checkpoint.copy_file(src, dst)  # the same bytes: nothing is written, nothing fails
    src.write_bytes(src.read_bytes()[:LIMIT] + os.urandom(100))
    old = dst.read_bytes()
    with file_size_limit(LIMIT), pytest.raises(WriteError, match=f"cannot write {dst} \\(a copy of {src}\\): File "
                                                                 "too large"):
        checkpoint.copy_file(src, dst)
    assert dst.read_bytes() == old and sorted(p.name for p in dst.parent.iterdir()) == ["spm.model"]


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not apply to root")
def test_read_only_run_directory(prepared, tmp_path):
    _, config, run = prepared
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(UserError, match=f"{ro}.*Permission denied"):
            workflow.run_allocate(tmp_path / "missing.npz", ro / "masks.npz", 0.9, 0.7, "pair", quiet=True)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_unwritable_directory_is_refused_before_anything_runs(tmp_path, monkeypatch):
    """What a read-only directory does where permissions apply (root bypasses them): the lock file
    cannot be created, so the command stops before reading its input (here a missing importance
    file, which would otherwise be the error)."""
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(run_lock.os, "open", read_only)
    with pytest.raises(WriteError, match=f"cannot create the lock file {tmp_path / run_lock.LOCK_NAME}: "
                                         "Permission denied; the directory must be writable"):
        workflow.run_allocate(tmp_path / "missing.npz", tmp_path / "masks.npz", 0.9, 0.7, "pair", quiet=True)


def test_importance_into_a_read_only_package_asks_for_out(prepared, monkeypatch):
    """An installed package's directory is read-only: importance says to pass --out before scoring
    (``os.access`` stands in for the permissions, which root bypasses)."""
    work, config, run = prepared
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == run else real_access(path, mode))
    monkeypatch.setattr(workflow, "compute_importance", lambda *a, **k: pytest.fail("scored a read-only run"))
    with pytest.raises(WriteError, match=f"{run} is not writable .*pass --out FILE"):
        workflow.run_importance(run, config, work, "taylor", quiet=True)


def test_atomic_write_removes_what_a_killed_writer_left(tmp_path):
    """A temporary file that a writer of this host left when it was killed mid-write is removed by
    the next write of the same file; a live writer's, another host's and another file's stay."""
    import subprocess
    import sys

    from jax_namnmt.errors import _host_tag

    path = tmp_path / "importance.npz"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid, host = int(gone.stdout), _host_tag()
    stale = tmp_path / f".importance.npz.{host}-{dead_pid}-0a1b2c3d.tmp.npz"
    live = tmp_path / f".importance.npz.{host}-{os.getppid()}-0a1b2c3d.tmp.npz"
    elsewhere = tmp_path / f".importance.npz.otherhost-{dead_pid}-0a1b2c3d.tmp.npz"
    other_file = tmp_path / f".masks.npz.{host}-{dead_pid}-0a1b2c3d.tmp.npz"
    for p in (stale, live, elsewhere, other_file):
        p.write_bytes(b"half")
    with atomic_write(path) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (path, live, elsewhere, other_file))
