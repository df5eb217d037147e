"""The benchmarks' reports: the common JSON header (date, host, versions, settings), the model
fields, the timing record of the fastest round, ratios, Markdown tables, and where a report is
written (``default_out``: ``benchmarks/results/`` for a full run, a temporary directory for
``--quick``)."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import traceback
from pathlib import Path

RESULTS_DIR = "benchmarks/results"  # full runs' reports, beside the committed figures (from the working directory)


def default_out(name: str, quick: bool) -> str:
    """The report's path without ``--out``: ``benchmarks/results/<name>.json`` for a full run; for a
    ``--quick`` one, ``<name>.json`` in a new temporary directory (a first try leaves no file in the
    checkout)."""
    if quick:
        return str(Path(tempfile.mkdtemp(prefix=f"{name}_quick_")) / f"{name}.json")
    return f"{RESULTS_DIR}/{name}.json"


def resolve_out(args, name: str) -> None:
    """Sets ``args.out`` to ``default_out`` when ``--out`` was not given, and says where a quick run's
    report goes. Not in a side process (``--side``): it writes no report."""
    if args.out is not None or getattr(args, "side", None):
        return
    args.out = default_out(name, args.quick)
    if args.quick:
        print(f"--quick: the report goes to {args.out} (a temporary directory; --out PATH to choose)", flush=True)


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin", "flax", "optax", "orbax-checkpoint",
                 "numpy", "torch", "transformers", "triton"):
        try:
            out[name] = importlib.metadata.version(name)
        except Exception:
            pass
    return out


def error_result(exc: BaseException) -> dict:
    traceback.print_exc()
    return {"error": f"{type(exc).__name__}: {exc}"[:2000]}


def model_dict(config) -> dict:
    return {k: getattr(config, k) for k in ("vocab_size", "d_model", "num_heads", "ffn_dim", "enc_layers",
                                            "dec_layers", "dropout", "max_positions", "dtype")}


def base_report(name: str, args) -> dict:
    return {
        "benchmark": name, "quick": bool(getattr(args, "quick", False)),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "versions": versions(),
        "argv": sys.argv[1:], "settings": {k: v for k, v in vars(args).items() if not k.startswith("side")},
    }


def write_json(report: dict, out) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(out)


def best_round(seconds: list[float], steps: int, target_tokens: int) -> dict:
    """Timing of the fastest of several rounds of ``steps`` steps over ``target_tokens`` tokens."""
    secs = min(seconds)
    return {"seconds": secs, "round_seconds": seconds, "steps": steps, "step_ms": 1000 * secs / steps,
            "target_tokens_per_s": target_tokens / secs}


def fmt(value, spec: str = "{:,.0f}") -> str:
    if value is None:
        return "-"
    if isinstance(value, dict) and "error" in value:
        return "error"
    try:
        return spec.format(value)
    except (TypeError, ValueError):
        return str(value)


def ratio(a: dict | None, b: dict | None, key: str):
    """a[key] / b[key], or None when either side is missing or failed."""
    try:
        return a[key] / b[key]
    except Exception:
        return None


def device_names(results: dict) -> dict:
    """``{side: device name}`` of the sides that got as far as naming their device."""
    return {k: r["device_name"] for k, r in results.items() if isinstance(r, dict) and "device_name" in r}


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")

