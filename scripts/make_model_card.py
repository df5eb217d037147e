"""Write the model card of a package into its ``package.json`` (``card``), from the training run's
metrics and two ``evaluate --out`` files; the shipped-model test compares against ``val50_bleu``.

    python scripts/make_model_card.py --package jax_namnmt/resources/model --run runs/shipped/pretrain \
        --test runs/shipped/test_scores.json --val runs/shipped/val50_scores.json --machine "2-core AMD EPYC"
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from jax_namnmt import packaged


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--package", required=True)
    p.add_argument("--run", required=True, help="the run directory the package was exported from")
    p.add_argument("--test", required=True, help="evaluate --out JSON on test_2016_flickr (all lines)")
    p.add_argument("--val", required=True, help="evaluate --out JSON on the first 50 val lines")
    p.add_argument("--machine", default=platform.processor() or platform.machine())
    p.add_argument("--command", default="python -m jax_namnmt.train --config multi30k_cpu --workdir runs/shipped")
    p.add_argument("--wall-seconds", type=float, default=None,
                   help="the training command's measured wall time (default: the sum of the gaps between log "
                        "points, which leaves out start-up and compilation)")
    args = p.parse_args()
    records = [json.loads(line) for line in Path(args.run, "metrics.jsonl").read_text().splitlines() if line]
    train = [r for r in records if r["phase"] == "pretrain"]
    valid = [r for r in records if r["phase"] == "pretrain_valid"]
    info = packaged.read_package_info(args.package)
    test, val = json.loads(Path(args.test).read_text()), json.loads(Path(args.val).read_text())
    pairs = [k for k in test if isinstance(test[k], dict) and "bleu" in test[k] and k not in ("avg", "signature")]
    # wall time: sum of the gaps between log points (a resumed run's restarts are not counted twice)
    wall = sum(b["time"] - a["time"] for a, b in zip(train, train[1:]) if b["step"] > a["step"])
    if args.wall_seconds is not None:
        wall = args.wall_seconds
    card = {
        "command": args.command,
        "data": "Multi30k task 1 (embedded), train split, 8 directions: " + " ".join(pairs),
        "steps": info["step"],
        "target_tokens_seen": int(sum(r["tokens"] for r in train) / len(train) * info["step"]),
        "wall_seconds": round(wall),
        "machine": args.machine,
        "final_valid_loss": round(valid[-1]["loss"], 4), "final_valid_nll": round(valid[-1]["nll"], 4),
        "final_valid_step": valid[-1]["step"],
        "test_bleu": {pair: round(test[pair]["bleu"], 2) for pair in pairs},
        "test_bleu_avg": round(test["avg"]["bleu"], 2),
        "val50_bleu": {pair: round(val[pair]["bleu"], 2) for pair in pairs},
        "val50_bleu_avg": round(val["avg"]["bleu"], 2),
        "signature": test["signature"]["bleu"],
        "decoding": "beam 4, length penalty 0.6 (fairseq form), max length 1.2 * source + 10",
    }
    packaged.update_package_info(args.package, card=card)
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
