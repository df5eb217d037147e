"""Neuron allocation on hand-made importance tables with hand-computed masks."""

import numpy as np
import pytest

from jax_namnmt.errors import CheckpointError, ConfigError
from jax_namnmt.method.allocation import (
    allocate,
    allocate_module,
    load_masks,
    save_masks,
    summarize,
    summary_rows,
)

# 3 pairs x 5 neurons. Mean importance I = [1.0, 0.3, 1.0, 0.2167, 0.4].
THETA = np.array(
    [
        [1.0, 0.0, 3.0, 0.25, 0.5],
        [1.0, 0.6, 0.0, 0.10, 0.3],
        [1.0, 0.3, 0.0, 0.30, 0.4],
    ]
)


def b(rows):
    return np.array(rows, dtype=bool)


def test_rho_picks_general_neurons():
    # round(0.6 * 5) = 3 general: neurons 0 and 2 (I = 1.0) and 4 (I = 0.4).
    # k = 1 then gives neuron 1 to pair 1 (0.6) and neuron 3 to pair 2 (0.3).
    expected = b([[1, 0, 1, 0, 1], [1, 1, 1, 0, 1], [1, 0, 1, 1, 1]])
    np.testing.assert_array_equal(allocate_module(THETA, 0.6, 1.0), expected)


def test_k_threshold():
    # k = 0.7: neuron 1 threshold 0.42 -> pair 1 only; neuron 3 threshold 0.21 -> pairs 0, 2.
    expected = b([[1, 0, 1, 1, 1], [1, 1, 1, 0, 1], [1, 0, 1, 1, 1]])
    np.testing.assert_array_equal(allocate_module(THETA, 0.6, 0.7), expected)


def test_k_zero_shares_every_specific_neuron_and_rho_one_is_all_ones():
    assert allocate_module(THETA, 0.6, 0.0).all()
    assert allocate_module(THETA, 1.0, 1.0).all()
    assert allocate_module(THETA, 1.0, 0.7).dtype == bool


def test_rho_zero_k_one_gives_argmax_and_ties():
    # Neuron 0 is tied across all pairs -> every pair; 2 and 4 -> pair 0; 1 -> pair 1; 3 -> pair 2.
    expected = b([[1, 0, 1, 0, 1], [1, 1, 0, 0, 0], [1, 0, 0, 1, 0]])
    np.testing.assert_array_equal(allocate_module(THETA, 0.0, 1.0), expected)


