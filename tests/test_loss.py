"""Label-smoothed loss and the learning-rate schedule by hand; the jitted train step."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import dot_equations
from jax_namnmt.method.masks import flatten, nest
from jax_namnmt.training.loss import label_smoothed_nll, output_loss, output_loss_by_segment
from jax_namnmt.training.step import init_state, inverse_sqrt_lr, make_optimizer, make_train_step, schedule_args

NUM_PAIRS = 3


def test_label_smoothed_nll_by_hand():
    # V = 4, epsilon = 0.1, eps_i = 0.1 / 3; loss = (1 - 0.1 - 0.1/3) * nll + 0.1/3 * sum_v -log p_v
    # token 1: p = [0.1, 0.2, 0.3, 0.4] (logits = log p + 5), label 3:
    #   -log p = [2.302585, 1.609438, 1.203973, 0.916291], sum 6.032287
    #   nll = 0.916291, loss = 0.866667 * 0.916291 + 0.033333 * 6.032287 = 0.995195
    # token 2: uniform logits, label 1: nll = log 4 = 1.386294, loss = log 4 too
    # token 3: padding (weight 0), far-off logits that would dominate if counted
    logits = np.array([[np.log([0.1, 0.2, 0.3, 0.4]) + 5.0, [0.0, 0.0, 0.0, 0.0], [10.0, -10.0, 3.0, 0.0]]],
                      np.float32)
    labels = np.array([[3, 1, 1]], np.int32)
    weights = np.array([[1, 1, 0]], np.int32)
    loss, nll, tokens = label_smoothed_nll(logits, labels, weights, 0.1)
    assert float(tokens) == 2.0
    np.testing.assert_allclose(float(nll), 0.916291 + 1.386294, rtol=1e-5)   # = log 10
    np.testing.assert_allclose(float(loss), 0.995195 + 1.386294, rtol=1e-5)  # 2.381489
    # fairseq's other spelling: (1 - eps) * nll + eps_i * sum_{v != y} -log p_v
    np.testing.assert_allclose(0.9 * 0.916291 + 0.1 / 3 * (6.032287 - 0.916291), 0.995195, rtol=1e-5)
    # epsilon 0: plain cross entropy
    loss0, nll0, _ = label_smoothed_nll(logits, labels, weights, 0.0)
    np.testing.assert_allclose(float(loss0), math.log(10.0), rtol=1e-6)
    np.testing.assert_allclose(float(nll0), math.log(10.0), rtol=1e-6)
    # boolean weights (what the train step passes) give the same
    loss_b, _, _ = label_smoothed_nll(logits, labels, weights > 0, 0.1)
    assert float(loss_b) == float(loss)


@pytest.mark.parametrize("chunk", [0, 7, 32, 100, 512])
def test_output_loss_equals_loss_through_logits(chunk):
    """The chunked custom-VJP loss from hidden states: same sums as ``label_smoothed_nll`` of
    ``hidden @ embedding.T``, and the same gradients of the hidden states and the embedding for any
    mix of the loss's and the nll's cotangents (nll alone included), padding weights included;
    chunks that do not divide the tokens (7, 32) pad with zero-weight tokens."""
    rng = np.random.default_rng(0)
    n, d, vocab = 100, 16, 37
    hidden = rng.normal(size=(n, d)).astype(np.float32)
    emb = (0.3 * rng.normal(size=(vocab, d))).astype(np.float32)
    labels = rng.integers(0, vocab, n).astype(np.int32)
    weights = rng.random(n) < 0.8

    def through_logits(h, e, c_loss, c_nll):
        loss, nll, _ = label_smoothed_nll(h @ e.T, labels, weights, 0.1)
        return c_loss * loss + c_nll * nll

    def fused(h, e, c_loss, c_nll):
        loss, nll, _ = output_loss(h, e, labels, weights, 0.1, chunk)
        return c_loss * loss + c_nll * nll

    sums = output_loss(hidden, emb, labels, weights, 0.1, chunk)
    for got, want in zip(sums, label_smoothed_nll(hidden @ emb.T, labels, weights, 0.1)):
        np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    fused_value_and_grad = jax.jit(jax.value_and_grad(fused, argnums=(0, 1)))  # compiled once, not once a mix
    for c_loss, c_nll in [(1.0, 0.0), (0.0, 1.0), (0.7, -0.4)]:
        want_v, (want_h, want_e) = jax.value_and_grad(through_logits, argnums=(0, 1))(hidden, emb, c_loss, c_nll)
        got_v, (got_h, got_e) = fused_value_and_grad(hidden, emb, c_loss, c_nll)
        np.testing.assert_allclose(float(got_v), float(want_v), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(got_h), np.asarray(want_h), atol=1e-6)
        np.testing.assert_allclose(np.asarray(got_e), np.asarray(want_e), atol=1e-5)
    # padding tokens get exactly zero gradient
    grad_h = jax.grad(fused)(hidden, emb, 1.0, 0.3)
    assert not np.asarray(grad_h)[~weights].any() and np.asarray(grad_h)[weights].any()


@pytest.mark.parametrize("chunk", [0, 7])
def test_output_loss_by_segment_gives_each_segment_its_own_tokens_sums(chunk):
    """Split by segment (a token's pair in validation), each segment's three sums are
    ``label_smoothed_nll`` over that segment's tokens alone; a segment without tokens gets zeros."""
    rng = np.random.default_rng(1)
    n, d, vocab, segments = 60, 8, 29, 4
    hidden = rng.normal(size=(n, d)).astype(np.float32)
    emb = (0.3 * rng.normal(size=(vocab, d))).astype(np.float32)
    labels = rng.integers(0, vocab, n).astype(np.int32)
    weights = rng.random(n) < 0.8
    seg = rng.choice([0, 1, 3], n).astype(np.int32)  # segment 2 has no tokens
    got = [np.asarray(x) for x in output_loss_by_segment(hidden, emb, labels, weights, seg, segments, 0.1, chunk)]
    for s in range(segments):
        want = label_smoothed_nll(hidden @ emb.T, labels, weights & (seg == s), 0.1)
        for got_sums, want_sum in zip(got, want):
            np.testing.assert_allclose(got_sums[s], float(want_sum), rtol=1e-5, atol=1e-6)
    assert got[2][2] == 0.0 and got[1][2] == 0.0 and got[0][2] == 0.0


def test_output_loss_in_bfloat16_matmuls_float32_softmax():
    """bfloat16 hidden states: the output layer's three matmuls take bfloat16 operands (float32
    accumulation), the sums equal the float32 loss of the bfloat16-rounded operands (products of
    bfloat16 numbers are exact in float32), the gradients equal theirs up to the rounding of the
    logits' gradient to bfloat16, and the hidden gradient comes back in bfloat16."""
    rng = np.random.default_rng(1)
    n, d, vocab = 96, 32, 53
    hidden = jnp.asarray(rng.normal(size=(n, d)), jnp.bfloat16)
    emb = (0.3 * rng.normal(size=(vocab, d))).astype(np.float32)
    emb_rounded = np.asarray(jnp.asarray(emb, jnp.bfloat16).astype(jnp.float32))
    labels = rng.integers(0, vocab, n).astype(np.int32)
    weights = rng.random(n) < 0.8

    def reference(h, e):
        return label_smoothed_nll(h @ e.T, labels, weights, 0.1)[0]

    def fused(h, e):
        return output_loss(h, e, labels, weights, 0.1, 0)[0]

    want = jax.value_and_grad(reference, argnums=(0, 1))(hidden.astype(jnp.float32), emb_rounded)
    got = jax.jit(jax.value_and_grad(fused, argnums=(0, 1)))(hidden, emb)
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-5)
    assert got[1][0].dtype == jnp.bfloat16 and got[1][1].dtype == jnp.float32
    for g, w in zip(got[1], want[1]):
        scale = float(np.abs(np.asarray(w)).max())
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w), atol=2e-2 * scale)
    dots = dot_equations(jax.make_jaxpr(jax.grad(fused, argnums=(0, 1)))(hidden, emb).jaxpr)
    assert [[v.aval.dtype for v in eqn.invars] for eqn in dots] == [[jnp.bfloat16] * 2] * 3, dots


