"""Do the pairs pull the shared parameters the same way? Per-pair gradient agreement.

The method exists to keep pairs from interfering: in a multilingual update, a pair whose gradient
points against another's undoes its progress (Yu et al., *Gradient Surgery for Multi-Task
Learning*, 2020; Wang et al., *Gradient Vaccine*, ICLR 2021, measure it for multilingual NMT by
the cosine of per-language gradients). Here: each pair's gradient of its summed NLL (no label
smoothing, dropout off) over its own examples, divided by its target tokens, split in two halves
of its examples, and

- ``self[p]``: the cosine of pair p's two half-gradients, how far the data agree with themselves
  (below 1 from sampling noise alone);
- ``cross[p, q]``: the mean cosine of p's half with q's other half, both ways;
- ``corrected[p, q] = cross[p, q] / sqrt(self[p] * self[q])``: the agreement the noise leaves room
  for (Spearman's correction for attenuation); about 1: the pairs' gradients point the same way as
  far as the data can tell, 0: unrelated, below 0: they conflict.

Each is computed over groups of parameters: all of them; the masked projections' *general*
neurons (kept for every pair) and *specific* ones (the others; a neuron is its output feature: its
kernel column and bias entry); everything else (embeddings, layer norms). Numpy after the
gradients; ``pair_gradients`` jit-compiles one gradient step per batch shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import jax
import numpy as np

from jax_namnmt.method.masks import flatten

GROUPS = ("all", "general", "specific", "other")


def pair_gradients(params, batches: Iterable[Mapping[str, np.ndarray]], config, *, chunk: int = 0) -> dict:
    """The gradient of the summed NLL over ``batches`` divided by their target tokens, flat by
    parameter path (float64 numpy). Dropout off, no masks (the model every pair's update moves)."""
    from jax_namnmt.model.transformer import Transformer
    from jax_namnmt.training.step import batch_loss

    model = Transformer(config)

    @jax.jit
    def grad_step(params, batch):
        def nll(p):
            _, total, tokens = batch_loss(model, p, batch, None, 0.0, chunk)
            return total, tokens

        return jax.grad(nll, has_aux=True)(params)

    total, tokens = None, 0.0
    for batch in batches:
        grads, count = grad_step(params, batch)
        grads = {k: np.asarray(v, np.float64) for k, v in flatten(jax.device_get(grads)).items()}
        total = grads if total is None else {k: total[k] + grads[k] for k in total}
        tokens += float(count)
    if total is None:
        raise ValueError("pair_gradients: no batches")
    return {k: v / max(tokens, 1.0) for k, v in total.items()}


def group_selectors(paths_shapes: Mapping[str, tuple], masks: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """For every group of ``GROUPS`` (but ``all``), the parameter paths it takes and which part:
    ``{group: {path: bool selector of the array, or True for all of it}}``. A masked projection
    ``M`` (``masks[M]``: bool ``[pairs, neurons]``) owns ``M/dense/kernel`` (its columns) and
    ``M/dense/bias``; a neuron is general when every pair keeps it."""
    groups: dict[str, dict] = {"general": {}, "specific": {}, "other": {}}
    owned = set()
    for name, mask in masks.items():
        general = np.asarray(mask, bool).all(axis=0)
        for leaf in ("kernel", "bias"):
            path = f"{name}/dense/{leaf}"
            if path not in paths_shapes:
                raise KeyError(f"mask {name} has no parameter {path}")
            shape = paths_shapes[path]
            if shape[-1] != general.shape[0]:
                raise ValueError(f"{path} has {shape[-1]} output features but mask {name} {general.shape[0]}")
            groups["general"][path] = np.broadcast_to(general, shape)
            groups["specific"][path] = np.broadcast_to(~general, shape)
            owned.add(path)
    groups["other"] = {path: True for path in paths_shapes if path not in owned}
    return groups


def _vectors(grads: Sequence[Mapping[str, np.ndarray]], selector: Mapping[str, object] | None) -> np.ndarray:
    """``[len(grads), D]``: each gradient's entries that ``selector`` picks (None: all), in one order."""
    rows = []
    for g in grads:
        parts = []
        for path in sorted(g if selector is None else selector):
            pick = True if selector is None else selector[path]
            value = g[path]
            parts.append(value.ravel() if pick is True else value[pick])
        rows.append(np.concatenate(parts) if parts else np.zeros(0))
    return np.stack(rows)


def cosines(vectors: np.ndarray) -> np.ndarray:
    """The cosine of every two rows of ``vectors [n, D]`` (NaN where a row is zero)."""
    gram = vectors @ vectors.T
    norms = np.sqrt(np.diag(gram))
    with np.errstate(invalid="ignore", divide="ignore"):
        return gram / np.outer(norms, norms)


def agreement(halves: Sequence[tuple[Mapping, Mapping]], masks: Mapping[str, np.ndarray] | None = None) -> dict:
    """``{group: {"self": [P], "cross": [P, P], "corrected": [P, P], "size": entries}}`` from each
    pair's two half-gradients ``halves[p] = (g_a, g_b)``; without ``masks`` only ``all``."""
    first = halves[0][0]
    selectors = {"all": None}
    if masks is not None:
        selectors |= group_selectors({k: v.shape for k, v in first.items()}, masks)
    P = len(halves)
    out = {}
    for group, selector in selectors.items():
        vectors = _vectors([g for pair in halves for g in pair], selector)  # rows 2p, 2p + 1: pair p's halves
        c = cosines(vectors)
        a, b = np.arange(P) * 2, np.arange(P) * 2 + 1
        self_cos = c[a, b]
        cross = (c[np.ix_(a, b)] + c[np.ix_(b, a)]) / 2
        with np.errstate(invalid="ignore"):
            corrected = cross / np.sqrt(np.outer(self_cos, self_cos))
        np.fill_diagonal(cross, np.nan)
        np.fill_diagonal(corrected, np.nan)
        out[group] = {"self": self_cos, "cross": cross, "corrected": corrected, "size": int(vectors.shape[1])}
    return out


def summary(result: Mapping[str, Mapping]) -> dict[str, dict[str, float]]:
    """Per group: the mean self-agreement, and the mean, minimum and count of negative entries of
    the cross and corrected agreements over pairs p != q."""
    rows = {}
    for group, r in result.items():
        cross, corrected = r["cross"], r["corrected"]
        off = ~np.eye(len(cross), dtype=bool)
        rows[group] = {"self": float(np.nanmean(r["self"])), "cross_mean": float(np.nanmean(cross[off])),
                       "cross_min": float(np.nanmin(cross[off])), "corrected_mean": float(np.nanmean(corrected[off])),
                       "corrected_min": float(np.nanmin(corrected[off])),
                       "negative": int((cross[off] < 0).sum()), "entries": int(r["size"])}
    return rows
