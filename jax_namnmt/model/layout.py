"""The compact token layout: every position-wise computation on real tokens only.

A packed batch in the *rows* layout is ``[rows, row_len]`` per side, and every projection,
norm, dropout and the output layer also runs on the rows' empty slots (7-8% of them on
Multi30k). In the *compact* layout a side's tokens are one array ``[G, N]`` (``G`` groups of
``N`` token slots, the batch's examples one after another, padding only at the end), and only
attention sees rows: two index arrays move a ``[G, N, ...]`` array into the rows of the same
packing and back,

- ``index [G, R, L]``: the compact position of the token in each row slot (``N`` at an empty
  slot, which reads a zero);
- ``slot [G, N]``: the row slot ``r * L + l`` of each compact token (``R * L`` for the padding
  at the end, which reads a zero).

Each real token sits in exactly one row slot, so the two moves are inverse permutations (up to
the zeros), and the gradient of one is the other: ``regroup`` is a gather of whole token rows
whose VJP is a gather too (autodiff of a gather would scatter-add, which XLA's CPU backend runs
as a serial loop). The attention heads then go head-major (``[H, R * L, D]``) with a transpose
(a gather that moves the head axis itself, element by element, measured no faster).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _take_rows(x, take):
    """``x[take]`` along axis 0 (whole rows: one contiguous copy each), zeros where ``take == len(x)``."""
    padded = jnp.concatenate([x, jnp.zeros((1,) + x.shape[1:], x.dtype)])
    return jnp.take(padded, take, axis=0, mode="clip")


@jax.custom_vjp
def regroup(x, take, inverse):
    """``x[take]`` along axis 0 (zeros at ``take == len(x)``); ``inverse`` is the inverse map
    (``take[inverse[n]] == n`` for every row ``n`` that ``take`` reads, ``len(take)`` for the
    others), which makes the gradient a gather too."""
    return _take_rows(x, take)


regroup.defvjp(lambda x, take, inverse: (_take_rows(x, take), (take, inverse)),
               lambda res, g: (_take_rows(g, res[1]), None, None))


def heads_to_rows(x, index, slot):
    """Attention heads ``x [G, N, H, D]`` (compact) -> ``[G, H, R, L, D]``: head-major rows, so
    that the attention dots have their batch dimensions (g, h, r) leading."""
    groups, rows, row_len = index.shape
    flat = jax.vmap(regroup)(x, index.reshape(groups, rows * row_len), slot)  # [G, M, H, D]
    return jnp.swapaxes(flat, 1, 2).reshape((groups, x.shape[2], rows, row_len) + x.shape[3:])


def heads_to_compact(y, index, slot):
    """``y [G, H, R, L, D]`` (head-major rows) -> ``[G, N, H, D]`` (compact)."""
    groups, rows, row_len = index.shape
    flat = jnp.swapaxes(y.reshape(y.shape[:2] + (rows * row_len,) + y.shape[4:]), 1, 2)  # [G, M, H, D]
    return jax.vmap(regroup)(flat, slot, index.reshape(groups, rows * row_len))


def int_rows(values, index):
    """Integer ``values [G, N]`` (segment ids) in the rows layout ``[G * R, L]``, 0 at empty
    slots (not differentiated, so a plain gather)."""
    groups, rows, row_len = index.shape
    return jax.vmap(_take_rows)(values, index.reshape(groups, rows * row_len)).reshape(groups * rows, row_len)
