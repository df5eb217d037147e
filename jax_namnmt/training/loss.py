"""Label-smoothed cross entropy over non-padding tokens (fairseq's formula).

``label_smoothed_nll`` takes logits. ``output_loss`` takes the decoder's last hidden states and
the (tied) output embedding and computes the same three sums without keeping the ``[tokens,
vocab]`` logits: it goes through the tokens in chunks and, when differentiated, computes the
gradients of the hidden states and of the embedding in that same pass (a custom VJP), so the
logits of a chunk are used while they are still in cache. On the 2-core CPU the loss and its
gradients over 4,096 tokens x 8,000 words take ~480 ms this way against ~640 ms through the
logits (``benchmarks/cpu_throughput.py`` measures the whole step).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

LOSS_CHUNK_CPU = 512  # tokens a chunk on CPU (512-1024 measured best; 4,096 = no chunking is 25% slower)


def default_loss_chunk() -> int:
    """Tokens per chunk of ``output_loss``: ``LOSS_CHUNK_CPU`` on CPU, 0 (one chunk) elsewhere."""
    return LOSS_CHUNK_CPU if jax.default_backend() == "cpu" else 0


def _coefficients(epsilon: float, vocab: int) -> tuple[float, float]:
    """fairseq's weights: ``loss = a * nll + eps_i * sum_v(-log p_v)``."""
    eps_i = epsilon / (vocab - 1)
    return 1.0 - epsilon - eps_i, eps_i


def label_smoothed_nll(logits, labels, weights, epsilon: float):
    """Sums over tokens with weight 1 (padding has weight 0).

    fairseq ``label_smoothed_cross_entropy``: with ``eps_i = epsilon / (V - 1)``,
    ``loss = (1 - epsilon - eps_i) * nll + eps_i * sum_v(-log p_v)``.
    Returns ``(loss_sum, nll_sum, num_tokens)``.
    """
    lprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(lprobs, labels[..., None], axis=-1)[..., 0]
    smooth = -jnp.sum(lprobs, axis=-1)
    a, eps_i = _coefficients(epsilon, logits.shape[-1])
    loss = a * nll + eps_i * smooth
    weights = weights.astype(jnp.float32)
    return jnp.sum(loss * weights), jnp.sum(nll * weights), jnp.sum(weights)


def _chunked(hidden, chunk: int, *flat):
    """``[k, chunk, ...]`` views of the flat token arrays ``hidden [N, d]`` and ``flat`` (each
    ``[N]``), padded with zeros (zero-weight tokens) to whole chunks."""
    n = hidden.shape[0]
    chunk = max(1, n if chunk <= 0 or chunk >= n else chunk)  # (n = 0: no chunk, zero sums)
    pad = (-n) % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, pad), (0, 0)))
        flat = tuple(jnp.pad(x, (0, pad)) for x in flat)
    k = (n + pad) // chunk
    return (hidden.reshape(k, chunk, hidden.shape[-1]), *(x.reshape(k, chunk) for x in flat))


def _matmul_dtype(hidden):
    """The output layer's matmul operand dtype: the hidden states' compute dtype when it is a
    16-bit float (bfloat16 on accelerators: tensor-core matmuls, float32 accumulation), else
    float32. The logits, softmax and loss are float32 either way."""
    return hidden.dtype if jnp.dtype(hidden.dtype).itemsize == 2 else jnp.dtype(jnp.float32)


def _dot(a, b):
    """``a @ b`` accumulated and returned in float32 (operands in their own dtype)."""
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)


