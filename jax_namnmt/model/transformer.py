"""A Flax Transformer whose every projection output is gated per token by a neuron mask.

Masks are data: the parameter tree cut at the masked projections,
``{"encoder_layer_0": {"self_attn": {"q","k","v","out"}, "ffn": {"fc1","fc2"}}, ...,
"decoder_layer_0": {"self_attn": ..., "cross_attn": ..., "ffn": ...}, ...}``, each leaf
``[num_pairs, features]``, so a mask's path is its projection's parameter path (the registry of
masked projections and their sizes: ``method/masks.py: module_sizes``). Each token carries its example's pair id, so one batch
(packed rows included) mixes pairs; ``masks=None`` is the plain multilingual model. How a token
finds its pair's row: ``ModelConfig.mask_lookup`` (:func:`mask_lookup_method`).

Every masked output also passes through ``perturb`` (a zero variable in the ``perturbations``
collection, a no-op unless passed) and is sown into ``intermediates`` when that collection
is mutable: the importance scorer takes ``jax.grad`` with respect to the perturbations to
get dL/dh for every neuron at every token.

Inputs use the packed layout: ``tokens [B, L]``, ``segments [B, L]`` (0 = padding, examples
numbered from 1 within a row), ``positions [B, L]``, ``pairs [B, L]``. Inside, every layer gets
one :class:`Context`: each side's per-token pairs, +TS routes and compact layout (:class:`Side`,
traced) and the ``deterministic``/``decode`` switches (static).

Two baseline systems of the paper, both chosen per token (so per example, inside mixed batches):

- +TS (Blackwood et al. 2018, ``ModelConfig.ts_target_of_pair``): every decoder cross-attention
  (and with ``ts_self_attn`` the self-attention) has one q/k/v/out projection per target
  language: ``.../q/dense/kernel [R, in, out]``, ``bias [R, out]``, R = target languages.
  Each token uses the copy of its pair's target language. Masks, perturbations and sown
  activations are unchanged (same module names, same neurons).
- +Adapter (Bapna & Firat 2019, ``ModelConfig.adapter_pairs``): after every encoder and decoder
  layer, ``x + up(relu(down(LN(x))))`` with the adapter of the token's pair:
  ``<layer>/adapter/{norm/{scale,bias} [P, d], down/{kernel [P, d, a], bias [P, a]},
  up/{kernel [P, a, d], bias [P, d]}}``. Adapters are not masked and sow nothing.

With both off (the defaults) the model, its parameter tree and its outputs are exactly those of
the plain model.

Sharding annotations (``jax_namnmt/parallel.py``): every kernel, bias and the embedding is
initialized through ``nn.with_logical_partitioning`` with logical axis names (``embed``,
``heads``, ``mlp``, ``vocab``, ``routes``, ``adapter``), and activations pass through
``parallel.constrain`` (``batch``, ``length``, ``act_embed``, ``heads``, ``mlp``, ``vocab``).
``init_params`` unboxes, so the stored parameters are plain arrays with the same tree, shapes
and values as without the annotations; the constraints are the identity outside a mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jax_namnmt.config import ModelConfig
from jax_namnmt.method.masks import layer_path
from jax_namnmt.model.dropout import Dropout
from jax_namnmt.model.layout import heads_to_compact, heads_to_rows, int_rows
from jax_namnmt.parallel import constrain

Masks = Any  # nested dict of [num_pairs, features] arrays, or None
NEG_INF = -1e9
ACTIVATION = ("batch", "length", "act_embed")  # logical axes of a [B, L, d_model] activation


def partitioned(init, names):
    """``init`` boxed with logical axis names (``nn.with_logical_partitioning``): same values."""
    return nn.with_logical_partitioning(init, tuple(names))


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


MASK_LOOKUP_ENV = "JAX_NAMNMT_MASK_LOOKUP"
MASK_LOOKUPS = ("onehot", "gather", "bits")


def mask_lookup_method(setting: str = "auto") -> str:
    """How per-token masks are looked up, for ``ModelConfig.mask_lookup`` = ``setting``:
    ``onehot``, ``gather`` or ``bits`` as given; ``auto``: ``$JAX_NAMNMT_MASK_LOOKUP`` when set,
    else ``bits`` on CPU and ``gather`` on accelerators (decided when a step is traced).

    All give the same 0/1 rows (``bits`` reads a table entry as 1 where it is nonzero: masks are
    0/1). ``onehot``: a ``[tokens, P] x [P, F]`` matmul per projection, whose cost grows with the
    number of pairs P (P / d of each projection's forward FLOPs: about 40% at 128 pairs on the
    CPU benchmark's model, d 256). ``gather``: a row gather of the ``[P, F]`` table; it fuses into the
    multiply that applies it on accelerators, not on XLA's CPU backend. ``bits``: each table packed
    into 32 neurons a uint32 word (``[P, F/32]``, in the step), the words of each token's pair
    gathered (32x less than the float rows) and unpacked by shifts in the fusion that applies
    them; its cost hardly depends on P (packing is P x F work a step; docs/scaling.md)."""
    if setting in MASK_LOOKUPS:
        return setting
    method = os.environ.get(MASK_LOOKUP_ENV, "").strip().lower()
    if method in MASK_LOOKUPS:
        return method
    if method:
        raise ValueError(f"{MASK_LOOKUP_ENV}={method!r}: expected one of {', '.join(MASK_LOOKUPS)}")
    return "bits" if jax.default_backend() == "cpu" else "gather"


def pack_mask_bits(table: jnp.ndarray) -> jnp.ndarray:
    """``[P, F]`` 0/1 table -> ``[P, ceil(F / 32)]`` uint32 words: bit ``j`` of word ``w`` is
    ``table[:, 32 w + j] != 0``."""
    pairs, features = table.shape
    bits = table != 0
    if features % 32:
        bits = jnp.pad(bits, ((0, 0), (0, -features % 32)))
    shifts = jnp.arange(32, dtype=jnp.uint32)
    return jnp.sum(bits.reshape(pairs, -1, 32).astype(jnp.uint32) << shifts, axis=-1, dtype=jnp.uint32)


def unpack_mask_bits(words: jnp.ndarray, features: int, dtype) -> jnp.ndarray:
    """``[..., W]`` uint32 words -> ``[..., features]`` 0/1 of ``dtype`` (the inverse of
    :func:`pack_mask_bits` row by row)."""
    bits = (words[..., None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
    return bits.reshape(words.shape[:-1] + (-1,))[..., :features].astype(dtype)


@jax.custom_vjp
def _bits_lookup(table, pairs):
    """``table[pairs]`` through the packed words (forward exact for 0/1 tables); its gradient with
    respect to the table is the gather's (the rows' cotangents summed per pair), so a mask stays
    differentiable as under ``onehot`` and ``gather``."""
    words = jnp.take(pack_mask_bits(table), pairs, axis=0, mode="clip")
    return unpack_mask_bits(words, table.shape[-1], table.dtype)


def _bits_lookup_fwd(table, pairs):
    return _bits_lookup(table, pairs), (pairs, table.shape[0])


def _bits_lookup_bwd(residuals, cotangent):
    pairs, num_pairs = residuals
    rows = cotangent.reshape(-1, cotangent.shape[-1])
    table = jax.ops.segment_sum(rows, jnp.clip(pairs.reshape(-1), 0, num_pairs - 1), num_segments=num_pairs)
    return table, None


_bits_lookup.defvjp(_bits_lookup_fwd, _bits_lookup_bwd)


def lookup_mask(masks: Masks, name: str, pairs: jnp.ndarray, dtype, method: str = "auto") -> jnp.ndarray | None:
    """The per-token mask ``[..., features]`` of module ``name`` for pair ids ``pairs``, looked
    up by ``mask_lookup_method(method)`` (``method``: ``ModelConfig.mask_lookup``)."""
    if masks is None:
        return None
    table = masks[name].astype(dtype)
    method = mask_lookup_method(method)
    if method == "bits":
        return _bits_lookup(table, pairs)
    if method == "gather":
        return jnp.take(table, pairs, axis=0, mode="clip")
    return jax.nn.one_hot(pairs, table.shape[0], dtype=dtype) @ table


def use_cudnn_attention(config: ModelConfig) -> bool:
    """Whether training/scoring attention runs as cuDNN's fused kernel: ``model.attention_kernel
    = "cudnn"`` and the backend is a GPU (decided when a step is traced). Elsewhere (CPU, and
    decoding with its caches everywhere) attention is XLA's einsums, so a config or checkpoint
    made for GPUs also runs on CPUs."""
    return config.attention_kernel == "cudnn" and jax.default_backend() == "gpu"


def fused_attention(q, k, v, bias, implementation: str):
    """Attention contexts ``[B, Lq, H, D]`` of ``q [B, Lq, H, D]`` (already scaled) and ``k``/``v``
    ``[B, Lk, H, D]`` by ``jax.nn.dot_product_attention``: ``implementation="cudnn"`` is cuDNN's
    fused (flash) attention, which never writes the ``[B, H, Lq, Lk]`` scores and takes the
    sequence-major layout as it is (no transposes to head-major). ``bias`` is this module's additive
    ``[B, 1, Lq, Lk]`` bias (0 or ``NEG_INF``): it goes in as the boolean mask, which the cuDNN path
    turns into its own safe large negative. Keys that no query may see (padding) are excluded like
    the einsums exclude them; the contexts of padding queries are unused either way."""
    visible = bias > NEG_INF / 2
    return jax.nn.dot_product_attention(q, k, v, mask=visible, scale=1.0, implementation=implementation)


def on_token_rows(projection, x, *per_token):
    """``projection`` applied to ``x [..., features]`` as one matrix ``[tokens, features]`` (the
    leading dimensions merged; ``per_token`` arrays ``[...]`` merged alike), the result reshaped back.

    Same values; the point is the weight gradient, a contraction over the tokens. Over ``[1, N, d]``
    (the compact layout) or ``[rows, L, d]`` it contracts two dimensions, and XLA's CPU backend then
    writes the output gradient transposed (a copy) for a transposed-transposed dot that runs at about
    60 GFLOP/s; over ``[N, d]`` it is one plain dot at ~100, no copy: +7% tokens/s for the whole
    training step on 2 CPU cores (README "CPU speed")."""
    lead = x.shape[:-1]
    y = projection(x.reshape(-1, x.shape[-1]), *(a.reshape(-1) for a in per_token))
    return y.reshape(lead + y.shape[1:])


def route_weights(route: jnp.ndarray, routes: int, dtype) -> jnp.ndarray:
    """``[..., routes]`` one-hot rows selecting each token's route (its pair or target language)."""
    return jax.nn.one_hot(route, routes, dtype=dtype)


