"""Property tests with arbitrary input (hypothesis): the corpus reader, the vocabulary wrapper and
the batcher either give a correct result or a DataError naming the file (and line); never another
exception, and nothing dropped that the reader's counts do not report. ``translate`` gives one
output line per input line, whatever the lines, and no line shifts the others."""

from __future__ import annotations

import gzip
import tempfile
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from jax_namnmt.data.batching import BATCH_KEYS, Examples, PackedBatcher, padded_batches
from jax_namnmt.data.corpus import read_lines, read_parallel
from jax_namnmt.data.multiway import multi30k_dir
from jax_namnmt.data.vocab import BOS_ID, EOS_ID, PAD_ID, Vocab, train_vocab
from jax_namnmt.errors import DataError
from jax_namnmt.segment import clean_line, one_line

pytestmark = pytest.mark.slow  # property tests (hypothesis), many examples each

LANGS = ["en", "de", "fr", "cs"]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ------------------------------------------------------------------------------------

# characters a corpus line may hold (anything but the line feed and lone surrogates), with the
# troublesome ones drawn often: tab, CR, NUL, other C0/C1 controls, NEL, Unicode line/paragraph
# separators, BOM, zero-width and non-breaking spaces, ideographic space, a combining mark
TRICKY = ["\t", "\r", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\ufeff", "\u200b", "\xa0",
          "\u3000", " ", "\u0301", "\U0001f600", "<2de>", "<unk>", "</s>", "<s>", "<pad>", "ü"]
any_char = st.one_of(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"),
                     st.sampled_from(TRICKY))
any_line = st.lists(any_char, max_size=12).map("".join)
any_lines = st.lists(any_line, max_size=6)


def _encode_file(lines: list[str], terminator: str, final_terminator: bool, gz: bool) -> bytes:
    text = terminator.join(lines) + (terminator if final_terminator and lines else "")
    data = text.encode("utf-8")
    return gzip.compress(data, mtime=0) if gz else data


def _model_read(data: bytes) -> list[str]:
    """What the reader is documented to return: lines split on LF only, the final terminator
    and one CR before each LF removed."""
    text = data.decode("utf-8")
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _model_clean(line: str) -> str:
    return "".join(" " if unicodedata.category(c) == "Cc" else c for c in line)


def _write_pair(directory: Path, src: bytes, tgt: bytes, gz: bool) -> tuple[Path, Path]:
    suffix = ".gz" if gz else ""
    paths = directory / f"train.de-en.de{suffix}", directory / f"train.de-en.en{suffix}"
    paths[0].write_bytes(src)
    paths[1].write_bytes(tgt)
    return paths


# -- the corpus reader -----------------------------------------------------------------------------


@FAST
@given(src=any_lines, tgt=any_lines, crlf=st.booleans(), final=st.booleans(), gz=st.booleans(),
       policy=st.sampled_from(["fail", "drop"]))
