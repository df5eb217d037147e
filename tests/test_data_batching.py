"""Encoding examples, packed training batches and padded decoding batches (batching.py)."""

import gzip
import tempfile
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jax_namnmt.data.batching import (
    BATCH_KEYS,
    COMPACT_KEYS,
    CompactBatcher,
    Examples,
    PackedBatcher,
    encode_parallel,
    make_batcher,
    padded_batches,
    resolve_layout,
    rows_for_budget,
)
from jax_namnmt.data.corpus import Pair, ParallelText, read_lines, read_parallel
from jax_namnmt.data.multiway import MULTI30K_SPLITS, build_from_multiway, multi30k_dir
from jax_namnmt.data.vocab import BOS_ID, EOS_ID, Vocab, train_vocab
from jax_namnmt.errors import ConfigError, DataError

LANGS = ["en", "de", "fr", "cs"]
PAIRS = "de-en,en-de,fr-en,en-fr,cs-en,en-cs,de-fr,fr-de"


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> Vocab:
    lines = [line for l in LANGS for line in read_lines(multi30k_dir() / f"val.{l}.gz")[:100]]
    prefix = tmp_path_factory.mktemp("vocab") / "spm"
    return Vocab.load(train_vocab(lines, LANGS, prefix, vocab_size=200))


@pytest.fixture(scope="module")
def multi30k_valid(tmp_path_factory):
    out = build_from_multiway(
        multi30k_dir(), tmp_path_factory.mktemp("m30k"), PAIRS, {"valid": MULTI30K_SPLITS["valid"]}
    )
    return read_parallel(out, "valid", PAIRS)


def random_examples(n: int, seed: int = 0, max_len: int = 12, n_pairs: int = 3) -> Examples:
    """``n`` distinct examples: source token 4 + i % 50 marks example i, lengths vary."""
    rng = np.random.default_rng(seed)
    src, tgt = [], []
    for i in range(n):
        body = rng.integers(4, 100, rng.integers(0, max_len - 2)).astype(np.int32)
        src.append(np.concatenate([[10 + i % 3, i], body, [EOS_ID]]).astype(np.int32))
        body = rng.integers(4, 100, rng.integers(0, max_len - 1))
        tgt.append(np.append(body, EOS_ID).astype(np.int32))
    pair_ids = np.arange(n, dtype=np.int32) % n_pairs + 1
    return Examples(src, tgt, pair_ids, [("f", i + 1) for i in range(n)])


def unpack(batch: dict) -> list[tuple[tuple, tuple, int]]:
    """The (src, tgt, pair) of every example in a packed batch, checking the row invariants."""
    found = []
    for r in range(batch["src_tokens"].shape[0]):
        for seg in range(1, batch["src_segments"][r].max() + 1):
            s = batch["src_segments"][r] == seg
            t = batch["tgt_segments"][r] == seg
            assert s.any() and t.any(), "a segment must exist on both sides"
            for side, mask in (("src", s), ("tgt", t)):
                # contiguous, positions restart at 0, one pair id per segment
                assert np.array_equal(batch[f"{side}_positions"][r][mask], np.arange(mask.sum()))
                assert np.all(np.diff(np.flatnonzero(mask)) == 1)
                assert len(set(batch[f"{side}_pairs"][r][mask])) == 1
            labels, inputs = batch["tgt_labels"][r][t], batch["tgt_inputs"][r][t]
            assert labels[-1] == EOS_ID and inputs[0] == BOS_ID
            assert np.array_equal(inputs[1:], labels[:-1])
            pair = int(batch["src_pairs"][r][s][0])
            assert pair == batch["tgt_pairs"][r][t][0]
            found.append((tuple(batch["src_tokens"][r][s]), tuple(labels), pair))
        pad_s, pad_t = batch["src_segments"][r] == 0, batch["tgt_segments"][r] == 0
        for key in BATCH_KEYS:
            assert not batch[key][r][pad_s if key.startswith("src") else pad_t].any()
    return found


def as_set(examples: Examples) -> Counter:
    triples = zip(examples.src, examples.tgt, examples.pair_ids)
    return Counter((tuple(s), tuple(t), int(p)) for s, t, p in triples)


# --- encode_parallel -------------------------------------------------------------------------


