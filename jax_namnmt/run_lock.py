"""One writer per directory: the lock every writing command holds on the directory it writes.

``hold(directory)`` takes ``DIRECTORY/.jax_namnmt.lock`` for as long as the block runs: an
exclusive ``fcntl.flock`` on that file, which also holds a JSON record of the holder (process
id, host, boot id, process start time, command, since when). A second writer finds the file
locked and stops at once with a :class:`DirectoryLocked` error naming the holder, before it has
written anything. On release the record is removed with the file.

A lock whose process is gone is taken over with a warning naming it:

- same host (same host name and boot id): the kernel drops a ``flock`` when its process dies
  (``kill -9`` included), so a file that can be locked but still holds a record was left by a
  process that is gone; the record's process id is checked too (it must be dead, or belong to
  another process started since: the start time differs), so a file system where ``flock``
  does nothing still keeps two writers apart on one host;
- another host (a shared file system): NFSv4 and most cluster file systems keep ``flock``
  across hosts and release it when the holder's host stops renewing its lease. As a second
  guard the holder touches the lock file every ``HEARTBEAT_S`` seconds; a record from another
  host is taken over only when the file also has not been touched for ``STALE_AFTER_S``
  seconds (a crashed host), so clocks may differ by minutes.

Locks are per process and re-entrant: ``hold`` on a directory this process already holds is a
no-op (the pipeline holds its work directory and calls ``prepare`` on it). In a multi-process
(``jax.distributed``) run only process 0 takes locks: the others write through it.

Readers (``translate``, ``evaluate``) take no lock; what they read is published atomically
(orbax renames a finished checkpoint step into place, JSON/npz files are renamed from a
temporary file, a package directory is renamed when complete).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from jax_namnmt.errors import DirectoryLocked, WriteError

log = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "HEARTBEAT_S", "STALE_AFTER_S", "hold", "holder", "lock_path", "describe"]

LOCK_NAME = ".jax_namnmt.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)

_held: dict[Path, "_Lock"] = {}
_held_guard = threading.Lock()


def lock_path(directory: str | os.PathLike) -> Path:
    return Path(directory) / LOCK_NAME


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since boot, Linux ``/proc``), or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _command() -> str:
    """The command line of this process as typed: ``python -m jax_namnmt.NAME ARGS``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None and spec.name else [Path(sys.argv[0]).name or "python"]
    text = shlex.join(head + sys.argv[1:])
    return text if len(text) <= 300 else text[:297] + "..."


def _record(command: str | None) -> dict:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "boot_id": _boot_id(), "started": _start_time(pid),
            "command": command or _command(), "since": time.time()}


def describe(record: dict | None, age: float | None = None) -> str:
    """``process 123 on host h (`python -m ...`), since 2025-01-01 12:00:00`` for an error line."""
    if not record:
        return "another process (its record is not written yet)"
    since = record.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    text = (f"process {record.get('pid', '?')} on host {record.get('host', '?')} "
            f"(`{record.get('command', '?')}`), since {when}")
    if age is not None and record.get("host") != socket.gethostname():
        text += f", last heartbeat {age:.0f} s ago"
    return text


def _read(fd: int) -> dict | None:
    """The record in an open lock file: None when empty or unreadable (being written, or garbage)."""
    try:
        data = os.pread(fd, 1 << 16, 0)
        record = json.loads(data.decode("utf-8")) if data.strip() else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _age(fd: int) -> float:
    """Seconds since the lock file was last touched (its holder's heartbeat)."""
    return max(0.0, time.time() - os.fstat(fd).st_mtime)


def holder(directory: str | os.PathLike) -> dict | None:
    """The record of the process holding ``directory``'s lock, or None when it is free (a
    record left by a process that is gone counts as free)."""
    path = lock_path(directory)
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd) or {}
        except OSError:
            pass
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
        record = _read(fd)
        return record if record and _alive(record, _age(fd)) else None
    finally:
        os.close(fd)


