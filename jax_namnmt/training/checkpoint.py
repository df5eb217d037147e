"""Checkpoints of a training run, on top of ``orbax.checkpoint.CheckpointManager``.

Layout of a run directory::

    <run_dir>/checkpoints/<step>/state/...   array pytree (params, opt_state, step)
    <run_dir>/checkpoints/<step>/meta/...    JSON dict (data position, config, ...)

Orbax writes each step into ``<step>.orbax-checkpoint-tmp`` and renames it to
``<step>`` once every file is written, so a checkpoint cut short by a crash or a
kill is never listed by :meth:`Checkpointer.latest_step` nor restored.

Two orbax handlers serve the ``"state"`` item: ``StandardCheckpointHandler``
saves and restores the whole tree; ``PyTreeCheckpointHandler`` restores
``state["params"]`` alone (``partial_restore=True``), with the tree built from
the checkpoint's own metadata when no target is given, so ``translate`` needs
neither the optimizer nor the model to load parameters.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jax_namnmt.errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = ["Checkpointer", "save_json", "load_json"]


def _key_str(key: Any) -> str:
    """One element of a jax key path (dict key, attribute, index) as text."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _flat_by_path(tree: Any, prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    """Leaves of ``tree`` keyed by ``"a/b/0/c"``.

    NamedTuple fields and dict keys both become plain names, so a live optax
    state and the nested dicts/lists of orbax metadata give the same paths.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(prefix + tuple(_key_str(k) for k in path)): leaf for path, leaf in flat}


def _default_sharding() -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _abstract(leaf: Any) -> Any:
    """A restore target for one leaf: a ShapeDtypeStruct that yields a jax.Array."""
    struct = ocp.utils.to_shape_dtype_struct(leaf)
    if isinstance(struct, jax.ShapeDtypeStruct) and struct.sharding is None:
        struct = jax.ShapeDtypeStruct(struct.shape, struct.dtype, sharding=_default_sharding())
    return struct