def test_encode_parallel_puts_target_tag_first(vocab, multi30k_valid):
    index = {name: i + 1 for i, name in enumerate(multi30k_valid)}
    examples, stats = encode_parallel(multi30k_valid, vocab, index, max_len=256)
    assert len(examples) == 8 * 1014
    assert stats["de-en"] == {"kept": 1014, "dropped_overlong": 0}
    first_of = {name: 1014 * (i - 1) for name, i in index.items()}
    for name, text in multi30k_valid.items():
        i = first_of[name]
        assert examples.src[i][0] == vocab.tag_id(text.pair.tgt)
        assert list(examples.src[i][1:]) == vocab.encode(text.src[0]) + [EOS_ID]
        assert list(examples.tgt[i]) == vocab.encode(text.tgt[0]) + [EOS_ID]
        assert examples.pair_ids[i] == index[name]
        assert examples.origins[i] == (text.src_path, 1)
    assert all(s.dtype == np.int32 for s in examples.src + examples.tgt)


def test_overlong_examples_are_dropped_and_counted_or_fail(vocab):
    short = "Ein Hund."
    long = "Ein Mann in einem blauen Hemd steht auf einer Leiter und putzt ein Fenster."
    src, tgt = [short, long, short], ["A dog.", "A dog.", long]
    paths = ("d/train.de-en.de", "d/train.de-en.en")
    text = ParallelText(Pair("de", "en"), src, tgt, *paths, line_numbers=[1, 2, 5])
    max_len = len(vocab.encode(short)) + 4
    examples, stats = encode_parallel({"de-en": text}, vocab, {"de-en": 0}, max_len)
    assert stats == {"de-en": {"kept": 1, "dropped_overlong": 2}}
    assert examples.origins == [("d/train.de-en.de", 1)]
    n = len(vocab.encode(long)) + 2
    with pytest.raises(DataError, match=rf"train\.de-en\.de:2: {n} tokens, more than max_len"):
        encode_parallel({"de-en": text}, vocab, {"de-en": 0}, max_len, overlong="fail")
    text.src[1] = short
    with pytest.raises(DataError, match=r"train\.de-en\.en:5: "):
        encode_parallel({"de-en": text}, vocab, {"de-en": 0}, max_len, overlong="fail")


# --- PackedBatcher ---------------------------------------------------------------------------


def test_every_example_appears_once_per_epoch_with_valid_rows():
    examples = random_examples(300)
    batcher = PackedBatcher(examples, rows=4, src_len=32, tgt_len=24, seed=0, sort_chunk=5)
    for epoch in (0, 1):
        batches = list(batcher.epoch(epoch))
        assert len(batches) == batcher.num_batches(epoch)
        for batch in batches:
            assert set(batch) == set(BATCH_KEYS)
            assert all(batch[k].shape == (4, 32 if k.startswith("src") else 24) for k in BATCH_KEYS)
            assert all(batch[k].dtype == np.int32 for k in BATCH_KEYS)
        found = Counter(item for batch in batches for item in unpack(batch))
        assert found == as_set(examples)
    filled = sum((b["tgt_segments"] > 0).sum() for b in batches) / (len(batches) * 4 * 24)
    assert filled > 0.8, "packing should fill most of the rows"


def test_last_batch_is_padded_with_empty_rows():
    examples = random_examples(5, max_len=6)
    batcher = PackedBatcher(examples, rows=8, src_len=8, tgt_len=8, seed=0)
    (batch,) = batcher.epoch(0)
    empty_rows = [r for r in range(8) if not batch["src_segments"][r].any()]
    assert len(empty_rows) >= 3
    assert all(not batch[k][r].any() for k in BATCH_KEYS for r in empty_rows)


def test_same_seed_same_batches_other_seed_other_order():
    examples = random_examples(200)

    def stream(seed, epoch=0):
        batcher = PackedBatcher(examples, rows=4, src_len=24, tgt_len=24, seed=seed, sort_chunk=4)
        return [b["src_tokens"] for b in batcher.epoch(epoch)]

    def same(a, b):
        return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))

    first = stream(0)
    assert same(first, stream(0))
    assert not same(first, stream(1)) and not same(first, stream(0, epoch=1))


