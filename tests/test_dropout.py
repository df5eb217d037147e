"""The hashed dropout: identity when deterministic, the configured drop rate, exact rescaling,
reproducible per key, and draws that are uniform and independent across elements and keys."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_namnmt.model.dropout import Dropout, draws, dropout, linear_index


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_drop_rate_and_scaling(rate):
    x = jnp.full((301, 257), 2.0, jnp.float32)
    y = np.asarray(dropout(jax.random.key(0), x, rate))
    kept = y != 0
    # kept values are x / (1 - rate) exactly, dropped ones exactly 0
    np.testing.assert_array_equal(np.unique(y), [0.0, np.float32(2.0) * np.float32(1.0 / (1.0 - rate))])
    n = kept.size
    assert abs((1.0 - kept.mean()) - rate) < 4 * np.sqrt(rate * (1 - rate) / n)  # 4 standard deviations
    # neighbours along either axis, and elements far apart in the flat index, are independent
    flat = kept.reshape(-1)
    for lag in (1, 257, 4096, 65536):
        assert abs(np.corrcoef(flat[:-lag], flat[lag:])[0, 1]) < 0.02, lag


def test_draws_are_uniform_distinct_and_independent_across_keys():
    d = np.asarray(draws(jax.random.key(5), (256, 256)), np.uint64)
    assert np.unique(d).size == d.size  # a bijection of the index for a fixed key
    n = d.size
    for bits in (d >> 28, d & 15, (d >> 12) & 15):  # top, bottom and middle 4 bits: 16 equal bins
        counts = np.bincount(bits.astype(np.int64).ravel(), minlength=16)
        chi2 = ((counts - n / 16) ** 2 / (n / 16)).sum()
        assert chi2 < 45, (chi2, counts)  # 15 degrees of freedom: P(chi2 > 45) < 1e-4
    # consecutive training steps (fold_in(key, step)) draw unrelated masks
    a, b = (np.asarray(draws(jax.random.fold_in(jax.random.key(0), s), (n,))) < 2**31 for s in (0, 1))
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.02
    with pytest.raises(ValueError, match="2\\*\\*32"):
        draws(jax.random.key(0), (2**16, 2**16))  # 2**32 elements: one too many


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


def test_linear_index_is_the_row_major_index():
    for shape in [(), (5,), (3, 4), (2, 3, 5, 7)]:
        np.testing.assert_array_equal(np.asarray(linear_index(shape)),
                                      np.arange(int(np.prod(shape)), dtype=np.uint32).reshape(shape))
