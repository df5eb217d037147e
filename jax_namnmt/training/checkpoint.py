"""Checkpoints of a training run, on top of ``orbax.checkpoint.CheckpointManager``.

Layout of a run directory::

    <run_dir>/checkpoints/<step>/state/...   array pytree (params, opt_state, step)
    <run_dir>/checkpoints/<step>/meta/...    JSON dict (data position, config, ...)
    <run_dir>/checkpoints/<step>/integrity.json   size and hash of every other file
    <run_dir>/checkpoints/<step>.corrupt     a corrupted step, moved aside when saved again

Orbax writes each step into ``<step>.orbax-checkpoint-tmp`` and renames it to
``<step>`` once every file is written, so a checkpoint cut short by a crash or a
kill is never listed by :meth:`Checkpointer.latest_step` nor restored.

Two orbax handlers serve the ``"state"`` item: ``StandardCheckpointHandler``
saves and restores the whole tree; ``PyTreeCheckpointHandler`` restores
``state["params"]`` alone (``partial_restore=True``), with the tree built from
the checkpoint's own metadata when no target is given, so ``translate`` needs
neither the optimizer nor the model to load parameters.

Integrity: once orbax has finalized step ``N``, :meth:`Checkpointer.save`
writes ``<step>/integrity.json``, the size and BLAKE2b hash of every file of
the step. :meth:`Checkpointer.restore` and :meth:`Checkpointer.restore_params`
check it before reading (a truncated, altered or deleted file, a broken
``meta`` JSON) and turn any orbax/tensorstore failure while reading into a
:class:`CheckpointError` naming the step directory. Restoring the latest step
(``step=None``) then falls back to the newest intact checkpoint, with a
warning naming the corrupted ones; this object stops listing those, and saving
that step again moves the corrupted directory aside to ``<step>.corrupt``
(orbax ignores such names) before writing a fresh one. A checkpoint without a
manifest (written before manifests existed, or killed between orbax's rename
and the manifest) is restored unverified, its read errors still caught.

Failed writes: a save that fails part-way (a full disk, a read-only directory) raises
:class:`WriteError` naming the step directory and the cause; orbax's unfinished
``<step>.orbax-checkpoint-tmp`` is removed and the previous checkpoint is left as it was, so
the same command resumes from it once the cause is fixed. Such leftovers of a process that died
(``kill -9`` in the middle of a save) are removed by the next save from a process that holds the
run directory's lock (``run_lock``): no other process can be writing them then.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jax_namnmt import run_lock
from jax_namnmt.errors import CheckpointError, UserError, WriteError, atomic_write, reason, write_hint
from jax_namnmt.jsonfile import load_json  # re-exported: the doors' JSON reader, Orbax-free

log = logging.getLogger(__name__)

__all__ = ["Checkpointer", "CorruptCheckpointError", "MANIFEST", "copy_file", "save_json", "load_json"]

MANIFEST = "integrity.json"
_HASH = "blake2b"
_TMP = ".orbax-checkpoint-tmp"  # orbax's suffix of a step (and of its items) being written


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's files are missing, truncated, altered or unreadable."""


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _step_files(step_dir: Path) -> list[Path]:
    """Every regular file of a step directory except the manifest (and its temporary file)."""
    return sorted(p for p in step_dir.rglob("*")
                  if p.is_file() and not p.name.startswith((MANIFEST, f".{MANIFEST}")))


def write_manifest(step_dir: Path) -> None:
    """Writes ``step_dir/integrity.json``: size and hash of every file of the finished step."""
    files = {p.relative_to(step_dir).as_posix(): {"size": p.stat().st_size, _HASH: _file_digest(p)}
             for p in _step_files(step_dir)}
    save_json(step_dir / MANIFEST, {"version": 1, "hash": _HASH, "files": files})


