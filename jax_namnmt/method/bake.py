"""Bake one pair's mask into the weights: a smaller plain Transformer that translates that pair
as the masked model does (``model/baked.py`` runs it).

The masked model computes every projection as ``(x W + b) * m`` with the pair's 0/1 row ``m``.
For one pair the masks are constants, so:

- **FFN.** A masked ``fc1`` unit is 0 after the ReLU and adds nothing to ``fc2``: its ``fc1``
  column and bias and its ``fc2`` input row are dropped. A masked ``fc2`` output is an exact 0
  in the residual stream, whose width stays ``d_model``: its ``fc2`` column and bias are zeroed.
  If every ``fc2`` output is masked, no ``fc1`` unit is needed.
- **Attention scores.** A head's score is ``sum_f q_f k_f`` over its features; a feature whose
  ``q`` or ``k`` is masked adds an exact 0, so it is dropped from both projections (kept: ``q``
  and ``k`` masks both 1). A head with no such feature scores every visible key 0 (uniform
  attention), as the masked model does.
- **Values.** A masked ``v`` feature is 0 in the context, so its ``v`` column and bias and its
  ``out`` input row are dropped. A head with no value feature left contributes nothing: it is
  dropped whole (with its query/key features). If every ``out`` output is masked, no head is.
- **Out projection.** Masked outputs: zeroed ``out`` columns and bias, as for ``fc2``.

Heads stay equal-width within a module (one einsum): each module's kept heads are padded with
zero features to the module's widest kept head (an exact 0 again), so widths differ between
modules and layers (``BakedModelConfig.widths``), not within one. A module left with nothing
keeps one zero-width-1 head or hidden unit, so its shapes stay non-empty.

Embeddings, positions and layer norms are unchanged. The kept features' values are computed
from the same weights; sums run over fewer (zero) terms, so logits can differ from the masked
model's in the last bits, and the translations are compared token for token in the tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from jax_namnmt.config import ModelConfig
from jax_namnmt.errors import ConfigError
from jax_namnmt.method.masks import canonical_names, module_sizes, parse_name
from jax_namnmt.model.baked import BakedModelConfig


def pair_keep(masks: Mapping[str, np.ndarray], pairs: Sequence[str], pair: str | None = None,
              target: str | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """The kept neurons ``{module: bool [F]}`` of one ``pair`` (``"de-en"``), or of every pair into
    ``target`` (``"en"``: the target variant's masks, identical for those pairs), and the pairs
    the baked model serves."""
    pairs = list(pairs)
    masks = canonical_names(masks)
    if (pair is None) == (target is None):
        raise ConfigError("bake one pair (--pair de-en) or one target language (--target en)")
    if pair is not None:
        if pair not in pairs:
            raise ConfigError(f"pair {pair!r} has no mask: the masks are for {', '.join(pairs)}")
        served = [pair]
    else:
        served = [p for p in pairs if p.split("-")[1] == target]
        if not served:
            raise ConfigError(f"no pair translates into {target!r}: the masks are for {', '.join(pairs)}")
    rows = [pairs.index(p) for p in served]
    keep = {}
    for name, mask in masks.items():
        mask = np.asarray(mask, bool)
        if mask.ndim != 2 or mask.shape[0] != len(pairs):
            raise ConfigError(f"mask {name} has shape {mask.shape}, expected [{len(pairs)}, neurons]")
        differs = [p for p, r in zip(served, rows) if not np.array_equal(mask[r], mask[rows[0]])]
        if differs:
            raise ConfigError(f"the pairs into {target!r} have different masks (module {name}: {served[0]} and "
                              f"{differs[0]}); bake one pair with --pair (or allocate with --variant target)")
        keep[name] = mask[rows[0]].copy()
    return keep, served


def _columns(kernel: np.ndarray, bias: np.ndarray, groups: list[np.ndarray], width: int):
    """Kernel columns and bias entries of each group of feature indices, each group padded with
    zero columns to ``width``, side by side."""
    k = np.zeros((kernel.shape[0], len(groups) * width), kernel.dtype)
    b = np.zeros(len(groups) * width, bias.dtype)
    for j, idx in enumerate(groups):
        k[:, j * width:j * width + len(idx)] = kernel[:, idx]
        b[j * width:j * width + len(idx)] = bias[idx]
    return k, b


def _rows(kernel: np.ndarray, groups: list[np.ndarray], width: int) -> np.ndarray:
    """Kernel input rows of each group, each group padded with zero rows to ``width``."""
    k = np.zeros((len(groups) * width, kernel.shape[1]), kernel.dtype)
    for j, idx in enumerate(groups):
        k[j * width:j * width + len(idx)] = kernel[idx]
    return k


def _dense(tree) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(tree["dense"]["kernel"]), np.asarray(tree["dense"]["bias"])


def _packed(kernel, bias) -> dict:
    return {"dense": {"kernel": kernel, "bias": bias}}


def _round_up(width: int, multiple: int) -> int:
    return -(-max(1, width) // multiple) * multiple


def bake_attention(params: Mapping, keep: Mapping[str, np.ndarray], num_heads: int, multiple: int = 1):
    """One attention module's baked parameters and ``(heads, qk, v)`` widths (each per-head width
    rounded up to a multiple of ``multiple``)."""
    head_dim = len(keep["q"]) // num_heads
    qk, v, out = keep["q"] & keep["k"], keep["v"], keep["out"]
    heads = [h for h in range(num_heads) if out.any() and v[h * head_dim:(h + 1) * head_dim].any()]
    span = lambda m, h: h * head_dim + np.flatnonzero(m[h * head_dim:(h + 1) * head_dim])  # noqa: E731
    qk_groups = [span(qk, h) for h in heads] or [np.zeros(0, int)]
    v_groups = [span(v, h) for h in heads] or [np.zeros(0, int)]
    qk_width = min(head_dim, _round_up(max(len(g) for g in qk_groups), multiple))
    v_width = min(head_dim, _round_up(max(len(g) for g in v_groups), multiple))
    baked = {}
    for name, groups, width in (("q", qk_groups, qk_width), ("k", qk_groups, qk_width), ("v", v_groups, v_width)):
        baked[name] = _packed(*_columns(*_dense(params[name]), groups, width))
    out_kernel, out_bias = _dense(params["out"])
    baked["out"] = _packed(_rows(out_kernel, v_groups, v_width) * out, out_bias * out)
    return baked, (len(qk_groups), qk_width, v_width)


def bake_ffn(params: Mapping, keep: Mapping[str, np.ndarray], multiple: int = 1):
    """One FFN's baked parameters and ``(hidden,)`` width (rounded up to a multiple of ``multiple``)."""
    out = keep["fc2"]
    units = np.flatnonzero(keep["fc1"]) if out.any() else np.zeros(0, int)
    width = min(len(keep["fc1"]), _round_up(len(units), multiple))
    fc1 = _columns(*_dense(params["fc1"]), [units], width)
    fc2_kernel, fc2_bias = _dense(params["fc2"])
    return {"fc1": _packed(*fc1), "fc2": _packed(_rows(fc2_kernel, [units], width) * out, fc2_bias * out)}, (width,)


