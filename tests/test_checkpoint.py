"""Tests for jax_namnmt.training.checkpoint (orbax-backed checkpoints)."""

import json
import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax_namnmt.errors import CheckpointError
from jax_namnmt.training.checkpoint import (MANIFEST, Checkpointer, CorruptCheckpointError, load_json,
                                            save_json, verify_manifest)


def make_params(vocab=11, dim=4, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    return {
        "embed": {"embedding": jax.random.normal(k1, (vocab, dim))},
        "layer_0": {"kernel": jax.random.normal(k2, (dim, dim)),
                    "bias": jax.random.normal(k3, (dim,))},
    }


def make_state(vocab=11, seed=0, steps=2):
    """A realistic train state: params + adam state after a few updates."""
    params = make_params(vocab, seed=seed)
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)
    for _ in range(steps):
        grads = jax.tree.map(jnp.ones_like, params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return {"params": params, "opt_state": opt_state, "step": jnp.asarray(steps, jnp.int32)}


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


META = {"data": {"epoch": 1, "index": 37}, "config": {"d_model": 4, "langs": ["en", "de"]}}


def test_round_trip_with_adam_state(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(2, state, META)
        assert ckpt.latest_step() == 2
    # A fresh object, as after a restart; the target holds zeros of the same shapes.
    with Checkpointer(tmp_path) as ckpt:
        target = jax.tree.map(jnp.zeros_like, make_state(seed=1, steps=0))
        restored, meta = ckpt.restore(target)
    assert_trees_equal(restored, state)
    assert meta == META
    adam = restored["opt_state"][0]
    assert type(adam) is type(state["opt_state"][0])  # optax.ScaleByAdamState
    assert isinstance(adam, optax.ScaleByAdamState)
    assert type(restored["opt_state"][1]) is optax.EmptyState
    assert isinstance(restored["params"]["embed"]["embedding"], jax.Array)


def test_restore_from_shape_dtype_structs(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(5, state, META)
        abstract = jax.eval_shape(lambda: make_state(steps=0))
        restored, _ = ckpt.restore(abstract, step=5)
    assert_trees_equal(restored, state)


def test_restore_params_without_target(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, state, META)
    with Checkpointer(tmp_path) as ckpt:  # as in a fresh `translate` process
        params, meta = ckpt.restore_params()
    assert isinstance(params, dict)
    assert_trees_equal(params, state["params"])
    assert meta == META


def test_restore_params_with_target_and_same_object(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, state, META)
        params, _ = ckpt.restore_params(target=make_params(seed=5))
    assert_trees_equal(params, state["params"])


def test_max_to_keep_keeps_last_n(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        for step in (10, 20, 30, 40):
            ckpt.save(step, state, {"step": step})
        assert ckpt.all_steps() == [30, 40]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["30", "40"]
    with Checkpointer(tmp_path) as ckpt:
        _, meta = ckpt.restore_params(step=30)
        assert meta == {"step": 30}
        with pytest.raises(CheckpointError, match="step 10 not found"):
            ckpt.restore_params(step=10)


def test_saving_an_existing_step_is_a_no_op(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, make_state(seed=0), {"v": 1})
        ckpt.save(1, make_state(seed=1), {"v": 2})
        assert ckpt.restore_params()[1] == {"v": 1}


def test_async_save(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path, async_save=True) as ckpt:
        ckpt.save(1, state, META)
        ckpt.save(2, state, META)
        ckpt.wait()
        assert ckpt.all_steps() == [1, 2]
        params, _ = ckpt.restore_params()
    assert_trees_equal(params, state["params"])


def test_shape_mismatch_names_the_leaf(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, make_state(vocab=11), META)
        target = make_state(vocab=13)
        with pytest.raises(CheckpointError) as info:
            ckpt.restore(target)
    msg = str(info.value)
    assert "params/embed/embedding" in msg
    assert "(11, 4)" in msg and "(13, 4)" in msg
    assert "vocabulary" in msg
    with Checkpointer(tmp_path) as ckpt, pytest.raises(CheckpointError, match="embedding"):
        ckpt.restore_params(target=make_params(vocab=13))


def test_structure_mismatch(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, make_state(), META)
        target = make_state()
        target["params"]["layer_1"] = target["params"]["layer_0"]
        with pytest.raises(CheckpointError, match="no entry 'params/layer_1/"):
            ckpt.restore(target)


def test_unfinished_temporary_checkpoint_is_ignored(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state, META)
    ckpts = tmp_path / "checkpoints"
    # Orbax 0.12 writes step N into "N.orbax-checkpoint-tmp" and renames it to "N"
    # when complete. Leave such a directory behind, as a killed save would --
    # here with complete contents, the worst case.
    tmp_dir = ckpts / "2.orbax-checkpoint-tmp"
    shutil.copytree(ckpts / "1", tmp_dir)
    # Older orbax versions add a timestamp suffix.
    (ckpts / "3.orbax-checkpoint-tmp-1712345678").mkdir()
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 1
        assert ckpt.all_steps() == [1]
        params, _ = ckpt.restore_params()
        assert_trees_equal(params, state["params"])
        # A later save proceeds normally despite the leftovers.
        ckpt.save(2, state, META)
        assert ckpt.latest_step() == 2


def test_missing_directory(tmp_path):
    run_dir = tmp_path / "no_such_run"
    with Checkpointer(run_dir) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.all_steps() == []
        with pytest.raises(CheckpointError, match="no_such_run"):
            ckpt.restore(make_state())
        with pytest.raises(CheckpointError, match="no checkpoint found"):
            ckpt.restore_params()
    assert not run_dir.exists()  # reading does not create directories


def test_json_helpers(tmp_path):
    path = tmp_path / "sub" / "config.json"
    save_json(path, {"a": [1, 2], "b": "ü"})
    assert load_json(path) == {"a": [1, 2], "b": "ü"}
    save_json(path, {"a": 3})
    assert json.loads(path.read_text()) == {"a": 3}
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]
    with pytest.raises(CheckpointError, match="missing.json"):
        load_json(tmp_path / "missing.json")
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json:1"):
        load_json(path)


# -- integrity: corrupted checkpoints are detected, and the latest falls back to an intact one ------


def _data_files(step_dir):
    """The array data files of a step (orbax OCDBT chunk files), largest first."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, sorted(step_dir.rglob("*"))
    return sorted(files, key=lambda p: -p.stat().st_size)


def _truncate(step_dir):
    for f in _data_files(step_dir):
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])


def _flip_bytes(step_dir):
    for f in _data_files(step_dir):
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))


def _delete_file(step_dir):
    _data_files(step_dir)[0].unlink()


def _break_meta(step_dir):
    (step_dir / "meta" / "metadata").write_text('{"data": {"epoch": 1,', encoding="utf-8")


def _truncate_array_metadata(step_dir):
    path = step_dir / "state" / "_METADATA"
    path.write_bytes(path.read_bytes()[:100])


CORRUPTIONS = [_truncate, _flip_bytes, _delete_file, _break_meta, _truncate_array_metadata]


def _two_checkpoints(tmp_path):
    states = {1: make_state(seed=1), 2: make_state(seed=2)}
    with Checkpointer(tmp_path) as ckpt:
        for step, state in states.items():
            ckpt.save(step, state, {"step": step})
    return states


def test_manifest_is_written_and_reading_changes_nothing(tmp_path):
    _two_checkpoints(tmp_path)
    step_dir = tmp_path / "checkpoints" / "2"
    manifest = json.loads((step_dir / MANIFEST).read_text())
    names = set(manifest["files"])
    assert "meta/metadata" in names and "state/_METADATA" in names
    assert names == {p.relative_to(step_dir).as_posix() for p in step_dir.rglob("*")
                     if p.is_file() and p.name != MANIFEST}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.restore(make_state())
        ckpt.restore_params()
    assert verify_manifest(step_dir)  # restoring did not touch the files


def test_async_save_writes_the_manifest(tmp_path):
    with Checkpointer(tmp_path, async_save=True) as ckpt:
        ckpt.save(1, make_state(), META)
        ckpt.save(2, make_state(), META)
    for step in (1, 2):
        assert verify_manifest(tmp_path / "checkpoints" / str(step))


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_corrupted_latest_falls_back_to_the_previous_checkpoint(tmp_path, caplog, corrupt):
    states = _two_checkpoints(tmp_path)
    bad = tmp_path / "checkpoints" / "2"
    corrupt(bad)
    with Checkpointer(tmp_path) as ckpt:
        # the step asked for by number: a clear error naming the directory, no fallback
        with pytest.raises(CheckpointError, match=f"{bad}.*corrupted"):
            ckpt.restore(make_state(), step=2)
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 2  # listing does not read the files
        assert ckpt.latest_intact_step() == 1  # this does
        assert ckpt.latest_step() == 1
    with Checkpointer(tmp_path) as ckpt, caplog.at_level(logging.WARNING):
        state, meta = ckpt.restore(make_state())
        assert meta == {"step": 1}
        assert ckpt.latest_step() == 1  # the corrupted one is no longer offered
    assert_trees_equal(state, states[1])
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert f"{bad} is corrupted" in warning and str(tmp_path / "checkpoints" / "1") in warning
    with Checkpointer(tmp_path) as ckpt:
        params, meta = ckpt.restore_params()
        assert meta == {"step": 1}
        with pytest.raises(CheckpointError, match=str(bad)):
            ckpt.restore_params(step=2)
    assert_trees_equal(params, states[1]["params"])


def test_every_checkpoint_corrupted_names_them(tmp_path):
    _two_checkpoints(tmp_path)
    _truncate(tmp_path / "checkpoints" / "1")
    _break_meta(tmp_path / "checkpoints" / "2")
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError) as info:
            ckpt.restore(make_state())
        with pytest.raises(CheckpointError, match="every checkpoint"):
            ckpt.restore_params()  # the same object remembers both
    msg = str(info.value)
    assert "every checkpoint" in msg
    assert str(tmp_path / "checkpoints" / "1") in msg and str(tmp_path / "checkpoints" / "2") in msg


def test_broken_manifest_is_corruption(tmp_path):
    _two_checkpoints(tmp_path)
    (tmp_path / "checkpoints" / "2" / MANIFEST).write_text("{")
    with Checkpointer(tmp_path) as ckpt:
        _, meta = ckpt.restore_params()
    assert meta == {"step": 1}


def test_saving_a_corrupted_step_again_moves_it_aside(tmp_path):
    _two_checkpoints(tmp_path)
    ckpts = tmp_path / "checkpoints"
    _flip_bytes(ckpts / "2")
    new = make_state(seed=7)
    # as in the training loop: restore (falls back to 1), train on, save step 2 again
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.restore(make_state())[1] == {"step": 1}
        ckpt.save(2, new, {"step": 2, "again": True})
        assert ckpt.all_steps() == [1, 2]
    assert (ckpts / "2.corrupt").is_dir()
    assert verify_manifest(ckpts / "2")
    # a fresh object that never restored finds a corrupted step when saving it again, too
    _truncate(ckpts / "2")
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(2, new, {"step": 2, "third": True})
    assert (ckpts / "2.corrupt-2").is_dir()
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.all_steps() == [1, 2]  # the moved directories are not listed
        state, meta = ckpt.restore(make_state())
    assert meta == {"step": 2, "third": True}
    assert_trees_equal(state, new)


def test_checkpoint_without_manifest_still_loads(tmp_path):
    """Checkpoints written before manifests existed: restored unverified, read errors still caught."""
    states = _two_checkpoints(tmp_path)
    for step in (1, 2):
        (tmp_path / "checkpoints" / str(step) / MANIFEST).unlink()
    with Checkpointer(tmp_path) as ckpt:
        state, meta = ckpt.restore(make_state())
        params, _ = ckpt.restore_params(step=1)
    assert meta == {"step": 2}
    assert_trees_equal(state, states[2])
    assert_trees_equal(params, states[1]["params"])
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(2, make_state(seed=9), {"step": 2})  # intact as far as can be told: a no-op
        assert ckpt.restore_params()[1] == {"step": 2}
    _break_meta(tmp_path / "checkpoints" / "2")
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match=str(tmp_path / "checkpoints" / "2")):
            ckpt.restore(make_state(), step=2)
        assert ckpt.restore(make_state())[1] == {"step": 1}


def test_shape_mismatch_does_not_fall_back(tmp_path):
    _two_checkpoints(tmp_path)
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match="params/embed/embedding") as info:
            ckpt.restore(make_state(vocab=13))
        assert not isinstance(info.value, CorruptCheckpointError)
        assert ckpt.latest_step() == 2
