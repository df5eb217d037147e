"""Where the specific neurons sit (the paper's Fig. 3): LScore and MScore of a mask set.

Masks are the allocation's ``module -> bool [pairs, neurons]`` (``method/allocation.py``); module
names are their projections' paths ``{encoder|decoder}_layer_{i}/{self_attn|cross_attn|ffn}/{q|k|v|out|fc1|fc2}``
(``method/masks.py``). A neuron
in every pair's mask is *general*; the others are *specific* to the pairs whose masks hold them
(as ``allocation.summary_rows`` counts them).

- ``LScore(l, m)`` = (specific neurons of pair m in layer l) / (specific neurons in layer l)
- ``MScore(l, f)`` = the mean over pairs m of (specific neurons of m in module f of layer l) /
  (specific neurons in module f of layer l)

A layer or module without specific neurons has no score (NaN). A neuron shared by several pairs
counts for each, so a layer's LScores can sum to more than 1. Numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from jax_namnmt.method.allocation import general_neurons
from jax_namnmt.method.masks import STACKS, SUBLAYERS, parse_name


def _layer_key(layer: str) -> tuple[int, int]:
    """Model order: the encoder's layers, then the decoder's, by index."""
    stack, index = layer.rsplit("_layer_", 1)
    return STACKS.index(stack), int(index)


def _module_key(module: str) -> int:
    """Self-attention, cross-attention, then the FFN (the order within each kept)."""
    return SUBLAYERS.index(module.split("/")[0])


def specific_counts(mask) -> tuple[np.ndarray, int]:
    """Per pair, its specific neurons in one module ``[pairs]``, and the module's specific neurons."""
    mask = np.asarray(mask, dtype=bool)
    specific = ~general_neurons(mask)
    return mask[:, specific].sum(axis=1), int(specific.sum())


def _ratio(part: np.ndarray, whole: int) -> np.ndarray:
    return part / whole if whole else np.full(part.shape, np.nan)


def lscore(masks: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """``(layers, scores [layers, pairs])``, layers in model order (encoder first)."""
    per_layer: dict[str, tuple[np.ndarray, int]] = {}
    for name, mask in masks.items():
        layer = parse_name(name).layer_path
        by_pair, total = specific_counts(mask)
        seen, seen_total = per_layer.get(layer, (0, 0))
        per_layer[layer] = (seen + by_pair, seen_total + total)
    layers = sorted(per_layer, key=_layer_key)
    return layers, np.stack([_ratio(*per_layer[layer]) for layer in layers])


def mscore(masks: Mapping[str, np.ndarray]) -> tuple[list[str], list[str], np.ndarray]:
    """``(layers, modules, scores [layers, modules])``; NaN where a layer lacks the module
    (encoders have no cross-attention) or the module has no specific neuron."""
    cells: dict[tuple[str, str], float] = {}
    for name, mask in masks.items():
        part = parse_name(name)
        layer, module = part.layer_path, part.module
        by_pair, total = specific_counts(mask)
        cells[layer, module] = float(np.mean(_ratio(by_pair, total)))
    layers = sorted({layer for layer, _ in cells}, key=_layer_key)
    modules = sorted(dict.fromkeys(module for _, module in cells), key=_module_key)
    table = np.array([[cells.get((layer, module), np.nan) for module in modules] for layer in layers])
    return layers, modules, table


def scores_report(masks: Mapping[str, np.ndarray], pairs: Sequence[str]) -> dict:
    """LScore and MScore as JSON-ready data (NaN -> None)."""
    layers, lsc = lscore(masks)
    m_layers, modules, msc = mscore(masks)
    clean = lambda a: [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in a]  # noqa: E731
    return {"pairs": list(pairs), "lscore": {"layers": layers, "scores": clean(lsc)},
            "mscore": {"layers": m_layers, "modules": modules, "scores": clean(msc)}}