def test_iterate_resumes_exactly():
    def make():
        return PackedBatcher(random_examples(120), 4, 24, 24, seed=3, sort_chunk=2)

    batcher = make()
    per_epoch = batcher.num_batches(0)
    full = list(islice(batcher.iterate(), 3 * per_epoch))
    positions = [(e, i) for e, i, _ in full]
    assert positions[: per_epoch + 1] == [(0, i) for i in range(per_epoch)] + [(1, 0)]
    for k in (0, 2, per_epoch - 1, per_epoch + 3):
        epoch, index, _ = full[k]
        tail = list(islice(make().iterate(epoch, index), len(full) - k))
        assert [(e, i) for e, i, _ in tail] == positions[k:]
        for (_, _, a), (_, _, b) in zip(tail, full[k:]):
            assert all(np.array_equal(a[key], b[key]) for key in BATCH_KEYS)
    # a position saved after the last batch of an epoch continues with the next epoch
    assert next(batcher.iterate(0, per_epoch))[:2] == (1, 0)
    with pytest.raises(ValueError):
        next(batcher.iterate(0, per_epoch + 1))


def test_example_longer_than_a_row_is_rejected():
    examples = random_examples(10, max_len=12)
    with pytest.raises(DataError, match=r"f:\d+: the source has \d+ tokens but a packed row holds"):
        PackedBatcher(examples, rows=2, src_len=4, tgt_len=64, seed=0)


# --- CompactBatcher --------------------------------------------------------------------------


def compact_to_rows(batch: dict) -> dict:
    """A compact batch in the rows layout, through its index arrays (as ``model/layout.py`` moves
    the attention's inputs), after checking that ``index`` and ``slot`` are inverse maps."""
    out = {}
    for side in ("src", "tgt"):
        index, slot = batch[f"{side}_index"][0], batch[f"{side}_slot"][0]
        n, (rows, width) = slot.shape[0], index.shape
        real = batch[f"{side}_segments"][0] > 0
        count = int(real.sum())
        assert real[:count].all() and not real[count:].any(), "padding only after the tokens"
        assert np.array_equal(index.reshape(-1)[slot[:count]], np.arange(count))
        assert (slot[count:] == rows * width).all() and (index == n).sum() == rows * width - count
        for key in BATCH_KEYS:
            if key.startswith(side):
                assert not batch[key][0][count:].any()
                out[key] = np.append(batch[key][0], 0)[index]
    return out


def fill(batches, side="tgt") -> float:
    """Share of a side's slots holding tokens, over all batches but the emptiest (one batch of an
    epoch holds the rest)."""
    filled = sorted(float((b[f"{side}_segments"] > 0).mean()) for b in batches)
    return float(np.mean(filled[1:]))


def test_compact_batches_hold_every_example_once_within_the_budgets():
    examples = random_examples(300)
    batcher = CompactBatcher(examples, 240, src_len=32, tgt_len=24, seed=0, sort_chunk=5)
    rows, n_src = batcher.rows, batcher.src_tokens
    assert n_src % 8 == 0 and rows >= 10  # 240 tokens at < 24 a packed row
    for epoch in (0, 1):
        batches = list(batcher.epoch(epoch))
        assert len(batches) == batcher.num_batches(epoch)
        for batch in batches:
            assert set(batch) == set(BATCH_KEYS + COMPACT_KEYS)
            assert all(batch[k].shape == (1, n_src if k.startswith("src") else 240) for k in BATCH_KEYS)
            assert batch["src_index"].shape == (1, rows, 32) and batch["tgt_index"].shape == (1, rows, 24)
            assert all(batch[k].dtype == np.int32 for k in batch)
        found = Counter(item for batch in batches for item in unpack(compact_to_rows(batch)))
        assert found == as_set(examples)
    # the budgets, not the rows, end a batch: more of the slots hold tokens than in packed rows
    packed = list(PackedBatcher(examples, 10, 32, 24, seed=0, sort_chunk=5).epoch(0))
    assert fill(batches) > 0.93 and fill(batches) > fill(packed) + 0.03


def test_compact_same_seed_same_batches_and_resume():
    def make(seed=3):
        return CompactBatcher(random_examples(200), 64, 24, 24, seed=seed, sort_chunk=2)

    batcher = make()
    per_epoch = batcher.num_batches(0)
    full = list(islice(batcher.iterate(), 2 * per_epoch))
    for k in (1, per_epoch + 1):
        epoch, index, _ = full[k]
        tail = list(islice(make().iterate(epoch, index), 3))
        for (_, _, a), (_, _, b) in zip(tail, full[k:]):
            assert all(np.array_equal(a[key], b[key]) for key in BATCH_KEYS + COMPACT_KEYS)
    other = next(make(seed=4).iterate())[2]
    assert not np.array_equal(other["tgt_labels"], full[0][2]["tgt_labels"])


