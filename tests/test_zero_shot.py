"""Zero-shot directions: composed masks (by hand), the directions a model accepts, and decoding a
zero-shot direction in the same batch as trained pairs without changing the trained pairs' output."""

from pathlib import Path

import numpy as np
import pytest

from jax_namnmt import directions, workflow
from jax_namnmt.config import DecodeConfig, load_config
from jax_namnmt.data.vocab import EOS_ID
from jax_namnmt.decoding import translate_ids
from jax_namnmt.errors import DataError
from jax_namnmt.method.allocation import general_neurons
from jax_namnmt.method.masks import module_sizes
from jax_namnmt.method.zero_shot import compose_mask, extend_masks, languages, zero_shot_directions

M30K = ["de-en", "en-de", "fr-en", "en-fr", "cs-en", "en-cs", "de-fr", "fr-de"]
PAIRS = ["de-en", "en-de", "fr-en", "en-fr"]
ENC, DEC = "encoder_layer_0/ffn/fc1", "decoder_layer_0/cross_attn/k"


def test_zero_shot_directions():
    assert zero_shot_directions(M30K) == ["de-cs", "fr-cs", "cs-de", "cs-fr"]
    assert zero_shot_directions(["en-de", "en-fr", "en-cs"]) == []  # one-to-many: no other source is read
    assert zero_shot_directions(PAIRS) == ["de-fr", "fr-de"]
    assert languages(M30K) == ["de", "en", "fr", "cs"]


def test_compose_by_hand():
    # rows: de-en, en-de, fr-en, en-fr
    enc = np.array([[1, 1, 0, 0, 1], [1, 0, 1, 0, 1], [1, 0, 0, 1, 1], [1, 1, 1, 0, 0]], bool)
    dec = np.array([[1, 0, 1, 0], [1, 1, 0, 0], [1, 0, 0, 1], [1, 1, 1, 0]], bool)
    masks = {ENC: enc, DEC: dec}
    # de-fr: encoder from the pairs reading de (de-en), decoder from those writing fr (en-fr)
    union, notes = compose_mask(masks, PAIRS, "de-fr", "union")
    assert notes == []
    np.testing.assert_array_equal(union[ENC], enc[0])
    np.testing.assert_array_equal(union[DEC], dec[3])
    # fr-en: a trained pair, but composition is defined for any direction: encoder from fr-en,
    # decoder from de-en and fr-en
    inter, _ = compose_mask(masks, PAIRS, "fr-en", "intersection")
    np.testing.assert_array_equal(inter[DEC], dec[0] & dec[2])
    union, _ = compose_mask(masks, PAIRS, "fr-en", "union")
    np.testing.assert_array_equal(union[DEC], dec[0] | dec[2])
    general, _ = compose_mask(masks, PAIRS, "de-fr", "general")
    np.testing.assert_array_equal(general[ENC], general_neurons(enc))
    np.testing.assert_array_equal(general[DEC], [True, False, False, False])
    # no pair reads cs: the encoder falls back to the general neurons, and the note says so
    masks2 = {ENC: enc, DEC: dec}
    row, notes = compose_mask(masks2, PAIRS, "cs-en", "union")
    np.testing.assert_array_equal(row[ENC], general_neurons(enc))
    assert len(notes) == 1 and "cs" in notes[0] and "general" in notes[0]
    with pytest.raises(ValueError, match="union, intersection, general"):
        compose_mask(masks, PAIRS, "de-fr", "mean")


def test_extend_keeps_trained_rows():
    rng = np.random.default_rng(0)
    masks = {ENC: rng.random((4, 9)) > 0.3, DEC: rng.random((4, 7)) > 0.3}
    extended, pairs, _ = extend_masks(masks, PAIRS, ["de-fr", "fr-de"])
    assert pairs == PAIRS + ["de-fr", "fr-de"]
    for name in masks:
        assert extended[name].shape == (6, masks[name].shape[1])
        np.testing.assert_array_equal(extended[name][:4], masks[name])
        np.testing.assert_array_equal(extended[name][4], compose_mask(masks, PAIRS, "de-fr")[0][name])
    with pytest.raises(ValueError, match="trained pair"):
        extend_masks(masks, PAIRS, ["de-en"])


