"""A Flax Transformer whose every projection output is gated per token by a neuron mask.

Masks are data: a pytree mirroring the masked projections,
``{"encoder": {"layer_0": {"self_attn": {"q","k","v","out"}, "ffn": {"fc1","fc2"}}, ...},
"decoder": {"layer_0": {"self_attn": ..., "cross_attn": ..., "ffn": ...}, ...}}``, each leaf
``[num_pairs, features]``. Each token carries its example's pair id, so one batch (packed
rows included) mixes pairs; ``masks=None`` is the plain multilingual model.

Every masked output also passes through ``perturb`` (a zero variable in the ``perturbations``
collection, a no-op unless passed) and is sown into ``intermediates`` when that collection
is mutable: the importance scorer takes ``jax.grad`` with respect to the perturbations to
get dL/dh for every neuron at every token.

Inputs use the packed layout: ``tokens [B, L]``, ``segments [B, L]`` (0 = padding, examples
numbered from 1 within a row), ``positions [B, L]``, ``pairs [B, L]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_namnmt.config import ModelConfig

Masks = Any  # nested dict of [num_pairs, features] arrays, or None
NEG_INF = -1e9


def sinusoidal_positions(max_len: int, dim: int) -> np.ndarray:
    """fairseq/tensor2tensor sinusoidal table: sin in the first half, cos in the second."""
    half = dim // 2
    scale = np.log(10000.0) / (half - 1)
    freqs = np.exp(np.arange(half) * -scale)
    angles = np.arange(max_len)[:, None] * freqs[None, :]
    table = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    if dim % 2:
        table = np.pad(table, ((0, 0), (0, 1)))
    return table.astype(np.float32)


def lookup_mask(masks: Masks, name: str, pairs: jnp.ndarray, dtype) -> jnp.ndarray | None:
    """The per-token mask ``[..., features]`` of module ``name`` for pair ids ``pairs``."""
    if masks is None:
        return None
    table = masks[name].astype(dtype)
    # A one-hot matmul instead of a gather: XLA's CPU backend runs it ~25% faster in the train
    # step (gathers of [tokens, features] do not fuse there); the result is the same 0/1 rows.
    return jax.nn.one_hot(pairs, table.shape[0], dtype=dtype) @ table


class MaskedDense(nn.Module):
    """A linear projection whose outputs (the paper's neurons) are gated per token."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        y = nn.Dense(
            self.features,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.initializers.xavier_uniform(),
            name="dense",
        )(x)
        if mask is not None:
            y = y * mask
        y = self.perturb("h", y)
        self.sow("intermediates", "h", y)
        return y


class Attention(nn.Module):
    """Multi-head attention with masked q/k/v/out projections and an optional decode cache."""

    config: ModelConfig
    causal_cache: bool = False  # self-attention in incremental decoding

    @nn.compact
    def __call__(self, x_q, x_kv, bias, masks, pairs_q, pairs_kv, deterministic, decode=False):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        heads, head_dim = cfg.num_heads, cfg.d_model // cfg.num_heads

        def project(name, x, pairs):
            mask = lookup_mask(masks, name, pairs, dtype)
            y = MaskedDense(cfg.d_model, dtype=dtype, name=name)(x, mask)
            return y.reshape(y.shape[:-1] + (heads, head_dim))

        q = project("q", x_q, pairs_q) * (head_dim**-0.5)
        if decode and not self.causal_cache and self.has_variable("source", "key"):
            # Cross-attention while decoding: the source keys/values were computed once, in the
            # 'source' collection (identical across a sentence's beams, so never reordered).
            k = self.get_variable("source", "key")
            v = self.get_variable("source", "value")
        else:
            k = project("k", x_kv, pairs_kv)
            v = project("v", x_kv, pairs_kv)
            if decode and not self.causal_cache:
                self.put_variable("source", "key", k)
                self.put_variable("source", "value", v)

        if decode and self.causal_cache:
            k, v, bias = self._extend_cache(k, v)

        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        if bias is not None:
            logits = logits + bias
        weights = jax.nn.softmax(logits, axis=-1)
        if cfg.attention_dropout > 0.0 and not deterministic:
            weights = nn.Dropout(cfg.attention_dropout)(weights, deterministic=False)
        context = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(dtype), v)
        context = context.reshape(context.shape[:-2] + (cfg.d_model,))
        mask = lookup_mask(masks, "out", pairs_q, dtype)
        return MaskedDense(cfg.d_model, dtype=dtype, name="out")(context, mask)

    def _extend_cache(self, k, v):
        """Write this step's key/value at the cache index; attend to positions <= index."""
        batch, _, heads, head_dim = k.shape
        max_len = self.config.max_positions
        is_init = not self.has_variable("cache", "key")
        cached_k = self.variable("cache", "key", jnp.zeros, (batch, max_len, heads, head_dim), k.dtype)
        cached_v = self.variable("cache", "value", jnp.zeros, (batch, max_len, heads, head_dim), v.dtype)
        index = self.variable("cache", "index", lambda: jnp.array(0, jnp.int32))
        if is_init:
            return k, v, None
        i = index.value
        cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, i, 0, 0))
        cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, i, 0, 0))
        index.value = i + 1
        visible = jnp.arange(max_len) <= i
        bias = jnp.where(visible, 0.0, NEG_INF)[None, None, None, :]
        return cached_k.value, cached_v.value, bias


