"""Temperature sampling across pairs (data/sampling.py, data.sampling_temperature): the expected
proportions, the realised ones on an unbalanced corpus, exact resume, the config field and the logs."""

from __future__ import annotations

import json
from itertools import islice

import numpy as np
import pytest

from jax_namnmt.config import load_config
from jax_namnmt.data.batching import BATCH_KEYS, COMPACT_KEYS, Examples, make_batcher
from jax_namnmt.data.sampling import (PairShares, batch_pair_counts, epoch_counts, pair_probabilities,
                                      sample_epoch)
from jax_namnmt.data.vocab import EOS_ID
from jax_namnmt.errors import ConfigError

SIZES = (1200, 240, 60)  # an unbalanced corpus: 80% / 16% / 4% of the examples


def unbalanced(sizes=SIZES, seed: int = 0, vocab: int = 0) -> Examples:
    """Examples of ``len(sizes)`` pairs (pair ids 0, 1, ...); example i's source holds 1000 + i, so an
    example is recognised in a batch (with ``vocab``: every token id below it)."""
    rng = np.random.default_rng(seed)
    src, tgt, pairs = [], [], []
    for pid, n in enumerate(sizes):
        for _ in range(n):
            i = len(src)
            src.append(np.array([4 + pid, 1000 + i, *rng.integers(5, 99, rng.integers(0, 6)), EOS_ID], np.int32))
            tgt.append(np.array([*rng.integers(5, 99, rng.integers(1, 7)), EOS_ID], np.int32))
            pairs.append(pid)
    if vocab:
        src = [np.where(s == EOS_ID, s, 5 + s % (vocab - 5)).astype(np.int32) for s in src]
    return Examples(src, tgt, np.array(pairs, np.int32), [("f", i + 1) for i in range(len(src))])


def expected(temperature: float, sizes=SIZES) -> np.ndarray:
    """The reference: p_m = n_m^(1/T) / sum_j n_j^(1/T), written out."""
    w = [n ** (1.0 / temperature) for n in sizes]
    return np.array([x / sum(w) for x in w])


def epoch_example_ids(batcher, epoch: int) -> np.ndarray:
    """The example ids (source token 1 minus 1000) of every example in an epoch's batches."""
    ids = []
    for batch in batcher.epoch(epoch):
        first = (batch["src_positions"] == 1) & (batch["src_segments"] > 0)
        ids.append(batch["src_tokens"][first] - 1000)
    return np.concatenate(ids)


def test_pair_probabilities_follow_the_temperature():
    for t in (1.0, 2.0, 5.0, 0.5):
        np.testing.assert_allclose(pair_probabilities(SIZES, t), expected(t), rtol=1e-12)
    np.testing.assert_allclose(pair_probabilities(SIZES, 1.0), np.array(SIZES) / sum(SIZES))
    # higher temperatures are flatter: the largest pair's share falls, the smallest one's rises
    shares = [pair_probabilities(SIZES, t) for t in (1, 2, 5, 100)]
    assert all(a[0] > b[0] and a[-1] < b[-1] for a, b in zip(shares, shares[1:]))
    np.testing.assert_allclose(shares[-1], 1 / 3, atol=0.02)
    assert pair_probabilities([10, 0, 5], 5.0)[1] == 0.0  # a pair without examples is never drawn
    with pytest.raises(ConfigError, match="must be a finite number > 0"):
        pair_probabilities(SIZES, 0.0)


def test_epoch_counts_round_each_expectation_and_average_to_it():
    p = expected(5.0)
    total = sum(SIZES)
    draws = np.array([epoch_counts(p, total, np.random.default_rng([7, e])) for e in range(400)])
    assert (draws.sum(axis=1) == total).all()
    assert ((draws == np.floor(total * p)) | (draws == np.ceil(total * p))).all()
    # the rounding is unbiased: each count is a Bernoulli step above its floor, so the mean of 400
    # draws lies within 5 standard errors of total * p
    frac = total * p - np.floor(total * p)
    se = np.sqrt(frac * (1 - frac) / len(draws))
    assert (np.abs(draws.mean(axis=0) - total * p) <= 5 * se + 1e-12).all()


def test_sample_epoch_up_and_down_samples_without_bias():
    pair_ids = unbalanced().pair_ids
    rng = np.random.default_rng(0)
    chosen = sample_epoch(pair_ids, 5.0, rng)
    assert len(chosen) == len(pair_ids)
    counts = np.bincount(pair_ids[chosen], minlength=3)
    target = len(pair_ids) * expected(5.0)
    assert (np.abs(counts - target) < 1).all()
    uses = np.bincount(chosen, minlength=len(pair_ids))
    big, small = pair_ids == 0, pair_ids == 2
    assert uses[big].max() == 1  # the large pair is down-sampled: no example twice in an epoch
    per_small = counts[2] / SIZES[2]  # the small one up-sampled: every example floor or ceil of that many times
    assert set(uses[small].tolist()) <= {int(np.floor(per_small)), int(np.ceil(per_small))}


