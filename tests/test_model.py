"""The masked Transformer: masks gate neurons exactly, per token, per pair; packing and
mixed-pair batches isolate examples; parameter and neuron counts."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import dot_equations, mixed_batch
from jax_namnmt.method.importance import reads_source_tokens
from jax_namnmt.method.masks import all_ones, flatten, module_sizes, nest
from jax_namnmt.model.transformer import MASK_LOOKUP_ENV, Transformer, init_params, mask_lookup_method, on_token_rows
from jax_namnmt.systems import count_params
from jax_namnmt.training.step import batch_loss

NUM_PAIRS = 3


def test_all_ones_masks_equal_no_masks(tiny_config, tiny_params, pack, example, fns):
    batch = mixed_batch(pack, example)
    plain = np.asarray(fns.forward(tiny_params, batch, None, config=tiny_config))
    ones = np.asarray(fns.forward(tiny_params, batch, all_ones(tiny_config, NUM_PAIRS), config=tiny_config))
    assert np.isfinite(plain).all()
    # y * 1.0 == y exactly: bitwise equal logits, op by op (eager) and in the tests' jitted
    # helper (compiled without XLA backend optimizations). With them on, the two programs
    # (one multiply more) get fused differently and may differ by ~1 ulp in the decoder.
    np.testing.assert_array_equal(ones, plain)


def test_masked_neurons_are_exactly_zero_per_pair(tiny_config, tiny_params, pack, example, make_masks, fns):
    batch = mixed_batch(pack, example)
    masks = make_masks(tiny_config, NUM_PAIRS, seed=1)
    flat = flatten(masks)
    _, acts = fns.forward_h(tiny_params, batch, masks, config=tiny_config)
    assert set(acts) == set(module_sizes(tiny_config))
    for name, h in acts.items():
        h = np.asarray(h)
        side = "src" if reads_source_tokens(name) else "tgt"
        pairs, valid = batch[f"{side}_pairs"], batch[f"{side}_segments"] > 0
        token_mask = flat[name][pairs]  # [B, L, F]: the mask of each token's pair
        # Outside its pair's mask, a neuron is exactly zero at every token of that pair.
        assert (h[token_mask == 0] == 0).all(), name
        # Inside the mask (random weights), it is nonzero at every real token.
        kept = (token_mask == 1) & valid[..., None]
        assert (h[kept] != 0).all(), name

    # One neuron spelled out: encoder fc1, dropped by pair 0, kept by pair 1.
    name = "encoder_layer_0/ffn/fc1"
    i = int(np.flatnonzero((flat[name][0] == 0) & (flat[name][1] == 1))[0])
    h = np.asarray(acts[name])[..., i]
    valid = batch["src_segments"] > 0
    assert (h[valid & (batch["src_pairs"] == 0)] == 0).all()
    assert (h[valid & (batch["src_pairs"] == 1)] != 0).all()


# (mask name, params path of its Dense)
GATED = [
    ("encoder_layer_0/ffn/fc1", ("encoder_layer_0", "ffn", "fc1", "dense")),
    ("decoder_layer_0/cross_attn/q", ("decoder_layer_0", "cross_attn", "q", "dense")),
    ("decoder_layer_0/self_attn/v", ("decoder_layer_0", "self_attn", "v", "dense")),
]


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return np.asarray(tree)


def test_dropped_neuron_weights_get_no_gradient_from_the_pair(tiny_config, tiny_params, pack, example, fns):
    m, n, i = 1, 2, 5
    flat = flatten(all_ones(tiny_config, NUM_PAIRS))
    for name, _ in GATED:
        flat[name][m, i] = 0.0  # pair m drops neuron i; pair n keeps it
    masks = nest(flat)
    rng = np.random.default_rng(3)
    ex_m = [example(rng, 5, 4, m), example(rng, 3, 6, m), example(rng, 4, 4, m)]
    ex_n = [example(rng, 4, 5, n), example(rng, 6, 3, n)]

    only_m = pack([[ex_m[0], ex_m[1]], [ex_m[2]], []], 16, 16)
    grads = fns.loss_grad(tiny_params, only_m, masks, config=tiny_config)
    for _, path in GATED:
        kernel, bias = _get(grads, path + ("kernel",)), _get(grads, path + ("bias",))
        assert (kernel[:, i] == 0).all() and bias[i] == 0, path
        # ... while the kept neurons of the same projection do learn from pair m (most of
        # them: an fc1 unit whose ReLU is off at every token gets no gradient either)
        assert (np.abs(kernel).sum(axis=0) > 0).sum() >= kernel.shape[1] // 2, path

    # Mixed batch (pairs m and n in separate rows and packed in one row): neuron i's
    # gradient is pair n's alone. n-only = the same layout with pair m's examples made padding
    # (ex_n[0] sits after ex_m[0] in row 0 and keeps its place).
    mixed = pack([[ex_m[0], ex_n[0]], [ex_n[1], ex_m[1]], [ex_m[2]]], 16, 16)
    n_only = pack([[ex_m[0], ex_n[0]], [ex_n[1]], []], 16, 16)
    for key in ("src_segments", "tgt_segments"):
        n_only[key][0] = np.where(n_only[key][0] == 1, 0, n_only[key][0])
    g_mixed = fns.loss_grad(tiny_params, mixed, masks, config=tiny_config)
    g_n = fns.loss_grad(tiny_params, n_only, masks, config=tiny_config)
    for _, path in GATED:
        k_mixed, k_n = _get(g_mixed, path + ("kernel",)), _get(g_n, path + ("kernel",))
        assert np.abs(k_n[:, i]).sum() > 0
        np.testing.assert_allclose(k_mixed[:, i], k_n[:, i], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(_get(g_mixed, path + ("bias",))[i], _get(g_n, path + ("bias",))[i],
                                   rtol=1e-5, atol=1e-7)
        # sanity: the neurons pair m keeps do see pair m's examples
        others = np.abs(k_mixed - k_n).sum(axis=0)
        assert others[i] < 1e-6 and (others > 1e-4).sum() >= kernel.shape[1] // 2


def test_changing_one_pairs_masks_leaves_other_pairs_logits_unchanged(
        tiny_config, tiny_params, pack, example, make_masks, fns):
    batch = mixed_batch(pack, example)
    masks = flatten(make_masks(tiny_config, NUM_PAIRS, seed=1))
    other = flatten(make_masks(tiny_config, NUM_PAIRS, seed=2))
    b = 1
    changed = {k: np.where(np.arange(NUM_PAIRS)[:, None] == b, other[k], v) for k, v in masks.items()}
    before = np.asarray(fns.forward(tiny_params, batch, nest(masks), config=tiny_config))
    after = np.asarray(fns.forward(tiny_params, batch, nest(changed), config=tiny_config))
    real = batch["tgt_segments"] > 0
    is_b = real & (batch["tgt_pairs"] == b)
    assert is_b.any() and (real & ~is_b).any()
    np.testing.assert_array_equal(after[real & ~is_b], before[real & ~is_b])
    assert np.abs(after[is_b] - before[is_b]).max() > 1e-3  # pair b itself did change


def test_packed_example_equals_example_alone(tiny_config, tiny_params, pack, example, make_masks, fns):
    masks = make_masks(tiny_config, NUM_PAIRS, seed=1)
    rng = np.random.default_rng(7)
    a, b, c = example(rng, 5, 4, 0), example(rng, 3, 6, 1), example(rng, 4, 3, 2)
    packed = pack([[a, b, c], [], []], 16, 16)
    for m in (masks, None):
        logits_packed = np.asarray(fns.forward(tiny_params, packed, m, config=tiny_config))
        # b sits at target positions 4..9, c at 10..12 of row 0
        alone_b = np.asarray(fns.forward(tiny_params, pack([[b], [], []], 16, 16), m, config=tiny_config))
        alone_c = np.asarray(fns.forward(tiny_params, pack([[], [c], []], 16, 16), m, config=tiny_config))
        np.testing.assert_allclose(logits_packed[0, 4:10], alone_b[0, :6], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(logits_packed[0, 10:13], alone_c[1, :3], rtol=1e-5, atol=1e-5)
        assert np.abs(logits_packed[0, 4:10] - logits_packed[0, 10:16].mean()).max() > 1e-2


def test_post_norm_and_pre_norm(tiny_config, pack, example, make_masks, make_params, fns):
    batch = mixed_batch(pack, example)
    masks = make_masks(tiny_config, NUM_PAIRS, seed=1)
    pre_config = dataclasses.replace(tiny_config, pre_norm=True)
    post, pre = make_params(tiny_config, 0), make_params(pre_config, 0)
    assert "encoder_norm" not in post and "decoder_norm" not in post
    assert set(pre["encoder_norm"]) == {"scale", "bias"} and set(pre["decoder_norm"]) == {"scale", "bias"}
    assert count_params(pre) - count_params(post) == 4 * tiny_config.d_model
    shared = {k: v for k, v in pre.items() if k in post}
    assert jax.tree.structure(shared) == jax.tree.structure(post)

    def logits(config, params):
        return np.asarray(fns.forward(params, batch, masks, config=config))

    def doubled(params, *path):  # scale and bias of one LayerNorm times 2
        params = jax.tree.map(lambda x: x, params)
        node = params
        for key in path:
            node = node[key]
        node["scale"], node["bias"] = 2 * node["scale"], 2 * node["bias"]
        return params

    out_post, out_pre = logits(tiny_config, post), logits(pre_config, pre)
    assert np.isfinite(out_post).all() and np.isfinite(out_pre).all()
    assert np.abs(logits(pre_config, shared | {"encoder_norm": pre["encoder_norm"],
                                               "decoder_norm": pre["decoder_norm"]}) - out_post).max() > 1e-2
    last = f"decoder_layer_{tiny_config.dec_layers - 1}"
    # Post-norm: the decoder ends with its last layer's LayerNorm, LN(x + ffn(x)); the tied
    # output projection is linear, so doubling that norm's affine map doubles the logits.
    np.testing.assert_allclose(logits(tiny_config, doubled(post, last, "ffn_res", "norm")), 2 * out_post,
                               rtol=1e-5, atol=1e-5)
    # Pre-norm: the decoder ends with the final decoder_norm instead ...
    np.testing.assert_allclose(logits(pre_config, doubled(pre, "decoder_norm")), 2 * out_pre,
                               rtol=1e-5, atol=1e-5)
    # ... and the layer's own norm only normalizes the FFN input, x + ffn(LN(x)).
    changed = logits(pre_config, doubled(pre, last, "ffn_res", "norm"))
    assert np.abs(changed - 2 * out_pre).max() > 1e-1 and np.abs(changed - out_pre).max() > 1e-3


def test_module_sizes_hand_count(tiny_config):
    config = dataclasses.replace(tiny_config, enc_layers=1, dec_layers=2)
    sizes = module_sizes(config)
    d, f = 16, 32
    expected = {
        "encoder_layer_0/self_attn/q": d, "encoder_layer_0/self_attn/k": d,
        "encoder_layer_0/self_attn/v": d, "encoder_layer_0/self_attn/out": d,
        "encoder_layer_0/ffn/fc1": f, "encoder_layer_0/ffn/fc2": d,
    }
    for layer in (0, 1):
        for block in ("self_attn", "cross_attn"):
            for proj in ("q", "k", "v", "out"):
                expected[f"decoder_layer_{layer}/{block}/{proj}"] = d
        expected[f"decoder_layer_{layer}/ffn/fc1"] = f
        expected[f"decoder_layer_{layer}/ffn/fc2"] = d
    assert sizes == expected
    # 6 + 2 * 10 = 26 modules; 16*5 + 32 = 112 encoder neurons, 2 * (16*9 + 32) = 352 decoder
    assert len(sizes) == 26 and sum(sizes.values()) == 112 + 352
    # Every masked projection of the model has a mask entry and vice versa.
    params = jax.eval_shape(lambda: init_params(config, 0))  # shapes only: nothing to compute
    dense_paths = set()
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = tuple(p.key for p in path)
        if keys[-2] == "dense" and keys[-1] == "kernel":
            dense_paths.add("/".join(keys[:-2]))
    # A mask's name is its projection's parameter path, and every projection has one.
    assert dense_paths == set(sizes)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_count_params_hand_count(tiny_config, pre_norm):
    config = dataclasses.replace(tiny_config, enc_layers=1, dec_layers=1, pre_norm=pre_norm)
    V, d, f = 50, 16, 32
    embed = V * d                               # 800: one table, tied src/tgt/output
    attn = 4 * (d * d + d)                      # 1088: q, k, v, out with biases
    ffn = (d * f + f) + (f * d + d)             # 544 + 528
    ln = 2 * d                                  # 32: scale + bias
    encoder = attn + ffn + 2 * ln               # 2224
    decoder = 2 * attn + ffn + 3 * ln           # 3344
    final = 2 * ln if pre_norm else 0           # encoder_norm + decoder_norm
    expected = embed + encoder + decoder + final
    assert expected == (6432 if pre_norm else 6368)
    params = jax.eval_shape(lambda: init_params(config, 0))  # shapes only: nothing to compute
    assert count_params(params) == expected
    assert params["embed"]["embedding"].shape == (V, d)
    assert sum("embed" in k for k in params) == 1  # no separate output projection


def test_mask_lookup_gather_equals_onehot(tiny_config, tiny_params, pack, example, make_masks, fns, monkeypatch):
    """The accelerator lookup (a gather) and the CPU one (a one-hot matmul) give the same loss and
    gradients; a typo in the environment variable is an error naming it."""
    batch = mixed_batch(pack, example)
    masks = make_masks(tiny_config, NUM_PAIRS, seed=2)
    results = {}
    for method in ("onehot", "gather"):
        monkeypatch.setenv(MASK_LOOKUP_ENV, method)
        assert mask_lookup_method() == method
        # a fresh function per method: the lookup is chosen when the step is traced
        step = jax.jit(lambda p: jax.value_and_grad(fns.summed_loss)(p, batch, masks, tiny_config))
        results[method] = jax.device_get(step(tiny_params))
    (loss_a, grads_a), (loss_b, grads_b) = results["onehot"], results["gather"]
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    monkeypatch.setenv(MASK_LOOKUP_ENV, "gathr")
    with pytest.raises(ValueError, match=MASK_LOOKUP_ENV):
        mask_lookup_method()


def test_bfloat16_model_output_layer_runs_bfloat16_matmuls(tiny_config, tiny_params, pack, example):
    """With ``dtype=bfloat16`` the training loss's output layer (logits, and the gradients of the
    last hidden states and of the tied embedding) runs bfloat16 matmuls with float32 results, like
    every other projection (it ran float32/TF32 matmuls on GPUs, ~20% of an H100 step); the loss
    stays close to the float32 model's on the same parameters."""
    batch = mixed_batch(pack, example)
    bf16 = dataclasses.replace(tiny_config, dtype="bfloat16")

    def loss(params, config):
        return batch_loss(Transformer(config), params, batch, None, 0.1, 0, deterministic=True)[0]

    np.testing.assert_allclose(float(loss(tiny_params, bf16)), float(loss(tiny_params, tiny_config)), rtol=2e-2)
    jaxpr = jax.make_jaxpr(jax.grad(lambda p: loss(p, bf16)))(tiny_params).jaxpr
    vocab_dots = [eqn for eqn in dot_equations(jaxpr)
                  if any(tiny_config.vocab_size in v.aval.shape for v in [*eqn.invars, *eqn.outvars])]
    assert len(vocab_dots) == 3, vocab_dots
    for eqn in vocab_dots:
        assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * 2, eqn
        assert eqn.outvars[0].aval.dtype == jnp.float32, eqn


