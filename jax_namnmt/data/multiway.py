"""Build the fairseq layout (``DIR/{split}.{src}-{tgt}.{lang}``) from multi-way corpora.

A multi-way corpus has one file per language and split, all line-aligned, so any two
languages form a parallel pair. Two are supported: the embedded Multi30k task 1
(:func:`multi30k_dir`, :data:`MULTI30K_SPLITS`) and NTREX-128 (:func:`build_from_ntrex`),
which is split by document so that no document is in two splits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from jax_namnmt.data.corpus import Pair, parse_pairs, read_lines
from jax_namnmt.errors import ConfigError, DataError, atomic_write

MULTI30K_SPLITS: dict[str, str] = {"train": "train", "valid": "val", "test": "test_2016_flickr"}

NTREX_CODES: dict[str, str] = {
    "en": "eng",
    "de": "deu",
    "fr": "fra",
    "cs": "ces",
    "it": "ita",
    "ro": "ron",
    "nl": "nld",
    # One-to-many (Europarl-like) set.
    "fi": "fin",
    "el": "ell",
    "hu": "hun",
    "lt": "lit",
    "lv": "lav",
    "pl": "pol",
    "pt": "por",
    "sk": "slk",
    "sl": "slv",
    "sv": "swe",
    "es": "spa",
}
NTREX_SPLITS = ("train", "valid", "test")


def multi30k_dir() -> Path:
    """The directory of the embedded Multi30k corpus (``{split}.{lang}.gz``)."""
    return Path(__file__).resolve().parent.parent / "resources" / "multi30k"


def _languages(pairs: Sequence[Pair]) -> list[str]:
    return list(dict.fromkeys(lang for pair in pairs for lang in (pair.src, pair.tgt)))


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    """Write ``lines`` as UTF-8 text, atomically (a crash never leaves half a file; a failed write
    raises WriteError naming it)."""
    with atomic_write(path, "w", f"corpus file {path}", encoding="utf-8", newline="\n") as f:
        f.write("".join(line + "\n" for line in lines))


def write_split(
    out_dir: Path, split: str, pairs: Sequence[Pair], lines: Mapping[str, Sequence[str]]
) -> None:
    for pair in pairs:
        for lang in (pair.src, pair.tgt):
            _write_lines(out_dir / f"{split}.{pair.name}.{lang}", lines[lang])


def _check_aligned(split: str, files: Mapping[str, Path], lines: Mapping[str, list]) -> None:
    counts = {lang: len(lines[lang]) for lang in files}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{files[lang]} has {counts[lang]}" for lang in files)
        raise DataError(
            f"the languages of split '{split}' are not line-aligned: {listing} lines; "
            "a multi-way corpus needs the same number of lines in every language"
        )
    for lang, path in files.items():
        if counts[lang] == 0:
            raise DataError(f"{path}: the file is empty (split '{split}'); fill it")


def read_multiway_split(src_dir: Path, split: str, langs: Sequence[str],
                        pattern: str = "{split}.{lang}.gz") -> dict[str, list[str]]:
    """Each language's lines of ``split`` of a multi-way corpus (``src_dir/pattern``): a missing file
    is named, and the languages must be line-aligned."""
    files = {lang: Path(src_dir) / pattern.format(split=split, lang=lang) for lang in langs}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise DataError(
            f"split '{split}' of the multi-way corpus in {src_dir} lacks "
            f"{', '.join(missing)}; check the languages in --pairs and the corpus folder"
        )
    lines = {lang: read_lines(path) for lang, path in files.items()}
    _check_aligned(split, files, lines)
    return lines


def build_from_multiway(
    src_dir: str | Path,
    out_dir: str | Path,
    pairs: str | Sequence[str] | Sequence[Pair],
    splits: Mapping[str, str],
    pattern: str = "{split}.{lang}.gz",
    max_lines: Mapping[str, int] | None = None,
) -> Path:
    """Write the fairseq layout for ``pairs`` from a line-aligned multi-way corpus.

    ``splits`` maps each output split (``train``) to the input split name used in
    ``pattern`` (``train``); input files are ``src_dir/pattern.format(split=..., lang=...)``.
    ``max_lines`` optionally keeps only the first N lines of an output split.
    Rerunning with the same arguments rewrites the same files (idempotent).
    """
    pairs = parse_pairs(pairs)
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    max_lines = max_lines or {}
    for out_split, in_split in splits.items():
        lines = read_multiway_split(src_dir, in_split, _languages(pairs), pattern)
        if out_split in max_lines:
            lines = {lang: text[: max_lines[out_split]] for lang, text in lines.items()}
        write_split(out_dir, out_split, pairs, lines)
    return out_dir


def ntrex_file(ntrex_dir: str | Path, lang: str) -> Path:
    """The NTREX-128 file of ``lang`` (a short code like ``de`` or an NTREX code like ``deu``).

    English is the original source side, ``newstest2019-src.eng.txt``.
    NTREX codes with a script or region (``aze-Latn``, ``eng-GB``) are written with ``_`` in pairs
    (``en-aze_Latn``: a pair's ``-`` separates its two languages).
    """
    ntrex_dir = Path(ntrex_dir)
    code = NTREX_CODES.get(lang, lang).replace("_", "-")
    if code == "eng":
        return ntrex_dir / "newstest2019-src.eng.txt"
    path = ntrex_dir / f"newstest2019-ref.{code}.txt"
    if code not in NTREX_CODES.values() and not path.is_file():
        known = " ".join(f"{short}={long}" for short, long in NTREX_CODES.items())
        raise DataError(
            f"unknown language code '{lang}' for NTREX-128 (no file {path}); known codes: "
            f"{known}, or any code with a newstest2019-ref.CODE.txt file in {ntrex_dir} "
            "(written with '_' for '-': aze_Latn)"
        )
    return path


def ntrex_languages(ntrex_dir: str | Path) -> list[str]:
    """The target languages of an NTREX-128 folder, as pair codes (``-`` written ``_``), sorted:
    one per ``newstest2019-ref.CODE.txt`` file (English, the source, is ``en``; the second Spanish
    reference ``newstest2019-ref-2.spa.txt`` is not a language). 127 in the full corpus."""
    ntrex_dir = Path(ntrex_dir)
    codes = sorted(path.name[len("newstest2019-ref."):-len(".txt")].replace("-", "_")
                   for path in ntrex_dir.glob("newstest2019-ref.*.txt"))
    if not codes:
        raise DataError(f"{ntrex_dir}: no newstest2019-ref.CODE.txt files; is this the NTREX-128 folder?")
    return codes


def ntrex_document_splits(
    doc_ids: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1)
) -> list[str]:
    """Assign each line to ``train``/``valid``/``test`` by its document, never by line.

    Documents are taken in order of first appearance: the first ``fractions[0]`` of them
    (rounded) train, the next ``fractions[1]`` valid, the rest test. Deterministic.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(
            f"NTREX split fractions {tuple(fractions)} must be three non-negative numbers "
            "(train, valid, test) that sum to 1"
        )
    documents = list(dict.fromkeys(doc_ids))
    train_end = round(fractions[0] * len(documents))
    valid_end = round((fractions[0] + fractions[1]) * len(documents))
    split_of = {}
    for rank, doc in enumerate(documents):
        split_of[doc] = "train" if rank < train_end else "valid" if rank < valid_end else "test"
    return [split_of[doc] for doc in doc_ids]


def build_from_ntrex(
    ntrex_dir: str | Path,
    out_dir: str | Path,
    pairs: str | Sequence[str] | Sequence[Pair],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> Path:
    """Write the fairseq layout (``train``, ``valid``, ``test``) for ``pairs`` from NTREX-128.

    Languages are short codes (:data:`NTREX_CODES`) or NTREX codes; the output files use the
    codes as written in ``pairs``. The split is by document (``DOCUMENT_IDS.tsv``).
    """
    pairs = parse_pairs(pairs)
    ntrex_dir, out_dir = Path(ntrex_dir), Path(out_dir)
    files = {lang: ntrex_file(ntrex_dir, lang) for lang in _languages(pairs)}
    ids_path = ntrex_dir / "DOCUMENT_IDS.tsv"
    doc_ids = [line.split("\t")[0].strip() for line in read_lines(ids_path)]
    lines = {lang: read_lines(path) for lang, path in files.items()}
    _check_aligned(
        "newstest2019", {"document ids": ids_path, **files}, {"document ids": doc_ids, **lines}
    )
    for number, doc in enumerate(doc_ids, start=1):
        if not doc:
            raise DataError(f"{ids_path}:{number}: empty document id; fix the file")
    assignment = ntrex_document_splits(doc_ids, fractions)
    rows = {split: [i for i, s in enumerate(assignment) if s == split] for split in NTREX_SPLITS}
    for split, keep in rows.items():
        if not keep:
            raise DataError(
                f"{ids_path}: the NTREX split '{split}' gets no document with fractions "
                f"{tuple(fractions)}; give it a larger fraction"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, keep in rows.items():
        split_lines = {lang: [text[i] for i in keep] for lang, text in lines.items()}
        write_split(out_dir, split, pairs, split_lines)
    return out_dir