class RoutedDense(nn.Module):
    """``routes`` linear projections side by side (kernel ``[R, in, out]``, bias ``[R, out]``);
    each token gets the output of its own route. All R outputs are computed (R is small) and
    contracted with the token's one-hot row: exactly route r's output (every other term is an
    exact zero), so a route's parameters never touch another route's tokens, and the gradient
    of a route's parameters comes from its own tokens only."""

    features: int
    routes: int
    dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.xavier_uniform(batch_axis=(0,))  # per route, as nn.Dense
    bias_init: Any = nn.initializers.zeros
    kernel_axes: tuple = ("embed", "heads")  # logical names of the [in, out] dimensions

    @nn.compact
    def __call__(self, x, route):
        kernel = self.param("kernel", partitioned(self.kernel_init, ("routes",) + tuple(self.kernel_axes)),
                            (self.routes, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", partitioned(self.bias_init, ("routes", self.kernel_axes[-1])),
                          (self.routes, self.features), jnp.float32)
        def routed(x, route):
            y = jnp.einsum("ti,rio->tro", x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)
            return jnp.einsum("tro,tr->to", y, route_weights(route, self.routes, self.dtype))

        return on_token_rows(routed, x, route)


class MaskedDense(nn.Module):
    """A linear projection whose outputs (the paper's neurons) are gated per token.

    With ``routes > 0`` (+TS) it holds one projection per route and each token uses ``route``'s.
    """

    features: int
    dtype: Any = jnp.float32
    routes: int = 0
    kernel_axes: tuple = ("embed", "heads")  # logical names of the kernel's [in, out] dimensions

    @nn.compact
    def __call__(self, x, mask, route=None):
        if self.routes:
            y = RoutedDense(self.features, self.routes, dtype=self.dtype, kernel_axes=tuple(self.kernel_axes),
                            name="dense")(x, route)
        else:
            dense = nn.Dense(
                self.features,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=partitioned(nn.initializers.xavier_uniform(), self.kernel_axes),
                bias_init=partitioned(nn.initializers.zeros_init(), self.kernel_axes[-1:]),
                name="dense",
            )
            y = on_token_rows(dense, x)
        if mask is not None:
            y = y * mask
        y = self.perturb("h", y)
        self.sow("intermediates", "h", y)
        return y


@flax.struct.dataclass
class Side:
    """The per-token data of one side (source or target) that the layers read besides its
    activations: ``pairs`` (each token's pair id: its mask row, its adapter), ``routes`` (+TS:
    each token's target-language id, the copy of the routed projections it uses; None when +TS
    is off) and ``layout`` (``(index, slot)`` when the side is in the compact layout,
    ``model/layout.py``; None in the rows layout). All pytree leaves (traced)."""

    pairs: Any
    routes: Any = None
    layout: Any = None


@flax.struct.dataclass
class Context:
    """What every layer of one forward pass reads besides activations, attention biases and
    masks: both sides' :class:`Side` (``tgt`` is None in the encoder) and two switches.

    The sides are pytree leaves (traced arrays); ``deterministic`` (no dropout) and ``decode``
    (one incremental decoding step on the 'cache' and 'source' collections) are static fields:
    they choose the program that is traced, so a ``Context`` crosses ``jax.jit``/``nn.remat``
    boundaries with the switches as part of the treedef."""

    src: Side
    tgt: Side | None = None
    deterministic: bool = flax.struct.field(pytree_node=False, default=True)
    decode: bool = flax.struct.field(pytree_node=False, default=False)


class Attention(nn.Module):
    """Multi-head attention with masked q/k/v/out projections and an optional decode cache.

    With ``routes > 0`` (+TS) every projection has one copy per route; query-side tokens use
    the routes of ``q_side``, key/value-side tokens those of ``kv_side``.
    """

    config: ModelConfig
    causal_cache: bool = False  # self-attention in incremental decoding
    routes: int = 0

    @nn.compact
    def __call__(self, x_q, x_kv, bias, masks, q_side: Side, kv_side: Side, ctx: Context):
        """``q_side``/``kv_side``: the sides of the queries ``x_q`` and of the keys/values ``x_kv``
        (the same side in a self-attention). In the compact layout (``q_side.layout``) the
        projections run on the compact tokens, the attention itself on the rows, and ``bias`` is
        the rows' bias."""
        cfg = self.config
        decode = ctx.decode
        dtype = jnp.dtype(cfg.dtype)
        heads, head_dim = cfg.num_heads, cfg.d_model // cfg.num_heads

        def project(name, x, side: Side):
            mask = lookup_mask(masks, name, side.pairs, dtype, cfg.mask_lookup)
            y = MaskedDense(cfg.d_model, dtype=dtype, routes=self.routes, kernel_axes=("embed", "heads"),
                            name=name)(x, mask, side.routes)
            return constrain(y.reshape(y.shape[:-1] + (heads, head_dim)), ("batch", "length", "heads", "head_dim"))

        q = project("q", x_q, q_side) * (head_dim**-0.5)
        # Decoding keeps keys/values head-major, [batch, heads, length, head_dim] (the cache and the
        # source keys/values): the per-step attention dots then have their batch dimensions leading
        # and contiguous, and no cache is transposed per step (on XLA's CPU backend the
        # sequence-major einsums of one query cost ~10 ms per attention at 512 beam rows; head-major
        # ~1.5 ms).
        head_major = decode
        if decode and not self.causal_cache and self.has_variable("source", "key"):
            # Cross-attention while decoding: the source keys/values were computed once, in the
            # 'source' collection (identical across a sentence's beams, so never reordered).
            k = self.get_variable("source", "key")
            v = self.get_variable("source", "value")
        else:
            k = project("k", x_kv, kv_side)
            v = project("v", x_kv, kv_side)
            if head_major:
                k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
            if decode and not self.causal_cache:
                # the source keys kept transposed, [batch, heads, head_dim, length]: XLA's CPU backend
                # fuses this small score dot into the softmax's loop (one thread), which reads
                # [.., length, head_dim] keys strided, ~2.2x slower (the same outputs)
                k = k.transpose(0, 1, 3, 2)
                self.put_variable("source", "key", k)
                self.put_variable("source", "value", v)

        if decode and self.causal_cache:
            return self._out(cached_attention(self, q, k, v, ctx), masks, q_side)

        if q_side.layout is not None:
            return self._compact_attention(q, k, v, bias, masks, q_side, kv_side, ctx.deterministic)
        if not decode and bias is not None and use_cudnn_attention(cfg):
            return self._out(fused_attention(q, k, v, bias, "cudnn"), masks, q_side)
        rows, q_len = q.shape[0], q.shape[1]
        # Beam search: a sentence's beams are consecutive query rows and share one copy of the
        # source keys/values ([batch, ...] against [batch * beams, ...] queries), so the beams of a
        # sentence attend as `beams` queries of one row: 4x less source key/value memory read per
        # step at beam 4, and one [beams x head_dim] dot per sentence and head instead of `beams`.
        group = rows // k.shape[0]
        if head_major:
            q = q.reshape((k.shape[0], group * q_len) + q.shape[2:])
            logits = jnp.einsum("bhqd,bhdk->bhqk", q.transpose(0, 2, 1, 3), k).astype(jnp.float32)
        else:
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        if bias is not None:
            logits = logits + bias
        weights = self._weights(logits, ctx.deterministic)
        if head_major:
            context = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(dtype), v).transpose(0, 2, 1, 3)
            context = context.reshape((rows, q_len) + context.shape[2:])
        else:
            context = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(dtype), v)
        return self._out(context, masks, q_side)

    def _weights(self, logits, deterministic):
        """Softmax over the keys, then attention dropout."""
        weights = jax.nn.softmax(logits, axis=-1)
        if self.config.attention_dropout > 0.0 and not deterministic:
            weights = Dropout(self.config.attention_dropout)(weights, deterministic=False)
        return weights

    def _out(self, context, masks, q_side: Side):
        """The masked out projection of the heads' context ``[..., heads, head_dim]``."""
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        context = context.reshape(context.shape[:-2] + (cfg.d_model,))
        mask = lookup_mask(masks, "out", q_side.pairs, dtype, cfg.mask_lookup)
        return MaskedDense(cfg.d_model, dtype=dtype, routes=self.routes, kernel_axes=("heads", "embed"),
                           name="out")(context, mask, q_side.routes)

    def _compact_attention(self, q, k, v, bias, masks, q_side: Side, kv_side: Side, deterministic):
        """Attention of compact ``q``/``k``/``v`` ``[G, N, H, D]`` on head-major rows ``[G, H, R, L, D]``
        (``bias``: the rows' ``[G * R, 1, Lq, Lk]``), the context back to compact for the out projection."""
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        layout_q, layout_kv = q_side.layout, kv_side.layout
        q, k, v = heads_to_rows(q, *layout_q), heads_to_rows(k, *layout_kv), heads_to_rows(v, *layout_kv)
        logits = jnp.einsum("ghrqd,ghrkd->ghrqk", q, k).astype(jnp.float32)
        groups = q.shape[0]
        weights = self._weights(logits + bias.reshape((groups, 1, -1) + bias.shape[2:]), deterministic)
        context = heads_to_compact(jnp.einsum("ghrqk,ghrkd->ghrqd", weights.astype(dtype), v), *layout_q)
        return self._out(context, masks, q_side)


