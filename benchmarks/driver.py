"""The GPU benchmarks' command line and driver: the shape, timing and driver flags they share, and
the driver that runs each measured side in its own process (so one side that crashes, hangs or runs
out of memory is recorded as an error and the others still run, and JAX and PyTorch never share a
CUDA context). Only the standard library is imported: the driver process stays light."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .report import error_result, resolve_out, write_json

ROOT = Path(__file__).resolve().parents[1]  # the checkout: the directory that holds the benchmarks package


def add_common_args(p, *, steps: int, warmup: int) -> None:
    """Shape, timing and driver flags every GPU benchmark takes."""
    p.add_argument("--quick", action="store_true", help="tiny shapes, 2 timed steps, CPU-sized (< 20 s)")
    p.add_argument("--no-torch", action="store_true", help="JAX side only")
    p.add_argument("--out", default=None,
                   help="JSON report (default benchmarks/results/<name>.json; with --quick a new temporary directory)")
    p.add_argument("--steps", type=int, default=steps, help="timed steps")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed warm-up steps (the first compiles)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=6, help="encoder and decoder layers each")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ffn", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=40000)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="our compute dtype")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout of both models (0: an ablation of its cost)")
    p.add_argument("--attention-kernel", default="xla", choices=("xla", "cudnn"),
                   help="our model.attention_kernel (cudnn: cuDNN fused attention on GPUs)")
    p.add_argument("--logits-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="our model.logits_dtype (the output layer's logits as its matmul writes them)")
    p.add_argument("--min-len", type=int, default=12, help="shortest sentence a side (tag and EOS included)")
    p.add_argument("--max-len", type=int, default=25, help="longest sentence a side (20-60 for WMT-like)")
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds for the whole script; each side process gets what is left (0: no limit)")
    p.add_argument("--side", default=None, help=argparse.SUPPRESS)
    p.add_argument("--side-out", default=None, help=argparse.SUPPRESS)


def add_packed_args(p) -> None:
    """The packed-batch shape flags of the training-step benchmarks."""
    p.add_argument("--tokens-per-batch", type=int, default=25600, help="target token slots a batch")
    p.add_argument("--row-len", type=int, default=64, help="packed row length (src and tgt)")


def finish_packed_args(p, args, name: str):
    """``--quick`` sizes (2 steps, 1 warm-up and 1 round where there are ``--repeats``, 256-token
    batches of 32-token rows, sentences of 4-10), the length check and the default ``--out``
    (``report.resolve_out``)."""
    if args.quick:
        args.steps, args.warmup = 2, 1
        if hasattr(args, "repeats"):
            args.repeats = 1
        args.tokens_per_batch, args.row_len = 256, 32
        args.min_len, args.max_len = 4, 10
    if args.max_len > args.row_len:
        p.error(f"--max-len {args.max_len} > --row-len {args.row_len}")
    resolve_out(args, name)
    return args


def side_env() -> dict:
    """The environment of a side process: this one's, with the checkout first on ``PYTHONPATH``."""
    path = [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path))


class Driver:
    """Runs the sides of one benchmark, each as ``python -m MODULE ARGV --side NAME --side-out F`` in
    its own process (under the time left of ``--time-budget``; the checkout first on its
    ``PYTHONPATH``, so it imports the same package from any working directory), and collects their
    JSON; a side that raises, dies or times out becomes ``{"error": ...}``. With ``--side`` given,
    this process IS a side: ``run_side`` calls the function and writes its result. ``module``: the
    benchmark's module name (its ``__spec__.name``, e.g. ``benchmarks.train_throughput``)."""

    def __init__(self, module: str, args, argv):
        self.module, self.args = module, args
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.start = time.perf_counter()

    def remaining(self) -> float | None:
        if not self.args.time_budget:
            return None
        return self.args.time_budget - (time.perf_counter() - self.start)

    def run(self, side: str) -> dict:
        left = self.remaining()
        if left is not None and left < 5:
            return {"error": f"skipped: time budget ({self.args.time_budget:.0f} s) spent"}
        with tempfile.TemporaryDirectory() as tmp:
            out, log = Path(tmp) / "side.json", Path(tmp) / "stderr.txt"
            cmd = [sys.executable, "-m", self.module, *self.argv, "--side", side, "--side-out", str(out)]
            t0 = time.perf_counter()
            print(f"[{side}] starting" + (f" ({left:.0f} s left)" if left is not None else ""), flush=True)
            try:
                with open(log, "w") as err:
                    proc = subprocess.run(cmd, stderr=err, timeout=None if left is None else left - 2,
                                          env=side_env())
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            wall = time.perf_counter() - t0
            stderr = log.read_text(errors="replace") if log.exists() else ""
            sys.stderr.write(stderr)
            sys.stderr.flush()
            if out.exists():
                result = json.loads(out.read_text())
            elif rc == "timeout":
                result = {"error": f"Timeout: side killed after {wall:.0f} s (time budget)"}
            else:
                tail = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or [""]
                result = {"error": f"ProcessDied: exit code {rc}: {tail[0][:500]}"}
            result["process_wall_seconds"] = wall
            print(f"[{side}] done in {wall:.1f} s" + (f": {result['error']}" if "error" in result else ""),
                  flush=True)
            return result


def run_side(args, sides: dict) -> bool:
    """In a side process (``--side NAME``): run ``sides[NAME]()``, write its result (or the error) to
    ``--side-out``; returns True. In the driver: returns False."""
    if not args.side:
        return False
    try:
        result = sides[args.side]()
    except BaseException as exc:  # noqa: BLE001 - the error is the result
        result = error_result(exc)
    write_json(result, args.side_out)
    return True