@pytest.mark.parametrize("layout", ["rows", "compact"])
def test_realised_proportions_on_an_unbalanced_corpus(layout):
    """The examples in the batches, counted like the training loop counts them, against p_m."""
    examples = unbalanced()
    n = len(examples)
    for t in (1.0, 5.0):
        p = expected(t)
        batcher = make_batcher(examples, layout, 128, 16, 16, seed=3, temperature=t)
        # every epoch: each pair's count within one of n * p_m (the rounding), all examples accounted for
        for epoch in range(3):
            counts = sum(batch_pair_counts(b, 3) for b in batcher.epoch(epoch))
            assert counts.sum() == n and (np.abs(counts - n * p) < 1).all(), (t, epoch, counts)
        # a partial epoch (batches are shuffled): the first fifth of the stream is a sample of about
        # n/5 examples without replacement, so each share lies within 4.5 standard errors (with the
        # finite-population correction) of p_m
        seen = PairShares(["a", "b", "c"])
        for batch in islice(batcher.epoch(0), batcher.num_batches(0) // 5):
            seen.add(batch)
        k = int(seen.counts.sum())
        share = seen.counts / k
        se = np.sqrt(p * (1 - p) / k * (n - k) / (n - 1))
        assert (np.abs(share - p) <= 4.5 * se).all(), (t, share, p, se)
        assert seen.record()["examples"] == k
        assert abs(sum(v for key, v in seen.record().items() if key.startswith("share_")) - 1) < 1e-12
    # T=5 draws different examples of the large pair in different epochs, so over epochs it uses more of them
    batcher = make_batcher(examples, layout, 128, 16, 16, seed=3, temperature=5.0)
    big = [set(ids[ids < SIZES[0]].tolist()) for ids in (epoch_example_ids(batcher, e) for e in range(3))]
    assert len(big[0] | big[1] | big[2]) > max(len(b) for b in big)


def test_temperature_one_is_the_unsampled_stream():
    examples = unbalanced()
    plain = list(islice(make_batcher(examples, "rows", 128, 16, 16, seed=3).iterate(), 30))
    one = list(islice(make_batcher(examples, "rows", 128, 16, 16, seed=3, temperature=1.0).iterate(), 30))
    five = list(islice(make_batcher(examples, "rows", 128, 16, 16, seed=3, temperature=5.0).iterate(), 30))
    assert all(np.array_equal(a[2][k], b[2][k]) for a, b in zip(plain, one) for k in BATCH_KEYS)
    assert not all(np.array_equal(a[2]["src_tokens"], b[2]["src_tokens"]) for a, b in zip(plain, five))


@pytest.mark.parametrize("layout", ["rows", "compact"])
def test_sampled_stream_resumes_exactly(layout):
    def make():
        return make_batcher(unbalanced(), layout, 128, 16, 16, seed=5, temperature=5.0)

    batcher = make()
    per_epoch = batcher.num_batches(0)
    full = list(islice(batcher.iterate(), 2 * per_epoch + 3))
    keys = BATCH_KEYS + (COMPACT_KEYS if layout == "compact" else ())
    for k in (1, per_epoch - 1, per_epoch, per_epoch + 4):
        epoch, index, _ = full[k]
        tail = list(islice(make().iterate(epoch, index), len(full) - k))
        assert [(e, i) for e, i, _ in tail] == [(e, i) for e, i, _ in full[k:]]
        for (_, _, a), (_, _, b) in zip(tail, full[k:]):
            assert all(np.array_equal(a[key], b[key]) for key in keys)


def test_config_field_is_checked():
    assert load_config("tiny").data.sampling_temperature == 1.0
    assert load_config("tiny", ["data.sampling_temperature=5"]).data.sampling_temperature == 5.0
    for bad in ("0", "-2", "NaN", "Infinity"):
        with pytest.raises(ConfigError, match="data.sampling_temperature"):
            load_config("tiny", [f"data.sampling_temperature={bad}"])
    with pytest.raises(ConfigError, match="sampling_temperature: expected a number"):
        load_config("tiny", ["data.sampling_temperature=hot"])
    with pytest.raises(ConfigError, match="unknown config field"):
        load_config("tiny", ["data.sampling_temperture=5"])


def test_training_logs_the_realised_proportions(tmp_path, capsys):
    """The loop's metrics.jsonl gets <phase>_pairs records (shares of the examples trained on so
    far) and its progress output the sampling probabilities and the realised shares."""
    from jax_namnmt.model.transformer import init_params
    from jax_namnmt.training.loop import Schedule, train

    config = load_config("tiny", ["data.pairs=de-en,en-de,fr-en", "data.sampling_temperature=5",
                                  "train.log_every=2", "data.layout=rows"])
    examples = unbalanced(sizes=(300, 60, 15), vocab=config.model.vocab_size)
    steps = 6
    train(tmp_path, config, Schedule(steps, 1e-3, 1, 1e-3), examples, None, init_params(config.model),
          phase="pretrain")
    out = capsys.readouterr()
    assert "sampling pairs at temperature 5: de-en 44.0% (data 80.0%)" in out.out
    assert "[pretrain] pairs trained on: de-en" in out.out + out.err
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if r["phase"] == "pretrain_pairs"]
    assert [r["step"] for r in logged] == [2, 4, 6]
    # the last record is the shares of every example of the 6 batches, recounted here
    batcher = make_batcher(examples, "rows", config.train.tokens_per_batch, 32, 32, seed=config.train.seed,
                           temperature=5.0)
    counts = sum(batch_pair_counts(b, 3) for _, _, b in islice(batcher.iterate(), steps))
    assert logged[-1]["examples"] == counts.sum()
    for name, c in zip(config.data.pairs, counts):
        assert logged[-1][f"share_{name}"] == pytest.approx(c / counts.sum())