def bake(params: Mapping, config: ModelConfig, keep: Mapping[str, np.ndarray],
         multiple: int = 1) -> tuple[dict, BakedModelConfig]:
    """The baked parameters (a new tree; ``params`` unchanged) and their model config, for the kept
    neurons ``keep`` (``pair_keep``) of every masked projection of ``config``'s model; every width
    rounded up to a multiple of ``multiple`` with zero features (never above the original's)."""
    if multiple < 1:
        raise ConfigError(f"the width multiple must be at least 1, not {multiple}")
    if config.ts_target_of_pair or config.adapter_pairs:
        raise ConfigError("only a plain masked model can be baked (no +TS, no adapters)")
    sizes = module_sizes(config)
    keep = canonical_names(keep)
    missing = sorted(set(sizes) - set(keep))
    if missing:
        raise ConfigError(f"the masks have no entry for {missing[0]} (and {len(missing) - 1} more): they belong to "
                          "another model")
    modules: dict[str, dict[str, np.ndarray]] = {}  # "encoder_layer_0/self_attn" -> {"q": keep, ...}
    for name, size in sizes.items():
        if keep[name].shape != (size,):
            raise ConfigError(f"mask {name} has {keep[name].shape[0]} neurons, the model {size}")
        part = parse_name(name)
        modules.setdefault(f"{part.layer_path}/{part.sublayer}", {})[part.projection] = np.asarray(keep[name], bool)
    baked = _copy(params)
    widths = []
    for module, module_keep in modules.items():
        layer, sublayer = module.split("/")
        if sublayer == "ffn":
            new, width = bake_ffn(params[layer][sublayer], module_keep, multiple)
        else:
            new, width = bake_attention(params[layer][sublayer], module_keep, config.num_heads, multiple)
        baked[layer][sublayer] = new
        widths.append((module, width))
    fields = {f: getattr(config, f) for f in config.__dataclass_fields__ if f != "widths"}
    return baked, BakedModelConfig(**fields, widths=tuple(widths)).validate()


def _copy(tree):
    return {k: _copy(v) if isinstance(v, Mapping) else np.asarray(v) for k, v in tree.items()}


def count_params(tree) -> int:
    return sum(int(np.asarray(v).size) if not isinstance(v, Mapping) else count_params(v) for v in tree.values())
