"""Adding a pair to a masked model without changing the pairs it has (see docs/method.md,
"Adding a pair").

The new pair's mask row, per module (``masks``: the old pairs' ``[P, F]`` rows; importance of all
``P + 1`` pairs, the new one last, scored in one pass on the masked model with an all-ones row for
the new pair):

- *general*: the neurons every old pair uses (its row has them, frozen);
- *shared*: the other neurons some old pair uses that the paper's threshold rule gives the new
  pair too, ``theta[new, i] >= k * max_m theta[m, i]`` over all ``P + 1`` pairs (frozen);
- *free*: neurons no old pair uses (its own: trained);
- *grown*: ``grow`` new hidden units appended to every FFN's ``fc1`` (its own: trained); the old
  rows are False there.

What the new pair may train (:func:`trainable_tree`): the parameters of the neurons in its row and
in no old row (free and grown): each one's kernel column and bias entry, and the row of the next
projection in the same sublayer that reads it (``fc1`` -> ``fc2``, attention ``v`` -> ``out``).
Everything else is frozen: embeddings (tied with the output layer), layer norms, and every
neuron an old pair uses. An old pair's tokens see exactly zero on the trainable neurons (their
mask multiplies them by 0), so the trainable parameters reach none of their outputs: the old
pairs' translations cannot change.

Numpy only; no JAX here.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jax_namnmt.errors import ConfigError
from jax_namnmt.method.allocation import _check_fraction, normalize_importance
from jax_namnmt.method.masks import parse_name

KINDS = ("general", "shared", "free", "grown")
# the projection (same sublayer) whose kernel rows read a projection's output features
READER = {"fc1": "fc2", "v": "out"}


def grows(name: str) -> bool:
    """Whether ``grow`` adds units to the module ``name`` (every FFN's fc1)."""
    part = parse_name(name)
    return part.sublayer == "ffn" and part.projection == "fc1"


def new_pair_row(masks: Mapping[str, np.ndarray], importance: Mapping[str, np.ndarray], k: float,
                 grow: int = 0, normalize: str = "none") -> tuple[dict[str, np.ndarray], dict[str, dict[str, int]]]:
    """The masks with the new pair's row appended, ``{name: bool [P + 1, F (+ grow for fc1)]}``,
    and per module the number of neurons of each kind (:data:`KINDS`) the new row holds.

    ``importance``: ``{name: [P + 1, F]}``, the new pair last; ``normalize`` as for allocation
    (``normalize_importance``), applied before the threshold."""
    k = _check_fraction("k", k)
    if grow < 0:
        raise ConfigError(f"grow must be >= 0 new FFN units, got {grow}")
    out, counts = {}, {}
    for name, mask in masks.items():
        mask = np.asarray(mask, dtype=bool)
        if name not in importance:
            raise ConfigError(f"the importance scores have no module {name}")
        theta = normalize_importance(importance[name], normalize)
        if theta.shape != (mask.shape[0] + 1, mask.shape[1]):
            raise ConfigError(f"importance of {name} has shape {theta.shape}, expected "
                              f"{(mask.shape[0] + 1, mask.shape[1])} (the old pairs and the new one)")
        used, general = mask.any(axis=0), mask.all(axis=0)
        shared = used & ~general & (theta[-1] >= k * theta.max(axis=0))
        free = ~used
        row = general | shared | free
        extra = grow if grows(name) else 0
        table = np.zeros((mask.shape[0] + 1, mask.shape[1] + extra), dtype=bool)
        table[:-1, :mask.shape[1]] = mask
        table[-1, :mask.shape[1]] = row
        table[-1, mask.shape[1]:] = True
        out[name] = table
        counts[name] = {"general": int(general.sum()), "shared": int(shared.sum()), "free": int(free.sum()),
                        "grown": extra}
    return out, counts


def own_neurons(masks: Mapping[str, np.ndarray], num_old: int) -> dict[str, np.ndarray]:
    """``{name: bool [F]}``: the neurons of the last row that none of the first ``num_old`` rows uses."""
    return {name: np.asarray(m, bool)[num_old] & ~np.asarray(m, bool)[:num_old].any(axis=0)
            for name, m in masks.items()}


def trainable_tree(params: Mapping, masks: Mapping[str, np.ndarray], num_old: int) -> dict:
    """A boolean tree shaped like ``params`` (arrays or ShapeDtypeStructs), True where the pair of
    row ``num_old`` of ``masks`` may train (see the module's docstring): the columns and biases of its
    own neurons and the reading projection's rows of its own ``fc1`` / ``v`` features."""
    tree = _zeros_like(params)
    own = own_neurons(masks, num_old)
    for name, cols in own.items():
        if not cols.any():
            continue
        part = parse_name(name)
        layer = tree[part.layer_path][part.sublayer]
        dense = layer[part.projection]["dense"]
        if dense["kernel"].shape[-1] != cols.size:
            raise ConfigError(f"mask {name} has {cols.size} neurons, the parameters {dense['kernel'].shape[-1]}")
        dense["kernel"][:, cols] = True
        dense["bias"][cols] = True
        reader = READER.get(part.projection)
        if reader is not None:
            layer[reader]["dense"]["kernel"][cols, :] = True
    return tree


def _zeros_like(tree):
    if isinstance(tree, Mapping):
        return {key: _zeros_like(value) for key, value in tree.items()}
    return np.zeros(tree.shape, dtype=bool)


def grow_params(params: Mapping, grow: int, seed: int = 0) -> dict:
    """``params`` (numpy-convertible) with ``grow`` hidden units appended to every FFN: ``fc1``'s
    new kernel columns drawn as the model draws them (Xavier uniform over the grown shape), its new
    biases and ``fc2``'s new kernel rows zero, so the grown units change no output until trained.
    Every other array is returned as it is (the old values bit for bit)."""
    rng = np.random.default_rng(seed)

    def walk(node, path):
        if not isinstance(node, Mapping):
            return node
        if path and path[-1] == "ffn" and grow:
            fc1, fc2 = node["fc1"]["dense"], node["fc2"]["dense"]
            k1 = np.asarray(fc1["kernel"])
            fan_in, fan_out = k1.shape[0], k1.shape[1] + grow
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            new = rng.uniform(-limit, limit, (fan_in, grow)).astype(k1.dtype)
            grown = dict(node)
            grown["fc1"] = {**node["fc1"], "dense": {
                "kernel": np.concatenate([k1, new], axis=1),
                "bias": np.concatenate([np.asarray(fc1["bias"]), np.zeros(grow, k1.dtype)])}}
            k2 = np.asarray(fc2["kernel"])
            grown["fc2"] = {**node["fc2"], "dense": {
                **fc2, "kernel": np.concatenate([k2, np.zeros((grow, k2.shape[1]), k2.dtype)], axis=0)}}
            return grown
        return {key: walk(value, path + (key,)) for key, value in node.items()}

    return walk(params, ())


def summary(counts: Mapping[str, Mapping[str, int]], trainable: Mapping | None = None) -> dict:
    """Totals over modules of :func:`new_pair_row`'s counts (and the trainable parameters)."""
    total = {kind: int(sum(c[kind] for c in counts.values())) for kind in KINDS}
    if trainable is not None:
        total["trainable_params"] = int(sum(np.count_nonzero(x) for x in _leaves(trainable)))
        total["params"] = int(sum(np.size(x) for x in _leaves(trainable)))
    return total


def _leaves(tree):
    if isinstance(tree, Mapping):
        for value in tree.values():
            yield from _leaves(value)
    else:
        yield tree
