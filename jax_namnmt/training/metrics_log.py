"""Training metrics: one JSON line per record plus TensorBoard scalars.

``<run_dir>/metrics.jsonl`` gets lines like
``{"phase": "train", "step": 100, "time": 1712345678.9, "loss": 3.2, "lr": 0.001}``
and is appended to, so a resumed run continues the same file.
TensorBoard event files go to ``<run_dir>/tb/<name>/`` with tags ``"<phase>/<key>"``.

The events are written with tensorboardX's synchronous ``EventsWriter`` rather
than ``SummaryWriter``: in tensorboardX 2.6 ``SummaryWriter.flush()`` does not
drain its background queue (events logged just before a flush may still be
missing from disk), and two writers opened in the same second on one host get
the same file name, the second truncating the first. Each logger therefore
writes its own file, named with the process id and a nanosecond timestamp.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tensorboardX import summary as tb_summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2

from jax_namnmt.errors import writing

__all__ = ["MetricsLogger"]

_RESERVED = ("phase", "step", "time")


def _to_number(value: Any) -> int | float:
    """A Python number from an int, float, numpy or jax scalar (0-d array)."""
    if isinstance(value, int):  # includes bool
        return int(value)
    return float(value)


class MetricsLogger:
    """Appends metric records to ``metrics.jsonl`` and TensorBoard.

    Each JSON line is written through as it is logged, so the file survives a crash;
    TensorBoard events are buffered and written to disk by :meth:`flush` and
    :meth:`close`. A write that fails (disk full, quota, read-only) raises
    :class:`WriteError` naming the file; the file keeps what was written before (a
    partial JSON line, or the events after the last flush, are cut off again) and both
    outputs are closed, so :meth:`close` does not fail a second time.
    """

    def __init__(self, run_dir: str | os.PathLike, name: str, enabled: bool = True):
        """``enabled=False`` (every process but the first of a multi-host run): writes nothing."""
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self.tb_dir = self.run_dir / "tb" / name
        self.tb_path: Path | None = None  # the event file, once created
        self._closed = not enabled
        if not enabled:
            return
        with writing(self.jsonl_path, "metrics file"):
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.jsonl_path, "ab", buffering=0)  # unbuffered: a record is on disk when logged
        suffix = f".{os.getpid()}.{time.time_ns()}"
        try:
            with writing(self.tb_dir, "TensorBoard events in"):
                self.tb_dir.mkdir(parents=True, exist_ok=True)
                self._tb = EventsWriter(str(self.tb_dir / "events"), filename_suffix=suffix)
                self.tb_path = next(self.tb_dir.glob(f"events.out.tfevents.*{suffix}"))
            self._tb_kept = 0  # bytes of the event file on disk after the last flush
            self._flush_tb()
        except BaseException:
            self._jsonl.close()
            raise

    def log(self, step: int, metrics: Mapping[str, Any], phase: str) -> None:
        """Records ``metrics`` (name -> number or scalar array) for ``step``."""
        clash = [k for k in metrics if k in _RESERVED]
        if clash:
            raise ValueError(f"metric names {clash} clash with the record fields {_RESERVED}")
        if not self.enabled:
            return
        now = time.time()
        values = {key: _to_number(value) for key, value in metrics.items()}
        record = {"phase": phase, "step": int(step), "time": now, **values}
        self._append_jsonl((json.dumps(record) + "\n").encode("utf-8"))
        with self._failing(self.tb_path, "TensorBoard event file"):
            for key, value in values.items():
                summary = tb_summary.scalar(f"{phase}/{key}", float(value))
                self._tb.write_event(event_pb2.Event(wall_time=now, step=int(step), summary=summary))

    def flush(self) -> None:
        """Pushes buffered TensorBoard events to disk (the JSON lines are written as logged)."""
        if self._closed:
            return
        self._flush_tb()

    def close(self) -> None:
        """Flushes and closes both outputs; further :meth:`log` calls fail."""
        if self._closed:
            return
        try:
            with self._failing(self.tb_path, "TensorBoard event file"):
                self._tb.close()
        finally:
            self._closed = True
            self._jsonl.close()

    def _append_jsonl(self, data: bytes) -> None:
        start = self._jsonl.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[self._jsonl.write(view):]
        except OSError:
            with contextlib.suppress(OSError):
                self._jsonl.truncate(start)  # no partial line: the records before it stay readable
            with self._failing(self.jsonl_path, "metrics file"):
                raise

    def _flush_tb(self) -> None:
        with self._failing(self.tb_path, "TensorBoard event file"):
            self._tb.flush()
            self._tb_kept = self.tb_path.stat().st_size

    @contextlib.contextmanager
    def _failing(self, path: Path, what: str) -> Iterator[None]:
        """An OS error in the block closes both outputs and raises WriteError naming ``path``;
        an event file that failed is cut back to what its last flush wrote (no partial record)."""
        try:
            yield
        except OSError:
            self._closed = True
            with contextlib.suppress(OSError):
                self._jsonl.close()
            cut = path == self.tb_path
            try:
                self._tb.close()  # the file is closed even when its buffered events fail again
            except (OSError, ValueError):  # ValueError: it was (the failure was its close)
                cut = True
            if cut:
                with contextlib.suppress(OSError):
                    os.truncate(self.tb_path, self._tb_kept)
            with writing(path, what):
                raise

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_records(run_dir: str | os.PathLike, phase: str, up_to: int | None = None) -> list[dict]:
    """The records of ``phase`` in ``run_dir``'s metrics.jsonl (``"*_valid"``: of every phase ending
    in ``_valid``), one per step (the last logged if a step repeats, as after a resume), by step;
    ``up_to``: only steps up to it (a run resumed from that step logs the later ones again)."""
    path = Path(run_dir) / "metrics.jsonl"
    records = {}
    wanted = (lambda name: name.endswith(phase[1:])) if phase.startswith("*") else phase.__eq__
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if wanted(record["phase"]) and (up_to is None or record["step"] <= up_to):
                records[record["step"]] = record
    return [records[step] for step in sorted(records)]
