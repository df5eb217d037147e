"""Beam search and greedy search on small synthetic "models" (no model code involved)."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_namnmt.model.beam_search import (
    _candidates,
    _constrained_log_probs,
    _divisor_block,
    _top_candidates,
    beam_search,
    expand_to_beams,
    greedy_search,
    length_penalty_divisor,
    top_k,
)

BOS, EOS = 1, 2


def make_t2l(A, S):
    """logits = A[prev, last] + S[step] + row_bias, with the cache carrying ``prev``
    (per hypothesis, so beam gathering matters), ``row_bias`` (per sentence) and a 0-d
    ``step`` counter (passed through when beams are gathered)."""

    def tokens_to_logits(ids, cache):
        last = ids[:, 0]
        logits = A[cache["prev"], last] + S[cache["step"]] + cache["row_bias"]
        return logits, dict(prev=last, step=cache["step"] + 1, row_bias=cache["row_bias"])

    return tokens_to_logits


# The model's tables are jit arguments, so each shape configuration compiles once.
@functools.partial(jax.jit, static_argnames=("beam", "max_len", "alpha", "form", "stop"))
def run_beam(params, cache, beam, max_len, alpha=0.6, form="fairseq", stop="exact"):
    return beam_search(make_t2l(*params), expand_to_beams(cache, beam),
                       cache["row_bias"].shape[0], beam, max_len, BOS, EOS, alpha, form,
                       stop_early=stop)


@functools.partial(jax.jit, static_argnames=("max_len",))
def run_greedy(params, cache, max_len):
    return greedy_search(make_t2l(*params), cache, cache["row_bias"].shape[0], max_len, BOS, EOS)


def second_order_model(vocab, max_len, seed, eos_bias=0.0):
    """Random model tables, a float64 numpy scorer of the same model, and a cache builder."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(vocab, vocab, vocab)).astype(np.float32) * 2
    S = rng.normal(size=(max_len + 1, vocab)).astype(np.float32)
    S[:, EOS] += eos_bias

    def logprob(row_bias, seq):
        """Sum of log-probs of ``seq`` (no BOS) for a sentence with ``row_bias``."""
        prev, last, total = BOS, BOS, 0.0
        for t, tok in enumerate(seq):
            z = A[prev, last].astype(np.float64) + S[t] + row_bias
            z = z - z.max()
            total += z[tok] - np.log(np.exp(z).sum())
            prev, last = last, tok
        return total

    def init_cache(row_bias):
        row_bias = jnp.asarray(row_bias, jnp.float32)
        n = row_bias.shape[0]
        return dict(prev=jnp.full((n,), BOS, jnp.int32), step=jnp.array(0, jnp.int32),
                    row_bias=row_bias)

    return (jnp.asarray(A), jnp.asarray(S)), logprob, init_cache


def test_beam_one_equals_greedy():
    V, L, B = 7, 8, 4
    for seed in range(3):
        params, logprob, init = second_order_model(V, L, seed, eos_bias=1.0)
        bias = np.random.default_rng(100 + seed).normal(size=(B, V))
        greedy = np.asarray(run_greedy(params, init(bias), max_len=L))
        seqs, scores = map(np.asarray, run_beam(params, init(bias), beam=1, max_len=L, alpha=0.0))
        np.testing.assert_array_equal(seqs[:, 0], greedy)
        for r in range(B):
            toks = list(greedy[r])
            n = toks.index(EOS) + 1 if EOS in toks else L
            np.testing.assert_allclose(scores[r, 0], logprob(bias[r], toks[:n]), atol=1e-4)


def brute_force(logprob, row_bias, vocab, max_len, alpha, form):
    """All EOS-terminated sequences of length <= max_len with their penalised scores."""
    out = {}
    others = [t for t in range(vocab) if t != EOS]
    for n in range(1, max_len + 1):
        for prefix in itertools.product(others, repeat=n - 1):
            seq = prefix + (EOS,)
            lp = float(length_penalty_divisor(n, alpha, form))
            out[seq + (0,) * (max_len - n)] = logprob(row_bias, seq) / lp
    return out