def test_reader_keeps_or_reports_every_line(src, tgt, crlf, final, gz, policy):
    terminator = "\r\n" if crlf else "\n"
    src_bytes = _encode_file(src, terminator, final, gz)
    tgt_bytes = _encode_file(tgt, terminator, final, gz)
    raw = [gzip.decompress(b) if gz else b for b in (src_bytes, tgt_bytes)]
    want_src, want_tgt = (_model_read(b) for b in raw)
    if crlf and final:  # every line written with its terminator comes back exactly
        assert (want_src, want_tgt) == (src, tgt)
    with tempfile.TemporaryDirectory() as tmp:
        src_path, tgt_path = _write_pair(Path(tmp), src_bytes, tgt_bytes, gz)
        try:
            text = read_parallel(tmp, "train", "de-en", empty_lines=policy)["de-en"]
        except DataError as err:
            message = str(err)
        else:
            message = None

    # what must have happened, from the model of the reader
    if not want_src or not want_tgt:
        path = src_path if not want_src else tgt_path
        assert message is not None and f"{path}: the file is empty" in message, message
        return
    if len(want_src) != len(want_tgt):
        assert message is not None and str(src_path) in message and str(tgt_path) in message, message
        assert f"has {len(want_src)} lines but" in message and f"has {len(want_tgt)}:" in message, message
        return
    rows = [(n, _model_clean(s), _model_clean(t), (_model_clean(s), _model_clean(t)) != (s, t))
            for n, (s, t) in enumerate(zip(want_src, want_tgt), start=1)]
    empty = [(n, src_path if not s.strip() else tgt_path) for n, s, t, _ in rows if not s.strip() or not t.strip()]
    kept = [row for row in rows if row[1].strip() and row[2].strip()]
    if empty and policy == "fail":
        n, path = empty[0]
        assert message is not None and f"{path}:{n}: empty line" in message, message
        return
    if not kept:
        assert message is not None and str(src_path) in message and "every line is empty" in message, message
        return
    assert message is None, message
    assert text.src == [s for _, s, _, _ in kept]
    assert text.tgt == [t for _, _, t, _ in kept]
    assert text.line_numbers == [n for n, _, _, _ in kept]
    assert text.stats == {"lines": len(rows), "dropped_empty": len(empty),
                          "cleaned_control": sum(changed for *_, changed in kept), "kept": len(kept)}
    assert text.stats["kept"] + text.stats["dropped_empty"] == text.stats["lines"]  # nothing else lost
    for line in text.src + text.tgt:  # what goes on contains no tab, CR, NUL or other control
        assert line.strip() and not any(unicodedata.category(c) == "Cc" for c in line)


@FAST
@given(data=st.binary(max_size=64), good_lines=st.integers(0, 3), gz=st.booleans())
def test_reader_on_arbitrary_bytes_names_file_and_line(data, good_lines, gz):
    """Arbitrary bytes (after some valid lines) on the source side: a result, or a DataError naming
    the source file, and for invalid UTF-8 the 1-based line of the first bad byte."""
    data = "".join(f"line {i}\n" for i in range(good_lines)).encode() + data
    with tempfile.TemporaryDirectory() as tmp:
        src_path, _ = _write_pair(Path(tmp), gzip.compress(data, mtime=0) if gz else data,
                                  _encode_file(["x"] * 3, "\n", True, gz), gz)
        try:
            text = read_parallel(tmp, "train", "de-en", empty_lines="drop")["de-en"]
        except DataError as err:
            message = str(err)
        else:
            message = None
    try:
        lines = _model_read(data)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        assert message is not None and f"{src_path}:{line}: invalid UTF-8" in message, message
        assert line > good_lines
        return
    if message is None:
        assert len(lines) == 3 and text.stats["lines"] == 3
        assert text.stats["kept"] + text.stats["dropped_empty"] == 3
    else:
        assert str(src_path) in message, message


