"""Neuron erasure (the paper's Fig. 5): zero a random share of the general neurons, or of one
pair's specific neurons, and see whose translations suffer.

Erasing a neuron zeroes its output for every pair: its column of the mask set becomes all False
(a specific neuron that pair m shares with pair n is erased for n too; that is what removing it
from the model means). The share is drawn in every module separately (``round(fraction * n)`` of
its ``n`` candidates), so each module loses the same share. Masks are the allocation's
``module -> bool [pairs, neurons]``; numpy only, seeded, the input never modified.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jax_namnmt.method.allocation import general_neurons


def _erase(masks: Mapping[str, np.ndarray], candidates, fraction: float, seed: int) -> tuple[dict, int]:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the erased fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    erased, count = {}, 0
    for name, mask in masks.items():
        mask = np.array(mask, dtype=bool)
        pool = np.flatnonzero(candidates(mask))
        chosen = rng.choice(pool, size=int(round(fraction * len(pool))), replace=False)
        mask[:, chosen] = False
        erased[name], count = mask, count + len(chosen)
    return erased, count


def erase_general(masks: Mapping[str, np.ndarray], fraction: float, seed: int = 0) -> tuple[dict, int]:
    """``(masks with a random ``fraction`` of each module's general neurons erased, neurons erased)``."""
    return _erase(masks, general_neurons, fraction, seed)


def erase_specific(masks: Mapping[str, np.ndarray], pair: int, fraction: float, seed: int = 0) -> tuple[dict, int]:
    """``(masks with a random ``fraction`` of pair ``pair``'s specific neurons erased in each module,
    neurons erased)``."""
    return _erase(masks, lambda mask: mask[pair] & ~general_neurons(mask), fraction, seed)
