"""One naming: a mask's name is its projection's parameter path, and files written under the
old spelling (``encoder/layer_0/...``) still load under the new one."""

import json

import numpy as np
import pytest

from jax_namnmt import workflow
from jax_namnmt.config import ModelConfig
from jax_namnmt.method.allocation import load_masks, save_masks
from jax_namnmt.method.masks import canonical_name, module_sizes, nest, parse_name
from jax_namnmt.model.transformer import init_params

import jax


def test_every_mask_path_is_a_projection_path_in_the_parameter_tree():
    config = ModelConfig(vocab_size=40, d_model=8, num_heads=2, ffn_dim=16, enc_layers=2, dec_layers=1,
                         max_positions=16)
    params = jax.eval_shape(lambda: init_params(config, 0))
    masks = nest({name: np.ones((1, n)) for name, n in module_sizes(config).items()})

    def walk(mask_node, param_node, path):
        for key, value in mask_node.items():
            assert key in param_node, f"mask path {'/'.join(path + (key,))} is not a parameter path"
            if isinstance(value, dict):
                walk(value, param_node[key], path + (key,))
            else:  # a leaf: the projection whose output features it gates
                assert param_node[key]["dense"]["kernel"].shape[-1] == value.shape[-1]

    walk(masks, params, ())


@pytest.mark.parametrize("old, new", [
    ("encoder/layer_0/ffn/fc1", "encoder_layer_0/ffn/fc1"),
    ("decoder/layer_11/cross_attn/q", "decoder_layer_11/cross_attn/q"),
    ("decoder_layer_2/self_attn/out", "decoder_layer_2/self_attn/out"),  # already canonical
])
def test_canonical_name(old, new):
    assert canonical_name(old) == new
    assert canonical_name(new) == new
    assert parse_name(old) == parse_name(new)


def test_parse_name_parts_and_errors():
    part = parse_name("decoder_layer_3/cross_attn/k")
    assert (part.stack, part.layer, part.sublayer, part.projection) == ("decoder", 3, "cross_attn", "k")
    assert part.layer_path == "decoder_layer_3" and part.module == "cross_attn/k"
    for bad in ("encoder_layer_x/ffn/fc1", "middle_layer_0/ffn/fc1", "encoder_layer_0/mlp/fc1", "fc1"):
        with pytest.raises(ValueError, match="module name"):
            parse_name(bad)


def _legacy_npz(path, arrays: dict, key: str, meta) -> None:
    np.savez(path, **{key: np.asarray(json.dumps(meta))}, **arrays)


def test_masks_and_importance_written_under_the_old_names_load_under_the_new(tmp_path):
    config = ModelConfig(vocab_size=40, d_model=8, num_heads=2, ffn_dim=16, enc_layers=1, dec_layers=1,
                         max_positions=16)
    sizes = module_sizes(config)
    rng = np.random.default_rng(0)
    new = {name: rng.random((2, n)) for name, n in sizes.items()}
    old = {name.replace("encoder_layer_", "encoder/layer_").replace("decoder_layer_", "decoder/layer_"): value
           for name, value in new.items()}
    assert not set(old) & set(new)

    _legacy_npz(tmp_path / "importance.npz", old, "__pairs__", ["de-en", "en-de"])
    theta, pairs = workflow.load_importance(tmp_path / "importance.npz")
    assert pairs == ["de-en", "en-de"] and theta.keys() == new.keys()
    for name in new:
        np.testing.assert_array_equal(theta[name], new[name])

    save_masks(tmp_path / "new.npz", {n: v > 0.5 for n, v in new.items()}, ["de-en", "en-de"], {})
    save_masks(tmp_path / "old.npz", {n: v > 0.5 for n, v in old.items()}, ["de-en", "en-de"], {})
    loaded_new, _, _ = load_masks(tmp_path / "new.npz", expected=sizes, num_pairs=2)
    loaded_old, _, _ = load_masks(tmp_path / "old.npz", expected=sizes, num_pairs=2)  # fits the model
    assert loaded_old.keys() == loaded_new.keys() == sizes.keys()
    for name in sizes:
        np.testing.assert_array_equal(loaded_old[name], loaded_new[name])
