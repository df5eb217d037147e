"""bfloat16 and int8 weights for decoding (``model/low_precision.py``): the conversion of a
parameter tree, the int8 matrices' dequantization, and the model's outputs with converted weights
against float32."""

from __future__ import annotations

import dataclasses
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import dot_equations, equations, forward_low_precision, low_precision_logits

from jax_namnmt.config import Config, DecodeConfig
from jax_namnmt.errors import ConfigError
from jax_namnmt.model.low_precision import (convert_params, dequantize, low_precision_products, params_weights,
                                            quantize_columns)
from jax_namnmt.model.transformer import Transformer


def test_quantize_columns_round_trip():
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((64, 9)).astype(np.float32) * np.linspace(0.01, 3.0, 9, dtype=np.float32)
    matrix[:, 4] = 0.0
    q, scale = quantize_columns(matrix)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (9,)
    assert scale[4] == 1.0 and not q[:, 4].any()  # an all-zero column stays zero
    for j in (0, 1, 2, 3, 5, 6, 7, 8):
        assert np.abs(q[:, j]).max() == 127  # each column's largest magnitude maps to 127
        np.testing.assert_allclose(scale[j], np.abs(matrix[:, j]).max() / 127, rtol=1e-6)
    error = np.abs(q * scale - matrix)
    assert (error <= scale / 2 * (1 + 1e-5)).all()  # rounded to the nearest step


def _tree():
    """A parameter tree with each kind of leaf: a plain projection, a +TS one (3-D kernel), an
    adapter's kernel (not a projection), layer norm, the embedding."""
    rng = np.random.default_rng(2)
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    return {
        "embed": {"embedding": f(11, 8)},
        "encoder_layer_0": {
            "self_attn": {"q": {"dense": {"kernel": f(8, 8), "bias": f(8)}}},
            "self_attn_res": {"norm": {"scale": f(8), "bias": f(8)}},
            "adapter": {"down": {"kernel": f(3, 8, 4), "bias": f(3, 4)}},
        },
        "decoder_layer_0": {"cross_attn": {"q": {"dense": {"kernel": f(2, 8, 8), "bias": f(2, 8)}}}},
    }


def _leaves(tree) -> dict:
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
def test_convert_params_changes_only_the_matrices(weights):
    params = _tree()
    converted = convert_params(params, weights)
    assert params_weights(params) == "float32" and params_weights(converted) == weights
    before, after = _leaves(params), _leaves(converted)
    kernel = "['encoder_layer_0']['self_attn']['q']['dense']['kernel']"
    embedding = "['embed']['embedding']"
    for name, leaf in before.items():
        if name in (kernel, embedding):
            continue
        assert after[name].dtype == np.float32, name  # biases, norms, +TS and adapter kernels unchanged
        np.testing.assert_array_equal(after[name], leaf, err_msg=name)
    if weights == "bfloat16":
        assert set(after) == set(before)
        for name in (kernel, embedding):
            assert after[name].dtype == jnp.bfloat16
            np.testing.assert_array_equal(np.asarray(after[name], np.float32),
                                          np.asarray(before[name].astype(jnp.bfloat16), np.float32))
    else:
        assert set(after) == set(before) | {kernel.replace("kernel", "kernel_scale"),
                                            embedding.replace("embedding", "embedding_scale")}
        q, scale = after[kernel], after[kernel.replace("kernel", "kernel_scale")]
        assert q.dtype == jnp.int8 and scale.shape == (8,)  # one scale per output feature (column)
        assert (np.abs(q * scale - before[kernel]) <= scale / 2 * (1 + 1e-5)).all()
        q, scale = after[embedding], after[embedding.replace("embedding", "embedding_scale")]
        assert q.dtype == jnp.int8 and scale.shape == (11,)  # one per vocabulary entry (row)
        assert (np.abs(q * scale[:, None] - before[embedding]) <= scale[:, None] / 2 * (1 + 1e-5)).all()
    assert convert_params(converted, weights) is converted  # converted once
    assert convert_params(params, "float32") is params
    other = "int8" if weights == "bfloat16" else "bfloat16"
    with pytest.raises(ConfigError, match=f"already {weights}"):
        convert_params(converted, other)


def test_weights_setting_is_checked():
    with pytest.raises(ConfigError, match="decode.weights"):
        convert_params(_tree(), "int4")
    with pytest.raises(ConfigError, match="decode.weights = 'int4'"):
        dataclasses.replace(Config(), decode=DecodeConfig(weights="int4")).validate()