@pytest.mark.parametrize("alpha,form", [(0.6, "fairseq"), (1.0, "gnmt"), (0.0, "fairseq")])
def test_wide_beam_matches_brute_force(alpha, form):
    V, L, B = 4, 4, 2
    params, logprob, init = second_order_model(V, L, seed=7)
    bias = np.random.default_rng(3).normal(size=(B, V))
    # 27 alive prefixes x 4 tokens = 108 candidates at the last step: beam 128 is exhaustive.
    seqs, scores = map(np.asarray, run_beam(params, init(bias), 128, L, alpha, form))
    for r in range(B):
        exact = brute_force(logprob, bias[r], V, L, alpha, form)
        ranked = sorted(exact.items(), key=lambda kv: -kv[1])
        n = len(ranked)  # 40 finished hypotheses, all found, best first
        assert tuple(seqs[r, 0]) == ranked[0][0]
        np.testing.assert_allclose(scores[r, :n], [s for _, s in ranked], atol=1e-4)
        for seq, score in zip(seqs[r, :n], scores[r, :n]):
            np.testing.assert_allclose(score, exact[tuple(seq)], atol=1e-4)


def test_length_penalty_values():
    np.testing.assert_allclose(length_penalty_divisor(3, 0.6, "fairseq"), 1.9331820, rtol=1e-6)
    np.testing.assert_allclose(length_penalty_divisor(3, 0.6, "gnmt"), 1.1884016, rtol=1e-6)
    np.testing.assert_allclose(length_penalty_divisor(3, 0.0, "gnmt"), 1.0)

    # A model that emits token 3 then EOS, each with probability 0.7:
    # score = 2 ln 0.7 / lp(2) = -0.7133499 / 2**0.6 (fairseq) or / (7/6)**0.6 (gnmt).
    probs = jnp.log(jnp.array([[0.1, 0.1, 0.1, 0.7], [0.1, 0.1, 0.7, 0.1]]))

    def t2l(ids, cache):
        row = probs[jnp.minimum(cache["step"], 1)]
        return jnp.broadcast_to(row, (ids.shape[0], 4)), dict(step=cache["step"] + 1)

    for form, want in [("fairseq", -0.4706354), ("gnmt", -0.6503311)]:
        seqs, scores = jax.jit(beam_search, static_argnums=(0, 2, 3, 4, 8))(
            t2l, dict(step=jnp.array(0)), 1, 2, 5, BOS, EOS, 0.6, form)
        assert seqs[0, 0].tolist() == [3, 2, 0, 0, 0]
        np.testing.assert_allclose(scores[0, 0], want, rtol=1e-5)


def test_batch_rows_are_independent():
    V, L, K = 9, 10, 3
    params, _, init = second_order_model(V, L, seed=11, eos_bias=0.5)
    rng = np.random.default_rng(5)
    bias = rng.normal(size=(3, V))
    other = bias.copy()
    other[1:] = rng.normal(size=(2, V)) * 3
    seqs_a, scores_a = run_beam(params, init(bias), K, L)
    seqs_b, scores_b = run_beam(params, init(other), K, L)
    seqs_c, scores_c = run_beam(params, init(bias[:1]), K, L)
    assert not np.array_equal(seqs_a[1:], seqs_b[1:])
    for seqs, scores in [(seqs_b, scores_b), (seqs_c, scores_c)]:
        np.testing.assert_array_equal(seqs[0], seqs_a[0])
        np.testing.assert_allclose(scores[0], scores_a[0], rtol=1e-6)


