"""The analyses' figures as PNG files (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jax_namnmt.errors import atomic_write


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` as PNG, atomically (a failed write raises WriteError naming it)."""
    path = Path(path)
    with atomic_write(path, "wb", f"figure {path}") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    return path


def importance_lines(theta: np.ndarray, pairs: Sequence[str], module: str, path: Path) -> Path:
    """Fig. 2: the importance of every neuron of ``module`` for each of ``pairs`` (rows of ``theta``)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.5))
    for row, pair in zip(theta, pairs):
        ax.plot(np.arange(len(row)), row, linewidth=0.8, label=pair)
    ax.set(xlabel="neuron", ylabel="importance", title=f"importance of the neurons of {module}")
    ax.legend()
    return save_figure(fig, path)


def _heatmap(ax, table: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str, cmap="viridis"):
    image = ax.imshow(np.ma.masked_invalid(table), aspect="auto", cmap=cmap)
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(title)
    for (i, j), value in np.ndenumerate(table):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="w")
    return image


def scores_heatmaps(lscore: Mapping, mscore: Mapping, path: Path) -> Path:
    """Fig. 3: LScore (layers x pairs) and MScore (layers x modules) side by side."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 0.45 * len(lscore["layers"]) + 2.5))
    as_array = lambda s: np.array([[np.nan if v is None else v for v in row] for row in s], float)  # noqa: E731
    fig.colorbar(_heatmap(left, as_array(lscore["scores"]), lscore["layers"], lscore["pairs"], "LScore"), ax=left)
    fig.colorbar(_heatmap(right, as_array(mscore["scores"]), mscore["layers"], mscore["modules"], "MScore"),
                 ax=right)
    return save_figure(fig, path)


def erasure_heatmap(drops: np.ndarray, settings: Sequence[str], pairs: Sequence[str], path: Path) -> Path:
    """Fig. 5: BLEU lost by every pair (columns) under each erasure (rows)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.0 * len(pairs) + 3, 0.5 * len(settings) + 2))
    fig.colorbar(_heatmap(ax, drops, settings, pairs, "BLEU drop after erasing neurons", cmap="magma"), ax=ax)
    return save_figure(fig, path)


def sweep_lines(param: str, values: Sequence[float], deltas: Mapping[str, Sequence[float]], path: Path) -> Path:
    """Fig. 4 / Table 3: BLEU minus the multilingual baseline's as ``param`` varies (average bold)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for pair, row in deltas.items():
        if pair != "avg":
            ax.plot(values, row, marker=".", linewidth=0.8, alpha=0.6, label=pair)
    ax.plot(values, deltas["avg"], marker="o", linewidth=2.5, color="k", label="average")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set(xlabel=param, ylabel="BLEU - multilingual", title=f"{param} sweep")
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def agreement_heatmaps(tables: Mapping[str, np.ndarray], pairs: Sequence[str], path: Path) -> Path:
    """Per-pair gradient agreement (``analysis/gradients.py``), one heatmap per parameter group."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(tables), figsize=(5.2 * len(tables), 0.45 * len(pairs) + 2.5), squeeze=False)
    for ax, (group, table) in zip(axes[0], tables.items()):
        image = _heatmap(ax, table, pairs, pairs, f"gradient agreement: {group}", cmap="coolwarm")
        image.set_clim(-1, 1)
        fig.colorbar(image, ax=ax)
    return save_figure(fig, path)


def curves(lines: Mapping[str, Mapping[int, float]], path: Path, ylabel: str, title: str) -> Path:
    """One line per system: ``{system: {step: value}}`` (e.g. ``analysis.curves.mean_curve``)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, line in lines.items():
        steps = sorted(line)
        ax.plot(steps, [line[s] for s in steps], marker=".", label=name)
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