def _alive(record: dict, age: float) -> bool:
    """Whether the process of a record found in a lockable file may still run (see the module
    docstring): on this host (same boot), its pid lives with the same start time; on another
    host, the file was touched within ``STALE_AFTER_S``."""
    same_host = record.get("host") == socket.gethostname()
    if same_host and record.get("boot_id") == _boot_id():
        pid = record.get("pid")
        if not isinstance(pid, int) or pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # lives, another user's
        started, now = record.get("started"), _start_time(pid)
        return started is None or now is None or abs(started - now) < 1.0
    if same_host:  # rebooted since: every process of the record is gone
        return False
    return age < STALE_AFTER_S


class _Lock:
    def __init__(self, directory: Path, command: str | None):
        self.directory = directory
        self.path = lock_path(directory)
        self.command = command
        self.fd: int | None = None
        self.depth = 0
        self.created = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> None:
        try:
            self.created = not self.directory.exists()
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(f"cannot create directory {self.directory}: {e.strerror or e}") from None
        for _ in range(50):  # only repeats when the file was replaced under us (a release in between)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise WriteError(f"cannot create the lock file {self.path}: {e.strerror or e}; the directory "
                                 "must be writable") from None
            try:
                if self._lock(fd):
                    self.fd = fd
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        else:
            raise DirectoryLocked(f"{self.directory}: cannot take {self.path}: it keeps being replaced")
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock heartbeat {self.path}", daemon=True)
        self._beat.start()

    def _lock(self, fd: int) -> bool:
        """Lock ``fd`` and write this process's record; False when the file was replaced meanwhile."""
        flocked = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            record = _read(fd)
            for _ in range(20):  # the holder writes its record just after locking
                if record:
                    break
                time.sleep(0.05)
                record = _read(fd)
            raise DirectoryLocked(self._refusal(record, _age(fd))) from None
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                raise
            flocked = False  # a file system without flock: the record alone keeps writers apart
        try:
            same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same_file = False
        if not same_file:
            return False
        previous = _read(fd)
        if previous:
            age = _age(fd)
            if _alive(previous, age):
                if flocked:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                raise DirectoryLocked(self._refusal(previous, age))
            log.warning("%s: taking over the lock of %s: that process is gone (%s)", self.directory,
                        describe(previous), "its host has not renewed the lock for "
                        f"{age:.0f} s" if previous.get("host") != socket.gethostname()
                        else "it no longer runs")
        data = json.dumps(_record(self.command)).encode("utf-8")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except OSError as e:
            raise WriteError(f"cannot write the lock file {self.path}: {e.strerror or e}") from None
        return True

    def _refusal(self, record: dict | None, age: float) -> str:
        return (f"{self.directory} is being written by {describe(record, age)}; wait until it ends or stop it "
                f"(lock file {self.path}; a lock whose process is gone is taken over automatically)")

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.fd)
            except (OSError, TypeError):
                pass

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked: a waiter holding the old file sees it replaced
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        if self.created:  # made for the lock and nothing written (e.g. a refused argument): leave no trace
            try:
                self.directory.rmdir()
            except OSError:
                pass


def _skip() -> bool:
    """Every process of a ``jax.distributed`` run but process 0 (which holds the locks)."""
    if "jax" not in sys.modules:
        return False
    from jax_namnmt import parallel

    if parallel._DISTRIBUTED is None:
        return False
    import jax

    return jax.process_index() != 0


@contextlib.contextmanager
def hold(directory: str | os.PathLike, command: str | None = None) -> Iterator[Path]:
    """Hold ``directory``'s lock (created with the directory if missing) for the block.

    Raises :class:`DirectoryLocked` (a UserError: ``error:`` line, exit 2) naming the holder
    when another live process holds it. ``command`` (default: this process's command line) is
    what a refused writer is told."""
    directory = Path(directory)
    if _skip():
        yield directory
        return
    key = directory.resolve()
    with _held_guard:
        lock = _held.get(key)
    if lock is None:
        lock = _Lock(directory, command)
        lock.acquire()
        with _held_guard:
            _held[key] = lock
    lock.depth += 1
    try:
        yield directory
    finally:
        lock.depth -= 1
        if lock.depth == 0:
            with _held_guard:
                _held.pop(key, None)
            lock.release()


def held_here(directory: str | os.PathLike) -> bool:
    """Whether this process holds ``directory``'s lock."""
    with _held_guard:
        return Path(directory).resolve() in _held
