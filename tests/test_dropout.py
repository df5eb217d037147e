"""The 16-bit dropout: identity when deterministic, the configured drop rate, exact rescaling,
reproducible per key, and a key's draws independent of the other half of its words."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_namnmt.model.dropout import Dropout, dropout


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_drop_rate_and_scaling(rate):
    x = jnp.full((301, 257), 2.0, jnp.float32)  # odd size: the last word's high half is unused
    y = np.asarray(dropout(jax.random.key(0), x, rate))
    kept = y != 0
    # kept values are x / (1 - rate) exactly, dropped ones exactly 0
    np.testing.assert_array_equal(np.unique(y), [0.0, np.float32(2.0) * np.float32(1.0 / (1.0 - rate))])
    n = kept.size
    drop = 1.0 - kept.mean()
    assert abs(drop - rate) < 4 * np.sqrt(rate * (1 - rate) / n)  # 4 standard deviations
    # both halves of the words are used, and independently: the rate holds in each half
    flat = kept.reshape(-1)
    half = (n + 1) // 2
    for part in (flat[:half], flat[half:]):
        assert abs((1 - part.mean()) - rate) < 4 * np.sqrt(rate * (1 - rate) / part.size)
    assert abs(np.corrcoef(flat[: n - half], flat[half:])[0, 1]) < 0.02


def test_same_key_same_mask_other_key_other_mask():
    x = jnp.ones((64, 64))
    a = dropout(jax.random.key(1), x, 0.1)
    np.testing.assert_array_equal(a, dropout(jax.random.key(1), x, 0.1))
    assert (np.asarray(a) != np.asarray(dropout(jax.random.key(2), x, 0.1))).any()


def test_module_deterministic_and_edge_rates():
    x = jnp.arange(12.0).reshape(3, 4) + 1.0
    module = Dropout(0.5)
    np.testing.assert_array_equal(module.apply({}, x, deterministic=True), x)
    y = module.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    assert set(np.unique(np.asarray(y) / np.asarray(x))) <= {0.0, 2.0}
    np.testing.assert_array_equal(dropout(jax.random.key(0), x, 0.0), x)
    np.testing.assert_array_equal(dropout(jax.random.key(0), x, 1.0), np.zeros_like(x))
    # gradients flow through kept elements only, scaled like the values
    g = jax.grad(lambda v: dropout(jax.random.key(3), v, 0.5).sum())(x)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(dropout(jax.random.key(3), jnp.ones_like(x), 0.5)))
