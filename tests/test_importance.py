"""Neuron importance (method section 3): Taylor |dL/dh * h| and absolute |h|, averaged over a
pair's non-padding tokens, all pairs in one pass over a mixed, packed batch."""

from __future__ import annotations

from functools import partial

import jax
import numpy as np
import pytest

from jax_namnmt.method.importance import batch_importance, compute_importance
from jax_namnmt.method.masks import all_ones, flatten, module_sizes, nest
from jax_namnmt.model.transformer import Transformer
from jax_namnmt.training.loss import label_smoothed_nll

NUM_PAIRS = 3
RTOL, ATOL = 1e-5, 1e-8


def source_side(name: str) -> bool:
    """Written out independently of the library: which token positions a module lives on."""
    return name.startswith("encoder_") or name in {
        f"decoder_layer_{i}/cross_attn/{p}" for i in range(8) for p in ("k", "v")}


def _asymmetric_batch(pack, example, seed=0):
    """Pair 0: long sources, short targets; pair 1: the opposite; pair 2: in between.
    Three rows of 16, pairs mixed within rows."""
    rng = np.random.default_rng(seed)
    rows = [
        [example(rng, 7, 2, 0), example(rng, 2, 7, 1), example(rng, 4, 4, 2)],
        [example(rng, 2, 6, 1), example(rng, 6, 3, 0), example(rng, 3, 3, 2)],
        [example(rng, 8, 2, 0), example(rng, 3, 8, 1)],
    ]
    return pack(rows, 16, 16), rows


def _importance(params, batch, masks, config, method):
    return compute_importance(params, [batch], masks, config=config, num_pairs=NUM_PAIRS, method=method)


def _reference_absolute(acts, batch):
    """Theta_AV[m, i] = mean over pair m's non-padding tokens of |h_i|, from `intermediates`."""
    theta = {}
    for name, h in acts.items():
        side = "src" if source_side(name) else "tgt"
        h = np.abs(np.asarray(h, np.float64))
        rows = []
        for m in range(NUM_PAIRS):
            sel = (batch[f"{side}_segments"] > 0) & (batch[f"{side}_pairs"] == m)
            rows.append(h[sel].mean(axis=0))
        theta[name] = np.stack(rows)
    return theta


def _summed_loss(params, batch, masks, config):
    logits = Transformer(config).apply({"params": params}, batch, masks, deterministic=True)
    return label_smoothed_nll(logits, batch["tgt_labels"], batch["tgt_segments"] > 0, 0.1)[0]


# backend optimizations off, as for conftest.py's helpers: compiled for one call
@partial(jax.jit, static_argnames=("config",), compiler_options={"xla_backend_optimization_level": 0})
def _grad_wrt_masks(params, batch, masks, *, config):
    return jax.grad(_summed_loss, argnums=2)(params, batch, masks, config)


def _reference_taylor(params, batch, config):
    """Theta_TE by an independent route (no perturbations): give every token its own "pair"
    id with an all-ones mask row, so M[id(t), i] scales neuron i at token t only. Then
    dL/dM[id(t), i] = dL/dh_i(t) * dense_i(t) = g_i(t) * h_i(t) at M = 1, and
    Theta_TE[m, i] = mean over pair m's non-padding tokens t of |dL/dM[id(t), i]|."""
    rows, width = batch["src_tokens"].shape
    assert batch["tgt_inputs"].shape[1] == width
    ids = 1 + np.arange(rows * width, dtype=np.int32).reshape(rows, width)  # 0 is never used
    per_token = dict(batch, src_pairs=ids, tgt_pairs=ids + rows * width)
    n_ids = 1 + 2 * rows * width
    masks = nest({name: np.ones((n_ids, n), np.float32) for name, n in module_sizes(config).items()})
    grads = flatten(jax.device_get(_grad_wrt_masks(params, per_token, masks, config=config)))
    theta = {}
    for name, g in grads.items():
        side = "src" if source_side(name) else "tgt"
        g = np.abs(np.asarray(g, np.float64))
        out = []
        for m in range(NUM_PAIRS):
            sel = (batch[f"{side}_segments"] > 0) & (batch[f"{side}_pairs"] == m)
            out.append(g[per_token[f"{side}_pairs"][sel]].mean(axis=0))
        theta[name] = np.stack(out)
    return theta


@pytest.mark.parametrize("method", ["taylor", "absolute"])
def test_one_pass_over_mixed_batch_equals_per_pair_passes(
        method, tiny_config, tiny_params, pack, example, make_masks):
    masks = make_masks(tiny_config, NUM_PAIRS, seed=1)
    mixed, rows = _asymmetric_batch(pack, example)
    one_pass = _importance(tiny_params, mixed, masks, tiny_config, method)
    assert set(one_pass) == set(module_sizes(tiny_config))
    by_pair = {m: [ex for row in rows for ex in row if ex[2] == m] for m in range(NUM_PAIRS)}
    for m, examples in by_pair.items():
        # only pair m's examples, one per row (another packing than in the mixed batch)
        only_m = pack([[ex] for ex in examples] + [[]] * (3 - len(examples)), 16, 16)
        alone = _importance(tiny_params, only_m, masks, tiny_config, method)
        for name, theta in one_pass.items():
            assert theta.shape == (NUM_PAIRS, module_sizes(tiny_config)[name])
            np.testing.assert_allclose(theta[m], alone[name][m], rtol=RTOL, atol=ATOL, err_msg=f"{name} pair {m}")
            assert (theta[m] > 0).any()
    # A neuron outside a pair's mask has importance exactly 0 for that pair (h = 0 there).
    for name, theta in one_pass.items():
        dropped = flatten(masks)[name] == 0
        assert dropped.any() and (theta[dropped] == 0).all(), name