CACHE_CHUNK = 16  # positions a chunk of the self-attention cache holds (cached_attention)


def cached_attention(module: nn.Module, q, k, v, ctx: Context):
    """One decoding step of causal self-attention on ``module``'s ``cache`` collection: writes this
    step's keys/values (head-major ``[rows, heads, 1, width]``; keys and values may differ in
    width) at the step's position and returns the context ``[rows, 1, heads, value width]`` of the
    queries ``q`` (``[rows, 1, heads, width]``, scaled).

    The cache is kept per *sentence*, with one slot per beam (``sentences`` is the source side's
    rows, ``slots`` the rows a sentence had when the cache was made, i.e. the search's beams).
    Row ``r`` of a step writes slot ``r % beams`` of its sentence at the step's position and
    records that slot at that position in its ``lineage`` (``[rows, positions]`` int32, a per-beam
    leaf). A beam search reorders only the lineage with the beams (``beam_search``: leaves of one
    row per sentence are never reordered), so no key/value is copied when beams swap: a beam
    attends, at each earlier position, to the slot its lineage names there, and the beams of a
    sentence share one read of its cache. With one row per sentence (greedy decoding, one example
    a row) this is the usual per-row cache.

    The positions are cut into chunks of ``CACHE_CHUNK``, each its own array (values ``[sentences,
    heads, CACHE_CHUNK * slots, width]``, keys transposed, ``[sentences, heads, width, CACHE_CHUNK *
    slots]``, position-major: the score dot is a plain ``[beams, width] x [width, keys]`` product),
    and a step reads only the chunks filled so far (a ``lax.switch`` on their number; its branch
    puts those chunks' scores into one softmax): a cache sized for the longest output costs the
    early steps, where most of a batch's work is, little (all of test_2016_flickr de-en, beam 4:
    ~12% less time than one chunk, the same outputs). Separate arrays, because a slice of one
    array would be copied for the dots."""
    rows, heads, _, _ = k.shape
    sentences = rows if ctx.src.pairs is None else ctx.src.pairs.shape[0]
    beams = rows // sentences
    size = min(CACHE_CHUNK, module.config.max_positions)
    chunks = -(-module.config.max_positions // size)
    positions = chunks * size
    is_init = not module.has_variable("cache", "key")
    kd, vd = k.shape[-1], v.shape[-1]
    cached_k = module.variable("cache", "key", lambda: tuple(
        jnp.zeros((sentences, heads, kd, beams * size), k.dtype) for _ in range(chunks)))
    cached_v = module.variable("cache", "value", lambda: tuple(
        jnp.zeros((sentences, heads, beams * size, vd), v.dtype) for _ in range(chunks)))
    lineage = module.variable("cache", "lineage", jnp.zeros, (rows, positions), jnp.int32)
    index = module.variable("cache", "index", lambda: jnp.array(0, jnp.int32))
    if is_init:  # the step that makes the cache attends to its own key only: weight 1 on its value
        return v.transpose(0, 2, 1, 3)
    i = index.value
    slots = cached_v.value[0].shape[2] // size
    current, at = i // size, i % size
    # this step's rows into slots 0 .. beams - 1 of their sentence, position i: written into the
    # current chunk (the other chunks get back what they hold there). A chunk's keys/values are
    # position-major (position * slots + slot), so a step writes one contiguous run.
    keys = k.reshape((sentences, beams, heads, kd)).transpose(0, 2, 3, 1)
    values = v.reshape((sentences, beams, heads, vd)).transpose(0, 2, 1, 3)

    def write(chunk, c, new, start):
        old = jax.lax.dynamic_slice(chunk, start, new.shape)
        return jax.lax.dynamic_update_slice(chunk, jnp.where(c == current, new, old), start)

    cached_k.value = tuple(write(chunk, c, keys, (0, 0, 0, at * slots)) for c, chunk in enumerate(cached_k.value))
    cached_v.value = tuple(write(chunk, c, values, (0, 0, at * slots, 0)) for c, chunk in enumerate(cached_v.value))
    slot = jnp.arange(rows, dtype=jnp.int32) % beams
    lineage.value = jax.lax.dynamic_update_slice(lineage.value, slot[:, None], (0, i))
    index.value = i + 1
    queries = q.reshape((sentences, beams) + q.shape[2:]).transpose(0, 2, 1, 3)  # [sentences, heads, beams, width]

    def attend(filled, keys, values, lineage):
        """Attention over chunks ``0 .. filled - 1`` (the others are not read)."""
        n = filled * size
        # visible[sentence, beam, position, slot]: the beam's own history, one slot a position
        visible = ((lineage[:, :n].reshape(sentences, beams, n, 1) == jnp.arange(slots))
                   & (jnp.arange(n) <= i)[:, None])
        bias = jnp.where(visible, 0.0, NEG_INF).reshape(sentences, 1, beams, n * slots)
        logits = jnp.concatenate([jnp.einsum("bhqd,bhdk->bhqk", queries, keys[c]) for c in range(filled)],
                                 axis=-1)
        weights = jax.nn.softmax(logits.astype(jnp.float32) + bias, axis=-1).astype(values[0].dtype)
        width = size * slots
        return sum(jnp.einsum("bhqk,bhkd->bhqd", weights[..., c * width:(c + 1) * width], values[c])
                   for c in range(filled))

    branches = [functools.partial(attend, filled) for filled in range(1, chunks + 1)]
    operands = (cached_k.value, cached_v.value, lineage.value)
    context = branches[0](*operands) if chunks == 1 else jax.lax.switch(current, branches, *operands)
    return context.transpose(0, 2, 1, 3).reshape((rows, 1, heads, vd))


class FeedForward(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, masks, side: Side, ctx: Context):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        h = MaskedDense(cfg.ffn_dim, dtype=dtype, kernel_axes=("embed", "mlp"), name="fc1")(
            x, lookup_mask(masks, "fc1", side.pairs, dtype, cfg.mask_lookup))
        h = constrain(nn.relu(h), ("batch", "length", "mlp"))
        if cfg.activation_dropout > 0.0:
            h = Dropout(cfg.activation_dropout)(h, deterministic=ctx.deterministic)
        return MaskedDense(cfg.d_model, dtype=dtype, kernel_axes=("mlp", "embed"), name="fc2")(
            h, lookup_mask(masks, "fc2", side.pairs, dtype, cfg.mask_lookup))


class Residual(nn.Module):
    """Post-norm (fairseq base): LN(x + drop(f(x))); pre-norm: x + drop(f(LN(x)))."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, sublayer, deterministic):
        cfg = self.config
        norm = nn.LayerNorm(dtype=jnp.float32, name="norm")
        drop = Dropout(cfg.dropout)
        if cfg.pre_norm:
            return x + drop(sublayer(norm(x).astype(x.dtype)), deterministic=deterministic)
        y = x + drop(sublayer(x), deterministic=deterministic)
        return norm(y).astype(x.dtype)


class RoutedLayerNorm(nn.Module):
    """Layer norm with one scale/bias per route (``[R, d]``), each token using its route's."""

    routes: int
    epsilon: float = 1e-6  # as nn.LayerNorm

    @nn.compact
    def __call__(self, x, route):
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (self.routes, d), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.routes, d), jnp.float32)

        def norm(x, route):
            x = x.astype(jnp.float32)
            mean = x.mean(-1, keepdims=True)
            var = jnp.square(x - mean).mean(-1, keepdims=True)
            y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
            onehot = route_weights(route, self.routes, jnp.float32)
            return y * (onehot @ scale) + onehot @ bias

        return on_token_rows(norm, x, route)


