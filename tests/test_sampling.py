"""Sampling search (``model/beam_search.py: sample_search``) on the synthetic models of
test_beam_search: top-1 sampling is greedy search, draws follow the (tempered, top-k cut)
distribution, a sentence's sample does not depend on its batch, and the returned log-probability is
the model's own for the drawn sequence."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_beam_search import BOS, EOS, make_t2l, run_greedy, second_order_model

from jax_namnmt.errors import ConfigError
from jax_namnmt.model.beam_search import sample_search


@functools.partial(jax.jit, static_argnames=("max_len", "temperature", "topk", "min_len"))
def run_sample(params, cache, keys, max_len, temperature=1.0, topk=0, min_len=0):
    return sample_search(make_t2l(*params), cache, cache["row_bias"].shape[0], max_len, BOS, EOS, keys,
                         temperature, topk, min_len)


def sentence_keys(seed: int, n: int):
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(n))


def until_eos(seq) -> list[int]:
    seq = list(np.asarray(seq))
    return seq[: seq.index(EOS) + 1] if EOS in seq else seq


def test_top_one_sampling_is_greedy():
    V, L, B = 7, 8, 5
    params, _, init_cache = second_order_model(V, L, seed=4)
    cache = init_cache(np.random.default_rng(0).normal(size=(B, V)))
    seqs, _ = run_sample(params, cache, sentence_keys(0, B), L, topk=1)
    np.testing.assert_array_equal(seqs, run_greedy(params, cache, L))


def test_log_probs_are_the_models_and_batches_do_not_matter():
    V, L, B = 7, 8, 6
    params, logprob, init_cache = second_order_model(V, L, seed=5, eos_bias=1.0)
    row_bias = np.random.default_rng(1).normal(size=(B, V))
    keys = sentence_keys(3, B)
    seqs, log_probs = run_sample(params, init_cache(row_bias), keys, L, temperature=1.5, min_len=2)
    for b in range(B):
        seq = until_eos(seqs[b])
        assert len(seq) >= 2 and EOS not in seq[:1]  # min_len 2: EOS banned at the first step
        np.testing.assert_allclose(log_probs[b], logprob(row_bias[b], seq), rtol=1e-5, atol=1e-5)
        alone, alone_lp = run_sample(params, init_cache(row_bias[b:b + 1]), keys[b:b + 1], L, temperature=1.5,
                                     min_len=2)
        np.testing.assert_array_equal(alone[0], seqs[b])
        np.testing.assert_allclose(alone_lp[0], log_probs[b], rtol=1e-6)
    again, _ = run_sample(params, init_cache(row_bias), keys, L, temperature=1.5, min_len=2)
    np.testing.assert_array_equal(again, seqs)  # same keys, same samples
    other, _ = run_sample(params, init_cache(row_bias), sentence_keys(4, B), L, temperature=1.5, min_len=2)
    assert (np.asarray(other) != np.asarray(seqs)).any()


@pytest.mark.parametrize("temperature,topk", [(1.0, 0), (2.0, 0), (0.7, 3)])
def test_first_tokens_follow_the_distribution(temperature, topk):
    V, n = 6, 4000
    params, _, init_cache = second_order_model(V, 2, seed=6)
    cache = init_cache(np.zeros((n, V)))
    seqs, _ = run_sample(params, cache, sentence_keys(7, n), 1, temperature=temperature, topk=topk)
    A, S = (np.asarray(p, np.float64) for p in params)
    z = (A[BOS, BOS] + S[0]) / temperature
    if topk:
        z = np.where(z >= np.sort(z)[-topk], z, -np.inf)
    want = np.exp(z - z.max())
    want /= want.sum()
    counts = np.bincount(np.asarray(seqs)[:, 0], minlength=V)
    assert counts[want == 0].sum() == 0  # nothing outside the top k
    sigma = np.sqrt(n * want * (1 - want))
    assert (np.abs(counts - n * want) <= 4.5 * sigma + 1).all(), (counts, n * want)


def test_bad_settings_are_config_errors():
    params, _, init_cache = second_order_model(5, 3, seed=0)
    cache = init_cache(np.zeros((1, 5)))
    t2l = make_t2l(*params)
    with pytest.raises(ConfigError, match="temperature must be positive"):
        sample_search(t2l, cache, 1, 3, BOS, EOS, sentence_keys(0, 1), temperature=0.0)
    with pytest.raises(ConfigError, match="top-k"):
        sample_search(t2l, cache, 1, 3, BOS, EOS, sentence_keys(0, 1), topk=-1)


# -- through the model: translate --sampling -------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    from jax_namnmt import inference, packaged

    return inference.load_model(packaged.shipped_model_dir())


LINES = ["Zwei Hunde spielen im Schnee.", "Ein Mann fährt Fahrrad.", "", "Eine Frau liest ein Buch im Park."]


def test_top_one_sampling_translates_as_beam_one(shipped):
    import dataclasses

    from jax_namnmt import inference
    from jax_namnmt.config import SampleSearch

    beam_one = dataclasses.replace(shipped, config=dataclasses.replace(
        shipped.config, decode=dataclasses.replace(shipped.config.decode, beam_size=1)))
    greedy = inference.Translator(beam_one, "de", "en").translate(LINES)
    assert inference.Translator(shipped, "de", "en", sampling=SampleSearch(1.0, 1), seed=5).translate(LINES) == greedy


def test_a_lines_sample_depends_on_its_seed_and_number_only(shipped):
    from jax_namnmt import inference
    from jax_namnmt.config import SampleSearch

    def sampler(seed):
        return inference.Translator(shipped, "de", "en", sampling=SampleSearch(1.0, 10), seed=seed)

    together = sampler(1).translate(LINES * 3)
    # in pieces (as a resumed or chunked run reads them): the same samples
    pieces = [text for k in range(0, 12, 5) for text in sampler(1).translate((LINES * 3)[k:k + 5], first_number=k + 1)]
    assert pieces == together
    assert together[2] == "" and len(set(together[0::4])) > 1  # the same line at other line numbers: other draws
    assert sampler(2).translate(LINES * 3) != together


def test_a_samples_log_probability_is_its_forced_score(shipped):
    from jax_namnmt import decoding, scoring
    from jax_namnmt.config import SampleSearch
    from jax_namnmt.data.vocab import EOS_ID

    vocab, config = shipped.vocab, shipped.config
    sources = [np.asarray((vocab.tag_id("en"), *ids, EOS_ID), np.int32) for ids in vocab.encode_batch(LINES[:2] * 3)]
    pairs = np.full(len(sources), config.data.pairs.index("de-en"), np.int32)
    results = decoding.translate_ids(shipped.params, config.model, None, sources, pairs, config.decode, nbest=1,
                                      sampling=SampleSearch(1.0, 0))
    targets = []
    for tokens, _ in results:
        seq = list(tokens[0])
        targets.append(np.asarray(seq[: seq.index(EOS_ID) + 1], np.int32))
    forced, _ = scoring.score_ids(shipped.params, config.model, None, sources, targets, pairs)
    np.testing.assert_allclose([lp[0] for _, lp in results], forced, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("flags,message", [
    (["--sampling", "--beam", "4"], "--beam 4 does not go with --sampling"),
    (["--sampling-topk", "5"], "--sampling-topk and --temperature go with --sampling"),
    (["--sampling", "--temperature", "0"], "--temperature must be positive"),
    (["--sampling", "--sampling-topk", "-2"], "--sampling-topk must be 0"),
])
def test_sampling_flags_are_checked_first(flags, message, monkeypatch):
    import sys

    from jax_namnmt import translate
    from jax_namnmt.errors import UserError

    monkeypatch.setattr(sys, "argv", ["translate", "--src", "de", "--tgt", "en", *flags])
    with pytest.raises(UserError, match=message):
        translate.main()