def test_finished_sequences_are_eos_terminated_and_zero_padded():
    V, L, K, B = 8, 12, 4, 5
    params, _, init = second_order_model(V, L, seed=2, eos_bias=1.5)
    bias = np.random.default_rng(9).normal(size=(B, V))
    seqs, scores = map(np.asarray, run_beam(params, init(bias), K, L))
    assert seqs.shape == (B, K, L) and seqs.dtype == np.int32 and scores.dtype == np.float32
    n_finished = 0
    for row, row_scores in zip(seqs.tolist(), scores.tolist()):
        # finished hypotheses first, best first; then alive ones (no EOS, full length)
        finished = [EOS in seq for seq in row]
        n = finished.index(False) if False in finished else K
        assert not any(finished[n:])
        n_finished += n
        assert all(a >= b for a, b in zip(row_scores[:n], row_scores[1:n]))
        for seq in row[:n]:
            assert all(t == 0 for t in seq[seq.index(EOS) + 1:])
        for seq in row[n:]:
            assert 0 not in seq[-1:]  # alive hypotheses run to max_len
    assert n_finished > B * K // 2
    greedy = np.asarray(run_greedy(params, init(bias), max_len=L))
    for seq in greedy.tolist():
        if EOS in seq:
            assert all(t == 0 for t in seq[seq.index(EOS) + 1:])


def test_alive_returned_when_nothing_finishes():
    # EOS never wins: logits -inf for EOS, so every hypothesis is alive at max_len.
    def t2l(ids, cache):
        logits = jnp.array([0.0, 1.0, -jnp.inf, 2.0])
        return jnp.broadcast_to(logits, (ids.shape[0], 4)), cache

    seqs, scores = jax.jit(beam_search, static_argnums=(0, 2, 3, 4))(
        t2l, dict(dummy=jnp.zeros((2, 1))), 1, 2, 3, BOS, EOS, 0.6)
    assert seqs[0, 0].tolist() == [3, 3, 3]
    logp = jax.nn.log_softmax(jnp.array([0.0, 1.0, -jnp.inf, 2.0]))
    np.testing.assert_allclose(scores[0, 0], 3 * logp[3] / 3**0.6, rtol=1e-5)
    assert np.isfinite(scores).all()


def test_stops_early_once_no_alive_hypothesis_can_win():
    # EOS has probability 0.96 at every step: both beams finish within a few steps, after
    # which (given lp(max_len)) no alive hypothesis can beat them; max_len is 50.
    calls = []
    logp = jnp.log(jnp.array([0.01, 0.01, 0.96, 0.02]))

    def t2l(ids, cache):
        jax.debug.callback(lambda: calls.append(1))
        return jnp.broadcast_to(logp, (ids.shape[0], 4)), cache

    seqs, _ = jax.jit(beam_search, static_argnums=(0, 2, 3, 4))(
        t2l, dict(x=jnp.zeros((2,))), 1, 2, 50, BOS, EOS)
    jax.effects_barrier()
    assert seqs[0, :, :2].tolist() == [[EOS, 0], [3, EOS]]
    assert 2 <= len(calls) < 10


def _fixed_scorer(table):
    """tokens_to_logits whose logits depend only on the decoding step (carried in the cache)."""
    table = jnp.asarray(table, jnp.float32)

    def tokens_to_logits(ids, cache):
        step = cache["step"]
        return jnp.broadcast_to(table[step], (ids.shape[0], table.shape[1])), {"step": step + 1}

    return tokens_to_logits


def test_min_len_bans_eos_at_the_first_step():
    # EOS (id 1) is by far the best first token; with min_len=1 it may not come first.
    eos = 1  # a vocabulary of 4
    table = np.log(np.array([[0.01, 0.90, 0.08, 0.01]] + [[0.01, 0.97, 0.01, 0.01]] * 5))
    fn = _fixed_scorer(table)
    seqs, _ = beam_search(fn, {"step": jnp.array(0)}, 1, 2, 5, 0, eos, length_penalty=0.0)
    assert list(np.asarray(seqs[0, 0])) == [eos, 0, 0, 0, 0]  # without min_len: the empty translation
    seqs, _ = beam_search(fn, {"step": jnp.array(0)}, 1, 2, 5, 0, eos, length_penalty=0.0, min_len=1)
    assert list(np.asarray(seqs[0, 0])) == [2, eos, 0, 0, 0]


