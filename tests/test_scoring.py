"""Forced decoding (``jax_namnmt/scoring.py``, ``python -m jax_namnmt.score``): a target's score is
the sum of its tokens' log-probabilities under its pair's masks, the same as from the model's full
logits, whatever the batch; its sum over a corpus is the training loss's NLL; the shipped model
prefers a sentence's reference to another sentence's; bad input names its file and line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import NUM_PAIRS

from jax_namnmt import inference, packaged, score, scoring, translate
from jax_namnmt.data.corpus import read_lines
from jax_namnmt.data.multiway import multi30k_dir
from jax_namnmt.errors import ConfigError, DataError
from jax_namnmt.model.transformer import Transformer
from jax_namnmt.training.step import batch_loss

REPO = Path(__file__).resolve().parent.parent
SHIPPED = packaged.shipped_model_dir()


def examples(seed: int, n: int, vocab: int):
    """``n`` random examples of 1-12 tokens a side (a tag-like first source token, EOS last) and
    pairs cycling over ``NUM_PAIRS``."""
    rng = np.random.default_rng(seed)
    sources = [np.concatenate([rng.integers(4, vocab, rng.integers(1, 12)), [3]]).astype(np.int32) for _ in range(n)]
    targets = [np.concatenate([rng.integers(4, vocab, rng.integers(0, 11)), [3]]).astype(np.int32) for _ in range(n)]
    return sources, targets, np.arange(n, dtype=np.int32) % NUM_PAIRS


def reference_scores(fns, config, params, masks, sources, targets, pair_ids, pack) -> np.ndarray:
    """Each example's summed target log-probability from the model's full logits (log-softmax over
    the vocabulary), three examples a batch, one a row."""
    out = []
    for start in range(0, len(sources), 3):
        part = list(range(start, min(start + 3, len(sources))))
        rows = [[(sources[i], targets[i], int(pair_ids[i]))] for i in part]
        rows += [[(np.array([3]), np.array([3]), 0)]] * (3 - len(part))
        batch = pack(rows, 16, 16)
        logp = np.asarray(jax.nn.log_softmax(fns.forward(params, batch, masks, config=config), axis=-1))
        for r, i in enumerate(part):
            n = len(targets[i])
            out.append(logp[r, np.arange(n), targets[i]].sum())
    return np.array(out)


def test_scores_are_the_full_logits_log_probabilities(fns, tiny_config, tiny_params, make_masks, pack):
    masks = make_masks(tiny_config, NUM_PAIRS, seed=1)
    sources, targets, pairs = examples(0, 7, tiny_config.vocab_size)
    want = reference_scores(fns, tiny_config, tiny_params, masks, sources, targets, pairs, pack)
    for batch_sentences in (64, 3, 1):  # one batch, batches with an empty row, one sentence each
        got, tokens = scoring.score_ids(tiny_params, tiny_config, masks, sources, targets, pairs, batch_sentences)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
        assert tokens.tolist() == [len(t) for t in targets]
    assert (want < 0).all()


def test_each_pair_scores_under_its_own_mask(tiny_config, tiny_params, make_masks):
    masks = make_masks(tiny_config, NUM_PAIRS, seed=2)
    sources, targets, _ = examples(1, 4, tiny_config.vocab_size)
    per_pair = [scoring.score_ids(tiny_params, tiny_config, masks, sources, targets, np.full(4, p, np.int32))[0]
                for p in range(NUM_PAIRS)]
    assert not np.allclose(per_pair[0], per_pair[1])  # different masks, different scores
    mixed, _ = scoring.score_ids(tiny_params, tiny_config, masks, sources, targets, np.array([0, 1, 2, 1], np.int32))
    np.testing.assert_allclose(mixed, [per_pair[p][i] for i, p in enumerate((0, 1, 2, 1))], rtol=1e-5, atol=1e-5)
    ones = jax.tree_util.tree_map(np.ones_like, masks)
    plain, _ = scoring.score_ids(tiny_params, tiny_config, None, sources, targets, np.zeros(4, np.int32))
    unmasked, _ = scoring.score_ids(tiny_params, tiny_config, ones, sources, targets, np.zeros(4, np.int32))
    np.testing.assert_allclose(unmasked, plain, rtol=1e-6, atol=1e-6)


def test_summed_scores_are_the_training_nll(tiny_config, tiny_params, make_masks, pack):
    masks = make_masks(tiny_config, NUM_PAIRS, seed=3)
    sources, targets, pairs = examples(2, 6, tiny_config.vocab_size)
    rows = [[(sources[i], targets[i], int(pairs[i])) for i in (0, 1)], [(sources[i], targets[i], int(pairs[i]))
                                                                        for i in (2, 3)],
            [(sources[i], targets[i], int(pairs[i])) for i in (4, 5)]]
    batch = pack(rows, 32, 32)  # two examples a row: the packed training layout
    _, nll, count = jax.jit(lambda p, b, m: batch_loss(Transformer(tiny_config), p, b, m, 0.0, 0))(
        tiny_params, batch, masks)
    got, tokens = scoring.score_ids(tiny_params, tiny_config, masks, sources, targets, pairs)
    np.testing.assert_allclose(-got.sum(), float(nll), rtol=1e-5)
    assert tokens.sum() == int(count)


def test_batch_rows_layout():
    batch = scoring.batch_rows([np.array([9, 5, 3]), np.array([8, 3])], [np.array([6, 7, 3]), np.array([3])],
                               np.array([1, 0]), width_step=4, rows=3)
    assert batch["src_tokens"].tolist() == [[9, 5, 3, 0], [8, 3, 0, 0], [3, 0, 0, 0]]
    assert batch["tgt_labels"].tolist() == [[6, 7, 3, 0], [3, 0, 0, 0], [3, 0, 0, 0]]
    assert batch["tgt_inputs"].tolist() == [[2, 6, 7, 0], [2, 0, 0, 0], [2, 0, 0, 0]]  # BOS = 2, then shifted
    assert batch["tgt_segments"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0]]
    assert batch["src_pairs"][:, 0].tolist() == [1, 0, 0] and batch["tgt_positions"][0].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        scoring.batch_rows([np.array([3])] * 2, [np.array([3])] * 2, np.zeros(2), rows=1)


# -- the shipped model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    return inference.load_model(SHIPPED)


def multi30k(lang: str, n: int) -> list[str]:
    return read_lines(multi30k_dir() / f"val.{lang}.gz")[:n]


def test_shipped_model_prefers_the_reference(shipped):
    de, en = multi30k("de", 24), multi30k("en", 24)
    scorer = scoring.Scorer(shipped, "de", "en", "val.de", "val.en")
    right, right_tokens = scorer.score(de, en)
    wrong, wrong_tokens = scorer.score(de, en[1:] + en[:1])  # each source with the next line's reference
    right_mean, wrong_mean = right / right_tokens, wrong / wrong_tokens
    assert (right_mean > wrong_mean).all(), (right_mean, wrong_mean)
    assert -right.sum() / right_tokens.sum() < 1.5  # nats/token: the model's validation NLL is about 1.4


def test_bad_input_names_the_file_and_line(shipped):
    scorer = scoring.Scorer(shipped, "de", "en", "in.de", "in.en")
    with pytest.raises(DataError, match="in.de has 2 lines but in.en has 1"):
        scorer.score(["Ein Hund.", "Eine Katze."], ["A dog."])
    with pytest.raises(DataError, match=r"in\.en:2: empty line"):
        scorer.score(["Ein Hund.", "Eine Katze."], ["A dog.", "  "])
    with pytest.raises(DataError, match=r"in\.de:1: \d+ subword tokens, longer than"):
        scorer.score(["Hund " * 400], ["A dog."])
    with pytest.raises(DataError, match="'xx' is not one of the model's languages"):
        scoring.Scorer(shipped, "xx", "en")


def test_output_formats():
    log_prob, tokens = np.array([-3.0, -1.5]), np.array([6, 3])
    assert score.format_lines(log_prob, tokens, False, False) == ["-3.000000", "-1.500000"]
    assert score.format_lines(log_prob, tokens, True, False) == ["-0.500000", "-0.500000"]
    assert score.format_lines(log_prob, tokens, False, True)[1] == '{"line": 2, "log_prob": -1.5, "tokens": 3}'
    assert score.summary(log_prob, tokens).startswith("2 lines, 9 target tokens: 0.5000 nats/token")


@pytest.mark.slow
def test_score_command(tmp_path):
    src, tgt = tmp_path / "s.de", tmp_path / "t.en"
    src.write_text("Zwei Hunde spielen im Schnee.\nEin Mann fährt Fahrrad.\n", encoding="utf-8")
    tgt.write_text("Two dogs play in the snow.\nA man rides a bicycle.\n", encoding="utf-8")
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def door(*args):
        return subprocess.run([sys.executable, "-m", "jax_namnmt.score", "--src", "de", "--tgt", "en",
                               "--source", str(src), *map(str, args)], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)

    out = tmp_path / "scores.txt"
    proc = door("--target", tgt, "--output", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    sums = [float(x) for x in out.read_text().split()]
    want, _ = scoring.Scorer(inference.load_model(SHIPPED), "de", "en").score(
        read_lines(src), read_lines(tgt))
    np.testing.assert_allclose(sums, want, atol=1e-4)
    short = tmp_path / "short.en"
    short.write_text("Two dogs play in the snow.\n", encoding="utf-8")
    proc = door("--target", short)
    assert proc.returncode == 2 and f"error: {src} has 2 lines but {short} has 1" in proc.stderr, proc.stderr


# -- n-best lists and forced decoding agree ------------------------------------------------------


def test_nbest_log_probs_are_the_forced_scores(shipped):
    """Every hypothesis of ``translate --nbest``: its F0 (the search's log-probability) is what
    ``score`` gives it, its score that divided by the length penalty, best first; the first one
    is ``translate``'s output."""
    from jax_namnmt.model.beam_search import length_penalty_divisor

    lines = multi30k("de", 6) + [""]
    translator = inference.Translator(shipped, "de", "en")
    nbest = translator.translate_nbest(lines, 4)
    assert [entries[0].text for entries in nbest] == translator.translate(lines)
    assert nbest[-1] == [inference.Hypothesis("", 0.0, 0.0)]  # an empty line: one empty hypothesis
    scorer = scoring.Scorer(shipped, "de", "en")
    sources = [line for line, entries in zip(lines[:-1], nbest) for _ in entries]
    hyps = [h for entries in nbest[:-1] for h in entries]
    assert len(hyps) == 24
    forced, tokens = scorer.score(sources, [h.text for h in hyps])
    decode = shipped.config.decode
    for h, lp, n in zip(hyps, forced, tokens):
        assert abs(h.log_prob - lp) < 2e-3 * max(1.0, abs(lp)), (h, lp)
        want = h.log_prob / float(length_penalty_divisor(n, decode.length_penalty, decode.penalty_form))
        # n counts the re-encoded text's tokens, which may differ from the search's own pieces
        assert abs(h.score - want) < 0.05, (h, want)
    for entries in nbest[:-1]:
        assert [h.score for h in entries] == sorted((h.score for h in entries), reverse=True)


def test_nbest_output_lines():
    H = inference.Hypothesis
    lines = translate.nbest_lines([[H("A dog.", -1.5, -0.5), H("One dog.", -2.0, -0.6)], [H("", 0.0, 0.0)]], 10)
    assert lines == ["10 ||| A dog. ||| F0= -1.500000 ||| -0.500000", "10 ||| One dog. ||| F0= -2.000000 ||| -0.600000",
                     "11 |||  ||| F0= 0.000000 ||| 0.000000"]
    assert inference.hypothesis_length(np.array([7, 8, 3, 0, 0])) == 3  # EOS included
    assert inference.hypothesis_length(np.array([7, 8, 9])) == 3  # stopped at the limit, no EOS
    assert inference.hypothesis_length(np.array([0, 0])) == 0


def test_nbest_refuses_more_than_the_beam(shipped):
    with pytest.raises(ConfigError, match="--nbest must be between 1 and the beam size"):
        inference.Translator(shipped, "de", "en").translate_nbest(["Ein Hund."], shipped.config.decode.beam_size + 1)


@pytest.mark.slow
def test_translate_nbest_command(tmp_path):
    src = tmp_path / "s.de"
    src.write_text("Zwei Hunde spielen im Schnee.\nEin Mann fährt Fahrrad.\n", encoding="utf-8")

    def door(*args):
        return subprocess.run([sys.executable, "-m", "jax_namnmt.translate", "--src", "de", "--tgt", "en",
                               "--input", str(src), "--quiet", *map(str, args)], cwd=REPO, capture_output=True,
                              text=True, timeout=300, env=dict(os.environ, PYTHONUNBUFFERED="1"))

    proc = door("--nbest", 2)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(" ||| ") for line in proc.stdout.splitlines()]
    assert [r[0] for r in rows] == ["0", "0", "1", "1"] and all(r[2].startswith("F0= ") for r in rows)
    assert rows[0][1] == "Two dogs play in the snow." and float(rows[0][3]) >= float(rows[1][3])
    proc = door("--nbest", 2, "--output", tmp_path / "out.txt", "--resume")
    assert proc.returncode == 2 and "error: --nbest does not go with --resume" in proc.stderr, proc.stderr