class FeedForward(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, masks, pairs, deterministic):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        h = MaskedDense(cfg.ffn_dim, dtype=dtype, name="fc1")(x, lookup_mask(masks, "fc1", pairs, dtype))
        h = nn.relu(h)
        if cfg.activation_dropout > 0.0:
            h = nn.Dropout(cfg.activation_dropout)(h, deterministic=deterministic)
        return MaskedDense(cfg.d_model, dtype=dtype, name="fc2")(h, lookup_mask(masks, "fc2", pairs, dtype))


class Residual(nn.Module):
    """Post-norm (fairseq base): LN(x + drop(f(x))); pre-norm: x + drop(f(LN(x)))."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, sublayer, deterministic):
        cfg = self.config
        norm = nn.LayerNorm(dtype=jnp.float32, name="norm")
        drop = nn.Dropout(cfg.dropout)
        if cfg.pre_norm:
            return x + drop(sublayer(norm(x).astype(x.dtype)), deterministic=deterministic)
        y = x + drop(sublayer(x), deterministic=deterministic)
        return norm(y).astype(x.dtype)


def _sub(masks, *keys):
    for key in keys:
        if masks is None:
            return None
        masks = masks[key]
    return masks


class EncoderLayer(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, bias, masks, pairs, deterministic):
        attn = Attention(self.config, name="self_attn")
        x = Residual(self.config, name="self_attn_res")(
            x, lambda h: attn(h, h, bias, _sub(masks, "self_attn"), pairs, pairs, deterministic), deterministic
        )
        ffn = FeedForward(self.config, name="ffn")
        return Residual(self.config, name="ffn_res")(
            x, lambda h: ffn(h, _sub(masks, "ffn"), pairs, deterministic), deterministic
        )


class DecoderLayer(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, y, encoded, self_bias, cross_bias, masks, pairs, src_pairs, deterministic, decode):
        cfg = self.config
        self_attn = Attention(cfg, causal_cache=True, name="self_attn")
        y = Residual(cfg, name="self_attn_res")(
            y,
            lambda h: self_attn(h, h, self_bias, _sub(masks, "self_attn"), pairs, pairs, deterministic, decode),
            deterministic,
        )
        cross = Attention(cfg, name="cross_attn")
        y = Residual(cfg, name="cross_attn_res")(
            y,
            lambda h: cross(h, encoded, cross_bias, _sub(masks, "cross_attn"), pairs, src_pairs, deterministic, decode),
            deterministic,
        )
        ffn = FeedForward(cfg, name="ffn")
        return Residual(cfg, name="ffn_res")(y, lambda h: ffn(h, _sub(masks, "ffn"), pairs, deterministic), deterministic)


def attention_bias(q_segments, k_segments, causal: bool = False):
    """[B, 1, Lq, Lk] additive bias: attend only within the same (non-padding) segment."""
    allowed = (q_segments[:, :, None] == k_segments[:, None, :]) & (k_segments[:, None, :] > 0)
    if causal:
        lq, lk = q_segments.shape[1], k_segments.shape[1]
        allowed = allowed & (jnp.arange(lq)[:, None] >= jnp.arange(lk)[None, :])
    return jnp.where(allowed, 0.0, NEG_INF)[:, None, :, :].astype(jnp.float32)


class Transformer(nn.Module):
    """Encoder-decoder with tied source/target/output embeddings and sinusoidal positions."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.embed = nn.Embed(
            cfg.vocab_size,
            cfg.d_model,
            embedding_init=nn.initializers.normal(stddev=cfg.d_model**-0.5),
            param_dtype=jnp.float32,
            name="embed",
        )
        self.positions = jnp.asarray(sinusoidal_positions(cfg.max_positions, cfg.d_model))
        self.encoder_layers = [EncoderLayer(cfg, name=f"encoder_layer_{i}") for i in range(cfg.enc_layers)]
        self.decoder_layers = [DecoderLayer(cfg, name=f"decoder_layer_{i}") for i in range(cfg.dec_layers)]
        if cfg.pre_norm:
            self.encoder_norm = nn.LayerNorm(dtype=jnp.float32, name="encoder_norm")
            self.decoder_norm = nn.LayerNorm(dtype=jnp.float32, name="decoder_norm")
        self.dropout = nn.Dropout(cfg.dropout)

    def _embed(self, tokens, positions, deterministic):
        cfg = self.config
        x = self.embed(tokens) * (cfg.d_model**0.5) + self.positions[positions]
        return self.dropout(x.astype(jnp.dtype(cfg.dtype)), deterministic=deterministic)

    def encode(self, tokens, segments, positions, pairs, masks=None, deterministic=True):
        x = self._embed(tokens, positions, deterministic)
        bias = attention_bias(segments, segments)
        for i, layer in enumerate(self.encoder_layers):
            x = layer(x, bias, _sub(masks, "encoder", f"layer_{i}"), pairs, deterministic)
        if self.config.pre_norm:
            x = self.encoder_norm(x).astype(x.dtype)
        return x

    def decode(
        self,
        encoded,
        src_segments,
        src_pairs,
        tgt_inputs,
        tgt_segments,
        tgt_positions,
        tgt_pairs,
        masks=None,
        deterministic=True,
        decode=False,
    ):
        """Logits [B, Lt, V] (float32). With decode=True, one step using the 'cache' collection."""
        y = self._embed(tgt_inputs, tgt_positions, deterministic)
        cross_bias = attention_bias(tgt_segments, src_segments)
        self_bias = None if decode else attention_bias(tgt_segments, tgt_segments, causal=True)
        for i, layer in enumerate(self.decoder_layers):
            y = layer(
                y, encoded, self_bias, cross_bias, _sub(masks, "decoder", f"layer_{i}"),
                tgt_pairs, src_pairs, deterministic, decode,
            )
        if self.config.pre_norm:
            y = self.decoder_norm(y)
        return self.embed.attend(y.astype(jnp.float32))

    def __call__(self, batch, masks=None, deterministic=True):
        encoded = self.encode(
            batch["src_tokens"], batch["src_segments"], batch["src_positions"], batch["src_pairs"],
            masks, deterministic,
        )
        return self.decode(
            encoded, batch["src_segments"], batch["src_pairs"], batch["tgt_inputs"],
            batch["tgt_segments"], batch["tgt_positions"], batch["tgt_pairs"], masks, deterministic,
        )


