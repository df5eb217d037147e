"""Paired bootstrap resampling (Koehn 2004) of corpus BLEU, over several seeds at once.

sacreBLEU's BLEU is a function of sufficient statistics summed over sentences (matches and
totals per n-gram order, hypothesis and reference lengths), so a resampled corpus score is a sum
of per-sentence rows: one ``[sentences, 10]`` table per system is extracted once, and every
bootstrap sample is an index draw. With several seeds per system the statistic is the mean over
seeds of the corpus BLEU of system A minus that of system B, on the same resampled sentences
(the seeds share the test set, so one draw serves all of them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sacrebleu.metrics import BLEU


def sentence_stats(hyps: Sequence[str], refs: Sequence[str], tokenize: str = "13a") -> np.ndarray:
    """``[len(hyps), 10]`` BLEU sufficient statistics per sentence (sacreBLEU's own extraction)."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    return np.asarray(BLEU(tokenize=tokenize)._extract_corpus_statistics(list(hyps), [list(refs)]), np.int64)


def bleu_from_stats(stats: np.ndarray) -> np.ndarray:
    """Corpus BLEU of summed statistics, vectorised over leading axes: ``[..., 10] -> [...]``
    (sacreBLEU's formula with its default ``exp`` smoothing, which only matters for zero counts)."""
    stats = np.asarray(stats, np.float64)
    hyp_len, ref_len = stats[..., 0], stats[..., 1]
    correct, total = stats[..., 2:6], stats[..., 6:10]
    # sacreBLEU 'exp' smoothing: a zero-match order k counts as 1 / 2^k matches
    smooth = np.cumsum(correct == 0, axis=-1)
    prec = np.where(correct > 0, correct / np.maximum(total, 1), 1.0 / (2.0 ** smooth) / np.maximum(total, 1))
    prec = np.where(total > 0, prec, 0.0)
    with np.errstate(divide="ignore"):
        log_mean = np.where(np.all(prec > 0, axis=-1), np.log(np.where(prec > 0, prec, 1.0)).mean(axis=-1), -np.inf)
    bp = np.where(hyp_len < ref_len, np.exp(1.0 - ref_len / np.maximum(hyp_len, 1)), 1.0)
    bp = np.where(hyp_len > 0, bp, 0.0)
    return 100.0 * bp * np.exp(log_mean)


def _resampled_differences(stats_a, stats_b, samples: int, rng) -> tuple[float, np.ndarray]:
    """The observed difference (mean over seeds of BLEU(A) - BLEU(B)) and ``samples`` draws of it on
    resampled sentences; each ``stats_*`` a sequence over seeds of ``[sentences, 10]``."""
    a, b = np.stack(stats_a), np.stack(stats_b)  # [seeds, n, 10]
    n = a.shape[1]
    if b.shape[1] != n:
        raise ValueError(f"the systems were scored on {n} and {b.shape[1]} sentences")
    observed = float(bleu_from_stats(a.sum(1)).mean() - bleu_from_stats(b.sum(1)).mean())
    diffs = np.empty(samples)
    for s in range(samples):
        counts = np.bincount(rng.integers(0, n, n), minlength=n)  # a resample as multiplicities
        sa = np.einsum("n,knj->kj", counts, a)
        sb = np.einsum("n,knj->kj", counts, b)
        diffs[s] = bleu_from_stats(sa).mean() - bleu_from_stats(sb).mean()
    return observed, diffs


def _summary(observed: float, diffs: np.ndarray) -> dict:
    p = min(1.0, 2.0 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"diff": float(observed), "ci95": [float(low), float(high)], "p": p, "samples": len(diffs)}


def paired_bootstrap(stats_a: Sequence[np.ndarray], stats_b: Sequence[np.ndarray], samples: int = 1000,
                     seed: int = 12345) -> dict:
    """System A (seeds ``stats_a``) against B (seeds ``stats_b``), each ``[sentences, 10]`` on the same
    sentences. Returns the observed difference (mean over seeds of BLEU(A) - BLEU(B)), the bootstrap's
    95% interval of that difference, and the two-sided p-value of "no difference":
    ``2 * min(P(diff* <= 0), P(diff* >= 0))`` over the resamples (capped at 1)."""
    return _summary(*_resampled_differences(stats_a, stats_b, samples, np.random.default_rng(seed)))


def paired_bootstrap_mean(directions_a: Sequence[Sequence[np.ndarray]],
                          directions_b: Sequence[Sequence[np.ndarray]], samples: int = 1000,
                          seed: int = 12345) -> dict:
    """As :func:`paired_bootstrap` for the mean over directions of the BLEU difference, each direction
    (a sequence over seeds of ``[sentences, 10]``) resampled independently."""
    rng = np.random.default_rng(seed)
    observed, diffs = [], np.zeros(samples)
    for a, b in zip(directions_a, directions_b, strict=True):
        one, draws = _resampled_differences(a, b, samples, rng)
        observed.append(one)
        diffs += draws / len(directions_a)
    return _summary(float(np.mean(observed)), diffs)
