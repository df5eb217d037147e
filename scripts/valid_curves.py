"""Validation NLL against fine-tuning steps for several systems, one line each, as a PNG and JSON:
each system a set of run directories (seeds; or one direction a run, as specialist_finetuning.sh
writes them), averaged per direction, then over directions (jax_namnmt.analysis.curves).
``--minus NAME`` plots each system's NLL minus system NAME's at the same step.

    python scripts/valid_curves.py OUT.png OUT.json "multilingual=runs/x/multilingual-s*" "specialists=runs/y/*-s?" \\
        [--minus multilingual]
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

from jax_namnmt.analysis import plots
from jax_namnmt.analysis.curves import curves_by_pair, mean_curve
from jax_namnmt.errors import DataError
from jax_namnmt.training.checkpoint import save_json


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("png", type=Path)
    p.add_argument("json", type=Path)
    p.add_argument("systems", nargs="+", metavar="NAME=GLOB")
    p.add_argument("--minus", default=None, metavar="NAME", help="plot the difference to this system")
    args = p.parse_args(argv)
    systems = {}
    for arg in args.systems:
        if "=" not in arg:
            raise DataError(f"{arg!r}: a system is NAME=GLOB")
        name, pattern = arg.split("=", 1)
        runs = sorted(Path(x) for x in glob.glob(pattern) if (Path(x) / "metrics.jsonl").exists())
        if not runs:
            raise DataError(f"{name}: no run directories match {pattern}")
        by_pair = curves_by_pair(runs)
        systems[name] = {"runs": [str(r) for r in runs], "pairs": sorted(by_pair), "curve": mean_curve(by_pair)}
    if len({tuple(s["pairs"]) for s in systems.values()}) > 1:
        raise DataError("the systems cover different directions: "
                        + "; ".join(f"{n}: {' '.join(s['pairs'])}" for n, s in systems.items()))
    save_json(args.json, systems)
    lines, ylabel = {n: s["curve"] for n, s in systems.items()}, "validation NLL (mean of directions)"
    if args.minus is not None:
        if args.minus not in systems:
            raise DataError(f"--minus {args.minus}: no such system (systems: {', '.join(systems)})")
        ref = lines[args.minus]
        lines = {n: {s: v - ref[s] for s, v in line.items() if s in ref} for n, line in lines.items()}
        ylabel = f"validation NLL minus {args.minus}'s"
    plots.curves(lines, args.png, ylabel, "validation NLL while fine-tuning")
    for name, s in systems.items():
        print(f"{name:24s} " + " ".join(f"{step}:{v:.4f}" for step, v in s["curve"].items()))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except DataError as e:
        sys.exit(f"error: {e}")
