"""What the per-pair benchmarks (``masked_overhead.py``, ``importance_throughput.py``) share: the
``--pairs`` list (8, 32 and 128 pairs by default: the paper's 8 and 12, and NTREX-128's one-to-many
127), the ``--cpu`` shapes, and the interleaved timing of two step functions whose ratio is the
result. Only the standard library at module level."""

from __future__ import annotations

import statistics
import time

DEFAULT_PAIRS = "8,32,128"

# --cpu: the model and batch of the CPU benchmark (cpu_throughput.py): 3+3 layers, d 256, FFN 1024,
# 4 heads, vocabulary 8000, float32, 4,096-token batches of 64-token rows.
CPU_SHAPES = {"layers": 3, "d_model": 256, "heads": 4, "ffn": 1024, "vocab": 8000, "dtype": "float32",
              "tokens_per_batch": 4096, "row_len": 64}


def add_pair_args(p) -> None:
    p.add_argument("--pairs", default=DEFAULT_PAIRS,
                   help="numbers of language pairs to measure, comma-separated (each mixed in every batch)")
    p.add_argument("--cpu", action="store_true",
                   help="the CPU benchmark's shapes (cpu_throughput.py): 3+3 layers, d 256, FFN 1024, vocab 8000, "
                        "float32, 4,096-token batches")


def finish_pair_args(p, args) -> None:
    """``--pairs`` as a list of ints (each >= 1); ``--cpu`` sets the CPU shapes (before ``--quick``,
    which wins)."""
    try:
        args.pairs = [int(x) for x in str(args.pairs).split(",") if x.strip()]
    except ValueError:
        p.error(f"--pairs {args.pairs!r}: expected numbers separated by commas, e.g. 8,32,128")
    if not args.pairs or min(args.pairs) < 1:
        p.error(f"--pairs {args.pairs!r}: every number of pairs must be at least 1")
    if args.cpu and not args.quick:
        for name, value in CPU_SHAPES.items():
            setattr(args, name, value)


def interleaved_rounds(sides: dict, repeats: int) -> dict:
    """Time each side's ``run()`` (which must block until its work is done) ``repeats`` times,
    alternating the sides round by round. Returns per side the list of wall seconds and of this
    process's CPU seconds (all threads) of each round: on a machine that others share, a drift of
    its speed cancels within a round's pair, and CPU seconds are less disturbed than wall time."""
    out = {name: {"wall": [], "cpu": []} for name in sides}
    for _ in range(repeats):
        for name, run in sides.items():
            c0, t0 = time.process_time(), time.perf_counter()
            run()
            out[name]["wall"].append(time.perf_counter() - t0)
            out[name]["cpu"].append(time.process_time() - c0)
    return out


def ratios(rounds: dict, num: str, den: str) -> dict:
    """``num`` / ``den``: of the fastest rounds, and the median of the round-by-round ratios, for
    wall time and CPU time."""
    out = {}
    for clock in ("wall", "cpu"):
        a, b = rounds[num][clock], rounds[den][clock]
        out[clock] = {"best": min(a) / min(b), "median_of_pairs": statistics.median(x / y for x, y in zip(a, b))}
    return out
