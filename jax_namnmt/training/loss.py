"""Label-smoothed cross entropy over non-padding tokens (fairseq's formula)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def label_smoothed_nll(logits, labels, weights, epsilon: float):
    """Sums over tokens with weight 1 (padding has weight 0).

    fairseq ``label_smoothed_cross_entropy``: with ``eps_i = epsilon / (V - 1)``,
    ``loss = (1 - epsilon - eps_i) * nll + eps_i * sum_v(-log p_v)``.
    Returns ``(loss_sum, nll_sum, num_tokens)``.
    """
    lprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(lprobs, labels[..., None], axis=-1)[..., 0]
    smooth = -jnp.sum(lprobs, axis=-1)
    eps_i = epsilon / (logits.shape[-1] - 1)
    loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
    weights = weights.astype(jnp.float32)
    return jnp.sum(loss * weights), jnp.sum(nll * weights), jnp.sum(weights)
