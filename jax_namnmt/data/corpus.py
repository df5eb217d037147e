"""Read and validate parallel corpora in the fairseq layout.

A data directory holds one file per split, direction and side::

    DIR/train.de-en.de   DIR/train.de-en.en   (each may also be gzipped: ``.de.gz``)
    DIR/valid.de-en.de   DIR/valid.de-en.en
    ...

Every problem with the files is reported as a :class:`DataError` that names the file (and the
1-based line where relevant) and says what to do about it.
"""

from __future__ import annotations

import gzip
import re
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jax_namnmt.errors import DataError

_LANG = r"[A-Za-z][A-Za-z0-9_]*"
_PAIR_RE = re.compile(rf"^({_LANG})-({_LANG})$")
EMPTY_LINE_POLICIES = ("fail", "drop")


@dataclass(frozen=True)
class Pair:
    """One translation direction, e.g. ``Pair("de", "en")`` for German to English."""

    src: str
    tgt: str

    @property
    def name(self) -> str:
        """The direction as written on the command line and in file names: ``"de-en"``."""
        return f"{self.src}-{self.tgt}"

    def __str__(self) -> str:
        return self.name


def parse_pairs(spec: str | Sequence[str] | Sequence[Pair]) -> list[Pair]:
    """Parse ``"de-en,en-de"`` (or a list of such items, or of :class:`Pair`) into pairs.

    Rejects malformed items, a pair whose two sides are the same language, and duplicates.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    pairs: list[Pair] = []
    for item in items:
        if isinstance(item, Pair):
            pair = item
        else:
            text = str(item).strip()
            match = _PAIR_RE.match(text)
            if match is None:
                raise DataError(
                    f"bad language pair {item!r} in --pairs {spec!r}: write each pair as "
                    "SRC-TGT with language codes of letters, digits or '_', separated by "
                    "commas, e.g. 'de-en,en-de'"
                )
            pair = Pair(match.group(1), match.group(2))
        if pair.src == pair.tgt:
            raise DataError(
                f"bad language pair {pair.name!r} in --pairs: source and target are the same "
                "language; remove it"
            )
        if pair in pairs:
            raise DataError(f"language pair {pair.name!r} is given twice in --pairs; remove one")
        pairs.append(pair)
    if not pairs:
        raise DataError("--pairs is empty: give at least one pair, e.g. 'de-en'")
    return pairs


def read_lines(path: str | Path) -> list[str]:
    """Read a plain or gzipped (``.gz`` suffix) UTF-8 text file as a list of lines.

    Only the line terminator (``\\n`` or ``\\r\\n``) is removed; nothing else is touched.
    Lines are split on ``\\n`` only (never on other Unicode line separators), so the line
    numbers in messages match those of ``sed -n Np`` and ``zcat | sed -n Np``.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path}: cannot read the file ({e}); if it is gzipped check that it is complete "
            "(gzip -t), otherwise remove the .gz suffix"
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path}:{line}: invalid UTF-8 byte 0x{data[e.start]:02x}; convert the file to "
            "UTF-8 (e.g. iconv -f LATIN1 -t UTF-8) or fix that line"
        ) from None
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the terminator of the last line, not an extra empty line
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def clean_control(line: str) -> tuple[str, bool]:
    """Replace tabs and other control characters (Unicode category Cc) by spaces.

    Returns the cleaned line and whether anything was replaced.
    """
    if line.isprintable():  # fast path: no control character at all
        return line, False
    chars = [" " if unicodedata.category(c) == "Cc" else c for c in line]
    cleaned = "".join(chars)
    return cleaned, cleaned != line


@dataclass
class ParallelText:
    """The kept examples of one direction of one split, with their origin.

    ``line_numbers[i]`` is the 1-based line of example ``i`` in both ``src_path`` and
    ``tgt_path``. ``stats`` counts what validation changed: ``lines`` read,
    ``dropped_empty`` examples, ``cleaned_control`` examples with control characters
    replaced by spaces, and ``kept`` examples.
    """

    pair: Pair
    src: list[str]
    tgt: list[str]
    src_path: str
    tgt_path: str
    line_numbers: list[int]
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.src)


def _expected_paths(data_dir: Path, split: str, pair: Pair, lang: str) -> tuple[Path, Path]:
    plain = data_dir / f"{split}.{pair.name}.{lang}"
    return plain, plain.with_name(plain.name + ".gz")


