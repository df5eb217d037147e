"""The CPU throughput benchmark's --quick mode runs and writes a sane JSON report, for the
training side and the beam-decoding side (every output forced to the same length)."""

import json
import subprocess
import sys
from pathlib import Path

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
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from cpu_throughput import paired_ratios

    got = paired_ratios([10.0, 20.0, 10.0], [11.0, 22.0, 9.0])
    assert got["per_round"] == [1.1, 1.1, 0.9] and got["median"] == 1.1
    assert paired_ratios([], []) == {"per_round": [], "median": None}
