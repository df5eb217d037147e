"""``model.attention_kernel``: cuDNN's fused attention for training and scoring on GPUs.

cuDNN itself needs a GPU; on CPU these tests run the same call (``jax.nn.dot_product_attention``
with our mask and scale) through XLA's implementation, and check that it equals our einsum
attention, that the switch routes exactly the non-incremental attentions to it, and the config's
checks."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import mixed_batch
from conftest import test_jit as fast_jit
from jax_namnmt.config import Config, ModelConfig
from jax_namnmt.errors import ConfigError
from jax_namnmt.model import transformer
from jax_namnmt.model.transformer import Transformer, attention_bias, fused_attention, use_cudnn_attention
from jax_namnmt.training.step import batch_loss

NUM_PAIRS = 3


def _einsum_attention(q, k, v, bias):
    """The model's own attention (``Attention.__call__``'s rows branch), written out."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) + bias
    weights = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(q.dtype), v)


@pytest.mark.parametrize("kind", ["encoder", "causal", "cross"])
def test_fused_attention_equals_einsum_attention(pack, example, kind):
    """Same contexts at every real query, and the same gradients of q, k, v for a loss over real
    queries (padding queries' contexts are unused, so they may differ)."""
    batch = mixed_batch(pack, example)
    q_seg = batch["tgt_segments"] if kind != "encoder" else batch["src_segments"]
    k_seg = batch["src_segments"] if kind != "causal" else batch["tgt_segments"]
    bias = attention_bias(jnp.asarray(q_seg), jnp.asarray(k_seg), causal=kind == "causal")
    rng = np.random.default_rng(1)
    rows, length, heads, head_dim = 3, 16, 2, 8
    q, k, v = (jnp.asarray(rng.normal(size=(rows, length, heads, head_dim)), jnp.float32) for _ in range(3))
    real = jnp.asarray(q_seg > 0)[:, :, None, None]
    cotangent = jnp.asarray(rng.normal(size=q.shape), jnp.float32) * real

    def loss(attend, q, k, v):
        return jnp.sum(attend(q, k, v) * cotangent)

    fused = lambda q, k, v: fused_attention(q, k, v, bias, "xla")  # noqa: E731
    plain = lambda q, k, v: _einsum_attention(q, k, v, bias)  # noqa: E731
    np.testing.assert_allclose(np.asarray(fused(q, k, v) * real), np.asarray(plain(q, k, v) * real),
                               rtol=1e-5, atol=1e-6)
    got = fast_jit(jax.grad(loss, argnums=(1, 2, 3)), static_argnums=0)(fused, q, k, v)
    want = fast_jit(jax.grad(loss, argnums=(1, 2, 3)), static_argnums=0)(plain, q, k, v)
    for g, w in zip(got, want):
        assert np.abs(np.asarray(w)).max() > 0
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6)


def test_cudnn_switch_routes_training_attention(monkeypatch, tiny_config, tiny_params, pack, example, make_masks):
    """With the switch on (forced here, as on a GPU; the fused call through XLA's implementation),
    every attention of a training forward pass (encoder self, decoder self, cross) goes through
    ``fused_attention`` and the masked loss and its gradients are those of the einsums; an
    incremental decoding step does not use it."""
    calls = []
    real_fused = transformer.fused_attention

    def fused_on_cpu(q, k, v, bias, implementation):
        calls.append(implementation)
        return real_fused(q, k, v, bias, "xla")

    monkeypatch.setattr(transformer, "use_cudnn_attention", lambda config: config.attention_kernel == "cudnn")
    monkeypatch.setattr(transformer, "fused_attention", fused_on_cpu)
    batch = mixed_batch(pack, example)
    masks = make_masks(tiny_config, NUM_PAIRS, seed=1)

    def loss_and_grad(config):
        def loss(p):
            return batch_loss(Transformer(config), p, batch, masks, 0.1, 0, deterministic=True)[0]

        return fast_jit(jax.value_and_grad(loss))(tiny_params)

    want_loss, want_grad = loss_and_grad(tiny_config)
    assert calls == []
    cudnn = dataclasses.replace(tiny_config, attention_kernel="cudnn")
    got_loss, got_grad = loss_and_grad(cudnn)
    assert calls == ["cudnn"] * (tiny_config.enc_layers + 2 * tiny_config.dec_layers)
    np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-3, atol=1e-5)

    calls.clear()
    model = Transformer(cudnn)
    encoded = jnp.zeros((3, 16, tiny_config.d_model), jnp.float32)
    ones = jnp.ones((3, 1), jnp.int32)
    model.apply({"params": tiny_params}, encoded, batch["src_segments"], batch["src_pairs"], ones, ones, 0 * ones,
                ones, masks, decode=True, mutable=["cache", "source"], method=Transformer.decode)
    assert calls == []