def _find_side(data_dir: Path, split: str, pair: Pair, lang: str) -> Path | None:
    plain, gz = _expected_paths(data_dir, split, pair, lang)
    if plain.is_file() and gz.is_file():
        raise DataError(
            f"both {plain} and {gz} exist for split '{split}'; keep only one of them"
        )
    if plain.is_file():
        return plain
    if gz.is_file():
        return gz
    return None


def find_split_files(data_dir: str | Path, split: str, pair: Pair) -> tuple[Path, Path]:
    """Return ``(src_path, tgt_path)`` of ``split`` for ``pair`` in the fairseq layout.

    Each side is ``DIR/{split}.{src}-{tgt}.{lang}`` or the same with ``.gz``.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(
            f"data directory {data_dir} does not exist (needed for split '{split}'); "
            "check --data"
        )
    found = [_find_side(data_dir, split, pair, lang) for lang in (pair.src, pair.tgt)]
    if all(path is None for path in found):
        plain_src = _expected_paths(data_dir, split, pair, pair.src)[0]
        plain_tgt = _expected_paths(data_dir, split, pair, pair.tgt)[0]
        raise DataError(
            f"pair {pair.name} is in --pairs but has no files for split '{split}': expected "
            f"{plain_src} and {plain_tgt} (or .gz); add them or remove {pair.name} from --pairs"
        )
    for lang, path in zip((pair.src, pair.tgt), found):
        if path is None:
            plain, gz = _expected_paths(data_dir, split, pair, lang)
            raise DataError(
                f"missing file for split '{split}' of pair {pair.name}: expected {plain} "
                f"or {gz}; add it (line-aligned with the other side)"
            )
    return found[0], found[1]  # type: ignore[return-value]


def _read_pair(
    data_dir: Path, split: str, pair: Pair, empty_lines: str
) -> ParallelText:
    src_path, tgt_path = find_split_files(data_dir, split, pair)
    src_lines, tgt_lines = read_lines(src_path), read_lines(tgt_path)
    for path, lines in ((src_path, src_lines), (tgt_path, tgt_lines)):
        if not lines:
            raise DataError(
                f"{path}: the file is empty (split '{split}' of pair {pair.name}); "
                "fill it or remove the pair from --pairs"
            )
    if len(src_lines) != len(tgt_lines):
        raise DataError(
            f"{src_path} has {len(src_lines)} lines but {tgt_path} has {len(tgt_lines)}: "
            "the two sides of a pair must be line-aligned; fix the files"
        )
    text = ParallelText(pair, [], [], str(src_path), str(tgt_path), [])
    dropped = cleaned_count = 0
    for number, (src, tgt) in enumerate(zip(src_lines, tgt_lines), start=1):
        src, src_changed = clean_control(src)
        tgt, tgt_changed = clean_control(tgt)
        empty = [path for path, line in ((src_path, src), (tgt_path, tgt)) if not line.strip()]
        if empty:
            if empty_lines == "fail":
                raise DataError(
                    f"{empty[0]}:{number}: empty line (split '{split}' of pair {pair.name}); "
                    "remove the line from both sides or use empty_lines='drop'"
                )
            dropped += 1
            continue
        cleaned_count += src_changed or tgt_changed
        text.src.append(src)
        text.tgt.append(tgt)
        text.line_numbers.append(number)
    text.stats = {
        "lines": len(src_lines),
        "dropped_empty": dropped,
        "cleaned_control": cleaned_count,
        "kept": len(text.src),
    }
    if not text.src:
        raise DataError(
            f"{src_path} and {tgt_path}: every line is empty on one side or the other; "
            "nothing is left to use"
        )
    return text


def read_parallel(
    data_dir: str | Path,
    split: str,
    pairs: str | Sequence[str] | Sequence[Pair],
    *,
    empty_lines: str = "fail",
) -> dict[str, ParallelText]:
    """Read and validate ``split`` of every pair; returns ``{pair.name: ParallelText}``.

    Checks that both files exist, are non-empty UTF-8 and have the same number of lines.
    An empty or whitespace-only line on either side fails (``empty_lines="fail"``) or drops
    the example (``"drop"``, counted in ``stats["dropped_empty"]``). Tabs and other control
    characters are replaced by spaces and counted in ``stats["cleaned_control"]``.
    """
    if empty_lines not in EMPTY_LINE_POLICIES:
        raise ValueError(f"empty_lines must be one of {EMPTY_LINE_POLICIES}, not {empty_lines!r}")
    data_dir = Path(data_dir)
    return {
        pair.name: _read_pair(data_dir, split, pair, empty_lines) for pair in parse_pairs(pairs)
    }
