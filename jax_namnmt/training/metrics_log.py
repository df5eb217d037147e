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

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tensorboardX import summary as tb_summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2

__all__ = ["MetricsLogger"]

_RESERVED = ("phase", "step", "time")


def _to_number(value: Any) -> int | float:
    """A Python number from an int, float, numpy or jax scalar (0-d array)."""
    if isinstance(value, int):  # includes bool
        return int(value)
    return float(value)


class MetricsLogger:
    """Appends metric records to ``metrics.jsonl`` and TensorBoard.

    Each JSON line is flushed as it is written, so the file survives a crash;
    TensorBoard events are buffered and written to disk by :meth:`flush` and
    :meth:`close`.
    """

    def __init__(self, run_dir: str | os.PathLike, name: str, enabled: bool = True):
        """``enabled=False`` (every process but the first of a multi-host run): writes nothing."""
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self.tb_dir = self.run_dir / "tb" / name
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tb_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        self._tb = EventsWriter(str(self.tb_dir / "events"),
                                filename_suffix=f".{os.getpid()}.{time.time_ns()}")

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
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in values.items():
            summary = tb_summary.scalar(f"{phase}/{key}", float(value))
            self._tb.write_event(event_pb2.Event(wall_time=now, step=int(step), summary=summary))

    def flush(self) -> None:
        """Pushes buffered JSON lines and TensorBoard events to disk."""
        if not self.enabled:
            return
        self._jsonl.flush()
        self._tb.flush()

    def close(self) -> None:
        """Flushes and closes both outputs; further :meth:`log` calls fail."""
        if self.enabled and not self._jsonl.closed:
            self._tb.close()
            self._jsonl.close()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