def test_general_ties_broken_by_lower_index():
    # round(0.2 * 5) = 1 general neuron: 0 and 2 tie on I = 1.0; neuron 0 wins.
    mask = allocate_module(THETA, 0.2, 1.0)
    np.testing.assert_array_equal(mask[1], [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(mask[0], [1, 0, 1, 0, 1])


def test_validation():
    with pytest.raises(ConfigError, match="rho"):
        allocate_module(THETA, 1.5, 0.7)
    with pytest.raises(ConfigError, match="k"):
        allocate_module(THETA, 0.9, -0.1)
    bad = THETA.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="encoder_layer_0/ffn/fc1"):
        allocate({"encoder_layer_0/ffn/fc1": bad}, ["a-b", "c-d", "e-f"], 0.9, 0.7)
    with pytest.raises(ValueError, match="negative"):
        allocate_module(-THETA, 0.9, 0.7)
    with pytest.raises(ValueError, match="shape"):
        allocate({"m": THETA}, ["a-b", "c-d"], 0.9, 0.7)


PAIRS = ["de-en", "en-de", "fr-en", "en-fr"]
# Two neurons, no general neurons (rho = 0), arg-max assignment (k = 1).
TABLE = np.array([[4.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 6.0]])
EXPECTED = {
    # per pair: neuron 0 -> de-en (4), neuron 1 -> en-fr (6)
    "pair": b([[1, 0], [0, 0], [0, 0], [0, 1]]),
    # sources de [4, 0], en [0, 4], fr [2, 0]: neuron 0 -> de, neuron 1 -> en
    "source": b([[1, 0], [0, 1], [0, 0], [0, 1]]),
    # targets en [3, 0], de [0, 2], fr [0, 6]: neuron 0 -> en, neuron 1 -> fr
    "target": b([[1, 0], [0, 0], [1, 0], [0, 1]]),
}


@pytest.mark.parametrize("variant", ["pair", "source", "target"])
def test_variants(variant):
    masks = allocate({"encoder_layer_0/ffn/fc1": TABLE}, PAIRS, 0.0, 1.0, variant=variant)
    np.testing.assert_array_equal(masks["encoder_layer_0/ffn/fc1"], EXPECTED[variant])


def test_separate_variant():
    table = {"encoder_layer_0/self_attn/q": TABLE, "decoder_layer_0/cross_attn/out": TABLE}
    masks = allocate(table, PAIRS, 0.0, 1.0, variant="separate")
    np.testing.assert_array_equal(masks["encoder_layer_0/self_attn/q"], EXPECTED["source"])
    np.testing.assert_array_equal(masks["decoder_layer_0/cross_attn/out"], EXPECTED["target"])
    with pytest.raises(ConfigError, match="embed"):
        allocate({"embed": TABLE}, PAIRS, 0.0, 1.0, variant="separate")


def test_unknown_variant():
    with pytest.raises(ConfigError, match=r"variant.*pair, source, target, separate"):
        allocate({"m": TABLE}, PAIRS, 0.9, 0.7, variant="language")


def _masks():
    return {
        "encoder_layer_0/ffn/fc1": allocate_module(THETA, 0.6, 1.0),  # per pair 3, 4, 4
        "decoder_layer_1/self_attn/v": allocate_module(THETA[:, :2], 0.5, 0.0),  # all ones
    }


def test_save_load_round_trip(tmp_path):
    path = tmp_path / "sub" / "masks.npz"
    masks, pairs = _masks(), ["de-en", "en-de", "fr-en"]
    save_masks(path, masks, pairs, {"rho": 0.6, "k": 1.0, "variant": "pair"})
    loaded, lpairs, meta = load_masks(
        path, expected={name: m.shape[1] for name, m in masks.items()}, num_pairs=3
    )
    assert lpairs == pairs and meta == {"rho": 0.6, "k": 1.0, "variant": "pair"}
    assert loaded.keys() == masks.keys()
    for name in masks:
        assert loaded[name].dtype == bool
        np.testing.assert_array_equal(loaded[name], masks[name])


def test_load_rejects_masks_that_do_not_fit(tmp_path):
    path = tmp_path / "masks.npz"
    save_masks(path, _masks(), ["de-en", "en-de", "fr-en"], {})
    expected = {"encoder_layer_0/ffn/fc1": 6, "decoder_layer_1/self_attn/v": 2}
    with pytest.raises(CheckpointError, match=r"encoder_layer_0/ffn/fc1.*\(3, 5\).*\(3, 6\)"):
        load_masks(path, expected=expected)
    with pytest.raises(CheckpointError, match="missing modules.*decoder_layer_2"):
        load_masks(path, expected={**expected, "decoder_layer_2/ffn/fc2": 4})
    with pytest.raises(CheckpointError, match="4"):
        load_masks(path, num_pairs=4)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_masks(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="junk.npz"):
        load_masks(tmp_path / "junk.npz")


def test_summary_counts():
    masks, pairs = _masks(), ["de-en", "en-de", "fr-en"]
    rows = summary_rows(masks, pairs)
    assert rows[0] == dict(
        module="encoder_layer_0/ffn/fc1", neurons=5, general=3, specific=2,
        pairs_per_specific=1.0, min_per_pair=3, max_per_pair=4,
    )
    assert rows[1] == dict(
        module="decoder_layer_1/self_attn/v", neurons=2, general=2, specific=0,
        pairs_per_specific=0.0, min_per_pair=2, max_per_pair=2,
    )
    # totals per pair: 3+2, 4+2, 4+2
    assert rows[2] == dict(
        module="total", neurons=7, general=5, specific=2,
        pairs_per_specific=1.0, min_per_pair=5, max_per_pair=6,
    )
    text = summarize(masks, pairs)
    lines = text.splitlines()
    assert "encoder_layer_0/ffn/fc1" in text and lines[-1].startswith("total")
    assert len({len(line) for line in lines}) == 1  # fixed width
