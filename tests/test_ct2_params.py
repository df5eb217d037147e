"""The CTranslate2 peer of ``benchmarks/cpu_decode_real.py`` runs our very model:
``peers_ct2.ctranslate2_from_params`` converts our parameters weight for weight, so CTranslate2
scores target sentences with our model's log-probabilities. Runs where ctranslate2 is installed
(a benchmark-only dependency, not in CI)."""

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ctranslate2_scores_with_our_log_probabilities(monkeypatch, tmp_path, tiny_config, tiny_params):
    ctranslate2 = pytest.importorskip("ctranslate2")
    monkeypatch.syspath_prepend(str(ROOT))
    import jax
    import jax.numpy as jnp
    from benchmarks.peers_ct2 import ctranslate2_from_params

    from jax_namnmt.data.vocab import BOS_ID, EOS_ID
    from jax_namnmt.model.transformer import Transformer, with_decoding

    config = with_decoding(tiny_config)
    tokens = ctranslate2_from_params(tiny_params, config, tmp_path)
    assert tokens[EOS_ID] == "</s>" and tokens[BOS_ID] == "<s>" and len(tokens) == config.vocab_size
    rng = np.random.default_rng(0)
    src = [np.concatenate([rng.integers(4, config.vocab_size, n), [EOS_ID]]) for n in (5, 9, 3)]
    tgt = [np.concatenate([rng.integers(4, config.vocab_size, n), [EOS_ID]]) for n in (6, 4, 8)]
    scored = ctranslate2.Translator(str(tmp_path), device="cpu").score_batch(
        [[tokens[t] for t in s] for s in src], [[tokens[t] for t in t_[:-1]] for t_ in tgt])  # EOS appended
    forward = jax.jit(Transformer(config).apply)
    for s, t_, result in zip(src, tgt, scored):
        inputs = np.concatenate([[BOS_ID], t_[:-1]])
        one = lambda a: jnp.asarray(a, jnp.int32)[None]  # noqa: E731
        batch = {"src_tokens": one(s), "src_segments": one(np.ones_like(s)), "src_positions": one(np.arange(len(s))),
                 "src_pairs": one(np.zeros_like(s)), "tgt_inputs": one(inputs),
                 "tgt_segments": one(np.ones_like(inputs)), "tgt_positions": one(np.arange(len(inputs))),
                 "tgt_pairs": one(np.zeros_like(inputs))}
        logits = forward({"params": tiny_params}, batch)[0]
        log_probs = np.asarray(jax.nn.log_softmax(logits, -1))[np.arange(len(t_)), t_]
        assert result.tokens == [tokens[t] for t in t_]
        np.testing.assert_allclose(result.log_probs, log_probs, atol=1e-4)