def test_taylor_matches_independent_per_token_gradients(tiny_config, tiny_params, pack, example):
    batch, _ = _asymmetric_batch(pack, example, seed=1)
    theta = _importance(tiny_params, batch, all_ones(tiny_config, NUM_PAIRS), tiny_config, "taylor")
    reference = _reference_taylor(tiny_params, batch, tiny_config)
    for name in module_sizes(tiny_config):
        assert (reference[name] > 0).any(), name
        np.testing.assert_allclose(theta[name], reference[name], rtol=RTOL, atol=ATOL, err_msg=name)


def test_absolute_is_mean_abs_activation(tiny_config, tiny_params, pack, example, make_masks, fns):
    batch, _ = _asymmetric_batch(pack, example, seed=2)
    masks = make_masks(tiny_config, NUM_PAIRS, seed=3)
    theta = _importance(tiny_params, batch, masks, tiny_config, "absolute")
    _, acts = fns.forward_h(tiny_params, batch, masks, config=tiny_config)
    reference = _reference_absolute(acts, batch)
    for name in module_sizes(tiny_config):
        np.testing.assert_allclose(theta[name], reference[name], rtol=RTOL, atol=ATOL, err_msg=name)


def _junk_padding(batch, rng, vocab):
    """Fill every padding position (segment 0) with junk tokens, labels and pair ids."""
    batch = {k: v.copy() for k, v in batch.items()}
    for side, keys in (("src", ("src_tokens",)), ("tgt", ("tgt_inputs", "tgt_labels"))):
        pad = batch[f"{side}_segments"] == 0
        for key in keys:
            batch[key][pad] = rng.integers(4, vocab, pad.sum())
        batch[f"{side}_pairs"][pad] = rng.integers(0, NUM_PAIRS, pad.sum())
    return batch


@pytest.mark.parametrize("method", ["taylor", "absolute"])
def test_padding_does_not_count(method, tiny_config, tiny_params, pack, example, make_masks):
    masks = make_masks(tiny_config, NUM_PAIRS, seed=1)
    batch, rows = _asymmetric_batch(pack, example)
    theta = _importance(tiny_params, batch, masks, tiny_config, method)
    rng = np.random.default_rng(5)
    # Same shape: junk in the padding positions, plus one more batch that is all padding.
    junk = _junk_padding(batch, rng, tiny_config.vocab_size)
    empty = _junk_padding(pack([[], [], []], 16, 16), rng, tiny_config.vocab_size)
    with_padding = compute_importance(tiny_params, [junk, empty], masks, config=tiny_config,
                                      num_pairs=NUM_PAIRS, method=method)
    for name in theta:
        np.testing.assert_allclose(with_padding[name], theta[name], rtol=RTOL, atol=ATOL, err_msg=name)
    if method == "absolute":  # (one more compilation each: taylor's is the slow one)
        # Two more empty rows and 8 more padding positions per row, with junk in them.
        wider = _junk_padding(pack(rows + [[], []], 24, 24), rng, tiny_config.vocab_size)
        theta_wider = _importance(tiny_params, wider, masks, tiny_config, method)
        for name in theta:
            np.testing.assert_allclose(theta_wider[name], theta[name], rtol=RTOL, atol=ATOL, err_msg=name)


def test_token_counts_and_cross_attention_sides(tiny_config, tiny_params, pack, example, fns):
    batch, rows = _asymmetric_batch(pack, example, seed=4)
    masks = all_ones(tiny_config, NUM_PAIRS)
    # batch_importance's per-pair token counts, by hand from the example lengths
    _, src_count, tgt_count = batch_importance(tiny_params, batch, masks, config=tiny_config,
                                               num_pairs=NUM_PAIRS, method="absolute")
    src_len = [sum(len(ex[0]) for row in rows for ex in row if ex[2] == m) for m in range(NUM_PAIRS)]
    tgt_len = [sum(len(ex[1]) for row in rows for ex in row if ex[2] == m) for m in range(NUM_PAIRS)]
    assert src_len == [21, 7, 7] and tgt_len == [7, 21, 7]
    np.testing.assert_array_equal(src_count, src_len)
    np.testing.assert_array_equal(tgt_count, tgt_len)

    # Cross-attention k/v live on source tokens, q/out on target tokens. The counts differ by
    # a factor of 3 between the sides for pairs 0 and 1, so the wrong side would be far off.
    _, acts = fns.forward_h(tiny_params, batch, masks, config=tiny_config)
    references = {"absolute": _reference_absolute(acts, batch),
                  "taylor": _reference_taylor(tiny_params, batch, tiny_config)}
    ratio = np.array(src_len, float) / np.array(tgt_len, float)
    for method, reference in references.items():
        theta = _importance(tiny_params, batch, masks, tiny_config, method)
        for i in range(tiny_config.dec_layers):
            for proj in ("q", "k", "v", "out"):
                name = f"decoder_layer_{i}/cross_attn/{proj}"
                np.testing.assert_allclose(theta[name], reference[name], rtol=RTOL, atol=ATOL, err_msg=name)
                # the other side's normalization: sum over the right tokens / the wrong count
                wrong = reference[name] * (ratio if proj in ("k", "v") else 1 / ratio)[:, None]
                assert np.abs(theta[name][:2] - wrong[:2]).max() > 0.5 * np.abs(theta[name][:2]).max()
