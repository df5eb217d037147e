"""Incremental (cached) decoding and batched beam translation, each example under its own
pair's masks, checked against full teacher-forced forward passes."""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import equations

from jax_namnmt.config import DecodeConfig
from jax_namnmt.data.batching import padded_batches
from jax_namnmt.data.vocab import BOS_ID, EOS_ID
from jax_namnmt import decoding
from jax_namnmt.decoding import decode_workers, program_width, translate_ids
from jax_namnmt.model.low_precision import convert_params
from jax_namnmt.model.transformer import Transformer

NUM_PAIRS = 3
MAX_LEN = 8  # output tokens: max_len_a = 0, max_len_b = 8
GREEDY = DecodeConfig(beam_size=1, length_penalty=0.0, max_len_a=0.0, max_len_b=MAX_LEN, batch_sentences=4)


# backend optimizations off, as for conftest.py's helpers: compiled for two calls
@partial(jax.jit, static_argnames=("config", "beams"), compiler_options={"xla_backend_optimization_level": 0})
def _incremental_logits(params, batch, pair_ids, masks, *, config, beams=1):
    """Teacher-forced logits of ``batch["tgt_inputs"]`` one token at a time with the 'cache'
    collection, the way ``decoding.make_beam_decoder`` drives the model (one example a row).
    With ``beams`` > 1 the source side is every ``beams``-th row only (one row per sentence, as
    beam search keeps it) and each target row reads its sentence's source."""
    model = Transformer(config)
    src, segments, src_pairs = (batch[k][::beams] for k in ("src_tokens", "src_segments", "src_pairs"))
    encoded = model.apply({"params": params}, src, segments, batch["src_positions"][::beams], src_pairs,
                          masks, method=Transformer.encode)
    rows = batch["tgt_inputs"].shape[0]
    ones = jnp.ones((rows, 1), jnp.int32)
    tgt_pairs = jnp.repeat(pair_ids, beams)[:, None]

    def step(variables, ids, position, mutable):
        logits, state = model.apply({"params": params, **variables}, encoded, segments, src_pairs, ids,
                                    ones, position * ones, tgt_pairs, masks, decode=True, mutable=mutable,
                                    method=Transformer.decode)
        return logits[:, 0], state

    # Prefill, as decoding.py does: creates the self-attention caches ('cache') and the source
    # keys/values of the cross-attentions ('source'); its logits are not used.
    _, state = step({}, jnp.full((rows, 1), BOS_ID, jnp.int32), 0, ["cache", "source"])
    source = state["source"]

    def body(cache, t):
        ids = jax.lax.dynamic_slice_in_dim(batch["tgt_inputs"], t, 1, axis=1)
        logits, new = step({"cache": cache, "source": source}, ids, t, ["cache"])
        return new["cache"], logits

    _, logits = jax.lax.scan(body, state["cache"], jnp.arange(batch["tgt_inputs"].shape[1] // 2))
    return jnp.swapaxes(logits, 0, 1)


@pytest.fixture(params=[16, 3], ids=["chunks_of_16", "chunks_of_3"])
def cache_chunk(request, monkeypatch):
    """The self-attention cache's chunk size (``transformer.CACHE_CHUNK``): with 3, the 8 steps of
    these tests read 1 to 3 chunks (a ``lax.switch`` branch each) and the last is partly filled."""
    from jax_namnmt.model import transformer

    monkeypatch.setattr(transformer, "CACHE_CHUNK", request.param)
    _incremental_logits.clear_cache()  # traced with another chunk size otherwise
    yield request.param
    _incremental_logits.clear_cache()


def test_incremental_decoding_matches_teacher_forcing(tiny_config, tiny_params, pack, example, make_masks, fns,
                                                      cache_chunk):
    config = dataclasses.replace(tiny_config, dropout=0.0)
    masks = make_masks(config, NUM_PAIRS, seed=1)
    rng = np.random.default_rng(0)
    # one example per row, sources of different lengths, target prefixes of 8 tokens
    rows = [[example(rng, 5, 8, 2)], [example(rng, 12, 8, 0)], [example(rng, 9, 8, 1)]]
    batch = pack(rows, 16, 16)
    full = np.asarray(fns.forward(tiny_params, batch, masks, config=config))[:, :8]
    steps = np.asarray(_incremental_logits(tiny_params, batch, jnp.array([2, 0, 1]), masks, config=config))
    assert steps.shape == full.shape
    np.testing.assert_allclose(steps, full, rtol=1e-5, atol=1e-5)
    # (and the masks matter here: another pair's masks give other logits)
    other = np.asarray(_incremental_logits(tiny_params, batch, jnp.array([0, 1, 2]), masks, config=config))
    assert np.abs(other - steps).max() > 1e-2


def test_beams_share_their_sentence_source_rows(tiny_config, tiny_params, pack, example, make_masks, fns,
                                                cache_chunk):
    """Beam search keeps one source row per sentence and groups a sentence's beams in the
    cross-attention: each beam's logits equal a full forward pass of its own (source, target)."""
    config = dataclasses.replace(tiny_config, dropout=0.0)
    masks = make_masks(config, NUM_PAIRS, seed=2)
    rng = np.random.default_rng(5)
    beams, pairs = 3, [1, 2]
    rows = []
    for length, pair in zip((6, 11), pairs):
        src = example(rng, length, 8, pair)[0]
        for _ in range(beams):  # the same source, a different target prefix per beam
            rows.append([(src, rng.integers(4, config.vocab_size, 8), pair)])
    batch = pack(rows, 16, 16)
    full = np.asarray(fns.forward(tiny_params, batch, masks, config=config))[:, :8]
    steps = np.asarray(_incremental_logits(tiny_params, batch, jnp.array(pairs), masks, config=config, beams=beams))
    np.testing.assert_allclose(steps, full, rtol=1e-5, atol=1e-5)
    assert np.abs(full[0] - full[1]).max() > 1e-2  # the beams' targets differ, so do their logits


def _greedy_reference(params, config, masks, sources, pair_ids, forward, pack):
    """Greedy search by repeated full forward passes (no cache): argmax at step t of the
    teacher-forced logits of the prefix, EOS banned at the first step (min_len 1) and forced at
    the length limit (fairseq's rules); EOS kept, 0 after it."""
    out = []
    for start in range(0, len(sources), 3):  # 3 rows of 16, the shape the other tests compile
        chunk = list(range(start, min(start + 3, len(sources))))
        rows = [[(sources[i], np.full(MAX_LEN, 4), int(pair_ids[i]))] for i in chunk]
        batch = pack(rows + [[]] * (3 - len(rows)), 16, 16)
        tokens = np.zeros((3, MAX_LEN), np.int32)
        done = np.zeros(3, bool)
        for t in range(MAX_LEN):
            batch["tgt_inputs"][:, 1:t + 1] = tokens[:, :t]
            logits = np.asarray(forward(params, batch, masks, config=config))
            step_logits = logits[:, t].copy()
            if t == 0:  # min_len = 1: no empty translation
                step_logits[:, EOS_ID] = -np.inf
            tok = step_logits.argmax(-1)
            if t == MAX_LEN - 1:  # the per-sentence length limit: only EOS is allowed there
                tok = np.full_like(tok, EOS_ID)
            tok = np.where(done, 0, tok)
            tokens[:, t] = tok
            done |= tok == EOS_ID
        out.extend(tokens[:len(chunk)])
    return out


@pytest.fixture(scope="module")
def setup(tiny_config, tiny_params, make_masks, fns, pack):
    config = dataclasses.replace(tiny_config, dropout=0.0)
    # A random tiny model with tied embeddings mostly copies its previous token. Larger
    # kernels make the outputs depend more on the source; a slightly longer E[EOS] row
    # (logit(EOS) = y . E[EOS]) makes some, not all, outputs stop early.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: 2.0 * x if path[-1].key == "kernel" else np.array(x), tiny_params)
    params["embed"]["embedding"][EOS_ID] *= 1.2
    masks = make_masks(config, NUM_PAIRS, seed=4, keep=0.5)
    rng = np.random.default_rng(11)
    lengths = [3, 7, 1, 5, 8, 2, 6, 4, 8, 5, 3, 6]
    sources = [np.concatenate([rng.integers(4, config.vocab_size, n - 1), [EOS_ID]]) for n in lengths]
    pair_ids = np.array([0, 1, 2, 2, 0, 1, 1, 0, 2, 1, 0, 2], np.int32)  # 4 of each
    reference = _greedy_reference(params, config, masks, sources, pair_ids, fns.forward, pack)
    return config, params, masks, sources, pair_ids, reference


def test_setup_outputs_have_mixed_lengths(setup):
    *_, reference = setup
    finished = [int(np.flatnonzero(r == EOS_ID)[0]) + 1 if (r == EOS_ID).any() else None for r in reference]
    assert MAX_LEN in finished and any(f < MAX_LEN for f in finished)  # some hit the limit, some stop
    assert any(f is not None and f > 1 for f in finished)  # EOS after some tokens
    assert len({tuple(r) for r in reference}) >= 8


def test_beam_one_without_length_penalty_is_greedy(setup):
    config, params, masks, sources, pair_ids, reference = setup
    outputs = translate_ids(params, config, masks, sources, pair_ids, GREEDY)
    assert len(outputs) == len(sources)
    for i, (got, want) in enumerate(zip(outputs, reference)):
        np.testing.assert_array_equal(got, want, err_msg=f"source {i}")


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
def test_greedy_decoding_with_low_precision_weights(setup, pack, fns, weights):
    """Incremental decoding with bfloat16 or int8 weights (converted inside translate_ids) gives
    the greedy reference of the full forward pass with the same converted weights."""
    config, params, masks, sources, pair_ids, _ = setup
    converted = convert_params(params, weights)
    reference = _greedy_reference(converted, config, masks, sources, pair_ids, fns.forward_low_precision, pack)
    outputs = translate_ids(params, config, masks, sources, pair_ids, dataclasses.replace(GREEDY, weights=weights))
    for i, (got, want) in enumerate(zip(outputs, reference)):
        np.testing.assert_array_equal(got, want, err_msg=f"source {i}")


def test_search_dequantizes_int8_weights_once_before_its_loops(setup):
    """With int8 weights the search's program converts each int8 matrix once, before the loop,
    and its steps multiply the bfloat16 results (no int8 left in any loop)."""
    config, params, masks, sources, pair_ids, _ = setup
    int8 = convert_params(params, "int8")
    decode = decoding.make_beam_decoder(config, 2, MAX_LEN, 0.6, "fairseq")
    src = np.full((4, 8), EOS_ID, np.int32)
    jaxpr = jax.make_jaxpr(decode)(int8, src, pair_ids[:4], masks).jaxpr
    is_int8 = lambda eqn: eqn.invars[0].aval.dtype == jnp.int8  # noqa: E731
    int8_leaves = sum(leaf.dtype == jnp.int8 for leaf in jax.tree.leaves(int8))
    assert int8_leaves == 4 * 3 + 2 * 2 + 1  # the projections and the embedding
    assert sum(map(is_int8, equations(jaxpr, "convert_element_type"))) == int8_leaves
    loops = equations(jaxpr, "while")
    assert loops
    for loop in loops:
        inside = equations(loop.params["body_jaxpr"].jaxpr, "convert_element_type")
        assert not any(map(is_int8, inside))
        dots = equations(loop.params["body_jaxpr"].jaxpr, "dot_general")
        assert sum(all(v.aval.dtype == jnp.bfloat16 for v in eqn.invars) for eqn in dots) > 0
        assert not any(v.aval.dtype == jnp.int8 for eqn in dots for v in eqn.invars)


def test_results_come_back_in_input_order(setup):
    config, params, masks, sources, pair_ids, reference = setup
    # padded_batches sorts longest first, so the decoded rows are not in input order
    order = np.concatenate([idx for idx, _, _ in padded_batches(sources, pair_ids, GREEDY.batch_sentences)])
    assert list(order[order >= 0]) != list(range(len(sources)))
    assert len(padded_batches(sources, pair_ids, GREEDY.batch_sentences)) == 3
    # ... and a shuffled input gives the same translations, shuffled alike
    perm = np.random.default_rng(0).permutation(len(sources))
    outputs = translate_ids(params, config, masks, [sources[i] for i in perm], pair_ids[perm], GREEDY)
    for k, i in enumerate(perm):
        np.testing.assert_array_equal(outputs[k], reference[i], err_msg=f"source {i}")


def test_each_example_uses_its_own_pairs_masks(setup):
    config, params, masks, sources, pair_ids, _ = setup
    decode = dataclasses.replace(GREEDY, beam_size=2, length_penalty=0.6)
    mixed = translate_ids(params, config, masks, sources, pair_ids, decode)
    for m in range(NUM_PAIRS):
        index = np.flatnonzero(pair_ids == m)
        alone = translate_ids(params, config, masks, [sources[i] for i in index], pair_ids[index], decode)
        for k, i in enumerate(index):
            np.testing.assert_array_equal(mixed[i], alone[k], err_msg=f"source {i} of pair {m}")
    # the masks do matter: the same sources under other pairs' masks translate differently
    shifted = translate_ids(params, config, masks, sources, (pair_ids + 1) % NUM_PAIRS, decode)
    assert sum(not np.array_equal(a, b) for a, b in zip(mixed, shifted)) >= len(sources) // 2


def test_sources_longer_than_the_output_limit(setup):
    """The decoder's position table must cover the source, not only the output length:
    greedy output capped at 3 tokens is the first 2 tokens of the uncapped one, then EOS."""
    config, params, masks, sources, pair_ids, reference = setup
    assert max(len(s) for s in sources) > 3 + 1
    capped = translate_ids(params, config, masks, sources, pair_ids, dataclasses.replace(GREEDY, max_len_b=3))
    for i, (got, want) in enumerate(zip(capped, reference)):
        expected = want[:3].copy()
        if EOS_ID not in expected[:2]:
            expected[2] = EOS_ID  # the limit forces EOS at the third token
        np.testing.assert_array_equal(got, expected, err_msg=f"source {i}")


def test_concurrent_batches_give_the_same_translations_in_order(setup):
    """``translate_ids`` decodes several batches at once on CPU (``decode_workers``); the result
    is the one-at-a-time result, in input order, and the progress bar counts every sentence."""
    config, params, masks, sources, pair_ids, reference = setup
    assert decode_workers("cpu") == 2 and decode_workers("gpu") == 1

    class Count:
        n = 0

        def update(self, k):
            self.n += k

    decode = dataclasses.replace(GREEDY, beam_size=2, length_penalty=0.6)
    one = translate_ids(params, config, masks, sources, pair_ids, decode, workers=1)
    for workers in (2, 3):
        progress = Count()
        several = translate_ids(params, config, masks, sources, pair_ids, decode, progress=progress, workers=workers)
        assert progress.n == len(sources)
        for i, (a, b) in enumerate(zip(one, several)):
            np.testing.assert_array_equal(a, b, err_msg=f"source {i}, {workers} workers")
    greedy = translate_ids(params, config, masks, sources, pair_ids, GREEDY, workers=3)
    for i, (got, want) in enumerate(zip(greedy, reference)):
        np.testing.assert_array_equal(got, want, err_msg=f"source {i}")


# -- beam search on the model against an independent reference ------------------------------------

BEAM, ALPHA = 3, 0.6
BEAM3 = dataclasses.replace(GREEDY, beam_size=BEAM, length_penalty=ALPHA, stop_early="exact")


def _beam_reference(params, config, masks, src, pair, forward, pack) -> list[tuple[tuple, float]]:
    """Beam search written out over hypotheses, every score from the model's full teacher-forced
    forward pass (no cache), log-probabilities in float64: at each step the alive hypotheses' 2K
    best extensions; an EOS candidate among the K best of them finishes, scored logp / len**alpha
    (fairseq's rule); the K best others stay alive; EOS banned at the first token (min_len 1) and
    the only choice at the length limit. Run to the limit (what the "exact" stop rule returns).
    Returns the K best finished ``(tokens with EOS, score)``, best first."""
    vocab = config.vocab_size
    alive, finished = [((), 0.0)], []
    for t in range(MAX_LEN):
        rows = [[(src, np.full(MAX_LEN, 4), pair)] for _ in alive]
        batch = pack(rows + [[]] * (3 - len(rows)), 16, 16)
        for r, (tokens, _) in enumerate(alive):
            batch["tgt_inputs"][r, 1:t + 1] = tokens
        logits = np.asarray(forward(params, batch, masks, config=config))[:len(alive), t].astype(np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        candidates = []
        for (tokens, score), lp in zip(alive, logp):
            for v in range(vocab):
                if (v == EOS_ID and t == 0) or (v != EOS_ID and t + 1 >= MAX_LEN):
                    continue
                candidates.append((score + lp[v], tokens + (v,)))
        candidates.sort(key=lambda c: -c[0])
        top = candidates[:2 * BEAM]
        finished += [(tokens, score / (t + 1) ** ALPHA) for rank, (score, tokens) in enumerate(top)
                     if tokens[-1] == EOS_ID and rank < BEAM]
        alive = [(tokens, score) for score, tokens in top if tokens[-1] != EOS_ID][:BEAM]
        if not alive:
            break
    return sorted(finished, key=lambda f: -f[1])[:BEAM]


@partial(jax.jit, static_argnames=("config",), compiler_options={"xla_backend_optimization_level": 0})
def _beam_by_full_forward(params, batch, masks, *, config):
    """The library's ``beam_search`` driving the model's full forward pass (no cache; the search's
    cache carries each hypothesis's decoder inputs so far): ``(sequences, scores)`` of every beam."""
    from jax_namnmt.model.beam_search import beam_search, expand_to_beams

    sentences = batch["src_tokens"].shape[0]
    rows = expand_to_beams(batch, BEAM)

    def tokens_to_logits(ids, cache):
        t = cache["t"]
        inputs = jax.lax.dynamic_update_slice_in_dim(cache["inputs"], ids, t, axis=1)
        logits = Transformer(config).apply({"params": params}, dict(rows, tgt_inputs=inputs), masks,
                                           deterministic=True)
        return jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False), {"inputs": inputs, "t": t + 1}

    return beam_search(tokens_to_logits, {"inputs": rows["tgt_inputs"], "t": jnp.array(0, jnp.int32)}, sentences,
                       BEAM, MAX_LEN, BOS_ID, EOS_ID, ALPHA, "fairseq", stop_early="exact", min_len=1,
                       max_lens=jnp.full((sentences,), MAX_LEN, jnp.int32))


@pytest.fixture(scope="module")
def beam_reference(setup, fns, pack):
    config, params, masks, sources, pair_ids, _ = setup
    return [_beam_reference(params, config, masks, src, int(pair), fns.forward, pack)
            for src, pair in zip(sources, pair_ids)]


def _padded(tokens) -> np.ndarray:
    return np.concatenate([np.asarray(tokens, np.int32), np.zeros(MAX_LEN - len(tokens), np.int32)])


def test_beam_reference_is_not_greedy(setup, beam_reference):
    """The setting is one where the beam matters: for some sentences the best of 3 beams is not
    the greedy output, and the finished hypotheses have several lengths."""
    *_, greedy = setup
    assert any(not np.array_equal(_padded(hyps[0][0]), g) for hyps, g in zip(beam_reference, greedy))
    assert len({len(tokens) for hyps in beam_reference for tokens, _ in hyps}) >= 3


def test_beam_translation_equals_the_reference(setup, beam_reference):
    """``translate_ids`` (the cached decoder, batches of 4 mixed pairs, each under its masks) with beam 3
    returns the reference's best hypothesis for every sentence."""
    config, params, masks, sources, pair_ids, _ = setup
    outputs = translate_ids(params, config, masks, sources, pair_ids, BEAM3)
    for i, (got, hyps) in enumerate(zip(outputs, beam_reference)):
        np.testing.assert_array_equal(got, _padded(hyps[0][0]), err_msg=f"source {i}")


def test_beam_search_on_the_model_gives_the_reference_beams_and_scores(setup, beam_reference, pack):
    """Every beam of ``beam_search`` on the model (tokens and length-penalised scores) is the reference's."""
    config, params, masks, sources, pair_ids, _ = setup
    batch = pack([[(src, np.full(MAX_LEN, 4), int(pair))] for src, pair in zip(sources, pair_ids)], 16, 16)
    sequences, scores = map(np.asarray, _beam_by_full_forward(params, batch, masks, config=config))
    for i, hyps in enumerate(beam_reference):
        assert len(hyps) == BEAM
        for k, (tokens, score) in enumerate(hyps):
            np.testing.assert_array_equal(sequences[i, k], _padded(tokens), err_msg=f"source {i}, beam {k}")
            np.testing.assert_allclose(scores[i, k], score, rtol=1e-5, atol=1e-5, err_msg=f"source {i}, beam {k}")


def test_each_batch_decodes_at_its_own_width(setup, monkeypatch):
    """Batches are padded to their own longest source (rounded up to ``WIDTH_STEP``, at least ``MIN_WIDTH``), not the
    call's: one program a width, and the same translations as each sentence decoded alone or in a
    wider program (``bucket=True`` pads to multiples of 32). Each output is as long as its
    program's output limit: compared without the padding after EOS."""
    config, params, masks, sources, pair_ids, _ = setup
    rng = np.random.default_rng(5)
    long = [np.concatenate([rng.integers(4, config.vocab_size, n - 1), [EOS_ID]]) for n in (20, 20, 35)]
    mixed, pairs = sources[:4] + long, np.concatenate([pair_ids[:4], [0, 1, 2]]).astype(np.int32)
    decode = dataclasses.replace(GREEDY, beam_size=2, length_penalty=0.6, max_len_a=0.5, max_len_b=4,
                                 batch_sentences=2)
    assert [program_width(n) for n in (1, 16, 17, 35)] == [16, 16, 24, 40]
    made = []
    original = decoding.make_beam_decoder

    def recording(config, beam_size, max_len, *rest):
        made.append(max_len)
        return original(config, beam_size, max_len, *rest)

    monkeypatch.setattr(decoding, "make_beam_decoder", recording)
    together = translate_ids(params, config, masks, mixed, pairs, decode, workers=1)
    # programs of widths 40 (the 35-token source), 24 (the two of 20) and 16 (the short ones)
    assert sorted(set(made)) == [int(0.5 * w + 4) for w in (16, 24, 40)]
    for i, src in enumerate(mixed):
        # alone: beside an empty source (just EOS, pair 0: what padded_batches fills a short batch
        # with), so that the batch has the programs' 2 rows (1 row would compile 3 more programs)
        alone = translate_ids(params, config, masks, [src, np.array([EOS_ID], np.int32)],
                              np.array([pairs[i], 0], np.int32), decode, workers=1)[0]
        np.testing.assert_array_equal(np.trim_zeros(together[i], "b"), np.trim_zeros(alone, "b"),
                                      err_msg=f"source {i}")
    bucketed = translate_ids(params, config, masks, mixed, pairs, decode, workers=1, bucket=True)
    for i, (a, b) in enumerate(zip(together, bucketed)):
        np.testing.assert_array_equal(np.trim_zeros(a, "b"), np.trim_zeros(b, "b"), err_msg=f"source {i}, bucketed")
    assert len({len(a) for a in together}) == 3  # the three programs' output limits


def test_parameters_are_checked_before_any_program_is_compiled(setup, monkeypatch):
    """``before_compile`` runs before the first program a call has to compile, whichever of the
    call's widths that is (here the narrower one, the wider one loaded from the in-memory cache),
    and not when every program is loaded."""
    from jax_namnmt import aot

    config, params, masks, sources, pair_ids, _ = setup
    monkeypatch.setattr(aot, "cache_dir", lambda: None)  # programs kept in memory only
    rng = np.random.default_rng(6)
    long = np.concatenate([rng.integers(4, config.vocab_size, 39), [EOS_ID]])
    decode = dataclasses.replace(GREEDY, beam_size=2, length_penalty=0.6, max_len_a=0.5, max_len_b=4,
                                 batch_sentences=1)  # a batch a source: a program a width
    checks = []

    def run(srcs, pairs):
        return translate_ids(params, config, masks, srcs, np.asarray(pairs, np.int32), decode, workers=1,
                             bucket=True, aot=True, before_compile=lambda: checks.append(len(srcs)))

    run([long], [0])
    assert checks == [1]
    run([long, sources[0]], [0, 1])  # width 64 loaded, width 32 compiled: checked first
    assert checks == [1, 2]
    run([long, sources[0]], [0, 1])  # both loaded: nothing to check
    assert checks == [1, 2]
