"""The mask pytree: nested dicts of ``[num_pairs, features]`` arrays mirroring the projections.

A mask's name is its projection's parameter path: the mask ``decoder_layer_1/cross_attn/q``
gates the output features of ``params["decoder_layer_1"]["cross_attn"]["q"]``. Flat names are
used for files and allocation; the model takes the nested form (:func:`nest`), which is the
parameter tree cut at the projections. Masks are data: the parameter count never changes.

Files written before the names were unified say ``decoder/layer_1/cross_attn/q``; the readers
(``allocation.load_masks``, ``workflow.load_importance``) pass names through
:func:`canonical_name`, which accepts both spellings.
"""

from __future__ import annotations

import re
from typing import Mapping, NamedTuple

import numpy as np

from jax_namnmt.config import ModelConfig


STACKS = ("encoder", "decoder")
SUBLAYERS = ("self_attn", "cross_attn", "ffn")

_NAME = re.compile(r"^(encoder|decoder)_layer_(\d+)/(self_attn|cross_attn|ffn)/(\w+)$")
_LEGACY = re.compile(r"^(encoder|decoder)/layer_(\d+)/")


class ModuleName(NamedTuple):
    """The parts of a mask name ``{stack}_layer_{layer}/{sublayer}/{projection}``."""

    stack: str
    layer: int
    sublayer: str
    projection: str

    @property
    def layer_path(self) -> str:
        """The layer's parameter path, e.g. ``decoder_layer_3``."""
        return layer_path(self.stack, self.layer)

    @property
    def module(self) -> str:
        """The projection within its layer, e.g. ``ffn/fc1``."""
        return f"{self.sublayer}/{self.projection}"


def layer_path(stack: str, layer: int) -> str:
    """The parameter path of one layer of a stack: ``("decoder", 3)`` -> ``decoder_layer_3``."""
    return f"{stack}_layer_{layer}"


def mask_name(stack: str, layer: int, sublayer: str, projection: str) -> str:
    return f"{layer_path(stack, layer)}/{sublayer}/{projection}"


def canonical_name(name: str) -> str:
    """A mask name in today's spelling; the spelling before the names were unified
    (``encoder/layer_0/ffn/fc1``) becomes the parameter path (``encoder_layer_0/ffn/fc1``)."""
    return _LEGACY.sub(r"\1_layer_\2/", name, count=1)


def canonical_names(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {canonical_name(name): value for name, value in flat.items()}


def parse_name(name: str) -> ModuleName:
    """``"decoder_layer_3/ffn/fc1"`` (or its legacy spelling) -> its parts; ValueError otherwise."""
    match = _NAME.match(canonical_name(name))
    if not match:
        raise ValueError(f"module name {name!r} is not <encoder|decoder>_layer_<i>/<sublayer>/<projection>")
    stack, layer, sublayer, projection = match.groups()
    return ModuleName(stack, int(layer), sublayer, projection)


def module_sizes(config: ModelConfig) -> dict[str, int]:
    """The mask registry: flat ``mask name -> number of neurons`` for every masked projection
    of ``model.transformer.Transformer``, in model order; each name is the projection's
    parameter path (``encoder_layer_0/self_attn/q``)."""
    sizes: dict[str, int] = {}
    attn = {"q": config.d_model, "k": config.d_model, "v": config.d_model, "out": config.d_model}
    ffn = {"fc1": config.ffn_dim, "fc2": config.d_model}
    blocks = {"encoder": ("self_attn",), "decoder": ("self_attn", "cross_attn")}
    for stack, layers in (("encoder", config.enc_layers), ("decoder", config.dec_layers)):
        for i in range(layers):
            for block in blocks[stack]:
                for proj, n in attn.items():
                    sizes[mask_name(stack, i, block, proj)] = n
            for proj, n in ffn.items():
                sizes[mask_name(stack, i, "ffn", proj)] = n
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
