"""Synthetic data of the benchmarks: random Multi30k-like token sentences, the packed fixed-shape
JAX batches of them (``PackedBatcher`` / ``CompactBatcher``), their token counts, and the
forced-length check of decoded outputs. Only the standard library at module level (numpy and
``jax_namnmt`` are imported inside the functions: a benchmark sets its threads first)."""

from __future__ import annotations


def make_sentences(n: int, vocab: int, min_len: int, max_len: int, num_pairs: int, seed: int):
    """Random token sentences: src = [tag, words..., EOS], tgt = [words..., EOS]."""
    import numpy as np

    from jax_namnmt.data.vocab import EOS_ID

    rng = np.random.default_rng(seed)
    first_word = 4 + 16  # ids 0-3 specials, then room for language tags
    src, tgt = [], []
    for _ in range(n):
        ls, lt = rng.integers(min_len, max_len + 1, size=2)
        tag = rng.integers(4, first_word)
        src.append(np.concatenate([[tag], rng.integers(first_word, vocab, ls - 2), [EOS_ID]]).astype(np.int32))
        tgt.append(np.concatenate([rng.integers(first_word, vocab, lt - 1), [EOS_ID]]).astype(np.int32))
    pairs = rng.integers(0, num_pairs, size=n).astype(np.int32)
    return src, tgt, pairs


def packed_data(tokens_per_batch: int, row_len: int, min_len: int, max_len: int, steps: int, warmup: int,
                vocab: int, seed: int, num_pairs: int = 8, layout: str = "rows"):
    """Sentences and the packed fixed-shape batches of ``PackedBatcher`` over them (rows x row_len a
    side, sentences in corpus order, mixed pair ids), warm-up batches first, then the timed ones;
    with ``layout="compact"`` the ``CompactBatcher`` batches of the same sentences.

    Returns a dict: rows (a batch's rows: of both sides, or of attention in the compact layout),
    src, tgt, pairs, warm (numpy batches), timed (numpy batches),
    warm_ids / timed_ids (the sentence indices each set holds), spare_ids (sentences in no batch).
    """
    from jax_namnmt.data.batching import Examples, make_batcher, rows_for_budget

    rows = rows_for_budget(tokens_per_batch, row_len)
    mean = (min_len + max_len) / 2
    need = int((steps + warmup + 2) * rows * (row_len / mean) * 1.1) + rows
    src, tgt, pairs = make_sentences(need, vocab, min_len, max_len, num_pairs, seed)
    examples = Examples(src, tgt, pairs, [("random", i + 1) for i in range(need)])
    batcher = make_batcher(examples, layout, tokens_per_batch, row_len, row_len, seed=seed, shuffle=False)
    plan = batcher._plan(0)
    if len(plan) < warmup + steps + 1:
        raise SystemExit(f"only {len(plan)} batches planned, need {warmup + steps + 1}")
    warm_plans, timed_plans = plan[:warmup], plan[warmup:warmup + steps]  # never the last, part-empty one
    ids = lambda plans: [i for b in plans for row in b for i in row]  # noqa: E731
    used = set(ids(warm_plans)) | set(ids(timed_plans))
    return {
        "rows": batcher.rows, "src": src, "tgt": tgt, "pairs": pairs,
        "warm": [batcher._materialize(b) for b in warm_plans],
        "timed": [batcher._materialize(b) for b in timed_plans],
        "warm_ids": ids(warm_plans), "timed_ids": ids(timed_plans),
        "spare_ids": [i for i in range(need) if i not in used],
    }


def batch_counts(batches) -> dict:
    """Real target tokens, target slots and sentences of packed numpy batches."""
    import numpy as np

    return {
        "target_tokens": int(sum(int((np.asarray(b["tgt_segments"]) > 0).sum()) for b in batches)),
        "source_tokens": int(sum(int((np.asarray(b["src_segments"]) > 0).sum()) for b in batches)),
        "target_slots": int(sum(b["tgt_segments"].size for b in batches)),
        "sentences": int(sum(int(((np.asarray(b["tgt_positions"]) == 0) & (np.asarray(b["tgt_segments"]) > 0)).sum())
                             for b in batches)),
    }


def forced_lengths(tokens, eos: int) -> list[int]:
    """Output length of each row: tokens up to and including the first EOS. A row without EOS,
    or with padding (0) before its EOS, gets a negative length (never equal to the forced one)."""
    import numpy as np

    lengths = []
    for row in tokens:
        row = np.asarray(row)
        hits = np.flatnonzero(row == eos)
        n = int(hits[0]) + 1 if len(hits) else -len(row)
        if n > 0 and (row[:n - 1] == 0).any():
            n = -n
        lengths.append(n)
    return lengths

