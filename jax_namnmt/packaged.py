"""Packaged models: a trained model as one small read-only directory (the shipped model is one).

A package holds ``config.json``, ``spm.model``, ``params.npz`` (every parameter under its
path, e.g. ``encoder_layer_0/self_attn/q/dense/kernel``; bfloat16 values are stored as their
16-bit patterns) and ``package.json`` (format, stored dtype, SHA-256 of ``params.npz``, the
step and run it came from, and the model card's figures). ``workflow.load_run`` reads a
package wherever it reads a run directory; parameters come back as float32.

    python -m jax_namnmt.export --checkpoint RUN --out DIR [--dtype bfloat16]
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np

from jax_namnmt import run_lock
from jax_namnmt.errors import CheckpointError, WriteError, reading, reason, write_hint
from jax_namnmt.method.masks import flatten, nest
from jax_namnmt.jsonfile import load_json

FORMAT = 1
PARAMS_FILE = "params.npz"
PACKAGE_FILE = "package.json"
STORED_DTYPES = ("bfloat16", "float32")


def shipped_model_dir() -> Path:
    """The model shipped inside the project (``jax_namnmt/resources/model``)."""
    return Path(__file__).resolve().parent / "resources" / "model"


def is_package(directory: Path) -> bool:
    return (Path(directory) / PACKAGE_FILE).exists()


def checkpoint_or_shipped(checkpoint: str | Path | None) -> Path:
    """``--checkpoint`` as given, or the shipped model when none was (a CheckpointError when this
    installation lacks it)."""
    if checkpoint is not None:
        return Path(checkpoint)
    shipped = shipped_model_dir()
    if not is_package(shipped):
        raise CheckpointError(f"no --checkpoint given and the shipped model {shipped} is missing from this "
                              "installation; pass --checkpoint RUN")
    return shipped


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_package(out: Path, params: dict, config_dict: dict, vocab_path: Path, dtype: str = "bfloat16",
                 info: dict | None = None) -> Path:
    """Write a package: the directory is written under a temporary name (``.OUT.tmp``) and put in
    place of ``out`` when complete, so a reader sees the old package or the new one, never a mix.
    A write that fails (disk full, read-only) raises WriteError naming the file; the temporary
    directory is removed and an existing package at ``out`` is left as it was."""
    from jax_namnmt.training.checkpoint import save_json  # Orbax: not on translate's path

    if dtype not in STORED_DTYPES:
        raise ValueError(f"dtype must be one of {STORED_DTYPES}, got {dtype!r}")
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    arrays = {}
    for path, value in flatten(params).items():
        value = np.asarray(value, np.float32)
        arrays[path] = value.astype(ml_dtypes.bfloat16).view(np.uint16) if dtype == "bfloat16" else value
    current = tmp
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        current = tmp / PARAMS_FILE
        np.savez(current, **arrays)
        current = tmp / "config.json"
        save_json(current, config_dict)
        current = tmp / "spm.model"
        shutil.copyfile(vocab_path, current)
        current = tmp / PACKAGE_FILE
        save_json(current, {"format": FORMAT, "dtype": dtype, "sha256": _sha256(tmp / PARAMS_FILE), **(info or {})})
        current = out
        _publish(tmp, out)
    except (OSError, WriteError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        root = (e.__cause__ or e) if isinstance(e, WriteError) else e
        cause = reason(root)
        kept = f"the package in {out} is unchanged" if (out / PACKAGE_FILE).exists() else "nothing was written"
        raise WriteError(f"cannot write package {out}: writing {current} failed: {cause}; {kept}; {write_hint(root)}") from e
    return out


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _publish(tmp: Path, out: Path) -> None:
    """Put the complete package ``tmp`` in place of ``out``. Where this process holds ``out``'s lock,
    the lock file is linked into the new directory first, so the lock never leaves ``out``."""
    if not out.exists():
        tmp.rename(out)
        return
    lock = run_lock.lock_path(out)
    if run_lock.held_here(out) and lock.exists():
        os.link(lock, run_lock.lock_path(tmp))
    if _exchange(tmp, out):  # tmp now holds the old package
        shutil.rmtree(tmp)
        return
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old)


def read_package_info(directory: Path) -> dict:
    info = load_json(Path(directory) / PACKAGE_FILE)
    if info.get("format") != FORMAT or info.get("dtype") not in STORED_DTYPES:
        raise CheckpointError(f"{Path(directory) / PACKAGE_FILE}: unknown package format {info.get('format')!r} "
                              f"or dtype {info.get('dtype')!r}")
    return info


def update_package_info(directory: Path, **fields) -> None:
    from jax_namnmt.training.checkpoint import save_json

    info = read_package_info(directory)
    info.update(fields)
    save_json(Path(directory) / PACKAGE_FILE, info)


def load_package_params(directory: Path, target: dict) -> dict:
    """float32 parameters of a package, checked against ``target`` (a tree of shapes) and its checksum."""
    flat = read_package_params(directory)
    check_params_fit(flat, target, directory)
    return nest(flat)


def read_package_params(directory: Path) -> dict[str, np.ndarray]:
    """Every parameter of a package as float32, by path, after checking the checksum (not yet
    against a model: ``check_params_fit``)."""
    directory = Path(directory)
    info = read_package_info(directory)
    path = directory / PARAMS_FILE
    if not path.exists():
        raise CheckpointError(f"{path} is missing: the package is incomplete")
    if _sha256(path) != info.get("sha256"):
        raise CheckpointError(f"{path} does not match the SHA-256 in {directory / PACKAGE_FILE}: "
                              "the file is corrupted or was changed; export the package again")
    with reading(path, "package parameters"), np.load(path) as data:
        stored = {k: data[k] for k in data.files}
    if info["dtype"] == "bfloat16":
        return {k: v.view(ml_dtypes.bfloat16).astype(np.float32) for k, v in stored.items()}
    return {k: v.astype(np.float32) for k, v in stored.items()}


def check_params_fit(flat: dict[str, np.ndarray], target: dict, directory: Path) -> None:
    """A CheckpointError naming the file unless ``flat`` (by path) has exactly the paths and shapes of
    ``target`` (a tree of shapes)."""
    path = Path(directory) / PARAMS_FILE
    want = {k: tuple(v.shape) for k, v in flatten(target).items()}
    missing = sorted(set(want) - set(flat))
    extra = sorted(set(flat) - set(want))
    if missing or extra:
        raise CheckpointError(
            f"{path} does not fit the model of {Path(directory) / 'config.json'}: "
            + (f"missing {missing[:3]}" if missing else "") + (" " if missing and extra else "")
            + (f"unexpected {extra[:3]}" if extra else "")
            + "; the package was made by another version of the model code: export it again")
    for key, shape in want.items():
        if tuple(flat[key].shape) != shape:
            raise CheckpointError(f"{path}: '{key}' has shape {tuple(flat[key].shape)} but the model expects {shape}")


def package_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).iterdir() if p.is_file())