@pytest.mark.parametrize("chunk", [0, 40])
def test_output_loss_with_bfloat16_logits(chunk):
    """``logits_dtype="bfloat16"``: the logits matmul writes bfloat16 (float32 accumulation) and the
    loss is the float32 loss of those rounded logits; the gradients are those of the float32 logits
    up to that rounding; the other two matmuls and everything else are unchanged."""
    rng = np.random.default_rng(2)
    n, d, vocab = 96, 32, 53
    hidden = jnp.asarray(rng.normal(size=(n, d)), jnp.bfloat16)
    emb = (0.3 * rng.normal(size=(vocab, d))).astype(np.float32)
    emb_rounded = jnp.asarray(emb, jnp.bfloat16)
    labels = rng.integers(0, vocab, n).astype(np.int32)
    weights = rng.random(n) < 0.8

    def fused(h, e, logits_dtype):
        return output_loss(h, e, labels, weights, 0.1, chunk, logits_dtype)[0]

    logits = jnp.matmul(hidden, emb_rounded.T, preferred_element_type=jnp.float32)
    want = label_smoothed_nll(logits.astype(jnp.bfloat16), labels, weights, 0.1)[0]
    # XLA's CPU backend computes a bfloat16-output dot in float32 and rounds after it; by default
    # it may then drop that round trip (excess precision): here it must not, to see the rounding
    grad = jax.jit(jax.value_and_grad(fused, argnums=(0, 1)), static_argnums=2)
    got = grad.lower(hidden, emb, "bfloat16").compile(compiler_options={"xla_allow_excess_precision": False})(
        hidden, emb)
    np.testing.assert_allclose(float(got[0]), float(want), rtol=1e-5)
    assert float(got[0]) != float(label_smoothed_nll(logits, labels, weights, 0.1)[0])  # it did round
    full = grad(hidden, emb, "float32")
    for g, w in zip(got[1], full[1]):
        scale = float(np.abs(np.asarray(w, np.float32)).max())
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), atol=2e-2 * scale)
    jaxpr = jax.make_jaxpr(jax.grad(fused, argnums=(0, 1)), static_argnums=2)(hidden, emb, "bfloat16").jaxpr
    dots = dot_equations(jaxpr)
    assert sorted(str(eqn.outvars[0].aval.dtype) for eqn in dots) == ["bfloat16", "float32", "float32"], dots


