"""The compact token layout (model/layout.py): the moves between compact tokens and rows, and
the model on a compact batch against the same examples in the rows layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import NUM_PAIRS, TINY, noisy_params, random_example, random_masks
from conftest import test_jit as fast_jit

from jax_namnmt.data.batching import CompactBatcher, Examples, PackedBatcher
from jax_namnmt.method.importance import batch_importance
from jax_namnmt.model.layout import heads_to_compact, heads_to_rows, int_rows, regroup
from jax_namnmt.model.transformer import Transformer
from jax_namnmt.training.step import batch_loss


def _permutation(rng, n_compact, n_real, n_slots):
    """``take`` (slots -> compact, ``n_compact`` at empty slots) and its inverse for ``n_real``
    real tokens of ``n_compact`` placed at random slots."""
    slots = np.sort(rng.choice(n_slots, n_real, replace=False))
    take = np.full(n_slots, n_compact, np.int32)
    take[slots] = np.arange(n_real)
    inverse = np.full(n_compact, n_slots, np.int32)
    inverse[:n_real] = slots
    return jnp.asarray(take), jnp.asarray(inverse)


def test_regroup_is_a_gather_and_its_gradient_the_inverse_gather():
    rng = np.random.default_rng(0)
    take, inverse = _permutation(rng, 10, 7, 16)
    x = jnp.asarray(rng.standard_normal((10, 3)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((16, 3)), jnp.float32)
    plain = jnp.take(jnp.concatenate([x, jnp.zeros((1, 3))]), take, axis=0)
    assert np.array_equal(regroup(x, take, inverse), plain)
    assert not np.asarray(regroup(x, take, inverse))[np.asarray(take) == 10].any()  # empty slots read 0

    def via_take(x):  # autodiff of the plain gather: a scatter-add
        return (jnp.take(jnp.concatenate([x, jnp.zeros((1, 3))]), take, axis=0) * w).sum()

    got, want = jax.grad(lambda x: (regroup(x, take, inverse) * w).sum())(x), jax.grad(via_take)(x)
    assert np.array_equal(got, want)
    assert not np.asarray(got)[7:].any()  # padding tokens (read by no slot): exactly zero gradient


def test_heads_to_rows_and_back_restore_the_tokens():
    rng = np.random.default_rng(1)
    rows, width, n, real, heads = 3, 4, 10, 8, 2
    take, inverse = _permutation(rng, n, real, rows * width)
    index, slot = take.reshape(1, rows, width), inverse[None]
    x = jnp.asarray(rng.standard_normal((1, n, heads, 5)), jnp.float32)
    r = heads_to_rows(x, index, slot)
    assert r.shape == (1, heads, rows, width, 5)
    seg = jnp.asarray(np.arange(1, n + 1)[None], jnp.int32)
    seg_rows = np.asarray(int_rows(seg, index))
    for h in range(heads):  # row slot (r, l) holds the compact token index[r, l], head h
        for i, j in zip(*np.nonzero(seg_rows)):
            assert np.array_equal(r[0, h, i, j], x[0, seg_rows[i, j] - 1, h])
    back = np.asarray(heads_to_compact(r, index, slot))
    assert np.array_equal(back[0, :real], x[0, :real]) and not back[0, real:].any()


def _examples(n=24, seed=0):
    rng = np.random.default_rng(seed)
    src, tgt, pairs = [], [], []
    for i in range(n):
        s, t, p = random_example(rng, int(rng.integers(2, 9)), int(rng.integers(2, 9)), i % NUM_PAIRS)
        src.append(s.astype(np.int32)), tgt.append(t.astype(np.int32)), pairs.append(p)
    return Examples(src, tgt, np.asarray(pairs, np.int32), [("f", i + 1) for i in range(n)])


@pytest.fixture(scope="module")
def same_plan():
    """One plan of rows as a compact batch and as a rows batch."""
    examples = _examples()
    compact = CompactBatcher(examples, 48, 16, 16, seed=0, shuffle=False)
    plan = compact._plan(0)[0]
    rows = PackedBatcher(examples, compact.rows, 16, 16, seed=0, shuffle=False)
    as_jnp = lambda b: {k: jnp.asarray(v) for k, v in b.items()}  # noqa: E731
    return as_jnp(compact._materialize(plan)), as_jnp(rows._materialize(plan))


@pytest.mark.parametrize("masked", [False, True])
def test_model_on_a_compact_batch_equals_the_rows_layout(same_plan, masked):
    """Same examples, same rows: the same loss and the same parameter gradients (with pair masks too)."""
    compact, rows = same_plan
    assert int((compact["tgt_segments"] > 0).sum()) == int((rows["tgt_segments"] > 0).sum()) > 0
    params = noisy_params(TINY, seed=2)
    masks = random_masks(TINY, NUM_PAIRS, seed=3) if masked else None
    model = Transformer(TINY)

    def loss(p, batch):
        return batch_loss(model, p, batch, masks, 0.1, 0, deterministic=True)[0]

    # jitted (backend optimizations off, as conftest's helpers): a program per layout, where the eager
    # gradient compiled ~290 small ones (~11 s on 2 cores)
    value_and_grad = fast_jit(jax.value_and_grad(loss))
    (lc, gc), (lr, gr) = value_and_grad(params, compact), value_and_grad(params, rows)
    np.testing.assert_allclose(float(lc), float(lr), rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(gc)[0], jax.tree.leaves(gr)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def test_importance_on_a_compact_batch_equals_the_rows_layout(same_plan):
    compact, rows = same_plan
    params = noisy_params(TINY, seed=4)
    got = batch_importance(params, compact, None, config=TINY, num_pairs=NUM_PAIRS, method="taylor")
    want = batch_importance(params, rows, None, config=TINY, num_pairs=NUM_PAIRS, method="taylor")
    for name in want[0]:
        np.testing.assert_allclose(got[0][name], want[0][name], rtol=1e-4, atol=1e-7, err_msg=name)
    assert np.array_equal(got[1], want[1]) and np.array_equal(got[2], want[2])  # token counts per pair
