"""The mask pytree: nested dicts of ``[num_pairs, features]`` arrays mirroring the projections.

Flat names (``"decoder/layer_1/cross_attn/q"``) are used for files and allocation; the model
takes the nested form. Masks are data: the parameter count never changes.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from jax_namnmt.config import ModelConfig
from jax_namnmt.errors import CheckpointError
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


def check_fits(flat: Mapping[str, np.ndarray], config: ModelConfig, num_pairs: int, source: str) -> None:
    """Raise CheckpointError when a mask set does not fit the model shape or the pair list."""
    expected = module_sizes(config)
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{source}: mask set does not fit the model: "
            f"missing modules {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected modules {extra[:3]}{'...' if len(extra) > 3 else ''}; "
            "was it allocated for another model shape?"
        )
    for name, n in expected.items():
        if tuple(flat[name].shape) != (num_pairs, n):
            raise CheckpointError(
                f"{source}: mask {name} has shape {tuple(flat[name].shape)}, the model needs "
                f"({num_pairs}, {n}) (pairs x neurons); was it allocated for another model or pair list?"
            )


def to_model_masks(flat: Mapping[str, np.ndarray]) -> dict:
    """Boolean flat masks -> the float32 nested pytree the model multiplies with."""
    return nest({name: np.asarray(m, np.float32) for name, m in flat.items()})