class Adapter(nn.Module):
    """+Adapter (Bapna & Firat 2019): ``x + drop(up(relu(down(LN(x)))))``, one adapter per pair,
    each token using its pair's. The up-projection starts at zero, so an adapter starts as the
    identity (Houlsby et al. 2019's near-identity start)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, side: Side, ctx: Context):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        n = cfg.adapter_pairs
        pairs = side.pairs
        h = RoutedLayerNorm(n, name="norm")(x, pairs).astype(dtype)
        h = nn.relu(RoutedDense(cfg.adapter_dim, n, dtype=dtype, kernel_axes=("embed", "adapter"), name="down")(
            h, pairs))
        h = RoutedDense(cfg.d_model, n, dtype=dtype, kernel_init=nn.initializers.zeros,
                        kernel_axes=("adapter", "embed"), name="up")(h, pairs)
        return x + Dropout(cfg.dropout)(h, deterministic=ctx.deterministic).astype(x.dtype)


def _sub(masks, *keys):
    for key in keys:
        if masks is None:
            return None
        masks = masks[key]
    return masks


class EncoderLayer(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, bias, masks, ctx: Context):
        """``x``: the source side's activations (``ctx.src``)."""
        cfg, src, deterministic = self.config, ctx.src, ctx.deterministic
        attn = Attention(cfg, name="self_attn")
        x = Residual(cfg, name="self_attn_res")(
            x, lambda h: attn(h, h, bias, _sub(masks, "self_attn"), src, src, ctx), deterministic
        )
        ffn = FeedForward(cfg, name="ffn")
        x = Residual(cfg, name="ffn_res")(x, lambda h: ffn(h, _sub(masks, "ffn"), src, ctx), deterministic)
        if cfg.adapter_pairs:
            x = Adapter(cfg, name="adapter")(x, src, ctx)
        return constrain(x, ACTIVATION)


