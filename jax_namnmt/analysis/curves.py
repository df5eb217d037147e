"""Validation curves of several runs as one comparable curve: the per-direction validation NLL,
averaged over runs (seeds) per direction, then over directions. Multi-direction runs log one NLL a
direction (``nll_<pair>``); a run on one direction (a specialist) logs its ``nll``. Averaging per
direction first makes a system of one-direction runs comparable with one of all-direction runs."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from jax_namnmt.errors import DataError, reading
from jax_namnmt.training.metrics_log import read_records


def run_pairs(run_dir: Path) -> list[str]:
    """The directions ``run_dir`` was trained on (its config.json's ``data.pairs``)."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise DataError(f"{run_dir} is not a run directory: no config.json")
    with reading(path, "a run's config", DataError):
        return list(json.loads(path.read_text(encoding="utf-8"))["data"]["pairs"])


def pair_nlls(run_dir: Path) -> dict[str, dict[int, float]]:
    """``{direction: {step: validation NLL}}`` of one run, from its metrics.jsonl."""
    pairs = run_pairs(run_dir)
    records = read_records(run_dir, "*_valid")
    if not records:
        raise DataError(f"{run_dir}/metrics.jsonl has no validation records")
    if len(pairs) == 1:
        return {pairs[0]: {r["step"]: r["nll"] for r in records}}
    curves = {p: {r["step"]: r[f"nll_{p}"] for r in records if f"nll_{p}" in r} for p in pairs}
    missing = [p for p, curve in curves.items() if not curve]
    if missing:
        raise DataError(f"{run_dir}/metrics.jsonl has no validation NLL of {', '.join(missing)} (nll_<pair>)")
    return curves


def curves_by_pair(run_dirs: Iterable[Path]) -> dict[str, list[dict[int, float]]]:
    """``{direction: [each run's {step: NLL} that holds it]}`` (each run read once)."""
    by_pair: dict[str, list[dict[int, float]]] = {}
    for run in run_dirs:
        for pair, curve in pair_nlls(run).items():
            by_pair.setdefault(pair, []).append(curve)
    if not by_pair:
        raise DataError("no runs to average")
    return by_pair


def mean_curve(by_pair: dict[str, list[dict[int, float]]]) -> dict[int, float]:
    """``{step: NLL}`` of ``curves_by_pair``: per direction the mean over the runs that hold it, then
    the mean over the directions; only steps every run of every direction validated at."""
    steps = sorted(set.intersection(*(set(c) for curves in by_pair.values() for c in curves)))
    return {s: float(np.mean([np.mean([c[s] for c in curves]) for curves in by_pair.values()])) for s in steps}
