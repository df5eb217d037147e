"""Model-agnostic beam search and greedy search in JAX (one ``lax.while_loop`` each).

The model is seen only through ``tokens_to_logits(ids int32 [N, 1], cache) -> (logits [N, V],
new_cache)`` where ``N = batch * beam`` (``batch`` for greedy). ``cache`` is any pytree; its
array leaves have leading dimension N (per beam: reordered with the beams; use
:func:`expand_to_beams` on a per-sentence cache) or ``batch`` (per sentence: the model's own,
e.g. keys/values in one slot per beam that it addresses through a per-beam leaf; never
reordered), and its 0-d leaves (e.g. a decoding step index) are passed through untouched.

Conventions of the returned sequences: no BOS; the EOS token is kept where a hypothesis
finished; positions after it are 0.

Scores are ``sum log p / lp(len)`` where ``len`` counts generated tokens including EOS and
``lp`` is the length penalty (:func:`length_penalty_divisor`). As in fairseq, an EOS candidate is
finished only if it ranks among the ``beam`` best candidates of its step, so beam 1 with no
length penalty is exactly greedy search. The loop stops when every batch row holds ``beam``
finished hypotheses none of which an alive one can still beat, or after ``max_len`` steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_namnmt.errors import ConfigError

PENALTY_FORMS = ("fairseq", "gnmt")
STOP_RULES = ("exact", "fairseq")
NEG_INF = -jnp.inf


def expand_to_beams(x, beam_size: int):
    """Repeat each batch row ``beam_size`` times: ``[B, ...] -> [B * beam_size, ...]``.

    Works on a pytree; 0-d leaves are returned unchanged.
    """
    return jax.tree_util.tree_map(
        lambda a: a if jnp.ndim(a) == 0 else jnp.repeat(a, beam_size, axis=0), x
    )


def length_penalty_divisor(length, alpha, form: str = "fairseq"):
    """Divisor of the summed log-probability of a hypothesis of ``length`` generated tokens.

    ``fairseq``: ``length ** alpha``; ``gnmt``: ``((5 + length) / 6) ** alpha``.
    """
    length = jnp.asarray(length, jnp.float32)
    if form == "fairseq":
        return length**alpha
    if form == "gnmt":
        return ((5.0 + length) / 6.0) ** alpha
    raise ConfigError(f"penalty_form must be one of {', '.join(PENALTY_FORMS)}; got {form!r}")


def _gather_beams(tree, beam_idx, batch_size: int, beam_size: int, sentence_leaves):
    """Select beams ``beam_idx [B, K']`` from a pytree of ``[B * beam_size, ...]`` arrays,
    giving ``[B * K', ...]``; 0-d leaves, and the leaves flagged in ``sentence_leaves`` (a pytree
    of bools of the same structure, :func:`_sentence_leaves`), pass through."""
    rows = jnp.arange(batch_size)[:, None]

    def gather(a, keep):
        if keep or jnp.ndim(a) == 0:
            return a
        a = a.reshape((batch_size, beam_size) + a.shape[1:])[rows, beam_idx]
        return a.reshape((-1,) + a.shape[2:])

    return jax.tree_util.tree_map(gather, tree, sentence_leaves)


def _sentence_leaves(cache, batch_size: int, beam_size: int):
    """Which leaves of the initial ``cache`` hold one row per sentence (leading dimension
    ``batch_size``, not ``batch_size * beam_size``): a model's own per-sentence state, e.g. a
    key/value cache of one slot per beam (``transformer.cached_attention``), which the search never
    reorders. With one beam every leaf counts as per beam (reordering is then the identity)."""
    return jax.tree_util.tree_map(
        lambda a: bool(beam_size > 1 and jnp.ndim(a) > 0 and a.shape[0] == batch_size), cache)


def top_k(x, k: int, block: int = 128):
    """``jax.lax.top_k`` over the last axis of ``[rows, n]`` (same values, same indices, same
    order, ties to the lower index), in two stages: the ``k`` blocks of ``block`` entries with the
    largest maxima (ties to the lower block), then the top ``k`` of those ``k * block`` entries, in
    ascending block order. Exact: an entry outside the chosen blocks has ``k`` entries ranked above
    it (each chosen block's maximum). Pads with ``-inf`` to whole blocks.

    On XLA's CPU backend ``lax.top_k`` of 4 beams x 8,000 words at 128 sentences is one
    single-threaded partial sort per row (~8 ms); the block maxima are a vectorised reduction."""
    rows, n = x.shape
    blocks = -(-n // block)
    if blocks <= k:
        return jax.lax.top_k(x, k)
    if blocks * block != n:
        x = jnp.pad(x, ((0, 0), (0, blocks * block - n)), constant_values=-jnp.inf)
    xb = x.reshape(rows, blocks, block)
    _, chosen = jax.lax.top_k(xb.max(axis=-1), k)
    chosen = jnp.sort(chosen, axis=-1)  # candidates in index order: ties resolve as in lax.top_k
    cand = jnp.take_along_axis(xb, chosen[:, :, None], axis=1).reshape(rows, k * block)
    values, idx = jax.lax.top_k(cand, k)
    return values, jnp.take_along_axis(chosen, idx // block, axis=1) * block + idx % block


def _check_search_args(batch_size: int, beam_size: int, max_len: int, penalty_form: str, stop_early: str):
    """The settings ``beam_search`` refuses: an unknown stop rule or penalty form, a size below 1."""
    if stop_early not in STOP_RULES:
        raise ConfigError(f"stop_early must be one of {', '.join(STOP_RULES)}; got {stop_early!r}")
    if penalty_form not in PENALTY_FORMS:
        raise ConfigError(
            f"penalty_form must be one of {', '.join(PENALTY_FORMS)}; got {penalty_form!r}"
        )
    if beam_size < 1 or max_len < 1 or batch_size < 1:
        raise ValueError(f"batch_size, beam_size and max_len must be >= 1, got "
                         f"{batch_size}, {beam_size}, {max_len}")


def _initial_state(cache, B: int, K: int, max_len: int, bos_id: int) -> dict:
    """The loop's state before the first step: every sequence is BOS, beam 0 alone alive, no
    finished hypotheses. Sequences carry BOS at position 0 internally; position t+1 holds the
    t-th new token."""
    seqs0 = jnp.zeros((B, K, max_len + 1), jnp.int32).at[:, :, 0].set(bos_id)
    return dict(
        step=jnp.array(0, jnp.int32),
        alive_seqs=seqs0,
        # Only beam 0 is live at the start: the K beams are identical copies.
        alive_logp=jnp.full((B, K), NEG_INF, jnp.float32).at[:, 0].set(0.0),
        fin_seqs=jnp.zeros_like(seqs0),
        fin_scores=jnp.full((B, K), NEG_INF, jnp.float32),
        fin_flags=jnp.zeros((B, K), bool),
        cache=cache,
    )


def _constrained_log_probs(logits, step, K: int, eos_id: int, min_len: int, max_lens):
    """Log-probabilities ``[B * K, V]`` of the next token, EOS banned before ``min_len`` tokens and
    everything but EOS banned at a sentence's ``max_lens`` limit."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    V = logp.shape[-1]
    is_eos_tok = jnp.arange(V)[None, :] == eos_id
    if min_len > 0:
        logp = jnp.where(is_eos_tok & (step < min_len), NEG_INF, logp)
    if max_lens is not None:
        force = jnp.repeat(step + 1 >= max_lens, K)[:, None]
        logp = jnp.where(force & ~is_eos_tok, NEG_INF, logp)
    if V < 2:
        raise ValueError(f"beam search needs a vocabulary of at least 2 tokens, got {V}")
    return logp


def _top_candidates(alive_logp, logp, B: int, K: int, n: int | None = None):
    """The ``n`` (default ``2K``, fewer if ``K * V`` is smaller) best extensions of the ``K``
    alive beams: their summed log-probabilities, source beams and tokens, best first."""
    V = logp.shape[-1]
    cand = (alive_logp[:, :, None] + logp.reshape(B, K, V)).reshape(B, K * V)
    # 2K candidates always contain >= K non-EOS ones (each beam has one EOS candidate).
    top_logp, top_idx = top_k(cand, min(2 * K if n is None else n, K * V))
    return top_logp, top_idx // V, (top_idx % V).astype(jnp.int32)


def _divisor_block(n: int, target: int = 128) -> int | None:
    """The divisor of ``n`` in ``[target / 2, 2 * target]`` nearest ``target`` (8,000 -> 125,
    6,000 -> 125): blocks of it tile ``n`` with no padding. None if there is none."""
    divisors = [b for b in range(target // 2, 2 * target + 1) if n % b == 0]
    return min(divisors, key=lambda b: abs(b - target)) if divisors else None


def _candidates(logits, alive_logp, step, beams: int, B: int, n: int, eos_id: int, min_len: int, max_lens):
    """The ``n`` best extensions (``min(n, beams * V)``) of each sentence's ``beams`` alive beams
    from their next-token ``logits [B * beams, V]``: ``(summed log-probabilities, beams, tokens)``,
    best first; EOS banned before ``min_len`` tokens, only EOS at a sentence's ``max_lens`` limit.

    The same numbers, indices and order as ``top_k`` over ``alive + log_softmax(logits)`` (with
    blocks of :func:`_divisor_block`), without writing the ``[B * beams, V]`` log-probabilities
    or candidate scores: a candidate's score ``alive + ((x - max) - logsumexp)`` is computed as
    ``log_softmax`` computes it, and rounding is monotone, so a block's best score is the score
    of its largest logit; only the chosen blocks' scores are computed. Vocabularies with no
    such divisor take the plain route."""
    x = logits.astype(jnp.float32)
    N, V = x.shape
    if V < 2:
        raise ValueError(f"beam search needs a vocabulary of at least 2 tokens, got {V}")
    block = _divisor_block(V)
    k = min(n, beams * V)
    if block is None or beams * (V // block) <= k:
        logp = _constrained_log_probs(logits, step, beams, eos_id, min_len, max_lens)
        return _top_candidates(alive_logp[:, :beams], logp, B, beams, n)
    blocks = V // block
    # One pass over the logits for each block's maximum; the row's maximum is theirs (exact). The
    # bans change the maxima of two kinds of rows only, put right below without another pass.
    block_max = x.reshape(N, blocks, block).max(axis=-1)  # [N, blocks]
    # (the barrier keeps XLA from folding this max of maxima back into a pass over the logits)
    x_max = jax.lax.optimization_barrier(block_max).max(axis=-1, keepdims=True)
    # as jax.nn.log_softmax: shifted = x - max; result = shifted - log(sum(exp(shifted)))
    lse = jnp.log(jnp.sum(jnp.exp(x - x_max), axis=-1, keepdims=True))
    alive = alive_logp[:, :beams].reshape(N, 1)
    is_eos_tok = jnp.arange(V)[None, :] == eos_id
    eos_block = jnp.arange(blocks)[None, :] == eos_id // block
    banned = None
    eos_logit = x[:, eos_id:eos_id + 1]
    if min_len > 0:  # EOS banned: its block's maximum is that of the block's other entries
        too_short = step < min_len
        banned = is_eos_tok & too_short
        start = eos_id // block * block
        others = jnp.where(jnp.arange(block) == eos_id - start, NEG_INF, x[:, start:start + block])
        block_max = jnp.where(eos_block & too_short, others.max(axis=-1, keepdims=True), block_max)
        eos_logit = jnp.where(too_short, NEG_INF, eos_logit)
    if max_lens is not None:  # everything but EOS banned: one block's maximum is EOS, the others -inf
        force = jnp.repeat(step + 1 >= max_lens, beams)[:, None]
        block_max = jnp.where(force, jnp.where(eos_block, eos_logit, NEG_INF), block_max)
        forced_out = force & ~is_eos_tok
        banned = forced_out if banned is None else banned | forced_out
    if banned is not None:
        x = jnp.where(banned, NEG_INF, x)

    def score(v, row_max, row_lse, row_alive):  # alive + log_softmax, -inf where banned
        return row_alive + ((v - row_max) - row_lse)

    xb = x.reshape(B, beams * blocks, block)
    per_block = lambda a: jnp.repeat(a.reshape(B, beams), blocks, axis=1)  # noqa: E731 - [B, beams * blocks]
    best = score(block_max.reshape(B, beams * blocks), per_block(x_max), per_block(lse), per_block(alive))
    _, chosen = jax.lax.top_k(best, k)
    chosen = jnp.sort(chosen, axis=-1)  # candidates in index order: ties resolve as in lax.top_k
    beam_of = chosen // blocks
    row = lambda a: jnp.take_along_axis(a.reshape(B, beams), beam_of, axis=1)[:, :, None]  # noqa: E731
    cand = score(jnp.take_along_axis(xb, chosen[:, :, None], axis=1), row(x_max), row(lse), row(alive))
    values, idx = jax.lax.top_k(cand.reshape(B, k * block), k)
    flat = jnp.take_along_axis(chosen, idx // block, axis=1) * block + idx % block
    return values, flat // V, (flat % V).astype(jnp.int32)


def _next_alive(top_logp, top_beam, top_tok, is_eos, K: int):
    """The ``K`` best non-EOS candidates: ``(log-probabilities, source beams, tokens)``."""
    alive_rank = jnp.where(is_eos, NEG_INF, top_logp)
    new_alive_logp, sel = jax.lax.top_k(alive_rank, K)
    alive_beam = jnp.take_along_axis(top_beam, sel, axis=1)
    alive_tok = jnp.take_along_axis(top_tok, sel, axis=1)
    return new_alive_logp, alive_beam, alive_tok


def _extend(alive_seqs, rows, beam_idx, tok, length):
    """The sequences of beams ``beam_idx [B, K']`` of ``alive_seqs`` with ``tok`` written at
    position ``length``: ``[B, K', max_len + 1]``."""
    seq = alive_seqs[rows, beam_idx]
    return seq.at[:, :, length].set(tok)


def _merge_finished(s: dict, top_logp, top_beam, top_tok, is_eos, length, lp, K: int, rows):
    """The ``K`` best finished hypotheses: the old ones and this step's EOS candidates that rank
    among the step's ``K`` best (fairseq's rule), scored ``logp / lp(length)``; valid entries
    first, then by score (stable: older first on ties). Returns ``(seqs, scores, flags)``."""
    rank = jnp.arange(top_logp.shape[1])[None, :]
    newly = is_eos & (rank < K) & (top_logp > NEG_INF)
    new_scores = jnp.where(newly, top_logp / lp(length), NEG_INF)
    all_scores = jnp.concatenate([s["fin_scores"], new_scores], axis=1)
    all_flags = jnp.concatenate([s["fin_flags"], newly], axis=1)
    all_seqs = jnp.concatenate([s["fin_seqs"], _extend(s["alive_seqs"], rows, top_beam, top_tok, length)], axis=1)
    key = jnp.where(all_flags, all_scores, NEG_INF)
    order = jnp.lexsort((-key, ~all_flags), axis=1)[:, :K]
    return (all_seqs[rows, order], jnp.take_along_axis(all_scores, order, axis=1),
            jnp.take_along_axis(all_flags, order, axis=1))


def _freeze_done(s: dict, fin_seqs, fin_scores, fin_flags, alive_logp):
    """fairseq's rule: a sentence that already held ``beam`` finished hypotheses before this step
    is done, and is never updated again while its batch-mates run on (so a sentence's result does
    not depend on the rest of its batch). Its finished hypotheses are kept as they were and its
    alive beams are masked to ``-inf``. Returns ``(fin_seqs, fin_scores, fin_flags, alive_logp)``."""
    done = s["fin_flags"].all(axis=1)
    return (jnp.where(done[:, None, None], s["fin_seqs"], fin_seqs),
            jnp.where(done[:, None], s["fin_scores"], fin_scores),
            jnp.where(done[:, None], s["fin_flags"], fin_flags),
            jnp.where(done[:, None], NEG_INF, alive_logp))


def _best_hypotheses(s: dict, lp, B: int, K: int, rows):
    """The search's result from its final state: the finished hypotheses, slots that none filled
    taken by the best alive ones (penalised at their current length); BOS dropped."""
    alive_scores = s["alive_logp"] / lp(s["step"])
    scores = jnp.concatenate([s["fin_scores"], alive_scores], axis=1)
    flags = jnp.concatenate([s["fin_flags"], jnp.zeros((B, K), bool)], axis=1)
    seqs = jnp.concatenate([s["fin_seqs"], s["alive_seqs"]], axis=1)
    order = jnp.lexsort((-scores, ~flags), axis=1)[:, :K]
    return (
        seqs[rows, order][:, :, 1:].astype(jnp.int32),
        jnp.take_along_axis(scores, order, axis=1).astype(jnp.float32),
    )


def _sentences_done(s: dict, lp, max_len: int, stop_early: str):
    """``[B]``: which sentences are done (``beam`` finished hypotheses, and under ``"exact"`` none
    an alive one can still beat). A done sentence's result no longer changes (``"fairseq"``: it is
    frozen; ``"exact"``: nothing an alive hypothesis can still reach would rank among its best)."""
    done = s["fin_flags"].all(axis=1)
    if stop_early == "exact":
        best_alive = s["alive_logp"].max(axis=1)
        bound = best_alive / jnp.maximum(lp(s["step"] + 1), lp(max_len))
        worst_fin = jnp.where(s["fin_flags"], s["fin_scores"], NEG_INF).min(axis=1)
        done = done & (worst_fin >= bound)
    return done


def _advance(s: dict, logits, new_cache, beams: int, B: int, K: int, eos_id: int, min_len: int, max_lens, lp,
             stop_early: str, rows, sentence_leaves) -> dict:
    """The state after one step, from the next-token ``logits [B * beams, V]`` of each sentence's
    first ``beams`` alive beams (``K``, or 1 at a first step whose ``K`` beams are still copies of
    one) and the model's cache after that step (``[B * beams, ...]`` leaves, reordered here to the
    ``K`` new alive beams)."""
    step = s["step"]
    top_logp, top_beam, top_tok = _candidates(logits, s["alive_logp"], step, beams, B, 2 * K, eos_id, min_len,
                                              max_lens)
    missing = min(2 * K, K * logits.shape[-1]) - top_logp.shape[1]
    if missing > 0:  # one beam of fewer than 2K words: the K-beam step's extra candidates are -inf
        top_logp = jnp.pad(top_logp, ((0, 0), (0, missing)), constant_values=NEG_INF)
        top_beam, top_tok = (jnp.pad(a, ((0, 0), (0, missing))) for a in (top_beam, top_tok))
    is_eos = top_tok == eos_id
    length = step + 1
    new_alive_logp, alive_beam, alive_tok = _next_alive(top_logp, top_beam, top_tok, is_eos, K)
    fin_seqs, fin_scores, fin_flags = _merge_finished(s, top_logp, top_beam, top_tok, is_eos, length, lp, K, rows)
    if stop_early == "fairseq":
        fin_seqs, fin_scores, fin_flags, new_alive_logp = _freeze_done(
            s, fin_seqs, fin_scores, fin_flags, new_alive_logp)
    return dict(
        step=length,
        alive_seqs=_extend(s["alive_seqs"], rows, alive_beam, alive_tok, length),
        alive_logp=new_alive_logp,
        fin_seqs=fin_seqs,
        fin_scores=fin_scores,
        fin_flags=fin_flags,
        cache=_gather_beams(new_cache, alive_beam, B, beams, sentence_leaves),
    )


def shrink_sizes(batch_size: int, smallest: int = 16) -> tuple[int, ...]:
    """Batch sizes a search of ``batch_size`` sentences moves down through as sentences finish
    (``beam_search(shrink_to=...)``): halves, none below ``smallest``. Each size is one more
    compiled loop body."""
    sizes, n = [], batch_size // 2
    while n >= smallest:
        sizes.append(n)
        n //= 2
    return tuple(sizes)


def _take_sentences(tree, order, n: int, K: int):
    """Rows of sentences ``order [n']`` of a pytree whose leaves are ``[n, ...]`` (per sentence) or
    ``[n * K, ...]`` (per beam, a sentence's beams consecutive); 0-d leaves pass through."""

    def take(a):
        if jnp.ndim(a) == 0:
            return a
        if a.shape[0] == n:
            return a[order]
        a = a.reshape((n, K) + a.shape[1:])[order]
        return a.reshape((-1,) + a.shape[2:])

    return jax.tree_util.tree_map(take, tree)


def beam_search(
    tokens_to_logits,
    cache,
    batch_size: int,
    beam_size: int,
    max_len: int,
    bos_id: int,
    eos_id: int,
    length_penalty: float = 0.6,
    penalty_form: str = "fairseq",
    stop_early: str = "exact",
    min_len: int = 0,
    max_lens=None,
    per_sentence=None,
    shrink_to: tuple[int, ...] = (),
):
    """Beam search; returns ``(sequences int32 [B, beam, max_len], scores float32 [B, beam])``,
    best first.

    Finished (EOS-terminated) hypotheses come first, best first; slots that no finished
    hypothesis filled are taken by the best alive ones (penalised at their current length),
    so when nothing finished by ``max_len`` the alive hypotheses are returned.
    Impossible hypotheses (e.g. fewer than ``beam`` sequences exist) score ``-inf``.

    ``stop_early``: ``"exact"`` stops a sentence only when no alive hypothesis can still beat
    its worst finished one (the search result is then exact for the beam); ``"fairseq"`` stops a
    sentence as soon as it has ``beam`` finished hypotheses (fairseq's rule: much faster when
    hypotheses finish early, and what fairseq/CTranslate2 do); a sentence so stopped is frozen
    while the rest of its batch runs on, so its result is the one it gets decoded alone.

    ``min_len``: EOS is banned before this many tokens (fairseq uses 1: no empty output).
    ``max_lens``: optional int array ``[B]``, a per-sentence limit (e.g. ``a * src_len + b``):
    at that length only EOS is allowed, so the sentence finishes there (fairseq's rule).

    ``per_sentence``: None, or a pytree of per-sentence arrays (leaves ``[B, ...]``, e.g. the
    encoded source); then the model is called as ``tokens_to_logits(ids [n * k, 1], cache,
    per_sentence)`` with ``n`` sentences of ``k`` beams each and the ``per_sentence`` rows of those
    ``n`` sentences, and its logits and cache must not depend on ``n`` or ``k``. This is what lets the search
    (1) run the first step on one beam a sentence (``k = 1``; the ``K`` beams are copies of one
    until then; the cache's rows ``::K`` go in), and (2) with ``shrink_to`` (decreasing sizes,
    e.g. :func:`shrink_sizes`), stop working on sentences that are done: once no more than the
    next size of sentences is still running, those (and done ones to fill the size) move into a
    batch of that size (their cache, state and ``per_sentence`` rows gathered), as CTranslate2
    drops finished sentences from its batch. Results are those of the plain search.
    """
    _check_search_args(batch_size, beam_size, max_len, penalty_form, stop_early)
    B, K = batch_size, beam_size
    sizes = [B] + [n for n in shrink_to if n < B]
    if per_sentence is None and len(sizes) > 1:
        raise ValueError("beam_search: shrink_to needs per_sentence (the model's per-sentence inputs)")
    if any(b >= a for a, b in zip(sizes[1:], sizes[2:])) or (len(sizes) > 1 and sizes[-1] < 1):
        raise ValueError(f"shrink_to must be decreasing positive sizes below the batch size, got {shrink_to}")

    def lp(n):
        return length_penalty_divisor(n, length_penalty, penalty_form)

    def call(ids, cache, sent):
        return tokens_to_logits(ids, cache) if per_sentence is None else tokens_to_logits(ids, cache, sent)

    s = _initial_state(cache, B, K, max_len, bos_id)
    rows = jnp.arange(B)[:, None]
    sentence_leaves = _sentence_leaves(cache, B, K)
    if per_sentence is not None:  # the first step, on one beam a sentence
        first = jax.tree_util.tree_map(lambda a, keep: a if keep or jnp.ndim(a) == 0 else a[::K], cache,
                                       sentence_leaves)
        logits, new_cache = call(jnp.full((B, 1), bos_id, jnp.int32), first, per_sentence)
        s = _advance(s, logits, new_cache, 1, B, K, eos_id, min_len, max_lens, lp, stop_early, rows,
                     sentence_leaves)

    sent, limits, origin = per_sentence, max_lens, jnp.arange(B)
    out_seqs = out_scores = None
    for i, n in enumerate(sizes):
        later = sizes[i + 1] if i + 1 < len(sizes) else 0
        rows = jnp.arange(n)[:, None]

        def cond(s, later=later):
            running = ~_sentences_done(s, lp, max_len, stop_early)
            return (s["step"] < max_len) & (running.sum() > later if later else running.any())

        def body(s, n=n, rows=rows, sent=sent, limits=limits):
            ids = s["alive_seqs"][:, :, s["step"]].reshape(n * K, 1)
            logits, new_cache = call(ids, s["cache"], sent)
            return _advance(s, logits, new_cache, K, n, K, eos_id, min_len, limits, lp, stop_early, rows,
                            sentence_leaves)

        s = jax.lax.while_loop(cond, body, s)
        if len(sizes) == 1:
            return _best_hypotheses(s, lp, B, K, rows)
        seqs, scores = _best_hypotheses(s, lp, n, K, rows)
        if out_seqs is None:
            out_seqs, out_scores = seqs, scores
        else:  # rows that only fill the batch have origin B: dropped
            out_seqs = out_seqs.at[origin].set(seqs, mode="drop")
            out_scores = out_scores.at[origin].set(scores, mode="drop")
        if later:
            running = ~_sentences_done(s, lp, max_len, stop_early)
            order = jnp.argsort(~running, stable=True)[:later]  # running sentences first
            origin = jnp.where(running[order], origin[order], B)
            s = _take_sentences(s, order, n, K)
            sent = _take_sentences(sent, order, n, K)
            limits = None if limits is None else limits[order]
    return out_seqs, out_scores


def sample_search(tokens_to_logits, cache, batch_size: int, max_len: int, bos_id: int, eos_id: int, keys,
                  temperature: float = 1.0, topk: int = 0, min_len: int = 0, max_lens=None, per_sentence=None):
    """Ancestral sampling (fairseq's ``--sampling``, what back-translation by sampling uses): each
    sentence's next token is drawn from the model's distribution, its log-probabilities divided by
    ``temperature`` and, with ``topk`` > 0, cut to the ``topk`` most likely tokens; EOS banned
    before ``min_len`` tokens and forced at ``max_lens`` as in :func:`beam_search`. Returns
    ``(sequences int32 [B, max_len], log_probs float32 [B])``: no BOS, EOS kept, 0 after it, and
    each sequence's summed log-probability under the model itself (no temperature, no cut; what
    forced decoding of the sequence gives).

    ``keys``: ``[B]`` PRNG keys, one a sentence; step ``t`` draws with ``fold_in(keys[b], t)``, so a
    sentence's sample depends on its key and its own logits only, not on its batch-mates.
    ``cache`` leaves have leading dimension ``batch_size``; ``per_sentence`` as in
    :func:`beam_search` (passed to the model unchanged)."""
    if temperature <= 0:
        raise ConfigError(f"sampling temperature must be positive, got {temperature}")
    if topk < 0:
        raise ConfigError(f"sampling top-k must be 0 (the whole vocabulary) or positive, got {topk}")
    B = batch_size

    def call(ids, cache):
        return tokens_to_logits(ids, cache) if per_sentence is None else tokens_to_logits(ids, cache, per_sentence)

    state0 = dict(step=jnp.array(0, jnp.int32), last=jnp.full((B, 1), bos_id, jnp.int32),
                  seqs=jnp.zeros((B, max_len), jnp.int32), done=jnp.zeros((B,), bool),
                  log_prob=jnp.zeros((B,), jnp.float32), cache=cache)

    def cond(s):
        return (s["step"] < max_len) & ~s["done"].all()

    def body(s):
        logits, new_cache = call(s["last"], s["cache"])
        logp = _constrained_log_probs(logits, s["step"], 1, eos_id, min_len, max_lens)
        scaled = logp / temperature
        if topk and topk < scaled.shape[-1]:
            kth = top_k(scaled, topk)[0][:, -1:]
            scaled = jnp.where(scaled >= kth, scaled, NEG_INF)
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, s["step"]))(keys)
        tok = jax.vmap(jax.random.categorical)(step_keys, scaled).astype(jnp.int32)
        tok_logp = jnp.take_along_axis(logp, tok[:, None], axis=1)[:, 0]
        tok = jnp.where(s["done"], 0, tok)
        return dict(step=s["step"] + 1, last=tok[:, None], seqs=s["seqs"].at[:, s["step"]].set(tok),
                    done=s["done"] | (tok == eos_id), log_prob=s["log_prob"] + jnp.where(s["done"], 0.0, tok_logp),
                    cache=new_cache)

    out = jax.lax.while_loop(cond, body, state0)
    return out["seqs"], out["log_prob"]


def greedy_search(tokens_to_logits, cache, batch_size: int, max_len: int, bos_id: int, eos_id: int):
    """Greedy decoding; returns int32 ``[B, max_len]`` (no BOS, EOS kept, 0 after it).

    ``cache`` array leaves have leading dimension ``batch_size``.
    """
    B = batch_size
    state0 = dict(
        step=jnp.array(0, jnp.int32),
        last=jnp.full((B, 1), bos_id, jnp.int32),
        seqs=jnp.zeros((B, max_len), jnp.int32),
        done=jnp.zeros((B,), bool),
        cache=cache,
    )

    def cond(s):
        return (s["step"] < max_len) & ~s["done"].all()

    def body(s):
        logits, new_cache = tokens_to_logits(s["last"], s["cache"])
        tok = jnp.argmax(logits.astype(jnp.float32), axis=-1).astype(jnp.int32)
        tok = jnp.where(s["done"], 0, tok)
        return dict(
            step=s["step"] + 1,
            last=tok[:, None],
            seqs=s["seqs"].at[:, s["step"]].set(tok),
            done=s["done"] | (tok == eos_id),
            cache=new_cache,
        )

    return jax.lax.while_loop(cond, body, state0)["seqs"]
