"""User-facing errors: a clear message, exit status 2, no traceback unless --debug."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from pathlib import Path
from typing import IO, Iterator


class UserError(Exception):
    """A problem with the user's input (corpus, argument, config, checkpoint).

    The message must name the file, line or field at fault and say what to do.
    Command-line doors catch it, print ``error: <message>`` and exit with status 2.
    """


class DataError(UserError):
    """A corpus file is missing, unreadable or malformed."""


class ConfigError(UserError):
    """A config field is unknown, has the wrong type or an invalid value."""


class CheckpointError(UserError):
    """A checkpoint is missing, incomplete, corrupted or does not fit the model."""


class TrainingDiverged(UserError):
    """Too many consecutive updates had a non-finite loss or gradient; the last good checkpoint is kept."""


class DirectoryLocked(UserError):
    """Another live process is writing the directory (``run_lock``); the message names it."""


class WriteError(UserError):
    """A file could not be written (disk full, read-only, permissions); the message names the
    path and what failed. The previous complete file or checkpoint is left as it was."""


WRITE_HINT = "free some space (or fix the permissions) and run the same command again"
_OS_CODE = re.compile(r"os_error_code='?(\d+)")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NO_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)


def _os_code(err: BaseException) -> int | None:
    if isinstance(err, OSError) and err.errno:
        return err.errno
    match = _OS_CODE.search(str(err))
    return int(match.group(1)) if match else None


def write_hint(err: BaseException) -> str:
    """What to do about a failed write, from its cause (a full disk, permissions, anything else)."""
    code = _os_code(err)
    if code in _NO_SPACE:
        return "free some space and run the same command again"
    if code in _NO_PERMISSION:
        return "make the directory writable (or write elsewhere) and run the same command again"
    if code is None:
        return WRITE_HINT
    return "check the path and run the same command again"


def reason(err: BaseException) -> str:
    """What went wrong, in a short phrase, from an OS or library error: the OS error's text (also
    when tensorstore carries it as ``os_error_code=N`` in its message), else the exception's type
    and the first line of its message."""
    code = _os_code(err)
    if isinstance(err, OSError) and err.strerror:
        text = err.strerror
    else:
        text = os.strerror(code) if code else None
    if text:
        name = errno.errorcode.get(code) if code else None
        return f"{text} ({name})" if name else text
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if len(first) > 300:
        first = first[:297] + "..."
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


@contextlib.contextmanager
def writing(path: str | os.PathLike, what: str) -> Iterator[None]:
    """An OS error while writing ``what`` at ``path`` becomes a :class:`WriteError` naming both."""
    try:
        yield
    except OSError as e:
        raise WriteError(f"cannot write {what} {path}: {reason(e)}; {write_hint(e)}") from e


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str | None = "wb", name: str | None = None, *,
                 encoding: str | None = None, newline: str | None = None) -> Iterator[IO | Path]:
    """Write ``path`` whole or not at all: the block writes a temporary file beside it, which is
    flushed to disk and renamed over ``path`` when the block ends, so a reader (or a crash) sees
    the previous file or the new one, never part of one.

    Yields the temporary file opened with ``mode`` (``encoding``, ``newline`` as for ``open``), or
    with ``mode=None`` its path, for libraries that write by name (``numpy.savez``, matplotlib's
    ``savefig``; the name ends with ``path``'s suffix, which they read). Missing parent
    directories are created. An OS error (disk full, read-only; in the block or the rename)
    raises :class:`WriteError` "cannot write NAME: cause; hint" (``name``: e.g. ``"mask file
    PATH"``, default the path). Whatever fails, the temporary file is removed and a previous file
    at ``path`` is left as it was; other exceptions pass through unchanged. A temporary file
    that a killed writer on this host left beside ``path`` is removed by the next write of it."""
    path = Path(path)
    host = _host_tag()
    tmp = path.with_name(f".{path.name}.{host}-{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_temporaries(path, host)
            if mode is None:
                yield tmp
                with open(tmp, "rb") as f:  # what the library wrote, on disk before the rename
                    os.fsync(f.fileno())
            else:
                with open(tmp, mode, encoding=encoding, newline=newline) as f:
                    yield f
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            raise WriteError(f"cannot write {name or path}: {reason(e)}; {write_hint(e)}") from e
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _host_tag() -> str:
    """This host's name as it goes into a temporary file's name (no dots or dashes)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", os.uname().nodename) or "host"


def _remove_stale_temporaries(path: Path, host: str) -> None:
    """Remove ``atomic_write`` temporaries of ``path`` left by writers of this host that are no
    longer running (killed mid-write); another host's, or a live writer's, are left alone."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{re.escape(host)}-(\d+)-[0-9a-f]+\.tmp{re.escape(path.suffix)}$")
    for candidate in path.parent.glob(f".{path.name}.*.tmp{path.suffix}"):
        match = pattern.match(candidate.name)
        if match is None or int(match.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                candidate.unlink()
        except OSError:  # alive, another user's
            pass


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str, error: type[UserError] = CheckpointError) -> Iterator[None]:
    """A library error (OS, numpy/zip, JSON, SentencePiece) while reading ``what`` at ``path``
    becomes one ``error`` (a UserError) naming both."""
    import zipfile

    try:
        yield
    except UserError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, RuntimeError) as e:
        raise error(f"cannot read {what} {path}: {reason(e)}") from e