def test_max_lens_force_eos_per_sentence():
    # A scorer that never wants EOS: each sentence must end exactly at its own limit.
    eos = 1  # a vocabulary of 4
    table = np.log(np.array([[0.02, 0.0001, 0.9, 0.0799]] * 8))
    fn = _fixed_scorer(table)
    limits = jnp.array([2, 5], jnp.int32)
    seqs, scores = beam_search(fn, {"step": jnp.array(0)}, 2, 2, 8, 0, eos, length_penalty=0.6,
                               stop_early="fairseq", max_lens=limits)
    best = np.asarray(seqs[:, 0])
    assert list(best[0]) == [2, eos, 0, 0, 0, 0, 0, 0]
    assert list(best[1]) == [2, 2, 2, 2, eos, 0, 0, 0]
    assert np.all(np.isfinite(np.asarray(scores)))


@pytest.mark.parametrize("n,k,block", [(32000, 8, 128), (24000, 8, 128), (1000, 3, 16), (40, 8, 8), (50, 2, 7)])
def test_block_top_k_equals_lax_top_k(n, k, block):
    """Same values and indices as ``lax.top_k``, ties (many: integer values) and -inf included,
    for sizes that do and do not divide into blocks, and when there are too few blocks."""
    rng = np.random.default_rng(n + k)
    x = rng.integers(-20, 3, size=(6, n)).astype(np.float32)
    x[0] = -np.inf  # a row of -inf only
    x[1, rng.random(n) < 0.9] = -np.inf  # mostly -inf
    x[2] = 0.0  # all tied
    got_v, got_i = jax.jit(lambda a: top_k(a, k, block))(x)
    want_v, want_i = jax.lax.top_k(x, k)
    np.testing.assert_array_equal(np.asarray(got_v), np.asarray(want_v))
    np.testing.assert_array_equal(np.asarray(got_i), np.asarray(want_i))


@pytest.mark.parametrize("eos", [2, 130, 5999])
@pytest.mark.parametrize("step", [0, 1, 3])
def test_candidates_equal_top_k_of_the_constrained_log_probs(eos, step):
    """``_candidates`` (block maxima, no ``[rows, V]`` log-probabilities) gives the same scores,
    beams and tokens as ``lax.top_k`` over ``alive + log_softmax`` with the bans applied: EOS
    banned before ``min_len`` (2), only EOS at a sentence's limit, both at once, integer logits
    (ties), EOS in the first, a middle and the last block."""
    B, K, V = 4, 4, 6000
    rng = np.random.default_rng(eos + step)
    # each block of 125 words one distinct high logit, so every chosen block matters; ties below
    logits = rng.integers(-40, -30, size=(B * K, V)).astype(np.float32)
    blocks = V // 125
    high = rng.permuted(np.tile(np.arange(blocks, dtype=np.float32), (B * K, 1)), axis=1)
    logits.reshape(B * K, blocks, 125)[:, :, 7] = high
    logits[:, eos] = blocks + 1.0  # EOS the largest logit: its bans change the block maxima
    alive = np.array(rng.normal(size=(B, K)), np.float32)
    alive[0, 1:] = -np.inf  # a sentence with one alive beam
    max_lens = jnp.asarray([3, step + 1, 9, step + 1], jnp.int32)  # rows 1 and 3 at their limit
    got = jax.jit(lambda x, a: _candidates(x, a, jnp.int32(step), K, B, 2 * K, eos, 2, max_lens))(logits, alive)
    logp = _constrained_log_probs(jnp.asarray(logits), jnp.int32(step), K, eos, 2, max_lens)
    want = _top_candidates(jnp.asarray(alive), logp, B, K)
    assert _divisor_block(V) is not None  # the block route, not the plain one
    for g, w, name in zip(got, want, ("scores", "beams", "tokens")):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=name)
    if step + 1 < 2:  # EOS banned at the limit as well: those rows have nothing left
        assert np.all(np.isneginf(np.asarray(got[0])[[1, 3]]))