def test_output_loss_of_no_tokens_is_zero():
    emb = np.ones((5, 4), np.float32)
    args = (np.zeros((0, 4), np.float32), emb, np.zeros((0,), np.int32), np.zeros((0,), np.float32), 0.1, 3)
    assert [float(x) for x in output_loss(*args)] == [0.0, 0.0, 0.0]
    grad_e = jax.grad(lambda e: output_loss(args[0], e, *args[2:])[0])(emb)
    assert not np.asarray(grad_e).any()


def test_inverse_sqrt_lr_by_hand():
    lr = lambda step: float(inverse_sqrt_lr(step, 1e-3, 4, 1e-7))  # noqa: E731
    # fairseq: the first update uses warmup_init_lr; warm-up 1e-7 + (1e-3 - 1e-7) * step / 4
    np.testing.assert_allclose(lr(0), 1e-7, rtol=1e-6)
    np.testing.assert_allclose(lr(1), 2.50075e-4, rtol=1e-6)
    np.testing.assert_allclose(lr(3), 7.50025e-4, rtol=1e-6)
    # the peak after 4 updates, then 1e-3 * sqrt(4 / step)
    np.testing.assert_allclose(lr(4), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(lr(8), 7.0710678e-4, rtol=1e-6)
    np.testing.assert_allclose(lr(16), 5e-4, rtol=1e-6)
    np.testing.assert_allclose(lr(100), 2e-4, rtol=1e-6)
    # schedule given as data, traced in the step
    args = schedule_args(1e-3, 4, 1e-7)
    np.testing.assert_allclose(float(jax.jit(inverse_sqrt_lr)(16, args[0], args[1], args[2])), 5e-4, rtol=1e-6)
    # no warm-up: decay from the first update
    np.testing.assert_allclose(float(inverse_sqrt_lr(0, 1e-3, 0, 1e-7)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(inverse_sqrt_lr(3, 1e-3, 0, 1e-7)), 1e-3 / math.sqrt(3), rtol=1e-6)


def _batch(pack, example):
    rng = np.random.default_rng(0)
    rows = [
        [example(rng, 4, 3, 0), example(rng, 3, 5, 1), example(rng, 5, 4, 2)],
        [example(rng, 6, 4, 2), example(rng, 2, 3, 0)],
        [example(rng, 7, 6, 1)],
    ]
    return pack(rows, 16, 16)


def _run(config, params, batch, masks, key, steps, schedule, start_step=0):
    step_fn = make_train_step(config, 0.1)
    state = init_state(jax.tree.map(np.array, params), make_optimizer())  # fresh buffers: the step donates them
    state["step"] = state["step"] + start_step
    metrics = []
    for _ in range(steps):
        state, m = step_fn(state, batch, masks, key, schedule)
        metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics


@pytest.fixture(scope="module")
def train_setup(tiny_config, tiny_params, pack, example, make_masks):
    masks = flatten(make_masks(tiny_config, NUM_PAIRS, seed=1))
    # neuron 3 of decoder fc1 is dropped by every pair: it must never be updated
    masks["decoder_layer_0/ffn/fc1"][:, 3] = 0.0
    return tiny_config, tiny_params, _batch(pack, example), nest(masks)


def test_train_steps_lower_the_loss_and_skip_masked_neurons(train_setup, fns):
    config, params, batch, masks = train_setup

    def loss(p):  # per-token label-smoothed loss, no dropout
        logits = fns.forward(p, batch, masks, config=config)
        total, _, tokens = label_smoothed_nll(logits, batch["tgt_labels"], batch["tgt_segments"] > 0, 0.1)
        return float(total / tokens)

    state, metrics = _run(config, params, batch, masks, jax.random.key(0), 10, schedule_args(1e-2, 0, 0.0))
    assert int(state["step"]) == 10
    assert [int(m["tokens"]) for m in metrics] == [int((batch["tgt_segments"] > 0).sum())] * 10
    before, after = loss(params), loss(state["params"])
    assert after < 0.7 * before, (before, after)
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    # no warm-up: 1e-2 / sqrt(max(step, 1))
    np.testing.assert_allclose([m["lr"] for m in metrics], [1e-2 / math.sqrt(max(s, 1)) for s in range(10)], rtol=1e-6)
    # The dropped neuron's weights are bitwise unchanged (zero gradient -> zero Adam update);
    # the kept ones moved.
    old = params["decoder_layer_0"]["ffn"]["fc1"]["dense"]
    new = state["params"]["decoder_layer_0"]["ffn"]["fc1"]["dense"]
    np.testing.assert_array_equal(new["kernel"][:, 3], old["kernel"][:, 3])
    assert new["bias"][3] == old["bias"][3]
    moved = np.abs(new["kernel"] - old["kernel"]).sum(axis=0) > 0
    assert moved.sum() >= moved.size // 2


def test_train_runs_are_reproducible_and_dropout_follows_the_step(train_setup):
    config, params, batch, masks = train_setup
    assert config.dropout > 0
    schedule = schedule_args(3e-3, 1, 0.0)
    a, metrics_a = _run(config, params, batch, masks, jax.random.key(0), 3, schedule)
    b, metrics_b = _run(config, params, batch, masks, jax.random.key(0), 3, schedule)
    c, _ = _run(config, params, batch, masks, jax.random.key(1), 3, schedule)
    assert jax.tree.all(jax.tree.map(np.array_equal, a["params"], b["params"]))
    assert [float(m["loss"]) for m in metrics_a] == [float(m["loss"]) for m in metrics_b]
    assert not jax.tree.all(jax.tree.map(np.array_equal, a["params"], c["params"]))

    # With lr 0 the parameters never change, yet consecutive steps draw different dropout
    # (fold_in(key, step)); a run started at step 1 draws exactly step 1's dropout.
    frozen = schedule_args(0.0, 1, 0.0)
    d, metrics_d = _run(config, params, batch, masks, jax.random.key(0), 2, frozen)
    assert jax.tree.all(jax.tree.map(np.array_equal, d["params"], params))
    assert metrics_d[0]["loss"] != metrics_d[1]["loss"]
    _, resumed = _run(config, params, batch, masks, jax.random.key(0), 1, frozen, start_step=1)
    assert resumed[0]["loss"] == metrics_d[1]["loss"]
    assert metrics_a[0]["loss"] == metrics_d[0]["loss"]  # same params, same step-0 dropout