class Checkpointer:
    """Saves and restores ``(state, meta)`` pairs under ``<run_dir>/checkpoints``.

    ``state`` is any pytree of arrays (dicts, lists, optax NamedTuples); ``meta``
    a JSON-able dict. Only the ``max_to_keep`` newest steps are kept (``None``
    keeps all). With ``async_save`` the arrays are copied to host memory and
    written in a background thread; :meth:`wait` blocks until that is done.
    """

    def __init__(self, run_dir: str | os.PathLike, max_to_keep: int | None = 3,
                 async_save: bool = False):
        self.run_dir = Path(run_dir).absolute()
        self.directory = self.run_dir / "checkpoints"
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        registry.add("state", ocp.args.StandardSave)
        registry.add("state", ocp.args.StandardRestore)
        registry.add("state", ocp.args.PyTreeRestore)  # params-only partial restore
        registry.add("meta", ocp.args.JsonSave)
        registry.add("meta", ocp.args.JsonRestore)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
            enable_async_checkpointing=async_save,
            create=False,  # made on first save: reading must not create directories
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, handler_registry=registry)

    # -- steps -------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Steps of the finished checkpoints, oldest first.

        Re-reads the directory (another process may have saved) unless this
        object is itself saving; a step still being saved by this object is
        listed, and :meth:`restore` waits for it.
        """
        if not self._manager.is_saving_in_progress():
            self._manager.reload()
        return sorted(int(s) for s in self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest finished step, or None when there is no checkpoint."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    # -- save --------------------------------------------------------------

    def save(self, step: int, state: Any, meta: dict, force: bool = True) -> None:
        """Saves ``state`` and ``meta`` as checkpoint ``step``.

        A step that already exists is left as it is (saving the step a run was
        resumed from again is a no-op). With ``force=False`` orbax also skips a
        step not newer than the latest one.
        """
        step = int(step)
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as e:
            raise TypeError(f"checkpoint meta must be JSON-serialisable: {e}") from e
        if step in self.all_steps():
            log.warning("checkpoint %s already exists; not saving it again",
                        self.directory / str(step))
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    meta=ocp.args.JsonSave(dict(meta))),
            force=force,
        )

    # -- restore -----------------------------------------------------------

    def _resolve_step(self, step: int | None) -> int:
        self.wait()
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(
                f"no checkpoint found in {self.directory}; check the run directory "
                "or train a model first")
        if step is None:
            return steps[-1]
        if int(step) not in steps:
            raise CheckpointError(
                f"checkpoint step {step} not found in {self.directory}; "
                f"available steps: {steps}")
        return int(step)

    def _saved_tree(self, step: int) -> dict:
        """The orbax metadata tree of the ``state`` item (shapes, dtypes)."""
        try:
            item = self._manager.item_metadata(step)["state"]
        except Exception as e:  # corrupted or foreign directory
            raise CheckpointError(
                f"cannot read checkpoint {self.directory / str(step)}: {e}") from e
        if item is None:
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} has no 'state' item")
        return item.tree

    def _check_fits(self, step: int, target: Any, saved: Any,
                    prefix: tuple[str, ...] = ()) -> None:
        """Raises CheckpointError at the first leaf where the checkpoint and
        ``target`` differ in presence or shape (parameters are checked before
        optimizer state, whose leaves mirror them, to name the model's leaf)."""
        where = self.directory / str(step)
        want = _flat_by_path(target, prefix)
        have = _flat_by_path(saved, prefix)
        hint = ("the checkpoint comes from another model shape or vocabulary "
                "(or another optimizer); use the config and vocabulary it was trained with")
        for path in sorted(want, key=lambda p: not p.startswith("params/")):
            leaf = want[path]
            if path not in have:
                raise CheckpointError(f"checkpoint {where} has no entry '{path}': {hint}")
            want_shape = getattr(leaf, "shape", None)
            have_shape = getattr(have[path], "shape", None)
            if want_shape is not None and have_shape is not None \
                    and tuple(want_shape) != tuple(have_shape):
                raise CheckpointError(
                    f"checkpoint {where}: '{path}' has shape {tuple(have_shape)} but the "
                    f"model expects {tuple(want_shape)}: {hint}")
        for path in have:
            if path not in want:
                raise CheckpointError(
                    f"checkpoint {where} has entry '{path}' the model does not have: {hint}")

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores checkpoint ``step`` (default: latest) as ``(state, meta)``.

        ``state`` takes the structure, dtypes, shapes and shardings of
        ``target`` (arrays or ``jax.ShapeDtypeStruct``s; without a sharding a
        leaf goes to the default device).
        """
        step = self._resolve_step(step)
        self._check_fits(step, target, self._saved_tree(step))
        abstract = jax.tree.map(_abstract, target)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        except Exception as e:
            raise CheckpointError(
                f"cannot restore checkpoint {self.directory / str(step)}: {e}") from e
        return restored.state, restored.meta

    def restore_params(self, step: int | None = None,
                       target: Any = None) -> tuple[Any, dict]:
        """Restores only ``state["params"]`` (default: latest step) as ``(params, meta)``.

        Without ``target`` the tree (nested dicts of jax arrays) and the shapes
        come from the checkpoint's metadata; the optimizer state is not read.
        """
        step = self._resolve_step(step)
        saved = self._saved_tree(step)
        if not isinstance(saved, dict) or "params" not in saved:
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} has no 'params' entry")
        if target is None:
            abstract = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=_default_sharding()),
                saved["params"])
        else:
            self._check_fits(step, target, saved["params"], prefix=("params",))
            abstract = jax.tree.map(_abstract, target)
        item = {"params": abstract}
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=item,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                    partial_restore=True),
                meta=ocp.args.JsonRestore()))
        except Exception as e:
            raise CheckpointError(
                f"cannot restore parameters from {self.directory / str(step)}: {e}") from e
        return restored.state["params"], restored.meta

    # -- lifecycle -----------------------------------------------------------

    def wait(self) -> None:
        """Blocks until any asynchronous save has been written and renamed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager's resources."""
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def save_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_json(path: str | os.PathLike) -> Any:
    """Reads a JSON file; a missing or malformed file raises CheckpointError."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; check the run directory") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{path}:{e.lineno}: invalid JSON ({e.msg}); the file is corrupted") from None