def _chunk_terms(h, embedding, labels, epsilon, logits_dtype):
    """Per-token loss and nll of one chunk, and the unnormalised softmax ``(e, s)``; ``h`` and
    ``embedding`` in the matmul dtype, the logits written in ``logits_dtype``, everything after
    that in float32."""
    z = jnp.matmul(h, embedding.T, preferred_element_type=logits_dtype).astype(jnp.float32)  # [c, V]
    vocab = z.shape[-1]
    a, eps_i = _coefficients(epsilon, vocab)
    m = jnp.max(z, axis=-1, keepdims=True)
    e = jnp.exp(z - m)
    s = jnp.sum(e, axis=-1)
    log_s = jnp.log(s)
    nll = log_s + m[:, 0] - jnp.take_along_axis(z, labels[:, None], axis=-1)[:, 0]
    smooth = vocab * log_s + jnp.sum(m - z, axis=-1)  # sum_v (lse - z_v), a sum of terms >= 0
    return a * nll + eps_i * smooth, nll, e, s


def _operands(hidden, embedding, labels, weights, chunk, *flat):
    """The chunked ``(hidden, labels, weights, *flat)`` and the embedding, the matmul operands in
    ``_matmul_dtype(hidden)``, the weights in float32."""
    cd = _matmul_dtype(hidden)
    return _chunked(hidden.astype(cd), chunk, labels, weights.astype(jnp.float32), *flat), embedding.astype(cd)


def _segment_sums(hidden, embedding, labels, weights, segments, num_segments, epsilon, chunk, logits_dtype):
    """``(loss [S], nll [S])``: the weighted per-token terms summed by each token's segment."""
    (hc, lc, wc, sc), emb_c = _operands(hidden, embedding, labels, weights, chunk, segments)

    def body(acc, xs):
        h, lab, w, seg = xs
        loss, nll, _, _ = _chunk_terms(h, emb_c, lab, epsilon, logits_dtype)
        sums = (jax.ops.segment_sum(t * w, seg, num_segments) for t in (loss, nll))
        return tuple(a + b for a, b in zip(acc, sums)), None

    zero = jnp.zeros((num_segments,), jnp.float32)
    (loss, nll), _ = jax.lax.scan(body, (zero, zero), (hc, lc, wc, sc))
    return loss, nll


