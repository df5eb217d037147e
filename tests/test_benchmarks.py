"""The CPU throughput benchmark's --quick mode runs and writes a sane JSON report."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_throughput_quick(tmp_path):
    out = tmp_path / "cpu_throughput.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cpu_throughput.py"), "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["quick"] is True
    jax_result = report["results"]["jax"]
    assert jax_result["steps"] == 2
    assert jax_result["target_tokens"] > 0
    assert jax_result["target_tokens_per_s"] > 0
    for result in report["results"].values():
        assert result["target_tokens_per_s"] > 0
    if "marian" in report["results"]:
        assert report["ratio_jax_over_marian"] > 0
