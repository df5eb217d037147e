"""One loop for pre-training and masked fine-tuning: steps, validation, checkpoints, resume.

A run directory holds everything ``translate`` needs: ``config.json``, ``spm.model``,
``masks.npz`` (fine-tuned runs) and ``checkpoints/<step>/`` (params, optimizer state, step,
data position). Re-running the same command resumes from the latest checkpoint and, on the
same machine, ends with the same parameters as an uninterrupted run.

Parallelism is ``config.parallel`` (``--mesh``): the train state is placed on the shardings of
the logical axis rules, batch rows are split over ``data`` x ``fsdp`` (``jax_namnmt/parallel.py``).
On one device the loop runs exactly the unsharded program.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from jax_namnmt import parallel
from jax_namnmt.config import Config
from jax_namnmt.data.batching import Examples, make_batcher, resolve_layout
from jax_namnmt.data.sampling import PairShares, describe_probabilities
from jax_namnmt.errors import CheckpointError, ConfigError, TrainingDiverged
from jax_namnmt.training.checkpoint import Checkpointer, copy_file, load_json, save_json
from jax_namnmt.training.metrics_log import MetricsLogger, read_records
from jax_namnmt.training.step import init_state, make_eval_step, make_optimizer, make_train_step, schedule_args


@dataclasses.dataclass(frozen=True)
class Schedule:
    steps: int
    learning_rate: float
    warmup_steps: int
    warmup_init_lr: float
    eval_every: int = 0  # validation every this many steps; 0 = config.train.eval_every


def pretrain_schedule(config: Config) -> Schedule:
    t = config.train
    return Schedule(t.steps, t.learning_rate, t.warmup_steps, t.warmup_init_lr, t.eval_every)


def finetune_schedule(config: Config) -> Schedule:
    f = config.finetune
    return Schedule(f.steps, f.learning_rate, f.warmup_steps, f.warmup_init_lr,
                    f.eval_every or config.train.eval_every)


def write_run_files(run_dir: Path, config: Config, vocab_path: Path, extra: dict | None = None) -> None:
    """Make a run directory self-contained: its config and vocabulary next to the checkpoints
    (written by the first process of a multi-host run only)."""
    if jax.process_index() != 0:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    save_json(run_dir / "config.json", config.to_dict())
    target = run_dir / "spm.model"
    if Path(vocab_path).resolve() != target.resolve():
        copy_file(vocab_path, target)  # atomic, and not rewritten on a resume
    if extra:
        save_json(run_dir / "run.json", extra)


def check_resumable(run_dir: Path, config: Config) -> None:
    saved = run_dir / "config.json"
    if saved.exists() and (run_dir / "checkpoints").exists():
        old = Config.from_dict({"model": load_json(saved).get("model", {})}, where=str(saved)).model
        if old != config.model:  # from_dict fills fields added since the run was written with their defaults
            raise CheckpointError(
                f"{saved}: this run directory holds a model of another shape; "
                "write to another directory (--out or --workdir) or delete this one to start over")


def validation_batches(examples: Examples, layout: str, batch_shape) -> list:
    """The validation set as one packing of all its pairs (every example once, in order): the eval
    step sums the loss and NLL by each token's pair, so a pair needs no batch of its own (127
    pairs with a few lines each are a few batches, not 127)."""
    return list(make_batcher(examples, layout, *batch_shape, seed=0, shuffle=False).epoch(0)) if len(examples) else []


def validation_loss(params, batches, masks, config: Config, mesh=None, rules=None) -> dict:
    """Label-smoothed loss, NLL and perplexity per target token over ``batches``, and ``nll_<pair>``
    for each pair (``config.data.pairs``) with tokens in them. ``mesh``: a (multi-device) mesh the
    params are sharded on; batches are split per ``rules``."""
    pairs = list(config.data.pairs)
    eval_step = make_eval_step(config.model, config.train.label_smoothing, len(pairs), mesh, rules)
    loss = nll = tokens = np.zeros(len(pairs), np.float64)
    for batch in batches:
        if mesh is not None:
            batch = parallel.shard_batch(batch, mesh, rules)
        sums = jax.device_get(eval_step(params, batch, masks))
        loss, nll, tokens = (a + np.asarray(b, np.float64) for a, b in zip((loss, nll, tokens), sums))
    total = max(float(tokens.sum()), 1.0)
    out = {"loss": float(loss.sum()) / total, "nll": float(nll.sum()) / total,
           "ppl": math.exp(min(float(nll.sum()) / total, 50.0))}
    out.update({f"nll_{pair}": float(n / t) for pair, n, t in zip(pairs, nll, tokens) if t > 0})
    return out


def _resume(ckpt: Checkpointer, state, layout: str, mesh, phase: str, report: bool):
    """``(state, epoch, index, layout, data)``: the checkpoint's state and data position if the run
    has one (in the checkpoint's layout where it can go on in it), else the fresh state at the start;
    ``data`` is the checkpoint's data record (``{}`` at the start)."""
    if ckpt.latest_step() is None:
        return state, 0, 0, layout, {}
    state, meta = ckpt.restore(state)
    epoch, index = meta["data"]["epoch"], meta["data"]["index"]
    if report:
        print(f"[{phase}] resuming from {ckpt.directory}/{ckpt.latest_step()} (epoch {epoch}, batch {index})")
    # the data position counts batches of the checkpoint's layout (checkpoints written before
    # data.layout existed used rows): resume in that layout, so the stream goes on unchanged
    saved = meta["data"].get("layout", "rows")
    if saved != layout and (saved == "rows" or mesh is None):
        layout = saved
    elif saved != layout and report:
        print(f"[{phase}] the checkpoint was trained in the compact layout, which a mesh cannot use: "
              f"continuing in rows from batch {index} of epoch {epoch} of the rows' stream")
    return state, epoch, index, layout, meta["data"]


def _place(state, mesh, train_step):
    """One placement for every state: restored (and loaded) arrays are committed to a device, fresh
    ones are not, and jit compiles once per placement, so without this a resumed run, and every
    fine-tuning (committed params, fresh step counter), compiled the train step again."""
    if mesh is None:
        return jax.device_put(state, jax.local_devices()[0])
    return parallel.put(state, train_step.state_shardings)


def _check_diverged(state, step: int, ckpt: Checkpointer, max_bad_steps: int, phase: str) -> None:
    """Raises TrainingDiverged (before anything is saved) once ``max_bad_steps`` consecutive
    updates were skipped; reads one scalar, so it runs at log and save points only."""
    bad = int(jax.device_get(state["bad_steps"]))
    if bad >= max_bad_steps:
        last = ckpt.latest_step()
        kept = (f"the last good checkpoint {ckpt.directory / str(last)} is kept" if last is not None
                else f"no checkpoint was saved in {ckpt.directory}")
        raise TrainingDiverged(
            f"[{phase}] training diverged at step {step}: the loss or gradient was not finite for "
            f"{bad} consecutive steps (train.max_bad_steps={max_bad_steps}); the bad state was not "
            f"saved and {kept}; lower the learning rate, set train.clip_norm or check the data, then run "
            "the same command again to resume")


def validations_since_best(nlls) -> int:
    """Validations after the one with the lowest NLL (the first of equal lowest: a validation that
    only equals the best has not improved on it); 0 for none."""
    return len(nlls) - 1 - int(np.argmin(nlls)) if len(nlls) else 0


def patience_exhausted(nlls, patience: int) -> bool:
    """Whether ``train.patience`` stops a run whose validation NLLs so far are ``nlls`` (0: never)."""
    return patience > 0 and validations_since_best(nlls) >= patience


# a best/ run directory gets these files of its run (masks.npz: a fine-tuned run's masks)
RUN_FILES = ("config.json", "spm.model", "run.json", "masks.npz")


def _step_record(state, metrics, step: int, window: tuple[int, float]) -> tuple[dict, tuple[int, float]]:
    """The logged metrics of a step (with the fault counters and a tokens/s estimate: the last step's
    tokens times the steps since the last record, so no step waits for the device) and the new window."""
    counts = {"bad_steps": state["bad_steps"], "skipped_steps": state["skipped_steps"]}
    record = {k: float(v) for k, v in jax.device_get({**metrics, **counts}).items()}
    now = time.perf_counter()
    record["tokens_per_s"] = record["tokens"] * (step - window[0]) / max(now - window[1], 1e-9)
    return record, (step, now)


def train(run_dir: Path, config: Config, schedule: Schedule, train_examples: Examples,
          valid_examples: Examples | None, init_params, masks=None, phase: str = "train",
          quiet: bool = False, trainable=None):
    """Train from ``init_params`` (or resume from ``run_dir``) for ``schedule.steps`` updates.

    ``masks`` (nested ``[num_pairs, F]`` arrays) gate every projection per example; ``None``
    trains the plain model. ``trainable`` (a boolean tree shaped like the params, ``add_pair``)
    freezes its False entries bit for bit. Returns the final parameters.

    ``train.patience`` > 0 stops early once that many validations in a row did not lower the
    validation NLL; ``train.keep_best`` keeps the checkpoint of the lowest one in ``run_dir/best``
    (a run directory of its own). Both follow the validation records of ``metrics.jsonl`` up to the
    resumed step, so a resumed run stops, and keeps, where an uninterrupted one would.
    """
    run_dir = Path(run_dir)
    tc = config.train
    mesh, rules = parallel.mesh_from_config(config.parallel)
    layout = resolve_layout(config.data.layout, mesh.size, jax.default_backend())
    if mesh.size == 1:  # one device: exactly the unsharded program (and its numbers)
        mesh = rules = None
    first_process = jax.process_index() == 0  # multi-host: one process writes metrics and reports
    report = not quiet and first_process
    train_step = make_train_step(config.model, tc.label_smoothing, tc.adam_b1, tc.adam_b2, tc.adam_eps,
                                 tc.clip_norm, mesh, rules)
    optimizer = make_optimizer(tc.adam_b1, tc.adam_b2, tc.adam_eps, tc.clip_norm)
    sched = schedule_args(schedule.learning_rate, schedule.warmup_steps, schedule.warmup_init_lr)
    key = jax.random.key(tc.seed)
    if mesh is not None:
        if report:
            print(f"[{phase}] mesh {parallel.describe(mesh)} over {mesh.size} devices, "
                  f"{jax.process_count()} process(es)")
        sched, key = parallel.put((sched, key), parallel.replicated(mesh))
    ckpt = Checkpointer(run_dir, max_to_keep=tc.keep_checkpoints)
    state = init_state(init_params, optimizer)
    if mesh is not None:  # before a restore: the checkpoint is then restored onto these shardings
        state = parallel.put(state, train_step.state_shardings)
    state, epoch, index, layout, saved_data = _resume(ckpt, state, layout, mesh, phase, report)
    batch_shape = (tc.tokens_per_batch, config.data.src_row_len, config.data.tgt_row_len)  # budget, row lengths
    temperature = config.data.sampling_temperature
    batcher = make_batcher(train_examples, layout, *batch_shape, seed=tc.seed, temperature=temperature)
    # the realised share of each pair since step 0 (counted on from the checkpoint), logged as <phase>_pairs
    shares = PairShares(config.data.pairs, saved_data.get("pair_examples"))
    if report and temperature != 1.0:
        print(f"[{phase}] sampling pairs at temperature {temperature:g}: "
              f"{describe_probabilities(config.data.pairs, train_examples.pair_ids, temperature)}")
    if index > batcher.num_batches(epoch):
        epoch, index = epoch + 1, 0
    valid_batches = validation_batches(valid_examples, layout, batch_shape) if valid_examples is not None else []
    eval_every = schedule.eval_every or tc.eval_every
    if (tc.patience or tc.keep_best) and not valid_batches:
        raise ConfigError("train.patience and train.keep_best follow the validation NLL: this run has no "
                          "validation examples (the valid split is empty or missing)")
    state = _place(state, mesh, train_step)
    step = int(state["step"])
    nlls = {r["step"]: r["nll"] for r in read_records(run_dir, f"{phase}_valid", up_to=step)}  # by step, in order
    best_ckpt = Checkpointer(run_dir / "best", max_to_keep=1) if tc.keep_best else None
    logger = MetricsLogger(run_dir, phase, enabled=first_process)
    masks = None if masks is None else jax.tree.map(np.asarray, masks)
    if mesh is not None and masks is not None:
        masks = parallel.put(masks, parallel.replicated(mesh))
    if trainable is not None:
        trainable = (jax.tree.map(np.asarray, trainable) if mesh is None
                     else parallel.put(trainable, train_step.state_shardings["params"]))

    def save(step_now, position):
        _check_diverged(state, step_now, ckpt, tc.max_bad_steps, phase)
        ckpt.save(step_now, state, {"data": {"epoch": position[0], "index": position[1], "layout": layout,
                                             "pair_examples": shares.examples()},
                                    "step": step_now,
                                    "phase": phase, "config": config.to_dict(),
                                    "vocabulary": str((run_dir / "spm.model").resolve())})

    def stopped() -> bool:
        return patience_exhausted(list(nlls.values()), tc.patience)

    def save_best(step_now):
        """The state of the lowest validation NLL so far as ``run_dir/best``: its checkpoint, then the
        run's files (the checkpoint first, so that a best/ with a config always has one)."""
        best_ckpt.save(step_now, state, {"step": step_now, "phase": phase, "valid_nll": nlls[step_now],
                                         "config": config.to_dict()})
        best_ckpt.wait()
        for name in RUN_FILES if first_process else ():
            if (run_dir / name).exists():
                copy_file(run_dir / name, run_dir / "best" / name)

    def validate(step_now):
        v = validation_loss(state["params"], valid_batches, masks, config, mesh, rules)
        logger.log(step_now, v, f"{phase}_valid")
        nlls[step_now] = v["nll"]
        if best_ckpt is not None and validations_since_best(list(nlls.values())) == 0:
            save_best(step_now)
        if report:
            tqdm.write(f"[{phase}] step {step_now}: valid loss {v['loss']:.3f} nll {v['nll']:.3f} ppl {v['ppl']:.1f}")
            if temperature != 1.0:
                tqdm.write(f"[{phase}] pairs trained on: {shares.describe()}")

    if valid_batches and step == 0 and phase != "pretrain" and not nlls:
        validate(0)  # the starting point (for a masked fine-tune: the cost of the masks before any update)
    bar = tqdm(total=schedule.steps, initial=step, desc=phase, unit="step", disable=quiet or not first_process,
               dynamic_ncols=True)
    window = (step, time.perf_counter())
    stream = batcher.iterate(epoch, index)
    position = (epoch, index)
    try:
        while step < schedule.steps and not stopped():
            epoch, index, batch = next(stream)
            shares.add(batch)
            if mesh is not None:
                batch = parallel.shard_batch(batch, mesh, rules)
            state, metrics = train_step(state, batch, masks, key, sched, trainable)
            step += 1
            position = (epoch, index + 1)
            bar.update(1)
            if step % tc.log_every == 0 or step == schedule.steps:
                record, window = _step_record(state, metrics, step, window)
                logger.log(step, record, phase)
                logger.log(step, shares.record(), f"{phase}_pairs")
                bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
                _check_diverged(state, step, ckpt, tc.max_bad_steps, phase)
            if valid_batches and (step % eval_every == 0 or step == schedule.steps):
                validate(step)
            if step % tc.save_every == 0 and step < schedule.steps:
                save(step, position)
        _check_diverged(state, step, ckpt, tc.max_bad_steps, phase)
        if stopped() and report:
            best = min(nlls, key=nlls.get)  # the first step of the lowest
            tqdm.write(f"[{phase}] stopped early at step {step}: the validation NLL has not improved for "
                       f"{tc.patience} validations (train.patience); the lowest, {nlls[best]:.4f}, was at step "
                       f"{best}" + (f", kept in {run_dir / 'best'}" if tc.keep_best else ""))
        if report and temperature != 1.0:
            tqdm.write(f"[{phase}] pairs trained on: {shares.describe()}")
        if ckpt.latest_step() != step:
            save(step, position)
        ckpt.wait()
    finally:
        bar.close()
        logger.close()
        ckpt.close()
        if best_ckpt is not None:
            best_ckpt.close()
    return state["params"]
