"""Corpus-level BLEU and chrF with sacreBLEU, per-pair scoring and fixed-width tables.

BLEU is case-sensitive with sacreBLEU's ``13a`` tokenizer by default (the paper's setting);
chrF uses sacreBLEU's defaults. Hypotheses and references are detokenized plain strings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sacrebleu.metrics import BLEU, CHRF


def _metrics(tokenize: str) -> tuple[BLEU, CHRF]:
    return BLEU(tokenize=tokenize), CHRF()


def _check(hyps: Sequence[str], refs: Sequence[str], what: str = "") -> None:
    where = f" for {what}" if what else ""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references{where}")
    if not hyps:
        raise ValueError(f"no sentences to score{where}")


def score_corpus(hyps: Sequence[str], refs: Sequence[str], tokenize: str = "13a") -> dict:
    """Corpus BLEU and chrF of ``hyps`` against one reference each: ``{"bleu", "chrf"}``."""
    _check(hyps, refs)
    bleu, chrf = _metrics(tokenize)
    hyps, refs = list(hyps), [list(refs)]
    return dict(
        bleu=float(bleu.corpus_score(hyps, refs).score),
        chrf=float(chrf.corpus_score(hyps, refs).score),
    )


def score_by_pair(
    outputs: Mapping[str, tuple[Sequence[str], Sequence[str]]], tokenize: str = "13a"
) -> dict:
    """Score each pair's ``(hyps, refs)``.

    Returns ``{pair: {"bleu", "chrf", "lines"}, ..., "avg": {"bleu", "chrf"},
    "signature": {"bleu": str, "chrf": str}}``; ``avg`` is the unweighted mean over pairs and
    the signatures are sacreBLEU's own.
    """
    if not outputs:
        raise ValueError("no pairs to score")
    bleu, chrf = _metrics(tokenize)
    result: dict = {}
    for pair, (hyps, refs) in outputs.items():
        if pair in ("avg", "signature"):
            raise ValueError(f"pair name {pair!r} is reserved")
        _check(hyps, refs, pair)
        hyps, refs = list(hyps), [list(refs)]
        result[pair] = dict(
            bleu=float(bleu.corpus_score(hyps, refs).score),
            chrf=float(chrf.corpus_score(hyps, refs).score),
            lines=len(hyps),
        )
    pairs = list(outputs)
    result["avg"] = {
        m: sum(result[p][m] for p in pairs) / len(pairs) for m in ("bleu", "chrf")
    }
    result["signature"] = dict(bleu=str(bleu.get_signature()), chrf=str(chrf.get_signature()))
    return result


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def format_table(
    rows: Mapping[str, Mapping[str, object]], pairs: Sequence[str], title: str = ""
) -> str:
    """Fixed-width table: one row per system, columns = ``pairs``, ``avg`` (computed as the
    mean of the pair columns when a row lacks it), then any extra keys found in the rows
    (e.g. ``params``, ``delta``) in order of first appearance. Missing cells print ``-``;
    floats print with 2 decimals.
    """
    pairs = list(pairs)
    extra: list[str] = []
    for values in rows.values():
        for key in values:
            if key not in pairs and key != "avg" and key not in extra:
                extra.append(key)
    columns = pairs + ["avg"] + extra

    table = []
    for system, values in rows.items():
        values = dict(values)
        if "avg" not in values and pairs and all(
            isinstance(values.get(p), (int, float)) for p in pairs
        ):
            values["avg"] = sum(float(values[p]) for p in pairs) / len(pairs)
        table.append([str(system)] + [_cell(values.get(c)) for c in columns])

    header = ["system"] + columns
    widths = [max(len(r[i]) for r in [header] + table) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells)

    lines = [fmt(header), "-" * len(fmt(header))] + [fmt(r) for r in table]
    if title:
        lines.insert(0, title)
    return "\n".join(lines)
