"""Average the parameters of a run's last checkpoints (fairseq's ``scripts/average_checkpoints.py``).

The mean of the last few checkpoints of a run is usually a slightly better model than the last
one alone. The output is a run directory: one checkpoint holding the averaged parameters (at the
newest averaged step), with the run's config, vocabulary and masks (a masked run stays masked).
``translate``, ``evaluate``, ``export`` and ``finetune --from`` read it like any run.

    python -m jax_namnmt.average --checkpoint RUN --out DIR [--last N | --steps 800,900,1000]

A run keeps ``train.keep_checkpoints`` checkpoints (2 by default), one every ``train.save_every``
steps: to average more, train with e.g. ``--set train.keep_checkpoints=5``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import jax
import numpy as np

from jax_namnmt import cli, packaged, run_lock
from jax_namnmt.errors import CheckpointError, ConfigError
from jax_namnmt.inference import param_shapes, read_config_and_vocab
from jax_namnmt.training.checkpoint import Checkpointer, copy_file
from jax_namnmt.training.loop import write_run_files


def mean_params(trees: Iterable) -> dict:
    """The leafwise mean of parameter trees of one structure (read one at a time: one tree and a
    float64 sum in memory), returned in each leaf's dtype."""
    total = dtypes = None
    count = 0
    for tree in trees:
        tree = jax.tree.map(np.asarray, tree)
        if total is None:
            dtypes = jax.tree.map(lambda x: x.dtype, tree)
            total = jax.tree.map(lambda x: x.astype(np.float64), tree)
        else:
            total = jax.tree.map(lambda acc, x: acc + x, total, tree)
        count += 1
    if not count:
        raise ValueError("no parameter trees to average")
    return jax.tree.map(lambda acc, dtype: (acc / count).astype(dtype), total, dtypes)


def choose_steps(available: Sequence[int], last: int | None, steps: Sequence[int] | None, run_dir: Path) -> list[int]:
    """The steps to average: exactly ``steps``, else the ``last`` newest, else all; an error naming
    the run and the steps it holds when they are not there."""
    available = sorted(available)
    if not available:
        raise CheckpointError(f"{run_dir} holds no checkpoint to average")
    if steps:
        missing = sorted(set(steps) - set(available))
        if missing:
            raise CheckpointError(f"{run_dir} has no checkpoint of step(s) {missing}; it holds steps {available}")
        return sorted(set(steps))
    if last is None:
        return available
    if last < 1:
        raise ConfigError(f"--last {last}: must be at least 1")
    if last > len(available):
        raise CheckpointError(f"--last {last}: {run_dir} holds {len(available)} checkpoint(s), steps {available} "
                              "(a run keeps train.keep_checkpoints of them)")
    return available[-last:]


def average_run(run_dir: Path, out: Path, last: int | None = None, steps: Sequence[int] | None = None) -> Path:
    """Write the mean of ``run_dir``'s chosen checkpoints (``choose_steps``) as the run directory
    ``out`` (holding ``out``'s lock); returns ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    if packaged.is_package(run_dir):
        raise CheckpointError(f"{run_dir} is a package: it holds one set of parameters, nothing to average")
    if not (run_dir / "checkpoints").exists():
        raise CheckpointError(f"{run_dir} is not a run directory (no checkpoints/); pass one written by train, "
                              "finetune or pipeline")
    if out.resolve() == run_dir.resolve():
        raise ConfigError(f"--out {out} is the run itself: write the average to another directory")
    config, _ = read_config_and_vocab(run_dir, "run directory")
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), param_shapes(config.model))
    with Checkpointer(run_dir) as ckpt:
        chosen = choose_steps(ckpt.all_steps(), last, steps, run_dir)
        with run_lock.hold(out):
            if (out / "checkpoints").exists():
                raise CheckpointError(f"{out} holds checkpoints already: write the average to a new directory")
            params = mean_params(jax.device_get(ckpt.restore_params(step, target=target)[0]) for step in chosen)
            origin = {"averaged_from": str(run_dir.resolve()), "averaged_steps": chosen}
            write_run_files(out, config, run_dir / "spm.model", origin)
            if (run_dir / "masks.npz").exists():
                copy_file(run_dir / "masks.npz", out / "masks.npz")
            with Checkpointer(out) as saved:
                saved.save(chosen[-1], {"params": params},
                           {"step": chosen[-1], "phase": "average", "config": config.to_dict(), **origin})
                saved.wait()
    return out


def _steps(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--steps {text!r}: expected step numbers separated by commas, e.g. 800,900,1000") from None


def main() -> int:
    p = cli.parser("Average the parameters of a run's last checkpoints", config=False)
    p.add_argument("--checkpoint", required=True, help="a run directory (train, finetune or pipeline)")
    p.add_argument("--out", required=True, help="the new run directory holding the average")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--last", type=int, default=None, help="average the N newest checkpoints (default: all kept)")
    which.add_argument("--steps", type=_steps, default=None, help="average these steps, e.g. 800,900,1000")
    args = p.parse_args()
    out = average_run(Path(args.checkpoint), Path(args.out), args.last, args.steps)
    print(f"averaged: {out}")
    return 0


if __name__ == "__main__":
    cli.run(main)
