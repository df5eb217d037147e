"""A plain Transformer whose attention and FFN widths are set per layer: what baking one pair's
mask into the weights gives (``method/bake.py``).

Same embedding, positions, layer norms, residual stream (``d_model``) and parameter paths as
``model/transformer.py``'s ``Transformer`` (``encoder_layer_0/self_attn/q/dense/kernel`` ...), no
masks. Each attention module has its own number of heads and its own widths for the query/key
features of a head and for the value features of a head (``[d, heads * qk]``,
``[d, heads * v]``, out ``[heads * v, d]``); queries are still scaled by the original
``(d_model / num_heads) ** -0.5``. Each FFN has its own hidden width. The widths are
``BakedModelConfig.widths``: ``(("encoder_layer_0/self_attn", (heads, qk, v)),
("encoder_layer_0/ffn", (hidden,)), ...)``.

It takes the rows layout (no compact layout, +TS or adapters) and decodes with the same
incremental caches and beam search (``decoding.make_beam_decoder`` picks the module by the config's
type, :func:`module_for`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_namnmt.config import ModelConfig
from jax_namnmt.errors import ConfigError
from jax_namnmt.method.masks import layer_path
from jax_namnmt.model.dropout import Dropout
from jax_namnmt.model.transformer import Context, Residual, Transformer, cached_attention, sinusoidal_positions


@dataclasses.dataclass(frozen=True)
class BakedModelConfig(ModelConfig):
    """The original model's config plus the baked widths of every attention and FFN module."""

    widths: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def width(self, name: str) -> tuple[int, ...]:
        """``(heads, qk, v)`` of an attention module, ``(hidden,)`` of an FFN (``name``:
        ``encoder_layer_0/self_attn``, ``decoder_layer_1/ffn`` ...)."""
        for key, value in self.widths:
            if key == name:
                return tuple(value)
        raise ConfigError(f"the baked model has no width for {name!r}")

    def validate(self, where: str = "model") -> "BakedModelConfig":
        super().validate(where)
        if self.ts_target_of_pair or self.adapter_pairs:
            raise ConfigError(f"{where}: a baked model has no +TS or adapters")
        for name, value in self.widths:
            if not value or any(not isinstance(w, int) or w < 1 for w in value):
                raise ConfigError(f"{where}.widths[{name!r}] = {value!r}: widths must be integers >= 1")
        return self

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "widths": {name: list(value) for name, value in self.widths}}

    @classmethod
    def from_dict(cls, model: dict, widths: dict) -> "BakedModelConfig":
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        base = {k: tuple(v) if isinstance(v, list) else v for k, v in model.items() if k in fields}
        return cls(**base, widths=tuple((name, tuple(int(w) for w in value)) for name, value in widths.items()))


def module_for(config: ModelConfig) -> type[Transformer]:
    """The Flax module of a model config: ``BakedTransformer`` for a baked model, else ``Transformer``."""
    return BakedTransformer if isinstance(config, BakedModelConfig) else Transformer


def _dense(features: int, dtype, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name)


