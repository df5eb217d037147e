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
