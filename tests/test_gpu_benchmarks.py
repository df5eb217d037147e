"""The GPU benchmarks' --quick modes (tiny shapes, CPU, JAX side only) run and write JSON reports
that show the measured behaviour, not just that they ran: positive throughput, the masked step with
all-ones masks at the plain step's loss, importance over exactly the batches' tokens, decoding at
exactly the forced length. One compilation cache is shared by the four runs (the plain train step
of the same tiny shape is compiled once), which keeps the module under a minute on 2 cores. They
run as ``python -m benchmarks.NAME``; decode_speed as a file (``python benchmarks/decode_speed.py``)
without ``--out``, so its report goes to a temporary directory, never into the checkout."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_quick(tmp_path_factory):
    cache = tmp_path_factory.mktemp("jax_cache")
    out_dir = tmp_path_factory.mktemp("gpu_bench")

    def run(name: str, *extra: str, as_file: bool = False) -> tuple[dict, str]:
        """``python -m benchmarks.NAME --quick --no-torch --out OUT``; ``as_file``: ``python
        benchmarks/NAME.py --quick --no-torch`` (no ``--out``: the report goes to a temporary
        directory, which it prints and which is removed here)."""
        out = out_dir / f"{name}.json"
        env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache))
        if as_file:
            cmd = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick", "--no-torch", *extra]
        else:
            cmd = [sys.executable, "-m", f"benchmarks.{name}", "--quick", "--no-torch", "--out", str(out), *extra]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        if as_file:  # where the report went: said first, and in the last line
            said = [line for line in proc.stdout.splitlines() if line.startswith("--quick: the report goes to ")]
            out = Path(proc.stdout.strip().splitlines()[-1].removeprefix("wrote "))
            assert said and str(out) in said[0], proc.stdout
            assert out.is_relative_to(tempfile.gettempdir()) and not out.resolve().is_relative_to(ROOT), out
            report = json.loads(out.read_text())
            assert report["settings"]["out"] == str(out)
            shutil.rmtree(out.parent)
        else:
            report = json.loads(out.read_text())
        assert report["quick"] is True
        assert report["versions"]["jax"] and report["versions"]["flax"]
        assert report["date"] and report["model"]["d_model"] == 32
        return report, proc.stdout

    return run


def test_train_throughput_quick(run_quick, tmp_path):
    profile = tmp_path / "profile"
    report, stdout = run_quick("train_throughput", "--profile-dir", str(profile))
    assert report["sides"] == ["jax"]  # --no-torch: JAX only
    r = report["results"]["jax"]
    assert "error" not in r, r
    assert r["profile_dir"] == str(profile) and list(profile.rglob("*.xplane.pb"))  # a trace to read
    # profile_summary.py reads the trace's Perfetto JSON: the 3 profiled steps' executions are in it
    summary_json = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_summary.py"), str(profile),
                           "--out", str(summary_json)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(summary_json.read_text())
    steps = [n for g in summary.values() for name, _, n in g["by_name"] if name == "PjitFunction(train_step)"]
    assert steps and max(steps) >= 3, summary.keys()
    assert all(g["busy_ms"] >= 0 and g["span_ms"] >= 0 for g in summary.values())
    assert "| op (stem) | ms | share | count |" in proc.stdout
    assert r["steps"] == 2 and r["target_tokens"] > 0
    assert r["target_tokens"] <= r["target_slots"]
    assert r["target_tokens_per_s"] > 0 and r["matmul_flops"] > 0 and 0 < r["mfu"] < 1
    assert r["final_loss"] > 0
    assert report["ratio_jax_over_marian_eager"] is None
    assert "| jax |" in stdout


def test_train_throughput_quick_compact_layout(run_quick):
    """--layout compact (the CPU default of `train`, run_gpu.sh measures it on a GPU): the same
    sentences fill more of the slots than packed rows do. The kernel flags of run_gpu.sh's
    ablations reach the model config and the report (on CPU the attention stays XLA's einsums)."""
    report, _ = run_quick("train_throughput", "--layout", "compact", "--attention-kernel", "cudnn",
                          "--logits-dtype", "bfloat16")
    r = report["results"]["jax"]
    assert "error" not in r, r
    assert (r["attention_kernel"], r["logits_dtype"]) == ("cudnn", "bfloat16")
    assert r["layout"].startswith("compact:") and r["steps"] == 2
    assert 0.9 * r["target_slots"] < r["target_tokens"] <= r["target_slots"]
    assert r["sentences"] > 0 and r["final_loss"] > 0


def test_train_matmul_flops_formula(monkeypatch):
    from jax_namnmt.config import ModelConfig

    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import shapes

    c = ModelConfig(vocab_size=10, d_model=2, ffn_dim=3, enc_layers=1, dec_layers=1)
    # One sentence S=1, T=1: enc 2(4*4+2*2*3)=56, cross k/v 2*2*4=16, dec 2(6*4+2*2*3)=72, out 2*2*10=40,
    # attention: enc 4*2*1=8, self 4*2*1=8, cross 4*2*1=8 -> 208 forward, x3 with the backward.
    assert shapes.train_matmul_flops([1], [1], c, backward=False) == 208
    assert shapes.train_matmul_flops([1], [1], c) == 3 * 208
    # Padding never counts: only the real lengths go in.
    assert shapes.train_matmul_flops([1, 1], [1, 1], c) == 2 * 3 * 208


def test_report_paths_quick_in_a_temporary_directory(monkeypatch, capsys):
    """Without ``--out`` a full run writes ``benchmarks/results/<name>.json`` (beside the committed
    figures; ``run_gpu.sh`` names its OUTDIR), a ``--quick`` one a new temporary directory, which
    it says; ``--out`` wins, and a side process (``--side``) gets no path."""
    from types import SimpleNamespace

    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.report import resolve_out

    full = SimpleNamespace(out=None, quick=False, side=None)
    resolve_out(full, "train_throughput")
    assert full.out == "benchmarks/results/train_throughput.json"
    quick = SimpleNamespace(out=None, quick=True, side=None)
    resolve_out(quick, "train_throughput")
    out = Path(quick.out)
    assert out.name == "train_throughput.json" and out.parent.is_dir() and not any(out.parent.iterdir())
    assert out.is_relative_to(tempfile.gettempdir()) and f"the report goes to {out}" in capsys.readouterr().out
    out.parent.rmdir()
    named = SimpleNamespace(out="x.json", quick=True, side=None)
    resolve_out(named, "train_throughput")
    side = SimpleNamespace(out=None, quick=True, side="jax")
    resolve_out(side, "train_throughput")
    assert named.out == "x.json" and side.out is None


def test_masked_overhead_quick(run_quick):
    # the accelerators' lookup (a gather), forced on CPU: the all-ones check then covers it too;
    # 8 and 128 pairs in one run (the same sentences, the masks' tables 16x larger)
    report, stdout = run_quick("masked_overhead", "--mask-lookup", "gather", "--pairs", "8,128")
    r = report["results"]
    assert "error" not in r, r
    assert r["mask_lookup"] == "gather" and report["num_pairs"] == [8, 128]
    assert list(r["pairs"]) == ["8", "128"]
    for n, p in r["pairs"].items():
        check = p["ones_mask_check"]
        assert check["match"] is True and check["relative_difference"] <= 1e-5, (n, check)
        assert p["num_pairs"] == int(n) and p["pairs_per_batch"][1] > 1  # pairs mixed within a batch
        assert 0.8 < p["mask_keep_share"] < 1.0
        for side in ("plain", "masked"):
            assert p[side]["steps"] == 2 and p[side]["target_tokens_per_s"] > 0
            assert len(p[side]["round_cpu_seconds"]) == 1
        assert p["overhead"] > -1 and p["overhead_cpu_time_median_of_pairs"] > -1
    assert r["pairs"]["128"]["mask_table_bytes"] == 16 * r["pairs"]["8"]["mask_table_bytes"]
    assert r["pairs"]["128"]["pairs_per_batch"][1] > r["pairs"]["8"]["pairs_per_batch"][1]
    assert "| 128 |" in stdout and "match" in stdout


def test_importance_throughput_quick(run_quick):
    report, stdout = run_quick("importance_throughput", "--pairs", "8,128")
    r = report["results"]
    assert "error" not in r, r
    assert list(r["pairs"]) == ["8", "128"]
    for n, p in r["pairs"].items():
        imp = p["importance"]
        assert imp["tokens_match"] is True
        assert imp["scored_target_tokens"] == p["target_tokens"] > 0
        assert imp["scored_source_tokens"] == p["source_tokens"] > 0
        assert len(imp["scored_target_tokens_per_pair"]) == int(n)
        assert sum(imp["scored_target_tokens_per_pair"]) == p["target_tokens"]
        assert imp["sums_finite"] is True and imp["modules"] == 16  # 1+1 layers: 6 encoder + 10 decoder projections
        assert p["train"]["target_tokens_per_s"] > 0 and imp["target_tokens_per_s"] > 0
        assert p["ratio_importance_over_train"] > 0
    assert r["pairs"]["128"]["importance"]["sums_bytes"] == 16 * r["pairs"]["8"]["importance"]["sums_bytes"]
    assert "| 128 |" in stdout


def test_decode_speed_quick(run_quick):
    weights = "int8"  # the matrices converted before the search (float32, the default, passes through as it is)
    report, stdout = run_quick("decode_speed", "--weights", weights, as_file=True)
    assert report["beam"] == 4 and report["forced_output_len"] == 6
    r = report["results"]["jax"]
    assert r["decode_config"]["weights"] == weights and f"{weights} weights" in r["framework"]
    assert "error" not in r, r
    assert r["sentences"] == report["sentences"] == 8
    assert r["decoded_rows"] == 8 and r["output_lengths"] == [6] and r["all_lengths_forced"] is True
    assert r["output_tokens"] == 8 * 6 and r["sentences_per_s"] > 0
    assert report["ratio_jax_over_marian"] is None
    assert "| jax |" in stdout


def test_run_gpu_sh_runs_the_chosen_ablations(tmp_path):
    """``ABLATIONS="a b"`` runs exactly those ablations after the benchmarks, each with its flags
    or its XLA_FLAGS, and ``SKIP`` leaves runs out (a stand-in interpreter records the calls
    instead of running them)."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "fake_python"
    fake.write_text(f'#!/usr/bin/env bash\necho "XLA_FLAGS=${{XLA_FLAGS:-}} ARGS=$*" >> {calls}\n')
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), BUDGET="600", NO_COMPILE="1",
               ABLATIONS="bf16_logits,cudnn_layer_norm", SKIP="train_throughput_compact masked_overhead_onehot masked_overhead_bits")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "run_gpu.sh"), str(tmp_path / "out")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = [line for line in calls.read_text().splitlines() if "-m benchmarks." in line]
    scripts = [line.split("ARGS=-m benchmarks.")[1].split(" ")[0] for line in runs]
    assert scripts == ["train_throughput", "decode_speed", "decode_speed", "masked_overhead", "importance_throughput",
                       "train_throughput", "train_throughput"]
    assert "--weights" not in runs[1] and "--weights bfloat16" in runs[2] and "decode_speed_bf16_weights.json" in runs[2]
    assert "--mask-lookup gather" in runs[3] and "--layout compact" not in " ".join(runs)
    bf16, layer_norm = runs[-2:]
    assert "--logits-dtype bfloat16" in bf16 and "ablate_bf16_logits.json" in bf16
    assert "--xla_gpu_enable_cudnn_layer_norm=true" in layer_norm and "ablate_cudnn_layer_norm.json" in layer_norm
    assert all(line.startswith("XLA_FLAGS= ARGS=") for line in runs[:-1])  # the flag is the ablation's only
    assert all(f"--out {tmp_path / 'out'}/" in line for line in runs)  # every report in OUTDIR