def test_compact_budget_must_hold_the_longest_example():
    with pytest.raises(ValueError, match="cannot hold the longest example"):
        CompactBatcher(random_examples(20, max_len=12), 8, 24, 24, seed=0)


def test_layout_resolution():
    examples = random_examples(30)
    assert resolve_layout("auto", 1) == "compact" and resolve_layout("auto", 8) == "rows"
    assert resolve_layout("auto", 1, "gpu") == "rows" and resolve_layout("compact", 1, "gpu") == "compact"
    assert resolve_layout("rows", 1) == "rows"
    with pytest.raises(ConfigError, match="one device only"):
        resolve_layout("compact", 2)
    with pytest.raises(ConfigError, match="data.layout must be one of"):
        resolve_layout("compactt", 1)
    from jax_namnmt.config import load_config

    with pytest.raises(ConfigError, match="data.layout must be one of .* not 'compactt'"):
        load_config("tiny", ["data.layout=compactt"]).validate()
    assert isinstance(make_batcher(examples, "compact", 64, 24, 24, seed=0), CompactBatcher)
    rows = make_batcher(examples, "rows", 64, 24, 24, seed=0)
    assert type(rows) is PackedBatcher and rows.rows == 64 // 24


def test_rows_for_budget():
    assert rows_for_budget(4096, 128) == 32
    assert rows_for_budget(100, 128) == 1


def test_realistic_multi30k_packing(vocab, multi30k_valid):
    index = {name: i + 1 for i, name in enumerate(multi30k_valid)}
    examples, _ = encode_parallel(multi30k_valid, vocab, index, max_len=64)
    batcher = PackedBatcher(examples, rows_for_budget(2048, 64), 64, 64, seed=0)
    found = Counter(item for batch in batcher.epoch(0) for item in unpack(batch))
    assert found == as_set(examples)


# --- padded_batches --------------------------------------------------------------------------


def test_padded_batches_cover_each_example_once():
    examples = random_examples(50, max_len=20)
    batches = padded_batches(examples.src, examples.pair_ids, max_sentences=16)
    assert len(batches) == 4
    assert all(src.shape[0] == 16 and src.shape[1] % 8 == 0 for _, src, _ in batches)
    indices = np.concatenate([ix for ix, _, _ in batches])
    assert sorted(indices[indices >= 0]) == list(range(50))
    for ix, src, pairs in batches:
        for row, i in enumerate(ix):
            if i < 0:  # dummy row
                assert list(src[row][src[row] != 0]) == [EOS_ID] and pairs[row] == 0
            else:
                n = len(examples.src[i])
                assert np.array_equal(src[row, :n], examples.src[i]) and not src[row, n:].any()
                assert pairs[row] == examples.pair_ids[i]
    assert (indices < 0).sum() == 14
    lengths = [max(len(examples.src[i]) for i in ix if i >= 0) for ix, _, _ in batches]
    assert lengths == sorted(lengths, reverse=True)
    assert padded_batches([], np.zeros(0, np.int32), 8) == []


# --- property: nothing is lost between the text files and the batches ----------------------


class CharVocab:
    """A stand-in vocabulary: one id per character."""

    def tag_id(self, lang):
        return {"de": 4, "en": 5}[lang]

    def encode_batch(self, texts):
        return [[6 + ord(c) % 1000 for c in text] for text in texts]


line_text = st.text(
    st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=20
).filter(lambda s: s.strip())


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(line_text, line_text), min_size=1, max_size=30), st.booleans())
def test_random_text_round_trips_and_is_never_dropped(tmp_path, lines, gz):
    suffix = ".gz" if gz else ""
    data = Path(tempfile.mkdtemp(dir=tmp_path))
    for lang, side in (("de", 0), ("en", 1)):
        text = "".join(pair[side] + "\n" for pair in lines).encode("utf-8")
        path = data / f"train.de-en.{lang}{suffix}"
        path.write_bytes(gzip.compress(text) if gz else text)
    texts = read_parallel(data, "train", "de-en")
    assert list(zip(texts["de-en"].src, texts["de-en"].tgt)) == lines
    examples, stats = encode_parallel(texts, CharVocab(), {"de-en": 1}, max_len=32)
    assert stats["de-en"] == {"kept": len(lines), "dropped_overlong": 0}
    batcher = PackedBatcher(examples, rows=2, src_len=32, tgt_len=32, seed=0, sort_chunk=2)
    found = Counter(item for batch in batcher.epoch(0) for item in unpack(batch))
    assert found == as_set(examples)
