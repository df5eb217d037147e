"""Validation NLL against fine-tuning steps for several systems, one line each, as a PNG and JSON:
each system a set of run directories (seeds; or one direction a run, as specialist_finetuning.sh
writes them), averaged per direction, then over directions (jax_namnmt.analysis.curves).

    python scripts/valid_curves.py OUT.png OUT.json "multilingual=runs/x/multilingual-s*" "specialists=runs/y/*-s?"
"""

from __future__ import annotations

import glob
import sys
from pathlib import Path

from jax_namnmt.analysis import plots
from jax_namnmt.analysis.curves import mean_curve, run_pairs
from jax_namnmt.errors import DataError
from jax_namnmt.training.checkpoint import save_json


def main(argv: list[str]) -> None:
    if len(argv) < 3 or any("=" not in a for a in argv[2:]):
        sys.exit(__doc__)
    png, out, systems = Path(argv[0]), Path(argv[1]), {}
    for arg in argv[2:]:
        name, pattern = arg.split("=", 1)
        runs = sorted(Path(p) for p in glob.glob(pattern) if (Path(p) / "metrics.jsonl").exists())
        if not runs:
            raise DataError(f"{name}: no run directories match {pattern}")
        pairs = sorted({p for r in runs for p in run_pairs(r)})
        systems[name] = {"runs": [str(r) for r in runs], "pairs": pairs, "curve": mean_curve(runs)}
    if len({tuple(s["pairs"]) for s in systems.values()}) > 1:
        raise DataError("the systems cover different directions: "
                        + "; ".join(f"{n}: {' '.join(s['pairs'])}" for n, s in systems.items()))
    save_json(out, systems)
    plots.curves({n: s["curve"] for n, s in systems.items()}, png, "validation NLL (mean of directions)",
                 "validation NLL while fine-tuning")
    for name, s in systems.items():
        print(f"{name:24s} " + " ".join(f"{step}:{v:.4f}" for step, v in s["curve"].items()))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except DataError as e:
        sys.exit(f"error: {e}")
