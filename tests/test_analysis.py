"""The analyses' math by hand: LScore/MScore of a hand-made mask set, and neuron erasure's
invariants (the doors are tested on a pipeline's work directory in test_systems_pipeline.py)."""

from __future__ import annotations

import numpy as np
import pytest

from jax_namnmt import analyze
from jax_namnmt.analysis.erasure import erase_general, erase_specific
from jax_namnmt.analysis.scores import lscore, mscore, scores_report
from jax_namnmt.errors import ConfigError

HAND = {
    # 3 pairs. fc1: neuron 0 general; 1, 2, 3 specific to pairs 0, 1, 2.
    "encoder_layer_0/ffn/fc1": np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]], bool),
    # q: neuron 1 general; neuron 0 specific, shared by pairs 0 and 1.
    "encoder_layer_0/self_attn/q": np.array([[1, 1], [1, 1], [0, 1]], bool),
    # every neuron general: a layer without specific neurons has no score
    "decoder_layer_0/cross_attn/k": np.ones((3, 2), bool),
}


def test_lscore_and_mscore_by_hand():
    layers, table = lscore(HAND)
    assert layers == ["encoder_layer_0", "decoder_layer_0"]
    # encoder layer 0: 4 specific neurons (3 in fc1, 1 in q); pair 0 holds 2, pair 1 holds 2, pair 2 holds 1
    np.testing.assert_allclose(table[0], [0.5, 0.5, 0.25])
    assert np.isnan(table[1]).all()
    m_layers, modules, m = mscore(HAND)
    assert m_layers == layers and modules == ["self_attn/q", "cross_attn/k", "ffn/fc1"]
    # q: mean(1, 1, 0) = 2/3; fc1: mean(1/3, 1/3, 1/3); the encoder has no cross-attention
    np.testing.assert_allclose(m[0], [2 / 3, np.nan, 1 / 3])
    assert np.isnan(m[1]).all()
    report = scores_report(HAND, ["a-b", "b-a", "a-c"])
    assert report["lscore"]["scores"][1] == [None, None, None]
    assert report["mscore"]["scores"][0] == [pytest.approx(2 / 3), None, pytest.approx(1 / 3)]


def random_masks(seed=0, pairs=4, neurons=200):
    rng = np.random.default_rng(seed)
    masks = {}
    for name in ("encoder_layer_0/ffn/fc1", "decoder_layer_1/self_attn/v"):
        mask = rng.random((pairs, neurons)) < 0.3
        mask[:, : neurons // 2] = True  # half the neurons general
        masks[name] = mask
    return masks


def test_erasing_general_neurons():
    masks = random_masks()
    erased, count = erase_general(masks, 0.2, seed=3)
    assert count == sum(round(0.2 * m.all(axis=0).sum()) for m in masks.values()) > 0
    for name, mask in masks.items():
        general = mask.all(axis=0)
        gone = mask.any(axis=0) & ~erased[name].any(axis=0)
        assert gone.sum() == round(0.2 * general.sum()) and general[gone].all()  # only general ones, whole columns
        np.testing.assert_array_equal(erased[name][:, ~gone], mask[:, ~gone])  # the rest untouched
    assert erase_general(masks, 0.2, seed=3)[0]["encoder_layer_0/ffn/fc1"].tolist() == \
        erased["encoder_layer_0/ffn/fc1"].tolist()  # seeded
    assert masks["encoder_layer_0/ffn/fc1"][:, :100].all()  # the input is not modified


def test_erasing_one_pairs_specific_neurons():
    masks = random_masks(seed=1)
    erased, count = erase_specific(masks, 2, 0.5, seed=0)
    for name, mask in masks.items():
        specific = mask[2] & ~mask.all(axis=0)
        gone = mask.any(axis=0) & ~erased[name].any(axis=0)
        assert gone.sum() == round(0.5 * specific.sum()) and specific[gone].all()
        np.testing.assert_array_equal(erased[name][:, ~gone], mask[:, ~gone])
        assert erased[name].all(axis=0).sum() == mask.all(axis=0).sum()  # general neurons all kept
    everything, _ = erase_specific(masks, 2, 1.0)
    for name, mask in everything.items():
        assert (mask[2] == mask.all(axis=0)).all()  # pair 2 is left with the general neurons only
    assert erase_specific(masks, 2, 0.0)[1] == 0
    with pytest.raises(ValueError, match="fraction must be in"):
        erase_general(masks, 1.5)


@pytest.mark.parametrize("flags, message", [(["--general", "1.5"], "--general 1.5: a share"),
                                            (["--specific", "-0.1"], "--specific -0.1: a share"),
                                            (["--seeds", "0"], "--seeds 0: at least 1")])
def test_erasure_flags_are_checked_first(tmp_path, flags, message):
    args = analyze.parse_args(["erasure", "--workdir", str(tmp_path), *flags])
    with pytest.raises(ConfigError, match=message):
        analyze.erasure_command(args)


@pytest.mark.parametrize("flags", [["--param", "beta"], ["--values", "0,x"], ["--values", "0.5,2"], ["--values", ""]])
def test_sweep_flags_are_checked_first(tmp_path, flags):
    with pytest.raises(ConfigError, match="k or rho, values in"):
        analyze.sweep(analyze.parse_args(["sweep", "--workdir", str(tmp_path), *flags]))
