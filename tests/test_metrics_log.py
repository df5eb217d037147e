"""Tests for jax_namnmt.training.metrics_log."""

import errno
import json
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from conftest import file_size_limit
from jax_namnmt.errors import WriteError
from jax_namnmt.training.metrics_log import MetricsLogger


def read_events(path):
    """Parses a TFRecord event file: [len u64][crc u32][data][crc u32] per record."""
    events = []
    with open(path, "rb") as f:
        while header := f.read(12):
            (length,) = struct.unpack("<Q", header[:8])
            assert struct.unpack("<I", header[8:])[0] == masked_crc32c(header[:8])
            data = f.read(length)
            assert struct.unpack("<I", f.read(4))[0] == masked_crc32c(data)
            events.append(event_pb2.Event.FromString(data))
    return events


def scalars(run_dir, name):
    """{tag: [(step, value), ...]} from all event files under tb/<name>/."""
    out = {}
    files = sorted((run_dir / "tb" / name).glob("events.out.tfevents.*"))
    assert files, "no TensorBoard event file written"
    for path in files:
        for event in read_events(path):
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_jsonl_and_tensorboard(tmp_path):
    with MetricsLogger(tmp_path, "main") as logger:
        logger.log(10, {"loss": jnp.asarray(2.5), "lr": 1e-3, "tokens": 640}, phase="train")
        logger.log(20, {"loss": np.float32(1.25)}, phase="train")
        logger.log(20, {"bleu": 31.5}, phase="valid")

    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    first = lines[0]
    assert (first["phase"], first["step"], first["loss"], first["lr"], first["tokens"]) == (
        "train", 10, 2.5, 1e-3, 640)
    assert isinstance(first["time"], float) and first["time"] > 1.6e9
    assert lines[1]["loss"] == 1.25
    assert lines[2] == {"phase": "valid", "step": 20, "time": lines[2]["time"], "bleu": 31.5}

    tb = scalars(tmp_path, "main")
    assert tb["train/loss"] == [(10, 2.5), (20, 1.25)]
    assert tb["valid/bleu"] == [(20, 31.5)]
    assert tb["train/tokens"] == [(10, 640.0)]


def test_flush_makes_data_visible_while_open(tmp_path):
    logger = MetricsLogger(tmp_path, "live")
    logger.log(1, {"loss": 4.0}, phase="train")
    logger.flush()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 4.0
    assert scalars(tmp_path, "live")["train/loss"] == [(1, 4.0)]
    logger.close()
    logger.close()  # idempotent


def test_resumed_run_appends(tmp_path):
    with MetricsLogger(tmp_path, "main") as logger:
        logger.log(1, {"loss": 3.0}, phase="train")
    with MetricsLogger(tmp_path, "main") as logger:
        logger.log(2, {"loss": 2.0}, phase="train")
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert steps == [1, 2]
    assert scalars(tmp_path, "main")["train/loss"] == [(1, 3.0), (2, 2.0)]


def test_reserved_metric_name(tmp_path):
    with MetricsLogger(tmp_path, "main") as logger, pytest.raises(ValueError, match="step"):
        logger.log(1, {"step": 1.0}, phase="train")


def test_failed_jsonl_write_names_the_file_and_keeps_the_lines_before(tmp_path):
    path = tmp_path / "metrics.jsonl"
    logger = MetricsLogger(tmp_path, "main")
    logger.log(1, {"loss": 3.0}, phase="train")
    logger.flush()
    before = path.read_bytes()
    with file_size_limit(len(before) + 20), pytest.raises(
            WriteError, match=f"^cannot write metrics file {path}: File too large \\(EFBIG\\); free some space"):
        logger.log(2, {"loss": 2.0, "lr": 1e-3}, phase="train")  # a line longer than the 20 bytes left
    assert path.read_bytes() == before  # the partial line is cut off again
    logger.close()  # closed already by the failure: nothing fails a second time
    assert scalars(tmp_path, "main")["train/loss"] == [(1, 3.0)]
    with MetricsLogger(tmp_path, "main") as again:  # a resumed run appends whole lines after it
        again.log(2, {"loss": 2.0}, phase="train")
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


def test_failed_jsonl_write_on_a_full_disk(tmp_path, monkeypatch):
    """A write that fails with ENOSPC (not a size limit) before anything of the line is written."""
    path = tmp_path / "metrics.jsonl"
    with MetricsLogger(tmp_path, "main") as logger:
        logger.log(1, {"loss": 3.0}, phase="train")
        before = path.read_bytes()

        class FullDisk:
            def __init__(self, file):
                self.file = file

            def __getattr__(self, name):
                return getattr(self.file, name)

            def write(self, data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(logger, "_jsonl", FullDisk(logger._jsonl))
        with pytest.raises(WriteError, match=f"^cannot write metrics file {path}: No space left on device"):
            logger.log(2, {"loss": 2.0}, phase="train")
    assert path.read_bytes() == before


def test_failed_tensorboard_write_names_the_event_file_and_keeps_its_events(tmp_path):
    logger = MetricsLogger(tmp_path, "main")
    logger.log(1, {"loss": 3.0}, phase="train")
    logger.flush()
    event_file = logger.tb_path
    assert event_file.parent == tmp_path / "tb" / "main"
    before = event_file.read_bytes()
    many = {f"m{i}": float(i) for i in range(20)}  # 20 events (~1 kB), a JSON line of ~300 bytes
    limit = max(event_file.stat().st_size, (tmp_path / "metrics.jsonl").stat().st_size) + 500
    with file_size_limit(limit), pytest.raises(
            WriteError, match=f"^cannot write TensorBoard event file {event_file}: File too large"):
        logger.log(2, many, phase="train")  # the JSON line fits
        logger.flush()  # the buffered events do not
    assert event_file.read_bytes() == before  # cut back to what the last flush wrote: every record whole
    assert scalars(tmp_path, "main") == {"train/loss": [(1, 3.0)]}
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    logger.close()
