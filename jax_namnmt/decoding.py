"""Batched beam-search translation: each example under its own pair's masks.

Sources are sorted by length and cut into batches; each batch is padded to its own longest
source rounded up to a multiple of ``WIDTH_STEP`` (``program_width``), and its output limit
and self-attention caches follow from that width, so a batch of short sentences does not pay
for the call's longest one (all of Multi30k test_2016_flickr de-en, beam 4 on 2 cores: 1.6x the
sentences/s of one width for the whole call). Each width is one compiled program. On CPU two
batches are decoded at once (``decode_workers``). ``translate`` asks for bucketed shapes
(``bucket_shape``: every short input decodes with the same program) and for programs saved ahead
of time (``aot``); the model code (Flax) is imported only when a program has to be traced.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_namnmt.config import DecodeConfig, ModelConfig, SampleSearch
from jax_namnmt.data.batching import padded_batches
from jax_namnmt.data.vocab import BOS_ID, EOS_ID, PAD_ID
from jax_namnmt.model.low_precision import convert_params

# the package's sources the beam-search program is made from (its ahead-of-time cache key; a test
# checks that they cover every module of the package that make_beam_decoder imports)
PROGRAM_SOURCES = ("decoding.py", "model", "config.py", "parallel.py", "method/masks.py", "errors.py",
                   "data/vocab.py", "data/sampling.py", "data/__init__.py", "__init__.py", "malloc.py",
                   "method/__init__.py")
SHORT_WIDTH = 32  # bucketed source widths are multiples of this: one program for every short input
WIDTH_STEP = 8  # otherwise a batch's width is its longest source rounded up to a multiple of this,
MIN_WIDTH = 16  # and at least this (short batches share one program)


def max_output_len(src_len: int, decode: DecodeConfig, max_positions: int) -> int:
    return int(min(max_positions - 1, decode.max_len_a * src_len + decode.max_len_b))


@functools.lru_cache(maxsize=None)
def make_beam_decoder(config: ModelConfig, beam_size: int, max_len: int, length_penalty: float, penalty_form: str,
                      stop_early: str = "fairseq", max_len_a: float = 1.2, max_len_b: int = 10,
                      min_len: int = 1, nbest: int = 0, sampling: SampleSearch | None = None):
    """``decode(params, src [B, L], pair_ids [B], masks) -> tokens [B, max_len]`` (best beam); with
    ``nbest`` > 0 ``(tokens [B, nbest, max_len], scores [B, nbest])``, the ``nbest`` best hypotheses
    and their search scores (``beam_search``), best first.

    ``sampling``: a sample a sentence instead (``sample_search``; ``beam_size`` is then 1 and
    ``nbest`` at most 1, the score being the sample's summed log-probability), and ``decode`` takes
    a fifth argument, ``sample_ids int32 [B, 3]``: each sentence's key is
    ``key(0)`` folded with its three ids in turn (the seed, then e.g. its line and its part)."""
    if sampling is not None and (beam_size != 1 or nbest > 1):
        raise ValueError(f"sampling draws one hypothesis a sentence: beam size 1 and nbest 0 or 1, got {beam_size} "
                         f"and {nbest}")
    if not 0 <= nbest <= beam_size:
        raise ValueError(f"nbest must be between 0 and the beam size {beam_size}, got {nbest}")
    import flax.linen as nn

    from jax_namnmt.model.baked import module_for
    from jax_namnmt.model.beam_search import beam_search, expand_to_beams, sample_search, shrink_sizes
    from jax_namnmt.model.low_precision import dequantize, low_precision_products
    from jax_namnmt.model.transformer import Transformer, with_decoding

    config = with_decoding(config)

    @jax.jit
    def decode(params, src, pair_ids, masks, sample_ids=None):
        with nn.intercept_methods(low_precision_products):  # bfloat16/int8 weights (model/low_precision.py)
            return search(params, src, pair_ids, masks, sample_ids)

    def search(params, src, pair_ids, masks, sample_ids):
        batch, src_len = src.shape
        params = dequantize(params)  # int8 weights: to bfloat16 once, before the search's loop
        # max_positions sizes the sinusoid table, which must cover the source positions in the
        # encoder (an out-of-range gather would clamp them silently), and the decoder's
        # self-attention caches, whose positions only go up to max_len.
        module = module_for(config)  # Transformer, or BakedTransformer for a baked per-pair model
        encoder = module(dataclasses.replace(config, max_positions=max(max_len + 1, src_len)))
        model = module(dataclasses.replace(config, max_positions=max_len + 1))
        segments = (src != PAD_ID).astype(jnp.int32)
        positions = jnp.broadcast_to(jnp.arange(src_len, dtype=jnp.int32), src.shape)
        src_pairs = jnp.broadcast_to(pair_ids[:, None], src.shape)
        encoded = encoder.apply({"params": params}, src, segments, positions, src_pairs, masks,
                                method=Transformer.encode)
        # The source stays one row per sentence (the cross-attention groups a sentence's beams);
        # the target side has one row per beam.
        rows = batch * beam_size

        def step(variables, ids, position, mutable, sent):
            beams = ids.shape[0] // sent["pairs"].shape[0]  # 1 at the search's first step
            ones = jnp.ones((ids.shape[0], 1), jnp.int32)
            logits, state = model.apply(
                {"params": params, **variables}, sent["encoded"], sent["segments"], sent["src_pairs"], ids, ones,
                position * ones, expand_to_beams(sent["pairs"][:, None], beams), masks, decode=True,
                mutable=mutable, method=Transformer.decode)
            return logits[:, 0, :], state

        # Per-sentence inputs: the search gathers them when it drops finished sentences.
        sent = {"encoded": encoded, "segments": segments, "src_pairs": src_pairs, "pairs": pair_ids}
        # Prefill: creates the self-attention caches ('cache', reordered with the beams) and the
        # source keys/values of every cross-attention ('source', constant during the search).
        _, state = step({}, jnp.full((rows, 1), BOS_ID, jnp.int32), 0, ["cache", "source"], sent)
        sent["source"] = state["source"]

        def tokens_to_logits(ids, cache, sent):
            index = cache["decoder_layer_0"]["self_attn"]["index"]
            logits, new = step({"cache": cache, "source": sent["source"]}, ids, index, ["cache"], sent)
            return logits, new["cache"]

        lengths = segments.sum(axis=1)
        limits = jnp.clip(jnp.ceil(max_len_a * lengths + max_len_b).astype(jnp.int32), 1, max_len)
        if sampling is not None:
            keys = jax.vmap(lambda ids: functools.reduce(jax.random.fold_in, ids, jax.random.key(0)))(
                [sample_ids[:, 0], sample_ids[:, 1], sample_ids[:, 2]])
            tokens, log_probs = sample_search(tokens_to_logits, state["cache"], batch, max_len, BOS_ID, EOS_ID, keys,
                                              sampling.temperature, sampling.topk, min_len, limits, sent)
            return tokens if nbest == 0 else (tokens[:, None, :], log_probs[:, None])
        sequences, scores = beam_search(tokens_to_logits, state["cache"], batch, beam_size, max_len, BOS_ID, EOS_ID,
                                        length_penalty, penalty_form, stop_early=stop_early, min_len=min_len,
                                        max_lens=limits, per_sentence=sent, shrink_to=shrink_sizes(batch))
        return sequences[:, 0, :] if nbest == 0 else (sequences[:, :nbest, :], scores[:, :nbest])

    return decode


def decode_workers(platform: str | None = None) -> int:
    """Batches ``translate_ids`` decodes at once on ``platform`` (the default backend if None):
    2 on CPU, where XLA runs the search's many small non-matmul ops on one thread each, so a
    second batch in flight keeps the other core busy (beam 4, 512 sentences in batches of 128 on
    2 cores: +19-26% sentences/s, medians of 4 round pairs in one process, the same outputs); 1
    on accelerators, whose stream runs the batches in turn anyway."""
    return 2 if (platform or jax.default_backend()) == "cpu" else 1


def program_width(width: int, step: int = WIDTH_STEP) -> int:
    """The source width of the program that decodes a batch whose longest source has ``width``
    tokens: rounded up to a multiple of ``step``, at least ``MIN_WIDTH``. The encoder's and the
    cross-attention's work grow with it (a third of the time on Multi30k): steps of 8 rather than
    16 took 4-5% less time over all of test_2016_flickr de-en, and exact widths no less."""
    return max(MIN_WIDTH, -(-max(width, 1) // step) * step)


def bucket_shape(sentences: int, width: int, batch_sentences: int) -> tuple[int, int]:
    """``(rows, width)`` of the program that decodes ``sentences`` sources of at most ``width``
    tokens: rows a power of two up to ``batch_sentences`` (``batch_sentences`` for more), width a
    multiple of ``SHORT_WIDTH`` (so all short inputs share one program)."""
    rows = batch_sentences if sentences >= batch_sentences else 1 << max(0, sentences - 1).bit_length()
    return min(rows, batch_sentences), program_width(width, SHORT_WIDTH)


def translate_ids(params, config: ModelConfig, masks, sources: Sequence[np.ndarray], pair_ids: np.ndarray,
                  decode: DecodeConfig, progress=None, workers: int | None = None, bucket: bool = False,
                  aot: bool = False, before_compile: Callable[[], None] | None = None,
                  stats: dict | None = None, nbest: int = 0, sampling: SampleSearch | None = None,
                  sample_ids: np.ndarray | None = None) -> list:
    """Token ids of the best hypothesis for every source (same order), pairs mixed freely; each
    as long as its batch's output limit (``max_output_len`` of the batch's program width), zeros
    after EOS. ``nbest`` > 0: for every source ``(tokens [nbest, limit], scores [nbest])``, its
    ``nbest`` best hypotheses and their search scores, best first (``-inf``: none was found).
    ``workers`` batches are decoded at once (None: ``decode_workers()``); the result does not
    depend on it (each batch is the same compiled program on the same inputs).

    ``bucket``: batches of ``bucket_shape`` (extra rows are empty sources, dropped from the
    result), so that calls with few or short sources reuse one program. ``aot``: the program is
    loaded from, or saved to, the ahead-of-time cache (``jax_namnmt.aot``); ``before_compile`` is
    called first when it has to be compiled (e.g. to check that the parameters fit the model), and
    ``stats["aot"]`` says what happened, ``stats["program_s"]`` adds the seconds spent getting the
    program (loading or compiling it).

    ``sampling``: one sample a source instead of the beam search's best (``nbest`` 1: with its
    log-probability); ``sample_ids int [N, 3]`` seed each source's draws (default ``(0, i, 0)``
    for source ``i``): a source's sample depends on its ids, not on its batch or its position in
    the call."""
    if len(sources) == 0:
        return []
    if sampling is not None:
        sample_ids = (np.stack([np.zeros(len(sources)), np.arange(len(sources)), np.zeros(len(sources))], axis=1)
                      if sample_ids is None else np.asarray(sample_ids)).astype(np.int32)
        if sample_ids.shape != (len(sources), 3):
            raise ValueError(f"sample_ids must be [{len(sources)}, 3], got {sample_ids.shape}")
    params = convert_params(params, decode.weights)  # as it is for float32 (or when converted already)
    count = len(sources)
    if bucket:
        rows, _ = bucket_shape(count, 1, decode.batch_sentences)
        extra = -count % rows
        sources = list(sources) + [np.asarray([EOS_ID], np.int32)] * extra
        pair_ids = np.concatenate([np.asarray(pair_ids, np.int32), np.zeros(extra, np.int32)])
    batches = padded_batches(sources, pair_ids, decode.batch_sentences)
    step = SHORT_WIDTH if bucket else WIDTH_STEP
    widths = [program_width(src.shape[1], step) for _, src, _ in batches]

    def padded(src, width):
        out = np.full((src.shape[0], width), PAD_ID, np.int32)
        out[:, : src.shape[1]] = src
        return out

    def settings(width):
        return (1 if sampling else decode.beam_size, max_output_len(width, decode, 1024), decode.length_penalty,
                decode.penalty_form, decode.stop_early, decode.max_len_a, decode.max_len_b, decode.min_len, nbest,
                sampling)

    def ids_of(indices):  # the batch rows' sample ids (rows that only fill the batch: zeros)
        return np.where((indices >= 0)[:, None] & (indices < count)[:, None], sample_ids[np.clip(indices, 0, count - 1)],
                        0).astype(np.int32)

    decoders = {}  # width -> its program, loaded or compiled before any batch runs
    checked = []  # before_compile runs once, before the first program that has to be compiled
    started = time.perf_counter()
    for batch, width in zip(batches, widths):
        if width in decoders:
            continue
        first = (params, padded(batch[1], width), batch[2], masks) + ((ids_of(batch[0]),) if sampling else ())
        if aot:
            from jax_namnmt import aot as aot_cache

            def lower(first=first, width=width):
                if before_compile is not None and not checked:
                    before_compile()
                    checked.append(True)
                return make_beam_decoder(config, *settings(width)).lower(*first)

            decoders[width] = aot_cache.compiled("beam_search", repr((config, settings(width))), first, lower,
                                                 PROGRAM_SOURCES, stats=stats)
        else:
            # compiled here (once per process and shape): threads starting together would each
            # compile the search
            decoders[width] = make_beam_decoder(config, *settings(width)).lower(*first).compile()
    if stats is not None:
        stats["program_s"] = stats.get("program_s", 0.0) + time.perf_counter() - started

    def run(job):
        (indices, src, pairs), width = job
        extra = (ids_of(indices),) if sampling else ()
        result = decoders[width](params, padded(src, width), pairs, masks, *extra)
        return np.asarray(result) if nbest == 0 else tuple(zip(*(np.asarray(a) for a in result)))

    outputs: list = [None] * len(sources)

    def keep(indices, tokens):
        for row, index in enumerate(indices):
            if index >= 0:
                outputs[index] = tokens[row]
        if progress is not None:
            progress.update(int(((indices >= 0) & (indices < count)).sum()))

    jobs = list(zip(batches, widths))
    workers = decode_workers() if workers is None else workers
    if workers > 1 and len(batches) > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
            for (indices, _, _), tokens in zip(batches, pool.map(run, jobs)):
                keep(indices, tokens)
    else:
        for job in jobs:
            keep(job[0][0], run(job))
    return outputs[:count]