def test_dequantize_gives_each_int8_matrix_times_its_scales_in_bfloat16():
    """The tree the search multiplies with: every int8 matrix times its per-output scales, rounded
    to bfloat16, its scales dropped, every other leaf as it is; bfloat16 and float32 trees pass."""
    params = _tree()
    q = convert_params(params, "int8")
    got, floats, quantized = _leaves(dequantize(q)), _leaves(params), _leaves(q)
    assert set(got) == set(floats)  # the scale leaves are gone, nothing else
    kernel = "['encoder_layer_0']['self_attn']['q']['dense']['kernel']"
    embedding = "['embed']['embedding']"
    for name, leaf in quantized.items():
        if name in (kernel, embedding):
            scale = quantized[name[:-2] + "_scale']"]
            scale = scale[:, None] if name == embedding else scale  # the embedding's outputs are its rows
            want = (np.asarray(leaf, np.float32) * np.asarray(scale)).astype(jnp.bfloat16)
            assert got[name].dtype == jnp.bfloat16
            np.testing.assert_array_equal(np.asarray(got[name], np.float32), np.asarray(want, np.float32))
            # within half an int8 step of the float32 matrix, plus bfloat16's rounding (2^-8 of |int8 * scale|)
            error = np.abs(np.asarray(got[name], np.float32) - floats[name])
            assert (error <= np.asarray(scale) * (0.5 + 2**-8 * 127) * (1 + 1e-5)).all(), name
        elif not name.endswith("_scale']"):
            assert got[name].dtype == np.float32
            np.testing.assert_array_equal(got[name], leaf, err_msg=name)
    for weights in ("float32", "bfloat16"):
        tree = convert_params(params, weights)
        assert dequantize(tree) is tree


def test_interceptor_refuses_int8_matrices(tiny_config, tiny_params, pack, example):
    """int8 parameters reach the model only dequantized: given to it as they are, it says so."""
    batch = pack([[example(np.random.default_rng(0), 4, 3, 0)]], 8, 8)
    with pytest.raises(ValueError, match="dequantize"):
        with nn.intercept_methods(low_precision_products):
            Transformer(tiny_config).apply({"params": convert_params(tiny_params, "int8")}, batch, None,
                                           deterministic=True)


@pytest.fixture(scope="module")
def forward_case(tiny_config, tiny_params, pack, example, make_masks):
    config = dataclasses.replace(tiny_config, dropout=0.0)
    rng = np.random.default_rng(3)
    batch = pack([[example(rng, 6, 5, p)] for p in range(3)], 16, 16)
    masks = make_masks(config, 3, seed=1)
    reference = np.asarray(forward_low_precision(tiny_params, batch, masks, config=config))
    return config, batch, masks, reference


def test_float32_parameters_pass_through_the_interceptor(forward_case, tiny_params, fns):
    config, batch, masks, reference = forward_case
    np.testing.assert_allclose(reference, np.asarray(fns.forward(tiny_params, batch, masks, config=config)),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("weights, dtype, tolerance", [("bfloat16", jnp.bfloat16, 0.02), ("int8", jnp.bfloat16, 0.03)])
def test_model_with_low_precision_weights_is_close_to_float32(forward_case, tiny_params, weights, dtype, tolerance):
    config, batch, masks, reference = forward_case
    params = convert_params(tiny_params, weights)
    logits = np.asarray(forward_low_precision(params, batch, masks, config=config))
    error = np.abs(logits - reference).max() / np.abs(reference).max()
    assert 0 < error < tolerance, error  # the products did change precision, and only by that much
    # every projection and the output layer multiply in the low precision
    jaxpr = jax.make_jaxpr(partial(low_precision_logits, config=config))(params, batch, masks)
    dots = dot_equations(jaxpr.jaxpr)
    low = [eqn for eqn in dots if all(v.aval.dtype == dtype for v in eqn.invars)]
    projections = 4 * 3 + 2 * 2 + 1  # q/k/v/out of 3 attentions, fc1/fc2 of 2 FFNs, the output layer
    assert len(low) == projections, [tuple(v.aval.dtype for v in eqn.invars) for eqn in dots]
    if weights == "int8":  # their matrices are the int8 ones (the embedding serves two), dequantized
        converts = [eqn for eqn in equations(jaxpr.jaxpr, "convert_element_type")
                    if eqn.invars[0].aval.dtype == jnp.int8]
        assert len(converts) == projections