class _Projection(nn.Module):
    """``{name}/dense/{kernel,bias}``: the parameter paths of ``transformer.MaskedDense``, no mask."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return _dense(self.features, self.dtype, "dense")(x)


class BakedAttention(nn.Module):
    """Multi-head attention with ``heads`` heads of ``qk`` query/key and ``v`` value features."""

    config: BakedModelConfig
    name_in_model: str  # e.g. decoder_layer_0/cross_attn, its entry in config.widths
    causal_cache: bool = False

    @nn.compact
    def __call__(self, x_q, x_kv, bias, ctx: Context):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        heads, qk, vw = cfg.width(self.name_in_model)
        decode = ctx.decode

        def project(name, x, width):
            y = _Projection(heads * width, dtype, name=name)(x)
            return y.reshape(y.shape[:-1] + (heads, width))

        q = project("q", x_q, qk) * ((cfg.d_model // cfg.num_heads) ** -0.5)
        if decode and not self.causal_cache and self.has_variable("source", "key"):
            k, v = self.get_variable("source", "key"), self.get_variable("source", "value")
        else:
            k, v = project("k", x_kv, qk), project("v", x_kv, vw)
            if decode:  # head-major while decoding, as transformer.Attention
                k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
            if decode and not self.causal_cache:
                k = k.transpose(0, 1, 3, 2)  # source keys transposed, as transformer.Attention keeps them
                self.put_variable("source", "key", k)
                self.put_variable("source", "value", v)
        if decode and self.causal_cache:
            context = cached_attention(self, q, k, v, ctx)
            return _Projection(cfg.d_model, dtype, name="out")(context.reshape(context.shape[:-2] + (heads * vw,)))
        rows, q_len = q.shape[0], q.shape[1]
        if decode:  # a sentence's beams attend to its one copy of the source keys/values together
            group = rows // k.shape[0]
            q = q.reshape((k.shape[0], group * q_len) + q.shape[2:])
            logits = jnp.einsum("bhqd,bhdk->bhqk", q.transpose(0, 2, 1, 3), k).astype(jnp.float32)
        else:
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        if bias is not None:
            logits = logits + bias
        weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
        if decode:
            context = jnp.einsum("bhqk,bhkd->bhqd", weights, v).transpose(0, 2, 1, 3)
            context = context.reshape((rows, q_len) + context.shape[2:])
        else:
            context = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        context = context.reshape(context.shape[:-2] + (heads * vw,))
        return _Projection(cfg.d_model, dtype, name="out")(context)

class BakedFeedForward(nn.Module):
    config: BakedModelConfig
    name_in_model: str

    @nn.compact
    def __call__(self, x, ctx: Context):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        (hidden,) = cfg.width(self.name_in_model)
        h = nn.relu(_Projection(hidden, dtype, name="fc1")(x))
        if cfg.activation_dropout > 0.0:
            h = Dropout(cfg.activation_dropout)(h, deterministic=ctx.deterministic)
        return _Projection(cfg.d_model, dtype, name="fc2")(h)


def _check_rows(ctx: Context) -> None:
    if ctx.src.layout is not None or (ctx.tgt is not None and ctx.tgt.layout is not None):
        raise ValueError("a baked model takes batches in the rows layout (data.layout='rows')")


class BakedEncoderLayer(nn.Module):
    config: BakedModelConfig
    index: int

    @nn.compact
    def __call__(self, x, bias, masks, ctx: Context):
        _check_rows(ctx)
        cfg, path = self.config, layer_path("encoder", self.index)
        attn = BakedAttention(cfg, f"{path}/self_attn", name="self_attn")
        x = Residual(cfg, name="self_attn_res")(x, lambda h: attn(h, h, bias, ctx), ctx.deterministic)
        ffn = BakedFeedForward(cfg, f"{path}/ffn", name="ffn")
        return Residual(cfg, name="ffn_res")(x, lambda h: ffn(h, ctx), ctx.deterministic)


class BakedDecoderLayer(nn.Module):
    config: BakedModelConfig
    index: int

    @nn.compact
    def __call__(self, y, encoded, self_bias, cross_bias, masks, ctx: Context):
        _check_rows(ctx)
        cfg, path = self.config, layer_path("decoder", self.index)
        self_attn = BakedAttention(cfg, f"{path}/self_attn", causal_cache=True, name="self_attn")
        y = Residual(cfg, name="self_attn_res")(y, lambda h: self_attn(h, h, self_bias, ctx), ctx.deterministic)
        cross = BakedAttention(cfg, f"{path}/cross_attn", name="cross_attn")
        y = Residual(cfg, name="cross_attn_res")(y, lambda h: cross(h, encoded, cross_bias, ctx), ctx.deterministic)
        ffn = BakedFeedForward(cfg, f"{path}/ffn", name="ffn")
        return Residual(cfg, name="ffn_res")(y, lambda h: ffn(h, ctx), ctx.deterministic)


class BakedTransformer(Transformer):
    """``Transformer`` (its encode, decode and __call__, ``masks`` ignored) with baked layers."""

    config: BakedModelConfig

    def setup(self):
        cfg = self.config
        self.embed = nn.Embed(cfg.vocab_size, cfg.d_model, param_dtype=jnp.float32, name="embed")
        self.positions = jnp.asarray(sinusoidal_positions(cfg.max_positions, cfg.d_model))
        self.encoder_layers = [BakedEncoderLayer(cfg, i, name=layer_path("encoder", i)) for i in range(cfg.enc_layers)]
        self.decoder_layers = [BakedDecoderLayer(cfg, i, name=layer_path("decoder", i)) for i in range(cfg.dec_layers)]
        if cfg.pre_norm:
            self.encoder_norm = nn.LayerNorm(dtype=jnp.float32, name="encoder_norm")
            self.decoder_norm = nn.LayerNorm(dtype=jnp.float32, name="decoder_norm")
        self.dropout = Dropout(cfg.dropout)


def param_shapes(config: BakedModelConfig) -> dict:
    """The baked model's parameter tree as ShapeDtypeStructs (what a package is checked against)."""
    from jax_namnmt.model.transformer import dummy_batch

    return jax.eval_shape(lambda: BakedTransformer(config).init(jax.random.key(0), dummy_batch(config))["params"])
