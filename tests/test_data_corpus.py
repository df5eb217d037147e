"""Reading and validating corpora (corpus.py) and building the fairseq layout (multiway.py)."""

import gzip
from pathlib import Path

import pytest

from jax_namnmt.data.corpus import Pair, find_split_files, parse_pairs, read_lines, read_parallel
from jax_namnmt.data.multiway import (
    MULTI30K_SPLITS,
    build_from_multiway,
    build_from_ntrex,
    multi30k_dir,
    ntrex_document_splits,
)
from jax_namnmt.errors import ConfigError, DataError

# ../shared/data/ntrex128 next to the project root, as CI has it (skipped where it is absent)
NTREX_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ntrex128"


def write(path: Path, text: str | bytes) -> Path:
    """Write ``text`` (str as UTF-8, or raw bytes) to ``path``, gzipped if it ends in .gz."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def write_pair(data_dir: Path, split: str, pair: str, src: str, tgt: str, gz: bool = False):
    src_lang, tgt_lang = pair.split("-")
    suffix = ".gz" if gz else ""
    write(data_dir / f"{split}.{pair}.{src_lang}{suffix}", src)
    write(data_dir / f"{split}.{pair}.{tgt_lang}{suffix}", tgt)


# --- pairs -----------------------------------------------------------------------------------


def test_parse_pairs_accepts_string_and_list():
    assert parse_pairs("de-en, en-de") == [Pair("de", "en"), Pair("en", "de")]
    assert parse_pairs(["fr-en"]) == [Pair("fr", "en")]
    assert Pair("de", "en").name == "de-en"


BAD_PAIRS = [
    ("de-en,deen", "deen"),
    ("de-en,de-", "de-"),
    ("de-en,de-de", "de-de"),
    ("de-en,fr-en,de-en", "de-en"),
    ("de-en,,fr-en", "''"),
]


@pytest.mark.parametrize("spec, bad", BAD_PAIRS)
def test_parse_pairs_rejects_bad_items(spec, bad):
    with pytest.raises(DataError, match=bad):
        parse_pairs(spec)


# --- read_lines ------------------------------------------------------------------------------


def test_gzip_and_plain_read_the_same(tmp_path):
    text = "Ein Mann.\r\nZwei Hunde\u2028im Park\x0c.\n\n  spaces kept  \nno newline at end"
    plain = read_lines(write(tmp_path / "a.txt", text))
    gz = read_lines(write(tmp_path / "a.txt.gz", text))
    assert plain == gz == [
        "Ein Mann.", "Zwei Hunde\u2028im Park\x0c.", "", "  spaces kept  ", "no newline at end"
    ]


def test_read_lines_reports_bad_utf8_with_line(tmp_path):
    path = write(tmp_path / "bad.de", b"gut\nauch gut\nschlecht \xe4\n")
    with pytest.raises(DataError, match=r"bad\.de:3: invalid UTF-8"):
        read_lines(path)
    gz = write(tmp_path / "bad.de.gz", b"ok\n\xff\n")
    with pytest.raises(DataError, match=r"bad\.de\.gz:2:"):
        read_lines(gz)


def test_read_lines_reports_broken_gzip_and_missing_file(tmp_path):
    broken = tmp_path / "x.en.gz"
    broken.write_bytes(gzip.compress(b"hello\n" * 100)[:30])
    with pytest.raises(DataError, match=r"x\.en\.gz"):
        read_lines(broken)
    with pytest.raises(DataError, match=r"nothere\.en: file not found"):
        read_lines(tmp_path / "nothere.en")


# --- read_parallel ---------------------------------------------------------------------------


def test_read_parallel_reads_plain_and_gzip_pairs(tmp_path):
    write_pair(tmp_path, "train", "de-en", "Hallo\nWelt\n", "Hello\nWorld\n")
    write_pair(tmp_path, "train", "en-de", "Hello\nWorld\n", "Hallo\nWelt\n", gz=True)
    texts = read_parallel(tmp_path, "train", "de-en,en-de")
    assert list(texts) == ["de-en", "en-de"]
    assert texts["de-en"].src == texts["en-de"].tgt == ["Hallo", "Welt"]
    assert texts["en-de"].src_path.endswith("train.en-de.en.gz")
    assert texts["de-en"].line_numbers == [1, 2]
    assert texts["de-en"].stats == {"lines": 2, "dropped_empty": 0, "cleaned_control": 0, "kept": 2}


def test_mismatched_line_counts_name_both_files_and_counts(tmp_path):
    write_pair(tmp_path, "train", "de-en", "a\nb\nc\n", "a\nb\n")
    with pytest.raises(DataError) as err:
        read_parallel(tmp_path, "train", "de-en")
    message = str(err.value)
    assert "train.de-en.de has 3 lines" in message and "train.de-en.en has 2" in message


def test_empty_file_is_an_error(tmp_path):
    write_pair(tmp_path, "valid", "de-en", "", "")
    with pytest.raises(DataError, match=r"valid\.de-en\.de: the file is empty"):
        read_parallel(tmp_path, "valid", "de-en")


def test_empty_line_fails_with_file_and_line(tmp_path):
    write_pair(tmp_path, "train", "de-en", "a\nb\nc\n", "a\n \t \nc\n")
    with pytest.raises(DataError, match=r"train\.de-en\.en:2: empty line"):
        read_parallel(tmp_path, "train", "de-en")


def test_empty_lines_are_dropped_and_counted(tmp_path):
    write_pair(tmp_path, "train", "de-en", "a\n\nc\nd\n\u3000\nf\n", "A\nB\n\nD\nE\nF\n")
    text = read_parallel(tmp_path, "train", "de-en", empty_lines="drop")["de-en"]
    assert (text.src, text.tgt, text.line_numbers) == (["a", "d", "f"], ["A", "D", "F"], [1, 4, 6])
    assert text.stats == {"lines": 6, "dropped_empty": 3, "cleaned_control": 0, "kept": 3}


def test_control_characters_become_spaces_and_are_counted(tmp_path):
    write_pair(tmp_path, "train", "de-en", "a\tb\nc\x00d\ne\n", "A\nB\rB\nE\n")
    text = read_parallel(tmp_path, "train", "de-en")["de-en"]
    assert text.src == ["a b", "c d", "e"] and text.tgt == ["A", "B B", "E"]
    assert text.stats["cleaned_control"] == 2


def test_missing_split_names_expected_path_and_split(tmp_path):
    write_pair(tmp_path, "train", "de-en", "a\n", "A\n")
    write(tmp_path / "valid.de-en.de", "a\n")
    with pytest.raises(DataError, match=r"split 'valid'.*valid\.de-en\.en"):
        read_parallel(tmp_path, "valid", "de-en")
    with pytest.raises(DataError, match=r"data directory .*nowhere"):
        find_split_files(tmp_path / "nowhere", "train", Pair("de", "en"))


def test_pair_without_files_is_named(tmp_path):
    write_pair(tmp_path, "train", "de-en", "a\n", "A\n")
    with pytest.raises(DataError, match=r"pair fr-en is in --pairs but has no files.*train\.fr-en"):
        read_parallel(tmp_path, "train", "de-en,fr-en")


def test_plain_and_gzip_side_by_side_is_ambiguous(tmp_path):
    write_pair(tmp_path, "train", "de-en", "a\n", "A\n")
    write_pair(tmp_path, "train", "de-en", "a\n", "A\n", gz=True)
    with pytest.raises(DataError, match=r"keep only one"):
        read_parallel(tmp_path, "train", "de-en")


# --- multi-way -------------------------------------------------------------------------------


def make_multiway(root: Path, lines: dict[str, list[str]], split: str = "train") -> Path:
    root.mkdir(exist_ok=True)
    for lang, text in lines.items():
        write(root / f"{split}.{lang}.gz", "".join(line + "\n" for line in text))
    return root


def test_build_from_multiway_writes_every_pair_and_is_idempotent(tmp_path):
    corpus = {
        "en": ["one", "two", "three"],
        "de": ["eins", "zwei", "drei"],
        "fr": ["un", "deux", "trois"],
    }
    src = make_multiway(tmp_path / "mw", corpus)
    splits, limits = {"train": "train", "valid": "train"}, {"valid": 2}
    out = build_from_multiway(src, tmp_path / "out", "de-en,en-fr", splits, max_lines=limits)
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        f"{split}.{pair}.{lang}"
        for split in splits
        for pair in ("de-en", "en-fr")
        for lang in sorted(pair.split("-"))
    ]
    assert read_lines(out / "train.en-fr.fr") == ["un", "deux", "trois"]
    assert read_lines(out / "valid.de-en.de") == ["eins", "zwei"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    build_from_multiway(src, out, "de-en,en-fr", splits, max_lines=limits)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert read_parallel(out, "train", "de-en,en-fr")["en-fr"].tgt == ["un", "deux", "trois"]


def test_build_from_multiway_rejects_misaligned_languages(tmp_path):
    src = make_multiway(tmp_path, {"en": ["a", "b"], "de": ["a"]})
    with pytest.raises(DataError, match=r"not line-aligned") as err:
        build_from_multiway(src, tmp_path / "out", "de-en", {"train": "train"})
    assert "train.en.gz has 2" in str(err.value) and "train.de.gz has 1" in str(err.value)
    with pytest.raises(DataError, match=r"train\.cs\.gz"):
        build_from_multiway(src, tmp_path / "out", "cs-en", {"train": "train"})


def test_embedded_multi30k_builds_and_validates(tmp_path):
    out = build_from_multiway(multi30k_dir(), tmp_path, "de-en,en-fr,cs-en", MULTI30K_SPLITS)
    counts = {"train": 29000, "valid": 1014, "test": 1000}
    for split, count in counts.items():
        texts = read_parallel(out, split, "de-en,en-fr,cs-en")
        assert all(len(text) == count for text in texts.values())
    train = read_parallel(out, "train", "de-en")["de-en"]
    assert train.stats["cleaned_control"] == 1  # one German line has a tab
    assert train.src[0] == read_lines(multi30k_dir() / "train.de.gz")[0]


# --- NTREX -----------------------------------------------------------------------------------


def make_ntrex(root: Path, docs: list[str]) -> Path:
    root.mkdir()
    write(root / "DOCUMENT_IDS.tsv", "".join(f"{doc}\n" for doc in docs))
    write(root / "newstest2019-src.eng.txt", "".join(f"en {i} {d}\n" for i, d in enumerate(docs)))
    write(root / "newstest2019-ref.deu.txt", "".join(f"de {i} {d}\n" for i, d in enumerate(docs)))
    return root


def test_ntrex_split_is_by_document_and_reproducible(tmp_path):
    docs = [f"doc{d}" for d in range(20) for _ in range(d % 3 + 1)]
    ntrex = make_ntrex(tmp_path / "ntrex", docs)
    out = build_from_ntrex(ntrex, tmp_path / "a", "en-de,de-en")
    seen: dict[str, str] = {}
    for split in ("train", "valid", "test"):
        texts = read_parallel(out, split, "en-de,de-en")
        assert texts["en-de"].src == texts["de-en"].tgt
        for line in texts["en-de"].src:
            doc = line.split()[-1]
            assert seen.setdefault(doc, split) == split, f"{doc} is in two splits"
    assert [seen[f"doc{d}"] for d in range(20)] == ["train"] * 16 + ["valid"] * 2 + ["test"] * 2
    again = build_from_ntrex(ntrex, tmp_path / "b", "en-de,de-en")
    for path in out.iterdir():
        assert path.read_bytes() == (again / path.name).read_bytes()


def test_ntrex_errors(tmp_path):
    ntrex = make_ntrex(tmp_path / "ntrex", ["d1", "d2", "d3"])
    with pytest.raises(DataError, match=r"unknown language code 'xx'.*de=deu"):
        build_from_ntrex(ntrex, tmp_path / "out", "en-xx")
    with pytest.raises(DataError, match=r"split 'valid' gets no document"):
        build_from_ntrex(ntrex, tmp_path / "out", "en-de", fractions=(0.9, 0.05, 0.05))
    with pytest.raises(ConfigError):
        ntrex_document_splits(["a"], (0.5, 0.5, 0.5))
    (ntrex / "DOCUMENT_IDS.tsv").write_text("d1\nd2\n")
    with pytest.raises(DataError, match=r"DOCUMENT_IDS\.tsv has 2"):
        build_from_ntrex(ntrex, tmp_path / "out", "en-de")


@pytest.mark.skipif(not NTREX_DIR.is_dir(), reason="NTREX-128 is not on this machine")
def test_real_ntrex_split_by_document(tmp_path):
    out = build_from_ntrex(NTREX_DIR, tmp_path, "en-it,ro-en")
    docs = [line.split("\t")[0] for line in read_lines(NTREX_DIR / "DOCUMENT_IDS.tsv")]
    english = read_lines(NTREX_DIR / "newstest2019-src.eng.txt")
    splits = ntrex_document_splits(docs)
    for split in ("train", "valid", "test"):
        expected = [line for line, s in zip(english, splits) if s == split]
        assert read_lines(out / f"{split}.en-it.en") == expected
        assert read_lines(out / f"{split}.ro-en.en") == expected
    docs_of = {s: {d for d, t in zip(docs, splits) if t == s} for s in ("train", "valid", "test")}
    assert sum(map(len, docs_of.values())) == len(set(docs)) == 110  # no document in two splits
    assert len(docs_of["train"]) == 88 and len(docs_of["valid"]) == 11
