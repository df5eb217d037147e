"""The CPU compiler options of the training-shaped programs (``jax_namnmt/xla_options.py``):
when they apply, that they reach XLA, and that they change no value."""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np
import pytest
from conftest import NUM_PAIRS, TINY, noisy_params, random_example

from jax_namnmt.method.importance import batch_importance
from jax_namnmt.training.step import init_state, make_optimizer, make_train_step, schedule_args
from jax_namnmt.xla_options import CPU_TRAINING_OPTIONS, ENV, YNN_FUSION_TYPE, training_compiler_options


def test_options_apply_on_cpu_only_and_yield_to_the_user(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert training_compiler_options("cpu") == CPU_TRAINING_OPTIONS
    assert training_compiler_options("gpu") is None and training_compiler_options("tpu") is None
    monkeypatch.setenv(ENV, "0")
    assert training_compiler_options("cpu") is None
    monkeypatch.setenv(ENV, "1")
    monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=2 --{YNN_FUSION_TYPE}=DOT")
    assert training_compiler_options("cpu") is None


def _ynn_fusions_without_a_dot(hlo: str) -> int:
    """YNNPACK fusions in compiled HLO text whose computation holds no dot (elementwise/reduce)."""
    bodies = dict(re.findall(r"^%(\S+) .*?\{\n(.*?)\n\}", hlo, flags=re.S | re.M))
    called = re.findall(r"kind=kCustom, calls=%(\S+?),.*__ynn_fusion", hlo)
    return sum(" dot(" not in bodies.get(name, "") for name in called)


# d_model 64 and 32-token rows: XLA's default makes YNNPACK fusions of elementwise ops at these
# sizes (72 in this step), not at the tiny config's
WIDER = dataclasses.replace(TINY, d_model=64, ffn_dim=128, vocab_size=256)


def _batch(pack, seed=0):
    rng = np.random.default_rng(seed)
    vocab = WIDER.vocab_size
    rows = [[random_example(rng, 15, 14, r % NUM_PAIRS, vocab), random_example(rng, 16, 16, (r + 1) % NUM_PAIRS, vocab)]
            for r in range(4)]
    return pack(rows, 32, 32)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
def test_train_step_compiles_with_dot_only_ynnpack_fusions_and_the_same_values(monkeypatch, pack):
    batch = _batch(pack)
    params = noisy_params(WIDER, seed=0)
    key, schedule = jax.random.key(0), schedule_args(1e-3, 0, 0.0)
    results = {}
    for setting in ("1", "0"):
        monkeypatch.setenv(ENV, setting)
        step = make_train_step.__wrapped__(WIDER, 0.1)  # uncached: a jit with this setting's options
        state = init_state(jax.tree.map(np.array, params), make_optimizer())
        hlo = step.lower(state, batch, None, key, schedule).compile().as_text()
        _, metrics = step(state, batch, None, key, schedule)
        results[setting] = (_ynn_fusions_without_a_dot(hlo), jax.device_get(metrics))
    assert results["1"][0] == 0 < results["0"][0]  # the options reach XLA (its default fuses more)
    # same loss and gradient (its norm; Adam's first update is ~lr * sign(g), so near-zero gradient
    # entries flip with any change of summation order and the parameters are no test)
    ours, default = results["1"][1], results["0"][1]
    np.testing.assert_allclose(ours["loss"], default["loss"], rtol=1e-6)
    np.testing.assert_allclose(ours["grad_norm"], default["grad_norm"], rtol=1e-5)


def test_importance_is_the_same_with_the_options(monkeypatch, pack):
    from jax_namnmt.method import importance

    batch = _batch(pack, seed=1)
    params = noisy_params(WIDER, seed=2)
    got = {}
    for setting in ("1", "0"):
        monkeypatch.setenv(ENV, setting)
        importance._one_device_batch_importance.cache_clear()
        got[setting] = batch_importance(params, batch, None, config=WIDER, num_pairs=NUM_PAIRS, method="taylor")
    importance._one_device_batch_importance.cache_clear()
    for name in got["1"][0]:
        np.testing.assert_allclose(got["1"][0][name], got["0"][0][name], rtol=1e-5, atol=1e-8, err_msg=name)
