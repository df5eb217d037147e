"""Temperature sampling across language pairs, for corpora whose pairs differ in size.

Pair ``m`` with ``n_m`` training examples is drawn with probability
``p_m = n_m ** (1 / T) / sum_j n_j ** (1 / T)`` (``data.sampling_temperature = T``): ``T = 1`` is
proportional to the data (every example once an epoch, the default), larger ``T`` flattens the
distribution towards uniform (``T = 5`` is the usual choice for unbalanced multilingual corpora;
fairseq's ``--sampling-temperature``, Arivazhagan et al. 2019).

An epoch keeps the corpus's size ``N``: pair ``m`` gets ``c_m`` examples, ``N p_m`` rounded
down or up by one systematic draw (so ``E[c_m] = N p_m`` and the counts sum to ``N``); a pair
with ``c_m <= n_m`` contributes ``c_m`` distinct examples, one with ``c_m > n_m`` every example
``c_m // n_m`` times plus ``c_m % n_m`` distinct others (fairseq draws with replacement instead;
this has the same expectation and less variance). Everything is drawn from the epoch's
generator, so an epoch depends only on ``(seed, epoch)`` and resuming repeats it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from jax_namnmt.errors import ConfigError


def check_temperature(temperature: float, where: str = "data.sampling_temperature") -> float:
    """``temperature`` if it is a finite number > 0, else a ConfigError naming ``where``."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"{where} = {temperature!r}: must be a finite number > 0 (1 = proportional to "
                          "each pair's examples, larger = flatter, e.g. 5)")
    return float(temperature)


def pair_probabilities(counts: Sequence[int], temperature: float) -> np.ndarray:
    """``p_m`` proportional to ``counts[m] ** (1 / temperature)`` (0 for a pair without examples)."""
    n = np.asarray(counts, np.float64)
    if (n < 0).any() or not n.sum():
        raise ValueError(f"pair counts must be >= 0 and not all 0: {counts}")
    weights = np.where(n > 0, n ** (1.0 / check_temperature(temperature)), 0.0)
    return weights / weights.sum()


def epoch_counts(probabilities: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Examples per pair in an epoch of ``total``: ``total * p`` rounded by one systematic draw
    (each count is the floor or the ceiling of its expectation, exactly ``total`` in all)."""
    edges = np.floor(np.concatenate([[0.0], np.cumsum(probabilities) * total]) + rng.random())
    edges[-1] = np.floor(total + edges[0])  # the cumulative sum's rounding error must not move the last edge
    return np.diff(edges).astype(np.int64)


def sample_epoch(pair_ids: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """Example indices of one epoch under temperature sampling, grouped by pair (the caller
    shuffles them); ``len(pair_ids)`` of them in all."""
    pair_ids = np.asarray(pair_ids)
    pairs, members = np.unique(pair_ids, return_inverse=True)
    groups = [np.flatnonzero(members == m) for m in range(len(pairs))]
    counts = epoch_counts(pair_probabilities([len(g) for g in groups], temperature), len(pair_ids), rng)
    out = []
    for group, count in zip(groups, counts):
        copies, rest = divmod(int(count), len(group))
        out.append(np.tile(group, copies))
        out.append(np.sort(rng.choice(group, size=rest, replace=False)))
    return np.concatenate(out)


def batch_pair_counts(batch: Mapping[str, np.ndarray], num_pairs: int) -> np.ndarray:
    """Examples of each pair in a training batch (rows or compact layout): the target tokens at
    position 0 of a (non-padding) segment, counted by their pair id."""
    first = (np.asarray(batch["tgt_positions"]) == 0) & (np.asarray(batch["tgt_segments"]) > 0)
    return np.bincount(np.asarray(batch["tgt_pairs"])[first], minlength=num_pairs)[:num_pairs]


class PairShares:
    """The realised share of each pair among the training examples seen so far; ``examples`` (a
    checkpoint's ``{pair: examples}``, from :meth:`examples`) continues its counts, pairs it
    does not name starting at 0."""

    def __init__(self, pairs: Sequence[str], examples: Mapping[str, int] | None = None):
        self.pairs = list(pairs)
        self.counts = np.array([int((examples or {}).get(p, 0)) for p in self.pairs], np.int64)

    def examples(self) -> dict[str, int]:
        """``{pair: examples counted}`` (JSON, for a checkpoint's data record)."""
        return {p: int(c) for p, c in zip(self.pairs, self.counts)}

    def add(self, batch: Mapping[str, np.ndarray]) -> None:
        self.counts += batch_pair_counts(batch, len(self.pairs))

    def record(self) -> dict[str, float]:
        """``{"share_<pair>": share, ..., "examples": n}`` (metrics-log fields)."""
        total = max(int(self.counts.sum()), 1)
        return {**{f"share_{p}": float(c) / total for p, c in zip(self.pairs, self.counts)},
                "examples": int(self.counts.sum())}

    def describe(self) -> str:
        total = max(int(self.counts.sum()), 1)
        return " ".join(f"{p} {100 * c / total:.1f}%" for p, c in zip(self.pairs, self.counts))


def describe_probabilities(pairs: Sequence[str], pair_ids: np.ndarray, temperature: float) -> str:
    """``de-en 14.1% (data 12.0%) ...``: each pair's sampling probability and its share of the data."""
    counts = np.bincount(np.asarray(pair_ids), minlength=len(pairs))[:len(pairs)]
    p = pair_probabilities(counts, temperature)
    data = counts / counts.sum()
    return " ".join(f"{name} {100 * p[i]:.1f}% (data {100 * data[i]:.1f}%)" for i, name in enumerate(pairs))
