"""The mask pytree: nested dicts of ``[num_pairs, features]`` arrays mirroring the projections.

Flat names (``"decoder/layer_1/cross_attn/q"``) are used for files and allocation; the model
takes the nested form. Masks are data: the parameter count never changes.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from jax_namnmt.config import ModelConfig


def module_sizes(config: ModelConfig) -> dict[str, int]:
    """The mask registry: flat ``module name -> number of neurons`` for every masked projection
    of ``model.transformer.Transformer``, in model order (names as ``importance.module_name``
    derives them from the Flax paths: ``encoder_layer_0/self_attn/q`` is
    ``encoder/layer_0/self_attn/q``)."""
    sizes: dict[str, int] = {}
    attn = {"q": config.d_model, "k": config.d_model, "v": config.d_model, "out": config.d_model}
    ffn = {"fc1": config.ffn_dim, "fc2": config.d_model}
    for i in range(config.enc_layers):
        for proj, n in attn.items():
            sizes[f"encoder/layer_{i}/self_attn/{proj}"] = n
        for proj, n in ffn.items():
            sizes[f"encoder/layer_{i}/ffn/{proj}"] = n
    for i in range(config.dec_layers):
        for block in ("self_attn", "cross_attn"):
            for proj, n in attn.items():
                sizes[f"decoder/layer_{i}/{block}/{proj}"] = n
        for proj, n in ffn.items():
            sizes[f"decoder/layer_{i}/ffn/{proj}"] = n
    return sizes


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
