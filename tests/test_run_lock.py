"""One writer per run directory (``jax_namnmt/run_lock.py``): a second writer is refused naming the
holder and touches nothing; a lock whose process is gone (kill -9, another boot, another host that
stopped its heartbeat) is taken over with a warning; the doors take the lock. Holders and
contenders are real processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jax_namnmt import run_lock
from jax_namnmt.errors import DirectoryLocked, UserError

REPO = Path(__file__).resolve().parents[1]
HANG = 600  # seconds: a guard against a hung subprocess, never a timing check

# holds DIR's lock under the command "holder COMMAND", says "held" on stdout, then waits for stdin
_HOLDER = """
import sys
from jax_namnmt import run_lock
with run_lock.hold(sys.argv[1], command=sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()
"""

# tries to take DIR's lock: prints "got" (then holds it for a while) or "refused: <message>"
_CONTENDER = """
import sys, time
from jax_namnmt import run_lock
from jax_namnmt.errors import DirectoryLocked
sys.stdin.readline()  # the start signal: every contender is ready
try:
    with run_lock.hold(sys.argv[1]):
        print("got", flush=True)
        time.sleep(1.0)
except DirectoryLocked as e:
    print("refused:", e, flush=True)
"""


def _holder(directory: Path, command: str = "holder test") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(directory), command], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file's size, modification time and bytes (the lock file's time is its holder's
    heartbeat: left out)."""
    return {str(p.relative_to(directory)): (p.stat().st_size, 0 if p.name == run_lock.LOCK_NAME
                                            else p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _fake_record(directory: Path, **fields) -> Path:
    """A lock file as a holder that is gone would have left it (no flock held on it)."""
    record = {"pid": 1, "host": socket.gethostname(), "boot_id": run_lock._boot_id(), "started": 0.0,
              "command": "python -m jax_namnmt.train --out X", "since": time.time() - 60, **fields}
    directory.mkdir(parents=True, exist_ok=True)
    path = run_lock.lock_path(directory)
    path.write_text(json.dumps(record))
    return path


def test_a_second_writer_is_refused_naming_the_holder_and_touches_nothing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    proc = _holder(run, "python -m jax_namnmt.finetune --out run")
    try:
        before = _snapshot(run)
        with pytest.raises(DirectoryLocked) as err:
            with run_lock.hold(run):
                pytest.fail("the lock of a live process was taken")
        assert isinstance(err.value, UserError)  # the doors print one error line and exit 2
        message = str(err.value)
        assert f"process {proc.pid} on host {socket.gethostname()}" in message, message
        assert "`python -m jax_namnmt.finetune --out run`" in message, message
        assert f"since {time.strftime('%Y-%m-%d')}" in message, message
        assert str(run_lock.lock_path(run)) in message
        assert _snapshot(run) == before  # nothing written, not even the lock file
        assert run_lock.holder(run)["pid"] == proc.pid
    finally:
        proc.stdin.close()
        proc.wait(timeout=HANG)
    # released on exit: the lock file is gone and the directory is free again
    assert not run_lock.lock_path(run).exists()
    assert run_lock.holder(run) is None
    with run_lock.hold(run):
        assert run_lock.holder(run)["pid"] == os.getpid()


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_warning(tmp_path, caplog):
    run = tmp_path / "run"
    proc = _holder(run, "python -m jax_namnmt.train --out run")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=HANG)
    assert run_lock.lock_path(run).exists()  # kill -9: no release, the record stays
    assert run_lock.holder(run) is None  # but the kernel dropped the flock: free
    with caplog.at_level(logging.WARNING, logger="jax_namnmt.run_lock"):
        with run_lock.hold(run):
            record = json.loads(run_lock.lock_path(run).read_text())
            assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert f"taking over the lock of process {proc.pid}" in warned and "no longer runs" in warned, warned


@pytest.mark.parametrize("case", ["dead pid", "pid reused", "rebooted", "other host, stale"])
def test_records_of_gone_processes_are_taken_over(tmp_path, caplog, case):
    """Records whose flock is free (a file system that keeps no flock, or a copied directory):
    the record alone says whether its process may still run."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    fields = {"dead pid": {"pid": int(done.stdout)},
              "pid reused": {"pid": os.getppid(), "started": 1.0},  # alive, but started at another time
              "rebooted": {"pid": os.getppid(), "boot_id": "another-boot"},
              "other host, stale": {"host": "elsewhere.invalid"}}[case]
    path = _fake_record(tmp_path / "run", **fields)
    if case == "other host, stale":
        old = time.time() - run_lock.STALE_AFTER_S - 60
        os.utime(path, (old, old))
    with caplog.at_level(logging.WARNING, logger="jax_namnmt.run_lock"):
        with run_lock.hold(tmp_path / "run"):
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert "taking over the lock" in caplog.text


@pytest.mark.parametrize("case", ["live pid on this host", "other host, recent heartbeat"])
def test_records_of_live_processes_are_respected_without_flock(tmp_path, case):
    fields = {"live pid on this host": {"pid": os.getppid(), "started": run_lock._start_time(os.getppid())},
              "other host, recent heartbeat": {"host": "elsewhere.invalid", "pid": 4242}}[case]
    path = _fake_record(tmp_path / "run", **fields)
    before = path.read_bytes()
    with pytest.raises(DirectoryLocked, match=f"process {fields['pid']} on host"):
        with run_lock.hold(tmp_path / "run"):
            pass
    assert path.read_bytes() == before
    if case.startswith("other host"):
        with pytest.raises(DirectoryLocked, match="last heartbeat"):
            with run_lock.hold(tmp_path / "run"):
                pass


def test_hold_is_reentrant_and_leaves_no_trace(tmp_path):
    fresh = tmp_path / "new" / "run"
    with run_lock.hold(fresh):
        assert run_lock.held_here(fresh)
        with run_lock.hold(fresh / ".." / "run"):  # the same directory, spelled differently
            assert run_lock.lock_path(fresh).exists()
        assert run_lock.lock_path(fresh).exists()  # the inner release keeps the outer lock
    assert not run_lock.held_here(fresh)
    assert not fresh.exists()  # made for the lock, nothing written in it: removed again


def test_heartbeat_touches_the_lock_file(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
    with run_lock.hold(tmp_path):
        path = run_lock.lock_path(tmp_path)
        old = time.time() - 1000
        os.utime(path, (old, old))
        deadline = time.time() + HANG
        while path.stat().st_mtime < old + 500 and time.time() < deadline:
            time.sleep(0.05)
        assert path.stat().st_mtime > old + 500


def test_of_writers_started_together_exactly_one_gets_the_lock(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", _CONTENDER, str(tmp_path / "run")], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(4)]
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outputs = [proc.communicate(timeout=HANG)[0].strip() for proc in procs]
    assert sorted(o.split(":")[0] for o in outputs) == ["got", "refused", "refused", "refused"], outputs
    winner = procs[[o == "got" for o in outputs].index(True)].pid
    assert all(f"process {winner} on host" in o for o in outputs if o != "got"), outputs


# -- the doors -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_finetune_door_refused_while_another_writes_then_takes_over_after_kill(tmp_path):
    """The issue's scenario at the door: ``finetune --out W/x`` while another process holds W/x
    stops at once (one error line naming it, exit 2, W/x untouched); after that process is killed
    with SIGKILL, a writer takes its lock over with a warning and runs."""
    from jax_namnmt import packaged

    out = tmp_path / "x"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"phase": "continue", "step": 20}\n')
    holder = _holder(out, "python -m jax_namnmt.finetune --from M --out x")
    command = [sys.executable, "-m", "jax_namnmt.finetune", "--from", str(packaged.shipped_model_dir()),
               "--workdir", str(tmp_path / "nodata"), "--out", str(out), "--set", "finetune.steps=1", "--quiet"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NAMNMT_XLA_CACHE": "off"}
    try:
        before = _snapshot(out)
        refused = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG)
        assert refused.returncode == 2, refused.stderr
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), refused.stderr
        assert f"is being written by process {holder.pid} on host {socket.gethostname()}" in lines[0]
        assert "(`python -m jax_namnmt.finetune --from M --out x`), since " in lines[0]
        assert _snapshot(out) == before
    finally:
        holder.kill()
        holder.wait(timeout=HANG)
    # the holder is gone: a writer takes its lock over with a warning and goes on (here `train`,
    # to the missing vocabulary of its --workdir: an error of its own, after the takeover)
    train = [sys.executable, "-m", "jax_namnmt.train", "--config", "tiny", "--workdir", str(tmp_path / "nodata"),
             "--out", str(out), "--quiet"]
    taken = subprocess.run(train, cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG)
    assert f"taking over the lock of process {holder.pid}" in taken.stderr, taken.stderr
    assert taken.returncode == 2 and "nodata" in taken.stderr.splitlines()[-1], taken.stderr
    assert not run_lock.lock_path(out).exists()  # released on the error
