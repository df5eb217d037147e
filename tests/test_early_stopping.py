"""Early stopping (``train.patience``) and the best checkpoint (``train.keep_best``): where the loop
stops and what it keeps follow the validation NLL, also across a resume. The validation NLL is
scripted (the loop's ``validation_loss`` replaced) so that its minimum is not the last validation."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jax_namnmt.config import load_config
from jax_namnmt.errors import ConfigError
from jax_namnmt.model.transformer import init_params
from jax_namnmt.training import loop
from jax_namnmt.training.checkpoint import Checkpointer
from jax_namnmt.training.metrics_log import read_records

# validation NLL by validation (one a step): the lowest is the 4th; the 5th and 6th do not improve
SCRIPT = [5.0, 4.0, 4.5, 3.9, 3.9, 4.1, 3.0, 2.0]


def test_validations_since_best():
    assert loop.validations_since_best([]) == 0
    assert loop.validations_since_best([3.0]) == 0
    assert loop.validations_since_best([3.0, 2.0, 1.0]) == 0
    assert loop.validations_since_best([3.0, 2.0, 2.5]) == 1
    assert loop.validations_since_best(SCRIPT[:6]) == 2  # an equal NLL is no improvement


def test_read_records_keeps_the_last_of_a_repeated_step(tmp_path):
    lines = ['{"phase": "train_valid", "step": 1, "nll": 3.0}', '{"phase": "train", "step": 1, "loss": 9.0}',
             '{"phase": "train_valid", "step": 2, "nll": 2.0}', '{"phase": "train_valid", "step": 3, "nll": 1.0}',
             '{"phase": "train_valid", "step": 2, "nll": 2.5}']  # step 2 again, after a resume from step 1
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert [(r["step"], r["nll"]) for r in read_records(tmp_path, "train_valid")] == [(1, 3.0), (2, 2.5), (3, 1.0)]
    assert [r["step"] for r in read_records(tmp_path, "train_valid", up_to=2)] == [1, 2]
    assert read_records(tmp_path / "none", "train_valid") == []
    assert [r["step"] for r in read_records(tmp_path, "*_valid")] == [1, 2, 3]


def _examples(config, n: int = 32, seed: int = 0):
    from jax_namnmt.data.batching import Examples

    rng = np.random.default_rng(seed)
    src, tgt = [], []
    for _ in range(n):
        ls, lt = rng.integers(3, 12, 2)
        src.append(np.concatenate([rng.integers(4, config.model.vocab_size, ls), [3]]).astype(np.int32))
        tgt.append(np.concatenate([rng.integers(4, config.model.vocab_size, lt), [3]]).astype(np.int32))
    return Examples(src, tgt, rng.integers(0, len(config.data.pairs), n).astype(np.int32),
                    [("synthetic", i + 1) for i in range(n)])


@pytest.fixture
def scripted(monkeypatch):
    """The loop's validation NLL follows SCRIPT, one value a call (counted across runs)."""
    calls = []

    def fake(params, batches, masks, config, mesh=None, rules=None):
        nll = SCRIPT[len(calls)]
        calls.append(nll)
        return {"loss": nll + 0.5, "nll": nll, "ppl": float(np.exp(nll))}

    monkeypatch.setattr(loop, "validation_loss", fake)
    return calls


def _train(run_dir, steps: int, patience: int = 2, keep_best: bool = True, phase: str = "pretrain"):
    config = load_config("tiny", ["data.layout=rows", "train.eval_every=1", "train.save_every=1",
                                  "train.keep_checkpoints=20", "train.learning_rate=0.01", "train.warmup_steps=1",
                                  f"train.patience={patience}", f"train.keep_best={str(keep_best).lower()}"])
    params = jax.tree.map(np.asarray, jax.device_get(init_params(config.model, 1)))
    schedule = loop.Schedule(steps, 0.01, 1, 1e-7)
    examples = _examples(config)
    loop.train(run_dir, config, schedule, examples, examples, params, phase=phase, quiet=True)
    return config