def _sums(hidden, embedding, labels, weights, epsilon, chunk, logits_dtype):
    segments = jnp.zeros(labels.shape, jnp.int32)
    loss, nll = _segment_sums(hidden, embedding, labels, weights, segments, 1, epsilon, chunk, logits_dtype)
    return loss[0], nll[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _output_loss(hidden, embedding, labels, weights, epsilon, chunk, logits_dtype):
    return _sums(hidden, embedding, labels, weights, epsilon, chunk, logits_dtype)


def _output_loss_fwd(hidden, embedding, labels, weights, epsilon, chunk, logits_dtype):
    hidden, embedding, labels, weights = hidden.value, embedding.value, labels.value, weights.value
    (hc, lc, wc), emb_c = _operands(hidden, embedding, labels, weights, chunk)
    cd = emb_c.dtype
    vocab, d = embedding.shape
    a, eps_i = _coefficients(epsilon, vocab)

    def body(acc, xs):
        d_emb_t, loss_sum, nll_sum = acc
        h, lab, w = xs
        loss, nll, e, s = _chunk_terms(h, emb_c, lab, epsilon, logits_dtype)
        # d loss / d z = softmax - a * onehot(label) - eps_i (per token, times its weight)
        dz = (e * (1.0 / s)[:, None] - eps_i) * w[:, None]
        dz = (dz - jnp.where(jnp.arange(vocab)[None, :] == lab[:, None], (a * w)[:, None], 0.0)).astype(cd)
        # h.T @ dz transposes the small [c, d] operand, not the [c, V] one
        return (d_emb_t + _dot(h.T, dz), loss_sum + jnp.sum(loss * w), nll_sum + jnp.sum(nll * w)), _dot(dz, emb_c)

    zero = jnp.zeros((), jnp.float32)
    (d_emb_t, loss, nll), d_hidden = jax.lax.scan(body, (jnp.zeros((d, vocab), jnp.float32), zero, zero),
                                                 (hc, lc, wc))
    d_hidden = d_hidden.reshape(-1, d)[: hidden.shape[0]]
    return (loss, nll), (d_hidden, d_emb_t.T, hidden, embedding, labels, weights)


def _output_loss_bwd(epsilon, chunk, logits_dtype, residuals, cotangents):
    d_hidden, d_emb, hidden, embedding, labels, weights = residuals
    g_loss, g_nll = (None if isinstance(g, SymbolicZero) else g for g in cotangents)
    scale = (0.0 if g_loss is None else g_loss) + (0.0 if g_nll is None else g_nll)
    d_hidden, d_emb = scale * d_hidden, scale * d_emb
    if g_nll is not None:
        # d nll / d z - d loss / d z = -(1 - a) * onehot(label) + eps_i: no softmax term, so the
        # nll's extra gradient is a gather / scatter of rows.
        vocab = embedding.shape[0]
        a, eps_i = _coefficients(epsilon, vocab)
        w = (g_nll * weights.astype(jnp.float32))[:, None]
        h = hidden.astype(jnp.float32) * w
        d_hidden = d_hidden + w * (eps_i * embedding.sum(0)[None, :] - (1.0 - a) * embedding[labels])
        d_emb = d_emb + eps_i * h.sum(0)[None, :] - (1.0 - a) * jax.ops.segment_sum(h, labels, num_segments=vocab)
    return d_hidden.astype(hidden.dtype), d_emb.astype(embedding.dtype), None, None


_output_loss.defvjp(_output_loss_fwd, _output_loss_bwd, symbolic_zeros=True)


def output_loss(hidden, embedding, labels, weights, epsilon: float, chunk: int | None = None,
                logits_dtype="float32"):
    """``label_smoothed_nll(hidden @ embedding.T, labels, weights, epsilon)`` for flat tokens
    (``hidden [N, d]``, ``embedding [V, d]``, ``labels``/``weights [N]``), float32 softmax,
    ``chunk`` tokens at a time (``None``: ``default_loss_chunk()``; 0: all at once). With bfloat16
    ``hidden`` the three output-layer matmuls (logits, and the gradients of hidden and embedding)
    take bfloat16 operands with float32 accumulation, as every other matmul of the model does;
    softmax, loss and the embedding's gradient sum stay float32. ``logits_dtype="bfloat16"`` has the
    logits matmul write bfloat16 logits (float32 accumulation, rounded once), which the softmax then
    reads as float32: half the memory traffic of the ``[N, V]`` logits on a GPU, where they are
    written once and read three times (max, sum, gradient).

    Same values and gradients as through the logits (tests compare both, for the loss and the
    nll), without a ``[N, V]`` array kept for the backward pass."""
    if chunk is None:
        chunk = default_loss_chunk()
    weights = weights.astype(jnp.float32)
    loss, nll = _output_loss(hidden, embedding.astype(jnp.float32), labels.astype(jnp.int32), weights,
                             float(epsilon), int(chunk), jnp.dtype(logits_dtype))
    return loss, nll, jnp.sum(weights)


def output_loss_by_segment(hidden, embedding, labels, weights, segments, num_segments: int, epsilon: float,
                           chunk: int | None = None, logits_dtype="float32"):
    """``output_loss``'s three sums split by ``segments [N]`` (ids in ``[0, num_segments)``, e.g. each
    token's language pair): ``(loss [S], nll [S], tokens [S])``, whose totals are ``output_loss``'s.
    For evaluation: no custom gradient (it is never differentiated)."""
    if chunk is None:
        chunk = default_loss_chunk()
    weights = weights.astype(jnp.float32)
    segments = segments.astype(jnp.int32)
    loss, nll = _segment_sums(hidden, embedding.astype(jnp.float32), labels.astype(jnp.int32), weights,
                              segments, int(num_segments), float(epsilon), int(chunk), jnp.dtype(logits_dtype))
    return loss, nll, jax.ops.segment_sum(weights, segments, int(num_segments))
