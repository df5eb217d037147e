"""scripts/conflict_summary.py: the positive control's summary against hand-computed figures, and a
missing file or field named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "conflict_summary.py"


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _outputs(out: Path, tag: str) -> None:
    masks = {"a-b": {"kept": 0.98}, "a-c": {"kept": 0.97}}
    setting = {
        "start": {"from": "pre", "steps": 50, "converged": True, "valid_nll": [[0, 2.0]]},
        "chosen": {"tag": "t1"}, "rho_k_choice": {"t1": 1.9, "t2": 2.1},
        "step0": {"none": {"nll": 2.0}, "t1": {"nll": 2.25, "masks": masks}, "t2": {"nll": 2.5, "masks": masks}},
        "bleu": {"multilingual": {"mean": {"a-b": 30.0, "avg": 31.0}, "std": {}, "seeds": [1, 2]}},
        "significance": {"multilingual": {"a-b": {"diff": 9.0}, "avg": {"diff": -0.5, "p": 0.04}}}}
    config = {"model": {"d_model": 8, "ffn_dim": 32, "num_heads": 2, "enc_layers": 1, "dec_layers": 1},
              "finetune": {"steps": 300}}
    _write(out / f"report{tag}" / "results.json", {"command": "reproduce ...", "date": "d", "environment":
                                                  {"machine": "m"}, "config": config, "settings": {"many_to_many": setting}})
    _write(out / f"specialists{tag}" / "compare.json", {"specialist_seeds": [1], "steps": 300,
                                                         "specialists - multilingual": {"avg": {"diff": 0.25}}})
    _write(out / f"curves{tag}.json", {"multilingual": {"curve": {"0": 2.0, "100": 1.5}},
                                       "specialists": {"curve": {"0": 2.0, "100": 1.25, "200": 1.0}}})


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_summary(tmp_path):
    _outputs(tmp_path, "_ft300")
    result = _run(tmp_path, tmp_path / "s.json", "_ft300")
    assert result.returncode == 0, result.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["mask_cost_step0"] == {"t1": 0.25, "t2": 0.5}
    assert s["kept"] == {"a-b": 0.98, "a-c": 0.97}
    assert s["bleu"]["multilingual"] == {"a-b": 30.0, "avg": 31.0, "seeds": [1, 2]}
    assert s["method_te_minus"] == {"multilingual": {"diff": -0.5, "p": 0.04}}
    assert s["specialists_minus"] == {"multilingual": {"diff": 0.25}}
    # steps where the multilingual run did not validate are left out
    assert s["valid_nll_minus_multilingual"] == {"specialists": {"0": 0.0, "100": -0.25}}
    assert s["model"]["d_model"] == 8 and s["finetune_steps"] == 300 and s["start"]["steps"] == 50


def test_missing_file_or_field_named(tmp_path):
    result = _run(tmp_path, tmp_path / "s.json")
    assert result.returncode != 0 and f"{tmp_path}/report/results.json is missing" in result.stderr
    _outputs(tmp_path, "")
    report = tmp_path / "report" / "results.json"
    broken = json.loads(report.read_text())
    del broken["settings"]["many_to_many"]["rho_k_choice"]
    report.write_text(json.dumps(broken))
    result = _run(tmp_path, tmp_path / "s.json")
    assert result.returncode != 0 and "has no field 'rho_k_choice'" in result.stderr
    assert not (tmp_path / "s.json").exists()
    _outputs(tmp_path, "")
    (tmp_path / "curves.json").write_text(json.dumps({"specialists": {"curve": {}}}))
    result = _run(tmp_path, tmp_path / "s.json")
    assert result.returncode != 0 and f"{tmp_path}/curves.json has no field 'multilingual'" in result.stderr
