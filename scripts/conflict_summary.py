"""One JSON summary of a positive-control run (scripts/conflict_control.sh): the reproduction's start,
test BLEU per system, method_te against its controls, the specialists against the systems, the masks'
cost at step 0, and each system's validation NLL minus the multilingual run's by step.

    python scripts/conflict_summary.py OUT SUMMARY.json [TAG]   # TAG: "" (100 steps) or e.g. _ft1000

reads OUT/reportTAG/results.json, OUT/specialistsTAG/compare.json and OUT/curvesTAG.json (what the
script writes) and names the file that is missing or lacks a field.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable


def _read(path: Path, fields: Callable[[dict], dict]) -> dict:
    """``fields`` of the JSON file ``path``; a missing file or field names the file."""
    if not path.is_file():
        raise SystemExit(f"conflict_summary: {path} is missing (has scripts/conflict_control.sh finished?)")
    try:
        return fields(json.loads(path.read_text(encoding="utf-8")))
    except KeyError as e:
        raise SystemExit(f"conflict_summary: {path} has no field {e} (written by scripts/conflict_control.sh?)") from None


def _report_fields(report: dict) -> dict:
    s = report["settings"]["many_to_many"]
    chosen = s["chosen"]["tag"]
    step0 = s["step0"]
    return {
        "command": report["command"], "date": report.get("date"), "machine": report["environment"]["machine"],
        "model": {k: report["config"]["model"][k] for k in ("d_model", "ffn_dim", "num_heads", "enc_layers",
                                                             "dec_layers")},
        "finetune_steps": report["config"]["finetune"]["steps"],
        "start": {k: s["start"][k] for k in ("from", "steps", "converged")},
        "chosen": chosen, "rho_k_choice_valid_nll": s["rho_k_choice"],
        "mask_cost_step0": {t: round(r["nll"] - step0["none"]["nll"], 5) for t, r in step0.items() if t != "none"},
        "kept": {p: v["kept"] for p, v in step0[chosen]["masks"].items()},
        "bleu": {system: {**row["mean"], "seeds": row["seeds"]} for system, row in s["bleu"].items()},
        "method_te_minus": {c: row["avg"] for c, row in s["significance"].items()},
    }


def _specialist_fields(compare: dict) -> dict:
    return {"specialists_minus": {k[len("specialists - "):]: v["avg"] for k, v in compare.items()
                                  if k.startswith("specialists - ")},
            "specialist_seeds": compare["specialist_seeds"]}


def _curve_fields(curves: dict) -> dict:
    base = curves["multilingual"]["curve"]
    return {"valid_nll_minus_multilingual": {
                name: {step: round(c["curve"][step] - base[step], 5) for step in c["curve"] if step in base}
                for name, c in curves.items() if name != "multilingual"},
            "valid_nll_multilingual": base}


def summarize(out: Path, tag: str = "") -> dict:
    return {**_read(out / f"report{tag}" / "results.json", _report_fields),
            **_read(out / f"specialists{tag}" / "compare.json", _specialist_fields),
            **_read(out / f"curves{tag}.json", _curve_fields)}


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        raise SystemExit(__doc__)
    summary = summarize(Path(argv[0]), argv[2] if len(argv) == 3 else "")
    Path(argv[1]).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"summary: {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
