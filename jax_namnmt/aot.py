"""Compiled programs saved ahead of time (``jax.experimental.serialize_executable``), so that a
later process runs them without tracing, lowering or compiling, and without importing Flax.

JAX's persistent compilation cache (``cli.enable_compilation_cache``) saves the compile but not
the tracing and lowering that compute its key: for the shipped model's beam search that is
~0.5 s of a warm ``translate``, plus importing the model code. Here a program is stored under a
key made of everything that decides it: the JAX and jaxlib versions, the backend and device
kind, ``XLA_FLAGS``, the source of the package's modules the program is made from (the caller
names them; a test checks that the list covers every module the beam search imports), a
caller-given description (model config, search settings) and the shapes, dtypes and tree
structure of the arguments. A changed source file or library gives a new key (old entries are
never read again).

The files live in ``<compile cache>/aot`` (``cli.compilation_cache_dir``; off with the
compile cache). They hold executable code, like JAX's own cache: keep the directory where only
you can write. A file that cannot be read back is deleted and the program compiled again.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
from pathlib import Path
from typing import Any, Callable

from jax_namnmt.errors import atomic_write

SUBDIR = "aot"
_PACKAGE = Path(__file__).resolve().parent
_digests: dict[tuple[str, ...], str] = {}
_programs: dict[str, object] = {}  # programs already loaded or compiled in this process, by key


def cache_dir(environ=os.environ) -> Path | None:
    """``<compile cache>/aot``: the compile cache of the doors (``cli.compilation_cache_dir``), or
    of ``$JAX_COMPILATION_CACHE_DIR`` where that is set instead; None when the cache is off."""
    from jax_namnmt.cli import compilation_cache_dir

    base = compilation_cache_dir(environ)
    if base is None and environ.get("JAX_COMPILATION_CACHE_DIR") and "JAX_NAMNMT_XLA_CACHE" not in environ:
        base = Path(environ["JAX_COMPILATION_CACHE_DIR"]).expanduser()
    return None if base is None else base / SUBDIR


def source_files(sources: tuple[str, ...]) -> list[Path]:
    """The ``.py`` files of ``sources`` (paths relative to the package: files or directories)."""
    files = []
    for name in sources:
        path = _PACKAGE / name
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return files


def source_digest(sources: tuple[str, ...]) -> str:
    """SHA-256 over the path and bytes of the ``.py`` files of ``sources`` (once per process)."""
    if sources not in _digests:
        digest = hashlib.sha256()
        for path in source_files(sources):
            digest.update(str(path.relative_to(_PACKAGE)).encode())
            digest.update(path.read_bytes())
        _digests[sources] = digest.hexdigest()
    return _digests[sources]


def _signature(args) -> str:
    import jax
    import numpy as np

    leaves, tree = jax.tree.flatten(args)
    return repr(tree) + repr([(tuple(np.shape(x)), str(getattr(x, "dtype", type(x).__name__))) for x in leaves])


def program_key(name: str, description: str, args, sources: tuple[str, ...]) -> str:
    import jax
    import jaxlib

    device = jax.devices()[0]
    parts = [name, description, _signature(args), jax.__version__, jaxlib.__version__, jax.default_backend(),
             getattr(device, "device_kind", ""), str(jax.device_count()), os.environ.get("XLA_FLAGS", ""),
             str(jax.config.jax_enable_x64), str(jax.config.jax_default_matmul_precision), sys.version,
             source_digest(sources)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def load(path: Path):
    """The compiled program saved at ``path``, or None (missing, unreadable: then deleted)."""
    if not path.is_file():
        return None
    from jax.experimental import serialize_executable

    try:
        with open(path, "rb") as f:
            payload, in_tree, out_tree = pickle.load(f)
        return serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
    except Exception:  # a truncated, foreign or stale file: compile again
        path.unlink(missing_ok=True)
        return None


def save(path: Path, compiled) -> bool:
    """Write ``compiled`` to ``path`` atomically; False (and nothing written) where it cannot be
    serialised or written."""
    from jax.experimental import serialize_executable

    try:
        data = pickle.dumps(serialize_executable.serialize(compiled))
        with atomic_write(path, "wb") as f:
            f.write(data)
    except Exception:
        return False
    return True


def _compile_fresh(lower: Callable[[], Any]):
    """``lower().compile()`` with JAX's persistent compilation cache off: an XLA:CPU program that
    was itself loaded from that cache serialises without its kernels (jax 0.10.2: the copy fails
    with ``NOT_FOUND: Function ... not found`` when run in another process)."""
    import jax

    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        return lower().compile()
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)


def compiled(name: str, description: str, args: tuple, lower: Callable[[], Any], sources: tuple[str, ...],
             directory: Path | None = None, stats: dict | None = None):
    """The compiled program for ``args``: loaded from ``directory`` (default ``cache_dir()``) when
    saved there before, else ``lower().compile()`` and saved. ``sources``: the package's files and
    directories the program is made from. ``stats`` (optional) gets ``"aot": "hit" | "miss" |
    "off" | "memory"`` (already loaded in this process)."""
    directory = cache_dir() if directory is None else directory
    key = f"{name}-{program_key(name, description, args, sources)}"
    if key in _programs:
        if stats is not None:
            stats["aot"] = "memory"
        return _programs[key]
    path = None if directory is None else directory / f"{key}.bin"
    program = None if path is None else load(path)
    if stats is not None:
        stats["aot"] = "off" if path is None else ("hit" if program is not None else "miss")
    if program is None:
        program = _compile_fresh(lower) if path is not None else lower().compile()
        if path is not None:
            save(path, program)
    _programs[key] = program
    return program