def test_directions_a_model_accepts():
    assert directions.check_direction(PAIRS, "de", "fr") == "de-fr"
    with pytest.raises(DataError, match=r"source language 'xx' is not one of the model's languages \(de, en, fr\)"):
        directions.check_direction(PAIRS, "xx", "en")
    with pytest.raises(DataError, match="target language 'cs'"):
        directions.check_direction(PAIRS, "de", "cs")
    with pytest.raises(DataError, match="both 'de'"):
        directions.check_direction(PAIRS, "de", "de")
    assert directions.parse_zero_shot("auto", PAIRS) == ["de-fr", "fr-de"]
    assert directions.parse_zero_shot("none", PAIRS) == []
    assert directions.parse_zero_shot("fr-de", PAIRS) == ["fr-de"]
    for bad, message in (("de-en", "trained pair"), ("de-xx", "'xx'"), ("defr", "SRC-TGT")):
        with pytest.raises(DataError, match=message):
            directions.parse_zero_shot(bad, PAIRS)


def _run(masks, how="union"):
    config = load_config("tiny", [f"method.zero_shot_masks={how}"])
    from tests.conftest import noisy_params

    return workflow.Run(Path("tiny-run"), config, None, noisy_params(config.model, seed=3), masks, 0)


def test_zero_shot_in_a_mixed_batch_leaves_trained_pairs_unchanged():
    config = load_config("tiny")
    rng = np.random.default_rng(1)
    masks = {name: rng.random((4, n)) > 0.4 for name, n in module_sizes(config.model).items()}
    run = _run(masks)
    sources = [rng.integers(8, config.model.vocab_size, size=int(n)).astype(np.int32) for n in (5, 9, 7, 4, 6, 8)]
    decode = DecodeConfig(beam_size=2, batch_sentences=8, max_len_b=5)
    trained = ["de-en", "en-fr", "fr-en", "de-en", "en-de", "fr-en"]
    alone = translate_ids(run.params, config.model, run.model_masks(), sources,
                          directions.pair_ids(directions.plan(run, trained), trained), decode, workers=1)
    mixed_dirs = trained[:3] + ["de-fr", "fr-de"] + trained[3:]
    plan = directions.plan(run, mixed_dirs)
    assert plan.zero_shot == ("de-fr", "fr-de") and len(plan.notes) == 2
    mixed_sources = sources[:3] + [sources[0], sources[1]] + sources[3:]
    mixed = translate_ids(run.params, config.model, plan.masks, mixed_sources, directions.pair_ids(plan, mixed_dirs),
                          decode, workers=1)
    for a, b in zip(alone, mixed[:3] + mixed[5:]):
        np.testing.assert_array_equal(np.trim_zeros(a, "b"), np.trim_zeros(b, "b"))
    # the zero-shot rows decode under their composed mask: the same tokens as a table that holds
    # only that row (in each of its 6 rows, and the source beside 7 empty ones: the mixed call's
    # shapes, so its compiled program runs it)
    table = {name: np.repeat(m[None], len(PAIRS) + len(plan.zero_shot), axis=0)
             for name, m in compose_mask(masks, PAIRS, "de-fr")[0].items()}
    from jax_namnmt.method.masks import to_model_masks

    empty = np.array([EOS_ID], np.int32)
    single = translate_ids(run.params, config.model, to_model_masks(table), [sources[0]] + [empty] * 7,
                           np.zeros(8, np.int32), decode, workers=1)
    # (outputs are padded to the batch's length limit: compare up to the padding)
    np.testing.assert_array_equal(np.trim_zeros(single[0], "b"), np.trim_zeros(mixed[3], "b"))


def test_plain_model_zero_shot_and_refusals():
    run = _run(None)
    plan = directions.plan(run, ["de-en", "de-fr"])
    assert plan.masks is None and plan.zero_shot == ("de-fr",)
    assert plan.pair_ids["de-fr"] == PAIRS.index("en-fr")  # a pair writing fr (+TS routes by target)
    with pytest.raises(DataError, match="'cs'.*de, en, fr"):
        directions.plan(run, ["de-cs"])
