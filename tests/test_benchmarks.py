"""The CPU throughput benchmark's --quick mode runs and writes a sane JSON report, for the
training side and the beam-decoding side (every output forced to the same length). It runs as a
file (``python benchmarks/cpu_throughput.py``); the GPU benchmarks' tests run theirs as modules."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_throughput_quick(tmp_path):
    out = tmp_path / "cpu_throughput.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cpu_throughput.py"), "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["quick"] is True

    # Training (the keys the first version wrote are still there).
    jax_result = report["results"]["jax"]
    assert jax_result["steps"] == 2
    assert jax_result["target_tokens"] > 0
    assert jax_result["target_tokens_per_s"] > 0
    for result in report["results"].values():
        assert result["target_tokens_per_s"] > 0
    if "marian" in report["results"]:
        assert report["ratio_jax_over_marian"] > 0

    # Decoding: quick mode decodes 8 sentences in batches of 4, each forced to 6 tokens.
    decode = report["decode"]
    assert decode["beam"] == 4
    forced = decode["forced_output_len"]
    assert forced == 6
    assert "jax" in decode["results"]
    for name, result in decode["results"].items():
        assert result["sentences"] == decode["sentences"] == 8, name
        assert result["output_tokens"] == 8 * forced, name
        assert result["output_lengths"] == [forced], (name, result["output_lengths"])
        assert result["all_lengths_forced"] is True, name
        assert result["seconds"] > 0 and result["sentences_per_s"] > 0, name
        assert result["output_tokens_per_s"] > 0, name
    if "marian" in decode["results"]:
        assert decode["ratio_jax_over_marian"] > 0
    assert "decode beam 4: sentences/s" in proc.stdout


def test_paired_ratios_are_per_round_pairs_and_their_median(monkeypatch):
    """Ours / Marian throughput per back-to-back round pair (their seconds / ours: same work),
    and the median; a machine twice as slow in round 2 leaves the pair's ratio unchanged."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.cpu_throughput import paired_ratios

    got = paired_ratios([10.0, 20.0, 10.0], [11.0, 22.0, 9.0])
    assert got["per_round"] == [1.1, 1.1, 0.9] and got["median"] == 1.1
    assert paired_ratios([], []) == {"per_round": [], "median": None}


def test_ctranslate2_side_is_the_marian_model(monkeypatch, tmp_path):
    """The CTranslate2 decoding side runs the benchmark's Marian model itself: converted with
    ``ctranslate2_from_marian``, it scores target sentences with Marian's log-probabilities (the
    decoder started from a zero embedding, as CTranslate2's Marian conversion does). Runs where
    torch, transformers and ctranslate2 are installed (benchmark-only dependencies, not in CI)."""
    pytest.importorskip("ctranslate2")
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    monkeypatch.syspath_prepend(str(ROOT))
    import ctranslate2
    import numpy as np
    from benchmarks.peers_ct2 import ctranslate2_from_marian
    from benchmarks.peers_torch import build_marian
    from benchmarks.synthetic import make_sentences

    from jax_namnmt.config import ModelConfig
    from jax_namnmt.data.vocab import BOS_ID, EOS_ID, PAD_ID

    config = ModelConfig(vocab_size=256, d_model=32, num_heads=2, ffn_dim=64, enc_layers=2, dec_layers=2,
                         max_positions=64)
    model = build_marian(config, PAD_ID, EOS_ID, BOS_ID, 0).eval()
    tokens = ctranslate2_from_marian(model, config.vocab_size, tmp_path)
    assert tokens[EOS_ID] == "</s>" and tokens[7] == "t7" and len(tokens) == config.vocab_size
    src, tgt, _ = make_sentences(4, config.vocab_size - 1, 8, 12, 8, 3)  # the last id is dropped (Marian's pad)
    scored = ctranslate2.Translator(str(tmp_path), device="cpu").score_batch(
        [[tokens[t] for t in s] for s in src], [[tokens[t] for t in t_[:-1]] for t_ in tgt])  # EOS appended
    for s, t_, result in zip(src, tgt, scored):
        decoder_inputs = np.concatenate([[PAD_ID], t_[:-1]])  # Marian's pad embedding row is zero
        with torch.no_grad():
            logits = model(input_ids=torch.tensor(s[None].astype(np.int64)),
                           decoder_input_ids=torch.tensor(decoder_inputs[None].astype(np.int64))).logits[0]
        log_probs = torch.log_softmax(logits[:, :-1], -1)[torch.arange(len(t_)), torch.tensor(t_.astype(np.int64))]
        assert result.tokens == [tokens[t] for t in t_]
        np.testing.assert_allclose(result.log_probs, log_probs.numpy(), atol=1e-5)