@FAST
@given(data=st.binary(max_size=64), cut=st.integers(0, 200), garbage=st.booleans())
def test_broken_gzip_is_a_data_error(data, cut, garbage):
    blob = gzip.compress(data, mtime=0)
    blob = data if garbage else blob[:min(cut, len(blob) - 1)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.de-en.de.gz"
        path.write_bytes(blob)
        try:
            lines = read_lines(path)
        except DataError as err:
            assert str(path) in str(err)
        else:
            # read without an error: the content came back whole, never a silently shortened file
            if not blob:  # cut to nothing: an empty file (read_parallel reports it as empty)
                assert lines == []
            else:
                # a cut stream is never accepted; arbitrary bytes that happen to be a complete gzip
                # stream read fine, and then as all of what they hold
                assert garbage, f"a gzip stream cut to {len(blob)} bytes read without an error: {lines!r}"
                assert lines == _model_read(gzip.decompress(blob))


# -- the vocabulary ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> Vocab:
    lines = [line for lang in LANGS for line in read_lines(multi30k_dir() / f"val.{lang}.gz")[:60]]
    return Vocab.load(train_vocab(lines, LANGS, tmp_path_factory.mktemp("fuzz_vocab") / "spm", vocab_size=150))


@FAST
@given(texts=st.lists(st.one_of(any_line, st.text(max_size=40)), min_size=1, max_size=4))
def test_any_text_encodes_in_range_and_decodes(vocab, texts):
    batch = vocab.encode_batch(texts)
    assert batch == [vocab.encode(t) for t in texts]
    for ids in batch:
        assert all(isinstance(i, int) and 0 <= i < vocab.size for i in ids)
        # the special ids never come out of text (a literal "</s>" is not the end of sentence)
        assert not {PAD_ID, BOS_ID, EOS_ID} & set(ids)
        assert isinstance(vocab.decode(ids), str)
        assert isinstance(vocab.decode(ids + [EOS_ID] + ids), str)
    assert all(isinstance(s, str) for s in vocab.decode_batch(batch))


@FAST
@given(ids=st.lists(st.integers(0, 149), max_size=30))
def test_any_ids_decode(vocab, ids):
    """Whatever a model emits (any id of the vocabulary, specials and tags included) decodes."""
    assert vocab.size == 150
    text = vocab.decode(ids)
    assert isinstance(text, str)
    assert vocab.decode_batch([ids, ids[::-1]])[0] == text
    assert vocab.decode_batch(np.asarray([ids], np.int64).reshape(1, -1)) == [text]


# -- the batcher ------------------------------------------------------------------------------------


@st.composite
def example_sets(draw, max_len=12):
    n = draw(st.integers(1, 25))
    lens = st.integers(1, max_len)
    src = [np.asarray(draw(st.lists(st.integers(4, 999), min_size=k, max_size=k)), np.int32)
           for k in draw(st.lists(lens, min_size=n, max_size=n))]
    tgt = [np.asarray(draw(st.lists(st.integers(4, 999), min_size=k, max_size=k)), np.int32)
           for k in draw(st.lists(lens, min_size=n, max_size=n))]
    pairs = np.asarray(draw(st.lists(st.integers(0, 7), min_size=n, max_size=n)), np.int32)
    return Examples(src, tgt, pairs, [("corpus.de", i + 1) for i in range(n)])


def _unpack(batch: dict, rows: int, src_len: int, tgt_len: int) -> list[tuple]:
    """The examples in a packed batch, checking the layout of every row."""
    assert set(batch) == set(BATCH_KEYS)
    for key in BATCH_KEYS:
        width = src_len if key.startswith("src") else tgt_len
        assert batch[key].shape == (rows, width) and batch[key].dtype == np.int32, key
    found = []
    for r in range(rows):
        segs = {side: batch[f"{side}_segments"][r] for side in ("src", "tgt")}
        n = int(segs["src"].max())
        assert int(segs["tgt"].max()) == n
        for side in ("src", "tgt"):
            real = segs[side] > 0
            assert not real[int(real.sum()):].any(), "padding only at the end of a row"
            assert (np.diff(segs[side][real]) >= 0).all()
        for s in range(1, n + 1):
            src_at, tgt_at = segs["src"] == s, segs["tgt"] == s
            assert src_at.any() and tgt_at.any()
            labels = batch["tgt_labels"][r][tgt_at]
            assert list(batch["src_positions"][r][src_at]) == list(range(int(src_at.sum())))
            assert list(batch["tgt_positions"][r][tgt_at]) == list(range(int(tgt_at.sum())))
            assert list(batch["tgt_inputs"][r][tgt_at]) == [BOS_ID] + list(labels[:-1])
            pair = set(batch["src_pairs"][r][src_at]) | set(batch["tgt_pairs"][r][tgt_at])
            assert len(pair) == 1
            found.append((tuple(batch["src_tokens"][r][src_at]), tuple(labels), int(pair.pop())))
    return found


@FAST
@given(examples=example_sets(), rows=st.integers(1, 4), src_len=st.integers(12, 30),
       tgt_len=st.integers(12, 30), chunk=st.integers(1, 3), shuffle=st.booleans(), seed=st.integers(0, 3))
def test_batches_hold_every_example_exactly_once(examples, rows, src_len, tgt_len, chunk, shuffle, seed):
    batcher = PackedBatcher(examples, rows, src_len, tgt_len, seed=seed, shuffle=shuffle, sort_chunk=chunk)
    want = Counter((tuple(s), tuple(t), int(p)) for s, t, p in zip(examples.src, examples.tgt, examples.pair_ids))
    for epoch in (0, 1):
        batches = list(batcher.epoch(epoch))
        assert len(batches) == batcher.num_batches(epoch)
        found = Counter(x for b in batches for x in _unpack(b, rows, src_len, tgt_len))
        assert found == want
    # a position saved after any batch resumes the same stream
    stream = batcher.iterate(0, 0)
    first = [next(stream) for _ in range(batcher.num_batches(0) + 1)]
    e, i, _ = first[-2]
    resumed = next(batcher.iterate(e, i))
    assert resumed[:2] == first[-2][:2]
    assert all(np.array_equal(resumed[2][k], first[-2][2][k]) for k in BATCH_KEYS)


@FAST
@given(examples=example_sets(max_len=20), limit=st.integers(1, 19))
def test_too_long_example_is_a_data_error_naming_its_line(examples, limit):
    too_long = [i for i, (s, t) in enumerate(zip(examples.src, examples.tgt)) if max(len(s), len(t)) > limit]
    assume(too_long)
    with pytest.raises(DataError) as err:
        PackedBatcher(examples, 2, limit, limit, seed=0)
    # the first example too long on the side checked first (source, then target)
    src_long = [i for i, s in enumerate(examples.src) if len(s) > limit]
    i = src_long[0] if src_long else too_long[0]
    assert f"corpus.de:{i + 1}:" in str(err.value)


def test_no_examples_is_a_data_error():
    with pytest.raises(DataError, match="no training example"):
        PackedBatcher(Examples([], [], np.zeros(0, np.int32), []), 2, 8, 8, seed=0)


@FAST
@given(examples=example_sets(max_len=30), size=st.integers(1, 9))
def test_decoding_batches_hold_every_source_once(examples, size):
    batches = padded_batches(examples.src, examples.pair_ids, size)
    seen = Counter()
    for indices, src, pairs in batches:
        assert src.shape[0] == min(size, len(examples.src)) and src.shape[1] % 8 == 0
        for row, i in enumerate(indices):
            if i < 0:
                assert src[row, 0] == EOS_ID and not src[row, 1:].any()
                continue
            seen[int(i)] += 1
            n = len(examples.src[i])
            assert np.array_equal(src[row, :n], examples.src[i]) and (src[row, n:] == PAD_ID).all()
            assert pairs[row] == examples.pair_ids[i]
    assert seen == Counter(range(len(examples.src)))


# -- translate: one output line per input line ----------------------------------------------------

SENTINEL = "Ein Mann fährt Fahrrad."
uncovered = st.text(st.sampled_from("ภาษาไทยქართულიᚠᚢᚦ"), min_size=1, max_size=8)  # scripts the vocabulary lacks
control_only = st.text(st.sampled_from("\x00\x01\x07\x1b\x7f\x85\t\r"), min_size=1, max_size=6)
long_line = st.integers(2, 6).map(lambda n: " ".join(["Ein Hund läuft über die Wiese."] * n + ["Hund"] * n * 4))
translate_line = st.one_of(any_line, uncovered, control_only, long_line, st.just(""), st.just(SENTINEL))


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    from tiny_package import make_tiny_package

    from jax_namnmt.inference import Translator, load_model

    package = make_tiny_package(tmp_path_factory.mktemp("fuzz_pkg") / "pkg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_NAMNMT_XLA_CACHE", "off")  # programs kept in memory only
        yield Translator(load_model(package), "de", "en", "split", warn=lambda _: None)


@settings(FAST, max_examples=25)
@given(lines=st.lists(translate_line, min_size=1, max_size=5))
def test_translate_gives_one_line_per_line_and_never_shifts(translator, lines):
    alone = translator.translate([SENTINEL])[0]
    out = translator.translate(lines + [SENTINEL])
    assert len(out) == len(lines) + 1 and out[-1] == alone
    assert translator.translate([SENTINEL] + lines)[0] == alone
    for line, text in zip(lines, out):
        assert text == one_line(text) and len((text + "\n").splitlines()) == 1
        if not clean_line(line).strip():
            assert text == ""  # empty, blank or control characters only: an empty line
        if line == SENTINEL:
            assert text == alone
