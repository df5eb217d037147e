"""Per-pair gradient agreement (``analysis/gradients.py``): the gradients are the NLL's from the full
logits, the cosines and the noise correction behave as their formulas on hand-made vectors, and the
general/specific groups take exactly their neurons' kernel columns and bias entries."""

from __future__ import annotations

from functools import partial

import jax
import numpy as np
import pytest
from conftest import FAST_COMPILE, NUM_PAIRS, summed_loss

from jax_namnmt.analysis import gradients
from jax_namnmt.method.masks import flatten


@partial(jax.jit, static_argnames=("config",), compiler_options=FAST_COMPILE)
def reference_grad(params, batch, *, config):
    """The gradient of the summed NLL through the model's full logits."""
    return jax.grad(lambda p: summed_loss(p, batch, None, config, label_smoothing=0.0))(params)


def test_pair_gradients_are_the_nll_gradient_per_token(tiny_config, tiny_params, pack, example):
    rng = np.random.default_rng(0)
    batches = [pack([[example(rng, 4, 5, 0), example(rng, 3, 4, 0)], [example(rng, 6, 3, 0)], [example(rng, 2, 6, 0)]],
                     16, 16) for _ in range(2)]
    got = gradients.pair_gradients(tiny_params, batches, tiny_config)
    tokens = sum(int((b["tgt_segments"] > 0).sum()) for b in batches)
    ref = [flatten(jax.device_get(reference_grad(tiny_params, b, config=tiny_config))) for b in batches]
    assert set(got) == set(ref[0])
    for path, value in got.items():
        np.testing.assert_allclose(value, (ref[0][path] + ref[1][path]) / tokens, rtol=2e-4, atol=1e-7)


def _basis(n: int, i: int) -> np.ndarray:
    v = np.zeros(n)
    v[i] = 1.0
    return v


def test_agreement_formulas_on_orthogonal_vectors():
    # pair p's halves: s_p * u + (its own noise), noise orthogonal to u and to every other noise:
    # self = 1/2, cross(0, 1) = 1/2 -> corrected 1; pair 2 points the other way -> corrected -1
    D = 10
    u = _basis(D, 0)
    signs = (1, 1, -1)
    halves = [({"w": s * u + _basis(D, 1 + 2 * p)}, {"w": s * u + _basis(D, 2 + 2 * p)}) for p, s in enumerate(signs)]
    r = gradients.agreement(halves)["all"]
    np.testing.assert_allclose(r["self"], [0.5] * 3)
    np.testing.assert_allclose(r["cross"][0, 1], 0.5)
    np.testing.assert_allclose(r["corrected"][0, 1], 1.0)
    np.testing.assert_allclose(r["corrected"][0, 2], -1.0)
    np.testing.assert_allclose(r["corrected"][1, 2], -1.0)
    assert np.isnan(np.diag(r["corrected"])).all()
    s = gradients.summary({"all": r})["all"]
    assert s["negative"] == 4 and s["corrected_min"] == pytest.approx(-1.0)
    assert s["corrected_mean"] == pytest.approx(-1 / 3)


def test_groups_take_their_neurons_columns(tiny_config):
    rng = np.random.default_rng(1)
    from jax_namnmt.method.masks import module_sizes
    from jax_namnmt.model.transformer import init_params

    params = flatten(jax.device_get(init_params(tiny_config)))
    masks = {name: rng.random((NUM_PAIRS, n)) < 0.8 for name, n in module_sizes(tiny_config).items()}
    grads = [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(2)]
    result = gradients.agreement([(grads[0], grads[1])], masks)
    assert result["general"]["size"] + result["specific"]["size"] + result["other"]["size"] == result["all"]["size"]
    # by hand: one module's general columns
    name = "decoder_layer_0/ffn/fc1"
    general = masks[name].all(axis=0)
    sel = gradients.group_selectors({k: v.shape for k, v in params.items()}, masks)
    picked = [g[f"{name}/dense/kernel"][sel["general"][f"{name}/dense/kernel"]] for g in grads]
    np.testing.assert_array_equal(picked[0], grads[0][f"{name}/dense/kernel"][:, general].ravel())
    assert "embed/embedding" in sel["other"] and f"{name}/dense/bias" not in sel["other"]
    by_hand = []
    for g in grads:
        parts = []
        for m in sorted(masks):
            keep = masks[m].all(axis=0)
            parts += [g[f"{m}/dense/bias"][keep], g[f"{m}/dense/kernel"][:, keep].ravel()]
        by_hand.append(np.concatenate(parts))
    cos = by_hand[0] @ by_hand[1] / np.linalg.norm(by_hand[0]) / np.linalg.norm(by_hand[1])
    np.testing.assert_allclose(result["general"]["self"][0], cos, rtol=1e-10)
    with pytest.raises(ValueError, match="output features"):
        gradients.group_selectors({k: v.shape for k, v in params.items()},
                                  {name: np.ones((NUM_PAIRS, 3), bool)})