@pytest.mark.parametrize("stop", ["fairseq", "exact"])
@pytest.mark.parametrize("beam", [1, 2, 3, 5])
def test_each_sentence_decodes_as_it_does_alone(stop, beam):
    """A sentence's hypotheses and scores do not depend on its batch-mates: under fairseq's rule a
    sentence that is done (``beam`` finished hypotheses) is frozen while the others run on."""
    V, L, B = 8, 12, 80
    params, _, init = second_order_model(V, L, seed=21 + beam, eos_bias=0.5)
    rng = np.random.default_rng(beam)
    # row scales spread the rows' finishing steps: some are done early, some run to max_len
    bias = rng.normal(size=(B, V)) * rng.uniform(0.0, 3.0, size=(B, 1))
    seqs, scores = map(np.asarray, run_beam(params, init(bias), beam, L, stop=stop))
    for r in range(B):
        alone_seqs, alone_scores = map(np.asarray, run_beam(params, init(bias[r:r + 1]), beam, L, stop=stop))
        np.testing.assert_array_equal(seqs[r], alone_seqs[0], err_msg=f"row {r}")
        # the same sums: only float32 rounding of differently shaped programs may differ
        np.testing.assert_allclose(scores[r], alone_scores[0], rtol=1e-6, err_msg=f"row {r}")


def _row_scorer(tables):
    """tokens_to_logits with log-probabilities ``tables[row, step]``; the cache carries each
    hypothesis's batch row and a 0-d step counter."""
    tables = jnp.log(jnp.asarray(tables, jnp.float32))

    def tokens_to_logits(ids, cache):
        return tables[cache["row"], cache["step"]], dict(row=cache["row"], step=cache["step"] + 1)

    return tokens_to_logits


def test_fairseq_done_sentence_is_frozen():
    # Vocabulary 0..3, EOS 2, beam 2. Row 0 finishes "EOS" at step 1 and "3 EOS" at step 2: it is
    # done. At step 3 "3 3 EOS" would beat "3 EOS" (EOS has probability 0.998 there), but a done
    # sentence is never updated. Row 1 never wants EOS, so the batch runs to max_len.
    K, L = 2, 6
    early = [0.001, 0.001, 0.5, 0.498]
    late = [0.0005, 0.0005, 0.998, 0.001]
    never = [0.01, 0.01, 1e-6, 0.98]
    tables = np.array([[early, early] + [late] * (L - 2), [never] * L])
    cache = dict(row=jnp.repeat(jnp.arange(2), K), step=jnp.array(0, jnp.int32))
    fn = _row_scorer(tables)
    alpha = 0.6
    want_seqs = [[EOS, 0, 0, 0, 0, 0], [3, EOS, 0, 0, 0, 0]]
    want_scores = [np.log(0.5), (np.log(0.498) + np.log(0.5)) / 2**alpha]
    seqs, scores = beam_search(fn, cache, 2, K, L, BOS, EOS, alpha, stop_early="fairseq")
    assert np.asarray(seqs[0]).tolist() == want_seqs
    np.testing.assert_allclose(np.asarray(scores[0]), want_scores, rtol=1e-5)
    assert EOS not in np.asarray(seqs[1]).ravel().tolist()  # row 1 ran on to max_len
    # row 0 alone stops once it is done, with the same result
    alone = beam_search(_row_scorer(tables[:1]), dict(row=jnp.zeros(K, jnp.int32), step=jnp.array(0, jnp.int32)),
                        1, K, L, BOS, EOS, alpha, stop_early="fairseq")
    np.testing.assert_array_equal(np.asarray(alone[0][0]), np.asarray(seqs[0]))
    np.testing.assert_allclose(np.asarray(alone[1][0]), np.asarray(scores[0]), rtol=1e-6)
    # the exact rule searches on and finds the better hypothesis
    seqs, scores = beam_search(fn, cache, 2, K, L, BOS, EOS, alpha, stop_early="exact")
    assert np.asarray(seqs[0, 0]).tolist() == [EOS, 0, 0, 0, 0, 0]
    assert np.asarray(seqs[0, 1]).tolist() == [3, 3, EOS, 0, 0, 0]


