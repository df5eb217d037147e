"""Importance-based neuron allocation (Xie et al. 2021, section 3.2; see docs/method.md).

Importance tables are flat dicts ``mask name -> float array [M, F]`` (names: ``method/masks.py``): one row per language
pair (in a fixed order), one column per neuron (output feature) of the module. Allocation is
done within each module independently and yields a boolean mask ``[M, F]`` per module:
row ``m`` says which neurons pair ``m`` may use.

Numpy only; no JAX here.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping, Sequence

import numpy as np

from jax_namnmt.errors import CheckpointError, ConfigError, atomic_write
from jax_namnmt.method.masks import canonical_name, parse_name

VARIANTS = ("pair", "source", "target", "separate")
_META_KEY = "__meta__"


# --------------------------------------------------------------------------- allocation


def _check_fraction(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {value}")
    return value


def allocate_module(theta, rho: float, k: float, *, name: str = "theta") -> np.ndarray:
    """Allocate the neurons of one module.

    Args:
      theta: importance ``[M, F]`` (M pairs or groups, F neurons), finite and >= 0.
      rho: fraction of neurons that are general (shared by every row): the top
        ``round(rho * F)`` neurons by mean importance over rows. Ties are broken by the
        lower neuron index.
      k: threshold factor; every other neuron goes to each row ``m`` with
        ``theta[m, i] >= k * max_m theta[m, i]`` (so the arg-max row always gets it,
        k = 1 gives the arg-max row(s) only, k = 0 gives every row).
      name: module name used in error messages.

    Returns:
      bool ``[M, F]``: row m = general neurons | neurons assigned to m.
    """
    rho = _check_fraction("rho", rho)
    k = _check_fraction("k", k)
    theta = np.asarray(theta, dtype=np.float64)
    if theta.ndim != 2 or theta.shape[0] < 1:
        raise ValueError(
            f"importance of {name} must have shape [pairs, neurons], got {theta.shape}"
        )
    if not np.all(np.isfinite(theta)):
        raise ValueError(f"importance of {name} has non-finite values")
    if np.any(theta < 0):
        raise ValueError(f"importance of {name} has negative values (min {theta.min()})")

    n_rows, n_neurons = theta.shape
    overall = theta.mean(axis=0)
    n_general = int(round(rho * n_neurons))
    order = np.argsort(-overall, kind="stable")  # descending, lower index first on ties
    general = np.zeros(n_neurons, dtype=bool)
    general[order[:n_general]] = True

    assigned = theta >= k * theta.max(axis=0, keepdims=True)
    return general[None, :] | assigned


def _split_pair(pair: str) -> tuple[str, str]:
    parts = pair.split("-")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"pair {pair!r} is not of the form 'src-tgt' (e.g. 'de-en')")
    return parts[0], parts[1]


def _groups(pairs: Sequence[str], side: int) -> tuple[list[str], np.ndarray]:
    """Group keys in order of first appearance and, per pair, the index of its group."""
    keys: list[str] = []
    index = []
    for pair in pairs:
        key = _split_pair(pair)[side]
        if key not in keys:
            keys.append(key)
        index.append(keys.index(key))
    return keys, np.asarray(index, dtype=np.int64)


def _allocate_grouped(theta: np.ndarray, group_of: np.ndarray, rho, k, name) -> np.ndarray:
    """Allocate over groups (group importance = mean of its pairs' rows); pairs share the row."""
    n_groups = int(group_of.max()) + 1
    grouped = np.stack([theta[group_of == g].mean(axis=0) for g in range(n_groups)])
    return allocate_module(grouped, rho, k, name=name)[group_of]


NORMALIZATIONS = ("none", "pair_mean")
MODULE_SETS = ("all", "no_embedding_inputs")


def normalize_importance(theta, how: str = "none") -> np.ndarray:
    """``pair_mean``: each row (pair) of ``[M, F]`` divided by its mean over the module's neurons, so a
    pair whose gradients are small everywhere (an easy pair) competes for specific neurons on equal
    terms with a hard one; ``none``: unchanged (the paper and the original code). A row of zeros stays
    zeros."""
    theta = np.asarray(theta, dtype=np.float64)
    if how == "none":
        return theta
    if how != "pair_mean":
        raise ConfigError(f"normalize must be one of {', '.join(NORMALIZATIONS)}; got {how!r}")
    mean = theta.mean(axis=1, keepdims=True)
    return np.divide(theta, mean, out=np.zeros_like(theta), where=mean > 0)


def embedding_input_modules(names) -> list[str]:
    """The projections whose input is the token embedding: the q/k/v of each stack's first
    self-attention (the original code leaves exactly these unmasked)."""
    parts = {n: parse_name(n) for n in names}
    return [n for n, p in parts.items() if p.layer == 0 and p.module in ("self_attn/q", "self_attn/k", "self_attn/v")]


def shared_modules(names, modules: str = "all") -> list[str]:
    """The modules a module set leaves unmasked (every pair keeps every neuron)."""
    if modules not in MODULE_SETS:
        raise ConfigError(f"modules must be one of {', '.join(MODULE_SETS)}; got {modules!r}")
    return [] if modules == "all" else embedding_input_modules(names)


def allocate(
    importance: Mapping[str, np.ndarray],
    pairs: Sequence[str],
    rho: float,
    k: float,
    variant: str = "pair",
    normalize: str = "none",
    modules: str = "all",
) -> dict[str, np.ndarray]:
    """Allocate every module of an importance table; returns ``module -> bool [M, F]``.

    Variants (paper appendix A):
      ``pair``: per language pair (default);
      ``source``: pairs grouped by source language, each pair gets its group's mask;
      ``target``: same, grouped by target language;
      ``separate``: ``encoder/...`` modules grouped by source, ``decoder/...`` by target.
    ``normalize``: see :func:`normalize_importance` (applied per module before ranking and threshold).
    ``modules``: ``all`` masks every module; ``no_embedding_inputs`` gives every pair all neurons of
    the modules of :func:`embedding_input_modules`.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
    _check_fraction("rho", rho)
    _check_fraction("k", k)
    pairs = list(pairs)
    if not pairs:
        raise ConfigError("pairs must not be empty")
    if len(set(pairs)) != len(pairs):
        raise ConfigError(f"pairs must be distinct, got {pairs}")
    groups = {"pair": np.arange(len(pairs))}
    if variant != "pair":
        groups["source"] = _groups(pairs, 0)[1]
        groups["target"] = _groups(pairs, 1)[1]

    shared = set(shared_modules(list(importance), modules))
    masks = {}
    for name, theta in importance.items():
        theta = normalize_importance(theta, normalize)
        if theta.ndim != 2 or theta.shape[0] != len(pairs):
            raise ValueError(
                f"importance of {name} has shape {theta.shape}, expected [{len(pairs)}, neurons]"
            )
        if variant == "separate":
            try:
                stack = parse_name(name).stack
            except ValueError as e:
                raise ConfigError(f"variant 'separate' needs encoder or decoder module names: {e}") from None
            side = "source" if stack == "encoder" else "target"
        else:
            side = variant
        masks[name] = _allocate_grouped(theta, groups[side], rho, k, name)
        if name in shared:
            masks[name] = np.ones_like(masks[name])
    return masks


def random_masks(masks: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """The control for importance: masks with the same counts, drawn at random. Per module, as many
    general neurons (in every row) as ``masks`` has, drawn uniformly; then for each pair as many
    specific neurons as it has in ``masks``, drawn uniformly from the non-general ones. If these
    do as well as the allocated masks, the importance scores carry no signal."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(masks):
        mask = np.asarray(masks[name], dtype=bool)
        general = general_neurons(mask)
        n_general = int(general.sum())
        new = np.zeros_like(mask)
        order = rng.permutation(mask.shape[1])
        new_general, others = order[:n_general], order[n_general:]
        new[:, new_general] = True
        for m in range(mask.shape[0]):
            n_specific = int((mask[m] & ~general).sum())
            new[m, rng.choice(others, size=n_specific, replace=False)] = True
        out[name] = new
    return {name: out[name] for name in masks}


def mask_report(masks: Mapping[str, np.ndarray], importance: Mapping[str, np.ndarray],
                pairs: Sequence[str]) -> dict:
    """What the masks take from each pair: per module and pair, the share of neurons kept and the
    share of the pair's own (raw) importance removed; and the same over all modules per pair
    (neurons pooled, importance shares averaged over modules)."""
    kept, removed = {}, {}
    for name, mask in masks.items():
        mask = np.asarray(mask, dtype=bool)
        theta = np.asarray(importance[name], dtype=np.float64)
        total = theta.sum(axis=1)
        lost = np.where(mask, 0.0, theta).sum(axis=1)
        kept[name] = {p: float(mask[i].mean()) for i, p in enumerate(pairs)}
        removed[name] = {p: float(lost[i] / total[i]) if total[i] > 0 else 0.0 for i, p in enumerate(pairs)}
    neurons = sum(np.asarray(m).shape[1] for m in masks.values())
    per_pair = {p: {"kept": float(sum(np.asarray(masks[n], bool)[i].sum() for n in masks) / neurons),
                    "importance_removed": float(np.mean([removed[n][p] for n in masks]))}
                for i, p in enumerate(pairs)}
    return {"per_pair": per_pair, "kept": kept, "importance_removed": removed}


# --------------------------------------------------------------------------- summary


def general_neurons(mask) -> np.ndarray:
    """``bool [F]``: the neurons in every row (pair) of a ``[pairs, F]`` mask, the *general* ones
    (shared by all pairs, whether rho picked them or a small k gave them to every pair); the
    others are *specific* to the pairs whose rows hold them."""
    return np.asarray(mask, dtype=bool).all(axis=0)


def summary_rows(masks: Mapping[str, np.ndarray], pairs: Sequence[str]) -> list[dict]:
    """Per-module statistics of a mask set, plus a final ``module == "total"`` row.

    A neuron in every pair's mask counts as *general* (it is shared by all pairs, whether
    it was picked by rho or assigned to all pairs by a small k); the others are *specific*.
    ``pairs_per_specific`` is the mean number of pairs that use a specific neuron;
    ``min_per_pair`` / ``max_per_pair`` are the fewest / most neurons any one pair uses.
    """
    rows = []
    tot_f = tot_gen = tot_spec = tot_spec_uses = 0
    tot_per_pair = np.zeros(len(pairs), dtype=np.int64)
    for name, mask in masks.items():
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 2 or mask.shape[0] != len(pairs):
            raise ValueError(f"mask of {name} has shape {mask.shape}, expected [{len(pairs)}, F]")
        uses = mask.sum(axis=0)
        general = general_neurons(mask)
        n_spec = int((~general).sum())
        spec_uses = int(uses[~general].sum())
        per_pair = mask.sum(axis=1)
        rows.append(
            dict(
                module=name,
                neurons=int(mask.shape[1]),
                general=int(general.sum()),
                specific=n_spec,
                pairs_per_specific=spec_uses / n_spec if n_spec else 0.0,
                min_per_pair=int(per_pair.min()),
                max_per_pair=int(per_pair.max()),
            )
        )
        tot_f += mask.shape[1]
        tot_gen += int(general.sum())
        tot_spec += n_spec
        tot_spec_uses += spec_uses
        tot_per_pair += per_pair
    rows.append(
        dict(
            module="total",
            neurons=tot_f,
            general=tot_gen,
            specific=tot_spec,
            pairs_per_specific=tot_spec_uses / tot_spec if tot_spec else 0.0,
            min_per_pair=int(tot_per_pair.min()) if len(pairs) else 0,
            max_per_pair=int(tot_per_pair.max()) if len(pairs) else 0,
        )
    )
    return rows


def summarize(masks: Mapping[str, np.ndarray], pairs: Sequence[str]) -> str:
    """Fixed-width table of :func:`summary_rows`."""
    rows = summary_rows(masks, pairs)
    width = max(len("module"), *(len(r["module"]) for r in rows))
    header = (
        f"{'module':<{width}} {'F':>7} {'general':>8} {'specific':>8} "
        f"{'pairs/spec':>10} {'min/pair':>8} {'max/pair':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        if r["module"] == "total":
            lines.append("-" * len(header))
        lines.append(
            f"{r['module']:<{width}} {r['neurons']:>7d} {r['general']:>8d} {r['specific']:>8d} "
            f"{r['pairs_per_specific']:>10.2f} {r['min_per_pair']:>8d} {r['max_per_pair']:>8d}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- save / load


def save_masks(path, masks: Mapping[str, np.ndarray], pairs: Sequence[str], meta: dict) -> None:
    """Write a mask set to one ``.npz`` file (atomically: ``errors.atomic_write``; a failed write
    raises WriteError naming it): one bool array per module plus a JSON entry holding ``pairs``
    and ``meta`` (which must be JSON-serialisable)."""
    path = os.fspath(path)
    if _META_KEY in masks:
        raise ValueError(f"module name {_META_KEY!r} is reserved")
    arrays = {name: np.asarray(m, dtype=bool) for name, m in masks.items()}
    for name, m in arrays.items():
        if m.ndim != 2 or m.shape[0] != len(pairs):
            raise ValueError(f"mask of {name} has shape {m.shape}, expected [{len(pairs)}, F]")
    arrays[_META_KEY] = np.asarray(json.dumps({"pairs": list(pairs), "meta": meta}))
    with atomic_write(path, "wb", f"mask file {path}") as f:
        np.savez(f, **arrays)


def load_masks(
    path,
    expected: Mapping[str, int] | None = None,
    num_pairs: int | None = None,
) -> tuple[dict[str, np.ndarray], list[str], dict]:
    """Read a mask set written by :func:`save_masks`; returns ``(masks, pairs, meta)``.

    If ``expected`` (module -> number of neurons F) is given, the file must hold exactly those
    modules with those widths; if ``num_pairs`` is given, it must hold that many pairs.
    Raises :class:`CheckpointError` naming the file, module and both shapes otherwise.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"mask file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"mask file {path} is not a readable .npz file: {e}") from None
    if _META_KEY not in arrays:
        raise CheckpointError(f"mask file {path} has no {_META_KEY} entry (pairs and meta)")
    try:
        info = json.loads(str(arrays.pop(_META_KEY)))
        pairs, meta = list(info["pairs"]), dict(info["meta"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"mask file {path} has a corrupted {_META_KEY} entry: {e}") from None

    if num_pairs is not None and len(pairs) != num_pairs:
        raise CheckpointError(
            f"mask file {path} holds {len(pairs)} pairs {pairs}, the model expects {num_pairs}"
        )
    masks = {}
    for name, m in arrays.items():
        if m.ndim != 2 or m.shape[0] != len(pairs):
            raise CheckpointError(
                f"mask file {path}: module {name} has shape {m.shape}, expected [{len(pairs)}, F]"
            )
        masks[canonical_name(name)] = m.astype(bool)
    if expected is not None:
        missing = [n for n in expected if n not in masks]
        extra = [n for n in masks if n not in expected]
        if missing or extra:
            raise CheckpointError(
                f"mask file {path} does not fit the model: missing modules {missing}, "
                f"unexpected modules {extra}"
            )
        for name, width in expected.items():
            if masks[name].shape[1] != width:
                raise CheckpointError(
                    f"mask file {path}: module {name} has shape {masks[name].shape}, "
                    f"the model expects {(len(pairs), int(width))}"
                )
    return masks, pairs, meta