class DecoderLayer(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, y, encoded, self_bias, cross_bias, masks, ctx: Context):
        """``y``: the target side's activations (``ctx.tgt``); ``encoded``: the source side's
        (``ctx.src``)."""
        cfg, src, tgt, deterministic = self.config, ctx.src, ctx.tgt, ctx.deterministic
        ts = cfg.ts_languages
        self_attn = Attention(cfg, causal_cache=True, routes=ts if cfg.ts_self_attn else 0, name="self_attn")
        y = Residual(cfg, name="self_attn_res")(
            y, lambda h: self_attn(h, h, self_bias, _sub(masks, "self_attn"), tgt, tgt, ctx), deterministic
        )
        cross = Attention(cfg, routes=ts, name="cross_attn")
        y = Residual(cfg, name="cross_attn_res")(
            y, lambda h: cross(h, encoded, cross_bias, _sub(masks, "cross_attn"), tgt, src, ctx), deterministic
        )
        ffn = FeedForward(cfg, name="ffn")
        y = Residual(cfg, name="ffn_res")(y, lambda h: ffn(h, _sub(masks, "ffn"), tgt, ctx), deterministic)
        if cfg.adapter_pairs:
            y = Adapter(cfg, name="adapter")(y, tgt, ctx)
        return constrain(y, ACTIVATION)


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
            embedding_init=partitioned(nn.initializers.normal(stddev=cfg.d_model**-0.5), ("vocab", "embed")),
            param_dtype=jnp.float32,
            name="embed",
        )
        self.positions = jnp.asarray(sinusoidal_positions(cfg.max_positions, cfg.d_model))
        self.encoder_layers = [EncoderLayer(cfg, name=layer_path("encoder", i)) for i in range(cfg.enc_layers)]
        self.decoder_layers = [DecoderLayer(cfg, name=layer_path("decoder", i)) for i in range(cfg.dec_layers)]
        if cfg.pre_norm:
            self.encoder_norm = nn.LayerNorm(dtype=jnp.float32, name="encoder_norm")
            self.decoder_norm = nn.LayerNorm(dtype=jnp.float32, name="decoder_norm")
        self.dropout = Dropout(cfg.dropout)

    def _embed(self, tokens, positions, deterministic):
        cfg = self.config
        # what self.embed(tokens) computes; under a mesh the table's model dimension is gathered
        # first (FSDP), so that the lookup's output can take the activations' batch sharding
        table = constrain(self.embed.embedding, ("vocab", None))
        x = jnp.take(table, tokens, axis=0) * (cfg.d_model**0.5) + self.positions[positions]
        x = self.dropout(x.astype(jnp.dtype(cfg.dtype)), deterministic=deterministic)
        return constrain(x, ACTIVATION)

    def encode(self, tokens, segments, positions, pairs, masks=None, deterministic=True, layout=None):
        """``layout``: ``(index, slot)`` when the arrays are in the compact layout."""
        x = self._embed(tokens, positions, deterministic)
        rows = segments if layout is None else int_rows(segments, layout[0])
        bias = attention_bias(rows, rows)
        ctx = Context(src=Side(pairs, layout=layout), deterministic=deterministic)
        for i, layer in enumerate(self.encoder_layers):
            x = layer(x, bias, _sub(masks, layer_path("encoder", i)), ctx)
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
        return_hidden=False,
        layout=None,
        src_layout=None,
    ):
        """Logits [B, Lt, V] (float32). With decode=True, one step using the 'cache' collection.
        With ``return_hidden``, the last hidden states ``[B, Lt, d_model]`` (in the compute
        dtype, ``config.dtype``) instead: the logits are ``hidden @ params["embed"]["embedding"].T``
        (``training.loss.output_loss`` computes the float32 loss from them, with matmuls in that
        dtype, without keeping the logits). ``layout``/``src_layout``: the
        compact layouts of the target/source arrays (training only; see ``model/layout.py``)."""
        y = self._embed(tgt_inputs, tgt_positions, deterministic)
        if decode and tgt_inputs.shape[0] != encoded.shape[0]:
            # beam search: `encoded` holds one row per sentence, the target one row per beam (see
            # Attention); every beam of a sentence sees the sentence's non-padding source tokens
            cross_bias = jnp.where(src_segments > 0, 0.0, NEG_INF)[:, None, None, :].astype(jnp.float32)
        else:
            tgt_rows = tgt_segments if layout is None else int_rows(tgt_segments, layout[0])
            src_rows = src_segments if src_layout is None else int_rows(src_segments, src_layout[0])
            cross_bias = attention_bias(tgt_rows, src_rows)
        self_bias = None if decode else attention_bias(tgt_rows, tgt_rows, causal=True)
        routes = src_routes = None
        if self.config.ts_target_of_pair:
            table = jnp.asarray(self.config.ts_target_of_pair, jnp.int32)
            routes, src_routes = table[tgt_pairs], table[src_pairs]
        ctx = Context(src=Side(src_pairs, src_routes, src_layout), tgt=Side(tgt_pairs, routes, layout),
                      deterministic=deterministic, decode=decode)
        for i, layer in enumerate(self.decoder_layers):
            y = layer(y, encoded, self_bias, cross_bias, _sub(masks, layer_path("decoder", i)), ctx)
        if self.config.pre_norm:
            y = self.decoder_norm(y)
        if return_hidden:  # the compute dtype: output_loss's matmuls take it (bfloat16: tensor cores)
            return constrain(y.astype(jnp.dtype(self.config.dtype)), ACTIVATION)
        return constrain(self.embed.attend(y.astype(jnp.float32)), ("batch", "length", "vocab"))

    def __call__(self, batch, masks=None, deterministic=True, return_hidden=False):
        """A packed batch in the rows layout, or in the compact one (``src_index`` and the other
        ``COMPACT_KEYS`` present, see ``data/batching.py: CompactBatcher``)."""
        src_layout = tgt_layout = None
        if "src_index" in batch:
            src_layout = (batch["src_index"], batch["src_slot"])
            tgt_layout = (batch["tgt_index"], batch["tgt_slot"])
        encoded = self.encode(
            batch["src_tokens"], batch["src_segments"], batch["src_positions"], batch["src_pairs"],
            masks, deterministic, src_layout,
        )
        return self.decode(
            encoded, batch["src_segments"], batch["src_pairs"], batch["tgt_inputs"],
            batch["tgt_segments"], batch["tgt_positions"], batch["tgt_pairs"], masks, deterministic,
            return_hidden=return_hidden, layout=tgt_layout, src_layout=src_layout,
        )


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


