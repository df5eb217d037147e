"""numpy/zip, JSON, SentencePiece, OS and Orbax errors met while reading or writing a file the user
named become one ``error:`` line naming the file (exit 2); ``--debug`` adds the traceback."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
import sys

import numpy as np
import pytest

from jax_namnmt import allocate, cli, packaged, translate, workflow
from jax_namnmt.errors import CheckpointError, UserError


def _door(monkeypatch, capsys, module, argv: list[str]) -> tuple[int, list[str]]:
    """Run a door's ``main`` under ``cli.run`` as ``python -m MODULE ARGV``: (exit status, stderr lines)."""
    monkeypatch.setattr(sys, "argv", [module.__file__, *argv])
    monkeypatch.setenv("JAX_NAMNMT_XLA_CACHE", "off")
    with pytest.raises(SystemExit) as exit_:
        cli.run(module.main)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return exit_.value.code, lines


def _package(tmp_path, damage: str):
    """A copy of the shipped package with ``damage`` done (the checksum updated where it would
    otherwise catch it first)."""
    out = tmp_path / damage
    shutil.copytree(packaged.shipped_model_dir(), out)
    params = out / packaged.PARAMS_FILE
    if damage == "truncated_npz":
        params.write_bytes(params.read_bytes()[: params.stat().st_size // 2])
    elif damage == "object_npz":
        np.savez(params, x=np.array([object()], dtype=object))
    elif damage == "truncated_spm":
        spm = out / "spm.model"
        spm.write_bytes(spm.read_bytes()[: spm.stat().st_size // 2])
    info = json.loads((out / packaged.PACKAGE_FILE).read_text())
    info["sha256"] = hashlib.sha256(params.read_bytes()).hexdigest()
    (out / packaged.PACKAGE_FILE).write_text(json.dumps(info))
    return out


@pytest.mark.parametrize("damage, needle", [
    ("truncated_npz", "cannot read package parameters {dir}/params.npz: BadZipFile: File is not a zip file"),
    ("object_npz", "cannot read package parameters {dir}/params.npz: ValueError: Object arrays cannot be loaded"),
    ("truncated_spm", "{dir}/spm.model: not a SentencePiece model"),
])
def test_translate_from_a_damaged_package(tmp_path, monkeypatch, capsys, damage, needle):
    package = _package(tmp_path, damage)
    code, lines = _door(monkeypatch, capsys, translate,
                        ["--checkpoint", str(package), "--src", "de", "--tgt", "en", "--input", str(tmp_path / "x")])
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert needle.format(dir=package) in lines[0], lines


@pytest.mark.parametrize("content, needle", [
    (b"not an npz file" * 10, "ValueError: This file contains pickled"),
    ({"theta": np.zeros((2, 3))}, "has no __pairs__ entry"),
    ({"__pairs__": np.asarray("{not json")}, "JSONDecodeError: Expecting property name"),
    ({"__pairs__": np.asarray('{"a": 1}')}, "__pairs__ is not a list of pair names"),
    ({"__pairs__": np.array([object()], dtype=object)}, "ValueError: Object arrays cannot be loaded"),
])
def test_allocate_from_a_bad_importance_file(tmp_path, monkeypatch, capsys, content, needle):
    path = tmp_path / "importance.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.savez(path, **content)
    with pytest.raises(CheckpointError, match=f"importance file {path}"):
        workflow.load_importance(path)
    code, lines = _door(monkeypatch, capsys, allocate, ["--importance", str(path), "--out", str(tmp_path / "m.npz")])
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: cannot read importance file {path}: ") or \
        lines[0].startswith(f"error: importance file {path}"), lines
    assert needle in lines[0], lines
    assert not (tmp_path / "m.npz").exists()


def _failing_main(err: BaseException):
    def main():
        try:
            raise err
        except BaseException:
            # what Orbax does in its worker threads before the caller sees the same exception
            record = logging.makeLogRecord({"name": "absl", "levelno": logging.ERROR, "levelname": "ERROR",
                                            "msg": "_SignalingThread.run() raised an exception",
                                            "exc_info": sys.exc_info(),
                                            "pathname": "/site-packages/orbax/checkpoint/_src/futures/future.py"})
            logging.getLogger("absl").handle(record)
            raise
    return main


@pytest.mark.parametrize("debug", [False, True])
def test_os_errors_and_orbax_tracebacks_become_one_line(monkeypatch, capsys, debug):
    logger = logging.getLogger("absl")
    monkeypatch.setattr(logger, "filters", [])
    monkeypatch.setattr(sys, "argv", ["door"] + (["--debug"] if debug else []))
    monkeypatch.setenv("JAX_NAMNMT_XLA_CACHE", "off")
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.run(_failing_main(OSError(errno.ENOSPC, "No space left on device", "/data/out/x.npz")))
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.strip().splitlines()[-1] == \
        "error: /data/out/x.npz: No space left on device (ENOSPC) (run with --debug for the traceback)"
    if debug:  # both tracebacks: Orbax's log and the door's
        assert err.count("Traceback (most recent call last)") == 2, err
    else:
        assert "Traceback" not in err and "raised an exception" not in err, err
        assert len(err.strip().splitlines()) == 1


def test_a_user_error_from_a_library_wrapper_keeps_its_cause_for_debug():
    from jax_namnmt.errors import reading, reason

    with pytest.raises(UserError) as err:
        with reading("/x/y.npz", "mask file"):
            raise ValueError("OUT_OF_RANGE: Error writing ... [os_error_code='28']")
    assert str(err.value) == "cannot read mask file /x/y.npz: No space left on device (ENOSPC)"
    assert isinstance(err.value.__cause__, ValueError)
    assert reason(KeyError("k")) == "KeyError: 'k'"


def test_closed_event_loop_callbacks_after_a_failed_save_are_dropped():
    """After a failed checkpoint save tensorstore calls back into Orbax's closed event loop; without
    --debug these unraisable errors are dropped, anything else still reaches the previous hook."""
    import types

    seen = []
    hook = cli._drop_closed_loop_callbacks(seen.append)
    closed = types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"))
    other = types.SimpleNamespace(exc_value=RuntimeError("something else"))
    hook(closed)
    hook(other)
    assert seen == [other]


def test_a_failed_copy_names_both_files():
    err = OSError(errno.ENOSPC, "No space left on device", "/w/spm.model", None, "/w/run/spm.model")
    assert cli._os_error_line(err) == ("/w/spm.model -> /w/run/spm.model: No space left on device (ENOSPC) "
                                       "(run with --debug for the traceback)")