@pytest.mark.parametrize("system", ["plain", "ts_adapter"])
def test_weight_gradients_contract_one_token_dimension(tiny_config, pack, example, system):
    """Every projection runs on ``[tokens, features]`` (``on_token_rows``), so each weight
    gradient is a dot over one token dimension, never over (rows, length): XLA's CPU backend
    compiles the two-dimension contraction with a transposed copy of the output gradient and a
    slow transposed-transposed dot (README "CPU speed"). Checked in the loss gradient's jaxpr: no
    dot contracts the batch's rows and length together (several dimensions whose sizes multiply
    to the rows x length token slots), while the weight gradients over the flat tokens are there;
    ``on_token_rows`` itself changes no value."""
    config = tiny_config
    if system == "ts_adapter":
        config = dataclasses.replace(tiny_config, ts_target_of_pair=(1, 0, 1), ts_self_attn=True,
                                     adapter_pairs=3, adapter_dim=8)
    params = init_params(config, seed=1)
    batch = mixed_batch(pack, example, length=20)  # 60 slots: no product of the model's sizes
    assert batch["src_tokens"].ndim == 2  # [rows, length]: the projections' inputs are 3-D

    def loss(p):
        return batch_loss(Transformer(config), p, batch, None, 0.1, 0, deterministic=True)[0]

    slots = batch["src_tokens"].size
    assert batch["tgt_labels"].size == slots
    over_tokens = 0
    for eqn in dot_equations(jax.make_jaxpr(jax.grad(loss))(params).jaxpr):
        (contract, _), _ = eqn.params["dimension_numbers"]
        sizes = [eqn.invars[0].aval.shape[i] for i in contract]
        assert not (len(sizes) > 1 and np.prod(sizes) == slots), eqn
        over_tokens += sizes == [slots]
    # encoder: q k v out fc1 fc2; decoder: those and cross-attention's q k v out; the output layer
    assert over_tokens >= 6 * config.enc_layers + 10 * config.dec_layers + 1

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 5, 6)), jnp.float32)
    route = jnp.asarray(rng.integers(0, 3, (2, 5)), jnp.int32)
    w = jnp.asarray(rng.standard_normal((3, 6, 4)), jnp.float32)
    direct = jnp.einsum("bli,blio->blo", x, w[route])
    flat = on_token_rows(lambda x, r: jnp.einsum("ti,tio->to", x, w[r]), x, route)
    np.testing.assert_allclose(flat, direct, rtol=1e-6)