# ----------------------------------------------------------------------------- mask pytree


def module_sizes(config: ModelConfig) -> dict[str, int]:
    """Flat ``module name -> number of neurons`` for every masked projection, in model order."""
    sizes: dict[str, int] = {}
    attn = {"q": config.d_model, "k": config.d_model, "v": config.d_model, "out": config.d_model}
    ffn = {"fc1": config.ffn_dim, "fc2": config.d_model}
    for i in range(config.enc_layers):
        for proj, n in attn.items():
            sizes[f"encoder/layer_{i}/self_attn/{proj}"] = n
        for proj, n in ffn.items():
            sizes[f"encoder/layer_{i}/ffn/{proj}"] = n
    for i in range(config.dec_layers):
        for block in ("self_attn", "cross_attn"):
            for proj, n in attn.items():
                sizes[f"decoder/layer_{i}/{block}/{proj}"] = n
        for proj, n in ffn.items():
            sizes[f"decoder/layer_{i}/ffn/{proj}"] = n
    return sizes


def dummy_batch(config: ModelConfig, rows: int = 1, src_len: int = 8, tgt_len: int = 8) -> dict:
    """A tiny batch in the packed layout, for init and shape inference."""
    ones = lambda n: np.ones((rows, n), np.int32)  # noqa: E731
    positions = lambda n: np.tile(np.arange(n, dtype=np.int32), (rows, 1))  # noqa: E731
    return {
        "src_tokens": ones(src_len), "src_segments": ones(src_len), "src_positions": positions(src_len),
        "src_pairs": np.zeros((rows, src_len), np.int32),
        "tgt_inputs": ones(tgt_len), "tgt_labels": ones(tgt_len), "tgt_segments": ones(tgt_len),
        "tgt_positions": positions(tgt_len), "tgt_pairs": np.zeros((rows, tgt_len), np.int32),
    }


def init_params(config: ModelConfig, seed: int = 0):
    model = Transformer(config)
    return model.init(jax.random.key(seed), dummy_batch(config))["params"]


def count_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def with_decoding(config: ModelConfig) -> ModelConfig:
    """Decoding never uses dropout."""
    return dataclasses.replace(config, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