def _params_at(run_dir, step: int | None = None) -> dict:
    with Checkpointer(run_dir) as ckpt:
        params, meta = ckpt.restore_params(step=step)
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat} | {"step": meta["step"]}


def test_patience_stops_early_and_the_best_checkpoint_is_the_lowest_nll(tmp_path, scripted):
    run = tmp_path / "run"
    _train(run, steps=len(SCRIPT))
    # validations 1-6: the 4th is the lowest, the 5th (equal) and 6th do not improve: patience 2 stops at 6
    assert [r["step"] for r in read_records(run, "pretrain_valid")] == [1, 2, 3, 4, 5, 6]
    with Checkpointer(run) as ckpt:
        assert ckpt.latest_step() == 6
    with Checkpointer(run / "best") as best:
        assert best.all_steps() == [4]
    kept, at_4, last = _params_at(run / "best"), _params_at(run, 4), _params_at(run, 6)
    assert kept["step"] == 4
    names = [k for k in kept if k != "step"]
    assert all(kept[k].tobytes() == at_4[k].tobytes() for k in names)
    assert any(kept[k].tobytes() != last[k].tobytes() for k in names)  # the best is not the last
    # the same command again: the run has stopped, no step and no validation more
    _train(run, steps=len(SCRIPT))
    assert len(scripted) == 6
    with Checkpointer(run) as ckpt:
        assert ckpt.latest_step() == 6


@pytest.mark.parametrize("phase", ["pretrain", "finetune"])
def test_a_resumed_run_stops_and_keeps_where_an_uninterrupted_one_does(tmp_path, scripted, phase):
    """Interrupted after the 5th validation (one without improvement so far): the resumed run must
    count it, and must not take its next validation (4.1) for the best."""
    first = 0 if phase == "finetune" else 1  # fine-tuning validates at step 0 too
    _train(tmp_path / "whole", steps=len(SCRIPT), phase=phase)
    scripted.clear()
    _train(tmp_path / "parts", steps=first + 4, phase=phase)
    _train(tmp_path / "parts", steps=len(SCRIPT), phase=phase)
    assert len(scripted) == 6
    for run in ("whole", "parts"):
        with Checkpointer(tmp_path / run) as ckpt:
            assert ckpt.latest_step() == first + 5
    whole, parts = _params_at(tmp_path / "whole" / "best"), _params_at(tmp_path / "parts" / "best")
    assert whole["step"] == parts["step"] == first + 3
    assert all(whole[k].tobytes() == parts[k].tobytes() for k in whole if k != "step")


def test_no_patience_runs_every_step(tmp_path, scripted):
    _train(tmp_path / "run", steps=len(SCRIPT), patience=0, keep_best=False)
    assert len(scripted) == len(SCRIPT) and not (tmp_path / "run" / "best").exists()


def test_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="train.patience"):
        load_config("tiny", ["train.patience=-1"])
    config = load_config("tiny", ["train.keep_best=true"])
    params = jax.tree.map(np.asarray, jax.device_get(init_params(config.model, 1)))
    with pytest.raises(ConfigError, match="no validation examples"):
        loop.train(tmp_path / "run", config, loop.Schedule(2, 0.01, 1, 1e-7), _examples(config), None, params,
                   phase="pretrain", quiet=True)


def test_a_stopped_run_is_finished(tmp_path, scripted):
    """``workflow.is_finished`` (what pipeline and reproduce ask before training a run) counts a run
    that patience stopped as finished, by the loop's own rule; an interrupted one it does not."""
    from jax_namnmt import workflow

    run = tmp_path / "run"
    _train(run, steps=4)  # validations 1-4: the 4th is the lowest so far, no stop
    assert not workflow.is_finished(run, len(SCRIPT), patience=2)
    _train(run, steps=len(SCRIPT))  # resumed: stops at step 6 (see above)
    assert workflow.is_finished(run, len(SCRIPT), patience=2)
    assert not workflow.is_finished(run, len(SCRIPT), patience=3)  # a larger patience trains on
    assert not workflow.is_finished(run, len(SCRIPT))  # no patience: steps only
    assert workflow.is_finished(run, 6) and not workflow.is_finished(tmp_path / "none", 1, patience=2)
