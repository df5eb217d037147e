"""sacreBLEU wrappers and the BLEU table formatter."""

import pytest
import sacrebleu

from jax_namnmt.metrics import format_table, score_by_pair, score_corpus

REFS = ["The cat sat on the mat today .", "A dog is running in the park ."]
HYPS = ["The cat sat on a mat today .", "The dog runs in the park ."]


def test_perfect_hypothesis_scores_100():
    scores = score_corpus(REFS, REFS)
    assert scores["bleu"] == pytest.approx(100.0)
    assert scores["chrf"] == pytest.approx(100.0)


def test_matches_sacrebleu():
    scores = score_corpus(HYPS, REFS)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert 0 < scores["bleu"] < 100
    # case-sensitive
    assert score_corpus([h.upper() for h in REFS], REFS)["bleu"] < 10


def test_score_by_pair_average_and_signatures():
    result = score_by_pair({"de-en": (HYPS, REFS), "en-de": (REFS, REFS)})
    assert result["de-en"]["lines"] == 2
    assert result["en-de"]["bleu"] == pytest.approx(100.0)
    for m in ("bleu", "chrf"):
        assert result["avg"][m] == pytest.approx((result["de-en"][m] + result["en-de"][m]) / 2)
    assert result["signature"]["bleu"] == (
        f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}"
    )
    assert result["signature"]["chrf"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0")


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        score_corpus(HYPS, REFS[:1])
    with pytest.raises(ValueError, match="en-de"):
        score_by_pair({"de-en": (HYPS, REFS), "en-de": (HYPS[:1], REFS)})
    with pytest.raises(ValueError):
        score_corpus([], [])


def test_format_table():
    rows = {
        "Multilingual": {"de-en": 28.5, "en-de": 27.25, "params": "64.69M"},
        "Method-TE": {"de-en": 30.0, "en-de": 29.0, "avg": 29.5, "delta": 1.625},
    }
    text = format_table(rows, ["de-en", "en-de"], title="BLEU")
    lines = text.splitlines()
    assert lines[0] == "BLEU"
    assert lines[1].split() == ["system", "de-en", "en-de", "avg", "params", "delta"]
    assert lines[3].split() == ["Multilingual", "28.50", "27.25", "27.88", "64.69M", "-"]
    assert lines[4].split() == ["Method-TE", "30.00", "29.00", "29.50", "-", "1.62"]
    assert len({len(line) for line in lines[1:]}) == 1  # fixed width
