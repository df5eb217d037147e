"""Input lines as the model can take them: control characters, sentences, length limits, and
output lines that stay one line each. Pure functions, no model.

A source line longer than the model was trained for (``data.max_len`` subword tokens, the
``<2xx>`` tag and EOS included) is split at sentence ends and the sentences translated in groups
that fit (``split``, the default), cut to its first tokens (``truncate``), or refused
(``error``). A sentence that alone is too long is cut, with a warning naming its line.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

LONG_LINE_POLICIES = ("split", "truncate", "error")

# A sentence ends at . ! ? … (or their full-width forms), optionally followed by closing quotes
# or brackets, before white space; or right after an ideographic full stop (no space follows in
# Chinese or Japanese text).
_SENTENCE_END = re.compile(r"[.!?…][\"'»”’)\]]*\s+|[。！？][\"'»”’)\]」』]*\s*")
# characters that some readers take as a line end (str.splitlines, editors, terminals): an output
# line holding one would shift every line after it
_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def clean_line(line: str) -> str:
    """``line`` with every control character (Unicode category Cc: tab, CR, NUL, escape, ...)
    replaced by a space, as ``prepare`` does to training text."""
    if line.isprintable():
        return line
    return "".join(" " if unicodedata.category(c) == "Cc" else c for c in line)


def one_line(text: str) -> str:
    """``text`` with every character that could end a line replaced by a space."""
    return _LINE_BREAKS.sub(" ", text)


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` (stripped, none empty); the text itself if it has no sentence end."""
    parts, start = [], 0
    for end in _SENTENCE_END.finditer(text):
        parts.append(text[start:end.end()].strip())
        start = end.end()
    parts.append(text[start:].strip())
    return [p for p in parts if p] or [text.strip()]


def pack(lengths: Sequence[int], limit: int) -> list[list[int]]:
    """Consecutive indices of ``lengths`` grouped so that each group's total is at most ``limit``
    (greedy, in order); an item longer than ``limit`` is a group of its own."""
    groups: list[list[int]] = []
    total = 0
    for i, n in enumerate(lengths):
        if groups and total + n <= limit:
            groups[-1].append(i)
            total += n
        else:
            groups.append([i])
            total = n
    return groups


@dataclass(frozen=True)
class Plan:
    """How one input line is translated: ``pieces`` (token ids, each at most the limit) whose
    translations are joined by a space; ``truncated`` counts the tokens cut; ``tokens`` is the
    line's length before any cut."""

    pieces: tuple[tuple[int, ...], ...]
    tokens: int
    truncated: int
    split: bool


def plan_line(sentence_ids: Sequence[Sequence[int]], limit: int, policy: str) -> Plan:
    """The plan for a line whose sentences encode to ``sentence_ids`` (``split_sentences`` order;
    for ``truncate`` and ``error`` one entry, the whole line) under a ``limit`` of source tokens.
    ``error`` never cuts: the caller refuses a plan whose ``tokens`` exceed the limit."""
    if policy not in LONG_LINE_POLICIES:
        raise ValueError(f"policy must be one of {LONG_LINE_POLICIES}, got {policy!r}")
    tokens = sum(len(s) for s in sentence_ids)
    if tokens <= limit or policy == "error":
        return Plan((tuple(i for s in sentence_ids for i in s),), tokens, 0, False)
    if policy == "truncate":
        whole = [i for s in sentence_ids for i in s]
        return Plan((tuple(whole[:limit]),), tokens, tokens - limit, False)
    pieces, cut = [], 0
    for group in pack([len(s) for s in sentence_ids], limit):
        ids = [i for k in group for i in sentence_ids[k]]
        cut += max(0, len(ids) - limit)
        pieces.append(tuple(ids[:limit]))
    return Plan(tuple(pieces), tokens, cut, len(pieces) > 1)