def verify_manifest(step_dir: Path) -> bool:
    """Checks ``step_dir`` against its manifest; False when it has none (an older checkpoint).

    Raises CorruptCheckpointError naming the step directory and the first file at fault.
    """
    path = step_dir / MANIFEST
    if not path.exists():
        return False
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest.get("hash") != _HASH or not isinstance(files, dict) or not files:
            raise ValueError("unknown manifest format")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(
            f"checkpoint {step_dir} is corrupted: its manifest {MANIFEST} is unreadable ({e})") from None
    for name, want in sorted(files.items()):
        file = step_dir / name
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            raise CorruptCheckpointError(f"checkpoint {step_dir} is corrupted: file {name} is missing") from None
        if size != want["size"]:
            raise CorruptCheckpointError(
                f"checkpoint {step_dir} is corrupted: file {name} has {size} bytes, {want['size']} were "
                "written (truncated or altered)")
        if _file_digest(file) != want[_HASH]:
            raise CorruptCheckpointError(
                f"checkpoint {step_dir} is corrupted: the contents of file {name} changed since it was written")
    return True


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


def _check_meta(step: int, meta: Any, step_dir: Path) -> dict:
    if not isinstance(meta, dict):
        raise CorruptCheckpointError(
            f"checkpoint {step_dir} is corrupted: its meta item is {type(meta).__name__}, not a JSON object")
    return meta


def _default_sharding() -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _abstract(leaf: Any) -> Any:
    """A restore target for one leaf: a ShapeDtypeStruct that yields a jax.Array."""
    struct = ocp.utils.to_shape_dtype_struct(leaf)
    if isinstance(struct, jax.ShapeDtypeStruct) and struct.sharding is None:
        struct = jax.ShapeDtypeStruct(struct.shape, struct.dtype, sharding=_default_sharding())
    return struct


