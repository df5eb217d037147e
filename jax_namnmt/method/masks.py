"""The mask pytree: nested dicts of ``[num_pairs, features]`` arrays mirroring the projections.

Flat names (``"decoder/layer_1/cross_attn/q"``) are used for files and allocation; the model
takes the nested form. Masks are data: the parameter count never changes.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from jax_namnmt.config import ModelConfig
from jax_namnmt.model.transformer import module_sizes


def nest(flat: Mapping[str, np.ndarray]) -> dict:
    """``{"a/b/c": x}`` -> ``{"a": {"b": {"c": x}}}``."""
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def flatten(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else key
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def all_ones(config: ModelConfig, num_pairs: int) -> dict:
    """Masks that keep every neuron for every pair: the plain multilingual model."""
    return nest({name: np.ones((num_pairs, n), np.float32) for name, n in module_sizes(config).items()})


def to_model_masks(flat: Mapping[str, np.ndarray]) -> dict:
    """Boolean flat masks -> the float32 nested pytree the model multiplies with."""
    return nest({name: np.asarray(m, np.float32) for name, m in flat.items()})