def test_cudnn_kernel_is_used_on_gpus_only():
    cudnn = ModelConfig(dtype="bfloat16", attention_kernel="cudnn")
    assert use_cudnn_attention(cudnn) == (jax.default_backend() == "gpu")
    assert not use_cudnn_attention(ModelConfig(dtype="bfloat16"))


@pytest.mark.parametrize("fields, message", [
    ({"attention_kernel": "flash"}, "model.attention_kernel = 'flash': must be one of xla, cudnn"),
    ({"logits_dtype": "float16"}, "model.logits_dtype = 'float16': must be one of float32, bfloat16"),
    ({"attention_kernel": "cudnn"}, "model.attention_kernel = 'cudnn' needs a bfloat16 compute dtype"),
    ({"attention_kernel": "cudnn", "dtype": "bfloat16", "attention_dropout": 0.1},
     "needs model.attention_dropout = 0"),
    ({"attention_kernel": "cudnn", "dtype": "bfloat16", "d_model": 100, "num_heads": 4},
     r"needs a head size .* multiple of 8 .* head size 25"),
])
def test_kernel_and_logits_fields_are_checked(fields, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict({"model": fields}).model.validate("model")
    ModelConfig(attention_kernel="cudnn", dtype="bfloat16", logits_dtype="bfloat16").validate("model")


def test_cudnn_kernel_needs_even_rows():
    """cuDNN's fused attention with a mask trains on even lengths only: named before training."""
    cudnn = {"attention_kernel": "cudnn", "dtype": "bfloat16"}
    base = Config.from_dict({"model": cudnn, "data": {"src_row_len": 64, "tgt_row_len": 64, "max_len": 60}})
    base.validate()
    with pytest.raises(ConfigError, match="even length: data.tgt_row_len = 63"):
        base.override(["data.tgt_row_len=63"]).validate()
    base.override(["data.tgt_row_len=63", "model.attention_kernel=xla"]).validate()


def test_cudnn_training_step_lowers_for_cuda(monkeypatch, pack, example):
    """The loss gradient of a bfloat16 model with ``attention_kernel="cudnn"`` lowers for CUDA on
    this CPU-only machine (``jax.export`` to StableHLO, not compiled): JAX's trace-time checks of
    the cuDNN call (layout, dtypes, mask shape, packed rows' lengths) pass, and every attention of
    the step is a cuDNN fused-attention call, forward and backward. JAX asks the (absent) GPU for
    its cuDNN version and compute capability; the test answers for an H100 with cuDNN 9.10."""
    from jax import export

    fa = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo")
    for name, answer in (("check_cudnn_version", lambda: 91000), ("check_compute_capability", lambda c: True),
                         ("is_cuda_compute_capability_equal", lambda c: False)):
        if not hasattr(fa, name):
            pytest.skip(f"this JAX has no {fa.__name__}.{name} to stand in for a GPU")
        monkeypatch.setattr(fa, name, answer)
    config = ModelConfig(vocab_size=64, d_model=32, num_heads=2, ffn_dim=64, enc_layers=2, dec_layers=1,
                         dtype="bfloat16", attention_kernel="cudnn", logits_dtype="bfloat16").validate()
    params = transformer.init_params(config)  # (before the switch: initialising runs on this CPU)
    monkeypatch.setattr(transformer, "use_cudnn_attention", lambda c: c.attention_kernel == "cudnn")
    batch = {k: jnp.asarray(v) for k, v in mixed_batch(pack, example, length=16).items()}

    def loss(p):
        return batch_loss(Transformer(config), p, batch, None, 0.1, 0, deterministic=True)[0]

    calls = ("__cudnn$fmhaScaleBiasSoftmax", "__cudnn$fmhaScaleBiasSoftmaxBackward")
    exported = export.export(jax.jit(jax.grad(loss)), platforms=["cuda"],
                             disabled_checks=[export.DisabledSafetyCheck.custom_call(c) for c in calls])(params)
    text = exported.mlir_module()
    attentions = config.enc_layers + 2 * config.dec_layers
    assert [text.count(f"custom_call @{c}(") for c in calls] == [attentions, attentions]