def _sync(name: str) -> None:
    """With several processes (multi-host), wait until every process got here: process 0 writes
    the manifests and renames, the others read them after this point. One process: nothing."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"jax_namnmt checkpoint: {name}")


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
        self._pending: list[int] = []  # saved steps whose manifest is still to be written (async)
        self._bad: dict[int, str] = {}  # step -> why this object found it corrupted; not listed any more
        self._swept = False  # leftovers of a dead writer removed (first save under the lock)

    def _step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    # -- steps -------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Steps of the finished checkpoints, oldest first.

        Re-reads the directory (another process may have saved) unless this
        object is itself saving; a step still being saved by this object is
        listed, and :meth:`restore` waits for it.
        """
        if not self._manager.is_saving_in_progress():
            self._manager.reload()
        return sorted(int(s) for s in self._manager.all_steps() if int(s) not in self._bad)

    def latest_step(self) -> int | None:
        """The newest finished step, or None when there is no checkpoint.

        After a :meth:`restore` of the latest step fell back past corrupted
        checkpoints, this is the step it restored."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def latest_intact_step(self) -> int | None:
        """The newest step whose files match its manifest (one without a manifest counts as
        intact), or None; each newer corrupted step is named in a warning and no longer listed.

        Reads every file of the steps it checks: for deciding whether a run is complete, where
        :meth:`latest_step` would take a corrupted final checkpoint for a finished run.
        """
        self.wait()
        for step in reversed(self.all_steps()):
            try:
                verify_manifest(self._step_dir(step))
            except CorruptCheckpointError as e:
                self._bad[step] = str(e)
                log.warning("%s", e)
                continue
            return step
        return None

    # -- save --------------------------------------------------------------

    def save(self, step: int, state: Any, meta: dict, force: bool = True) -> None:
        """Saves ``state`` and ``meta`` as checkpoint ``step``, then its integrity manifest.

        A step that already exists intact is left as it is (saving the step a
        run was resumed from again is a no-op); one found corrupted is moved to
        ``<step>.corrupt`` and written anew. With ``force=False`` orbax also
        skips a step not newer than the latest one.
        """
        step = int(step)
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as e:
            raise TypeError(f"checkpoint meta must be JSON-serialisable: {e}") from e
        self._write_pending_manifests()
        if step in self.all_steps():
            try:
                verify_manifest(self._step_dir(step))
            except CorruptCheckpointError as e:
                log.warning("%s", e)
                self._bad[step] = str(e)
            else:
                log.warning("checkpoint %s already exists; not saving it again", self._step_dir(step))
                return
        if step in self._bad:
            self._move_aside(step)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(f"cannot write checkpoints to {self.directory}: {reason(e)}; {write_hint(e)}") from e
        self._sweep()
        try:
            saved = self._manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        meta=ocp.args.JsonSave(dict(meta))),
                force=force,
            )
        except Exception as e:
            self._failed([step], e)
        if saved:
            self._pending.append(step)
            if not self._manager.is_saving_in_progress():
                self._write_pending_manifests()

    def _sweep(self) -> None:
        """Removes unfinished steps (``<step>.orbax-checkpoint-tmp*``) left by a writer that died,
        once, when this process holds the run directory's lock (else another process may be
        writing them)."""
        if self._swept or not run_lock.held_here(self.run_dir) or jax.process_index() != 0:
            return
        self._swept = True
        for leftover in self.directory.glob(f"*{_TMP}*"):
            log.warning("removing %s: an unfinished checkpoint of a process that stopped while saving it",
                        leftover)
            shutil.rmtree(leftover, ignore_errors=True)

    def _remove_unfinished(self, steps: list[int], settle_s: float = 2.0) -> None:
        """Best effort: orbax's other writer threads of a failed save may still be creating files
        for a moment; what is left then goes with the next save's sweep (``_sweep``)."""
        deadline = time.monotonic() + settle_s
        while True:
            left = [p for step in steps for p in self.directory.glob(f"{step}{_TMP}*")]
            for path in left:
                shutil.rmtree(path, ignore_errors=True)
            if not left or time.monotonic() > deadline:
                return
            time.sleep(0.1)

    def _failed(self, steps: list[int], err: Exception) -> None:
        """A save of ``steps`` failed: remove what orbax left unfinished and raise WriteError
        (a UserError is raised as it is)."""
        if isinstance(err, UserError):
            raise err
        if jax.process_index() == 0:
            self._remove_unfinished(steps)
        try:
            kept = [s for s in self.all_steps() if s not in steps]
        except Exception:  # noqa: BLE001 - the write error is what the user needs to see
            kept = []
        previous = (f"the previous checkpoint {self._step_dir(kept[-1])} is intact" if kept
                    else "no earlier checkpoint exists")
        where = ", ".join(str(self._step_dir(s)) for s in steps)
        raise WriteError(f"cannot write checkpoint {where}: {reason(err)}; {previous}; {write_hint(err)} "
                         "to resume from the last intact checkpoint") from err

    def _write_pending_manifests(self) -> None:
        """Waits for orbax's pending save, then writes the manifests of the finished steps."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # an asynchronous save failed
            self._failed(pending, e)
        if jax.process_index() == 0:  # one writer; every process reads (see _sync)
            for step in pending:
                step_dir = self._step_dir(step)
                if step_dir.is_dir():  # absent: already removed by keep-last-N
                    try:
                        write_manifest(step_dir)
                    except WriteError as e:  # the step itself is complete: it stays, restored unverified
                        raise WriteError(f"checkpoint {step_dir} was written but not its manifest: {e}") from e
        _sync(f"manifests {pending}")

    def _move_aside(self, step: int) -> None:
        """Renames corrupted checkpoint ``step`` to ``<step>.corrupt[-n]`` so it can be saved again."""
        src = self._step_dir(step)
        if src.exists() and jax.process_index() == 0:
            dst, n = self.directory / f"{step}.corrupt", 1
            while dst.exists():
                n += 1
                dst = self.directory / f"{step}.corrupt-{n}"
            os.replace(src, dst)
            log.warning("moved corrupted checkpoint %s to %s", src, dst)
        _sync(f"move aside {step}")
        self._bad.pop(step, None)
        self._manager.reload()

    # -- restore -----------------------------------------------------------

    def _with_fallback(self, step: int | None, restore_one) -> Any:
        """``restore_one(step)`` for the requested step or, with ``step=None``, for the
        newest step that is not corrupted (a warning names each corrupted one)."""
        self.wait()
        steps = self.all_steps()
        if step is not None:
            step = int(step)
            if step in self._bad:
                raise CorruptCheckpointError(self._bad[step])
            if step not in steps:
                raise CheckpointError(
                    f"checkpoint step {step} not found in {self.directory}; "
                    f"available steps: {steps}")
            return restore_one(step)
        if not steps:
            if self._bad:
                raise CorruptCheckpointError(
                    f"every checkpoint in {self.directory} is corrupted ("
                    + "; ".join(self._bad[s] for s in sorted(self._bad)) + ")")
            raise CheckpointError(
                f"no checkpoint found in {self.directory}; check the run directory "
                "or train a model first")
        errors = []
        for candidate in reversed(steps):
            try:
                result = restore_one(candidate)
            except CorruptCheckpointError as e:
                self._bad[candidate] = str(e)
                errors.append(str(e))
                older = [s for s in steps if s < candidate]
                log.warning("%s; %s", e, f"using the previous checkpoint {self._step_dir(older[-1])}"
                            if older else "no older checkpoint is left")
                continue
            return result
        raise CorruptCheckpointError(
            f"every checkpoint in {self.directory} is corrupted ({'; '.join(errors)}); "
            "delete the run directory's checkpoints to start over, or restore them from a backup")

    def _verify(self, step: int) -> None:
        step_dir = self._step_dir(step)
        if not step_dir.is_dir():
            raise CorruptCheckpointError(f"checkpoint {step_dir} disappeared")
        if not verify_manifest(step_dir):
            log.info("checkpoint %s has no %s (written by an older version): not verified",
                     step_dir, MANIFEST)

    def _saved_tree(self, step: int) -> dict:
        """The orbax metadata tree of the ``state`` item (shapes, dtypes)."""
        try:
            item = self._manager.item_metadata(step)["state"]
            tree = None if item is None else item.tree
        except Exception as e:  # corrupted or foreign directory
            raise CorruptCheckpointError(
                f"checkpoint {self._step_dir(step)} is corrupted: cannot read its metadata "
                f"({type(e).__name__}: {e})") from e
        if tree is None:
            raise CorruptCheckpointError(
                f"checkpoint {self._step_dir(step)} is corrupted: it has no 'state' item")
        return tree

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
        """Restores checkpoint ``step`` (default: the newest intact one) as ``(state, meta)``.

        ``state`` takes the structure, dtypes, shapes and shardings of
        ``target`` (arrays or ``jax.ShapeDtypeStruct``s; without a sharding a
        leaf goes to the default device). A corrupted checkpoint raises
        :class:`CorruptCheckpointError`; with ``step=None`` the previous one is
        tried first (see the module docstring).
        """
        abstract = jax.tree.map(_abstract, target)

        def restore_one(step: int):
            self._verify(step)
            self._check_fits(step, target, self._saved_tree(step))
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
                meta = restored.meta
            except Exception as e:
                raise CorruptCheckpointError(
                    f"checkpoint {self._step_dir(step)} is corrupted: cannot restore it "
                    f"({type(e).__name__}: {e})") from e
            return restored.state, _check_meta(step, meta, self._step_dir(step))

        return self._with_fallback(step, restore_one)

    def restore_params(self, step: int | None = None,
                       target: Any = None) -> tuple[Any, dict]:
        """Restores only ``state["params"]`` (default: newest intact step) as ``(params, meta)``.

        Without ``target`` the tree (nested dicts of jax arrays) and the shapes
        come from the checkpoint's metadata; the optimizer state is not read.
        """

        def restore_one(step: int):
            self._verify(step)
            saved = self._saved_tree(step)
            if not isinstance(saved, dict) or "params" not in saved:
                raise CorruptCheckpointError(
                    f"checkpoint {self._step_dir(step)} has no 'params' entry")
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
                params, meta = restored.state["params"], restored.meta
            except Exception as e:
                raise CorruptCheckpointError(
                    f"checkpoint {self._step_dir(step)} is corrupted: cannot restore its parameters "
                    f"({type(e).__name__}: {e})") from e
            return params, _check_meta(step, meta, self._step_dir(step))

        return self._with_fallback(step, restore_one)

    # -- lifecycle -----------------------------------------------------------

    def wait(self) -> None:
        """Blocks until any asynchronous save has been written, renamed and given its manifest."""
        self._manager.wait_until_finished()
        self._write_pending_manifests()

    def close(self) -> None:
        """Waits for pending saves (and their manifests) and releases the manager's resources."""
        try:
            self._write_pending_manifests()
        finally:
            self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copies ``src`` to ``dst`` atomically (temporary file, then rename); nothing is written when
    ``dst`` already holds the same bytes. An OS error raises :class:`WriteError` naming ``dst``."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and filecmp.cmp(src, dst, shallow=False):
        return
    with atomic_write(dst, None, f"{dst} (a copy of {src})") as tmp:
        shutil.copyfile(src, tmp)


def save_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` atomically (temporary file, then rename): the previous
    file stays whole until the new one is complete. An OS error (disk full, read-only) raises
    :class:`WriteError` naming ``path``."""
    path = Path(path)
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"  # a TypeError before anything is written
    with atomic_write(path, None) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