def _per_sentence_t2l(A, S, calls=None):
    """``make_t2l``'s model under the ``per_sentence`` contract: the row biases are per sentence
    (``sent["row_bias"] [n, V]``), repeated over the ``rows // n`` beams of each; ``calls`` (a
    list) gets the row count of every call (a host callback: once per executed step)."""

    def tokens_to_logits(ids, cache, sent):
        last = ids[:, 0]
        bias = jnp.repeat(sent["row_bias"], ids.shape[0] // sent["row_bias"].shape[0], axis=0)
        if calls is not None:
            jax.debug.callback(lambda n=ids.shape[0]: calls.append(n))
        logits = A[cache["prev"], last] + S[cache["step"]] + bias
        return logits, dict(prev=last, step=cache["step"] + 1)

    return tokens_to_logits


@pytest.mark.parametrize("stop", ["fairseq", "exact"])
def test_one_beam_first_step_and_dropping_done_sentences_change_no_result(stop):
    """The per-sentence contract (first step on one beam) and ``shrink_to`` (done sentences leave
    the batch) give the plain search's hypotheses and scores, while the model runs on fewer rows."""
    V, L, B, K = 9, 12, 32, 3
    (A, S), _, init = second_order_model(V, L, seed=31, eos_bias=0.5)
    rng = np.random.default_rng(4)
    bias = rng.normal(size=(B, V)) * rng.uniform(0.0, 3.0, size=(B, 1))  # finishing steps spread out
    limits = jnp.asarray(rng.integers(3, L + 1, size=B), jnp.int32)
    cache = init(bias)
    want = beam_search(make_t2l(A, S), expand_to_beams(cache, K), B, K, L, BOS, EOS, 0.6,
                       stop_early=stop, min_len=1, max_lens=limits)
    per_beam = expand_to_beams(dict(prev=cache["prev"], step=cache["step"]), K)
    calls = {}
    for shrink in [(), (16, 8)]:
        calls[shrink] = []
        got = jax.block_until_ready(beam_search(
            _per_sentence_t2l(A, S, calls[shrink]), per_beam, B, K, L, BOS, EOS, 0.6, stop_early=stop,
            min_len=1, max_lens=limits, per_sentence=dict(row_bias=cache["row_bias"]), shrink_to=shrink))
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]), err_msg=f"shrink {shrink}")
        np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want[1]), rtol=1e-6, err_msg=f"shrink {shrink}")
    plain, shrunk = calls[()], calls[(16, 8)]
    assert plain[0] == shrunk[0] == B  # the first step: one beam a sentence
    assert set(plain[1:]) == {B * K} and len(plain) == len(shrunk)
    assert sorted(set(shrunk[1:]), reverse=True)[:2] == [B * K, 16 * K]  # it moved to smaller batches
    assert sum(shrunk) < 0.8 * sum(plain)


def test_shrink_to_needs_per_sentence_inputs():
    (A, S), _, init = second_order_model(5, 4, seed=1)
    with pytest.raises(ValueError, match="per_sentence"):
        beam_search(make_t2l(A, S), expand_to_beams(init(np.zeros((4, 5))), 2), 4, 2, 4, BOS, EOS, shrink_to=(2,))


def test_per_sentence_cache_leaves_are_never_reordered():
    """A cache leaf of one row per sentence (a model's own state, e.g. keys/values in one slot per
    beam) passes through the beam reordering untouched, while per-beam leaves follow their beams;
    with one beam every leaf counts as per beam."""
    from jax_namnmt.model.beam_search import _gather_beams, _sentence_leaves

    B, K = 3, 2
    cache = {"beam": jnp.arange(B * K) * 10, "sentence": jnp.arange(B) + 100, "index": jnp.array(7)}
    flags = _sentence_leaves(cache, B, K)
    assert flags == {"beam": False, "sentence": True, "index": False}
    assert not any(jax.tree_util.tree_leaves(_sentence_leaves(cache, B * K, 1)))
    beam_idx = jnp.array([[1, 1], [0, 1], [1, 0]])
    got = _gather_beams(cache, beam_idx, B, K, flags)
    np.testing.assert_array_equal(got["beam"], [10, 10, 20, 30, 50, 40])
    np.testing.assert_array_equal(got["sentence"], [100, 101, 102])
    assert int(got["index"]) == 7