def init_boxed_params(config: ModelConfig, seed: int = 0):
    """The initial parameters, boxed with their logical axis names (``nn.Partitioned``)."""
    model = Transformer(config)
    return model.init(jax.random.key(seed), dummy_batch(config))["params"]


def init_params(config: ModelConfig, seed: int = 0):
    """Plain float32 arrays: the logical-partitioning boxes of the annotations are removed
    (shardings are read from :func:`boxed_abstract_params` instead)."""
    return nn.unbox(init_boxed_params(config, seed))


def boxed_abstract_params(config: ModelConfig):
    """The model's parameters as a ShapeDtypeStruct tree, boxed with their logical axis names:
    what ``parallel.tree_shardings`` maps to a sharding per parameter."""
    return jax.eval_shape(lambda: init_boxed_params(config))


def target_language_table(pairs) -> tuple[int, ...]:
    """``ModelConfig.ts_target_of_pair`` for pair names (``data.pairs``), target languages
    numbered in sorted order: ``("de-en", "en-de", "fr-en")`` -> ``(1, 0, 1)`` (de 0, en 1)."""
    targets = [str(p).split("-")[1] for p in pairs]
    ids = {lang: i for i, lang in enumerate(sorted(set(targets)))}
    return tuple(ids[t] for t in targets)


def with_decoding(config: ModelConfig) -> ModelConfig:
    """Decoding never uses dropout."""
    return dataclasses.replace(config, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
