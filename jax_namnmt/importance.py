"""Score every neuron for every pair (Taylor expansion or absolute value) on the validation split.

    python -m jax_namnmt.importance --checkpoint DIR [--method taylor|absolute] [--workdir DIR] [--out FILE]
"""

from __future__ import annotations

from pathlib import Path

from jax_namnmt import cli, workflow


def main() -> int:
    p = cli.parser("Neuron importance per language pair")
    p.add_argument("--checkpoint", required=True, help="a run directory (e.g. WORKDIR/pretrain)")
    p.add_argument("--workdir", default=None, help="work directory holding data/ (default: the checkpoint's parent)")
    p.add_argument("--method", choices=("taylor", "absolute"), default=None)
    p.add_argument("--out", default=None,
                   help="output file (default: CHECKPOINT/importance_<method>.npz; give one for a read-only package)")
    args = p.parse_args()
    run_dir = Path(args.checkpoint)
    if args.config is None and (run_dir / "config.json").exists():
        args.config = str(run_dir / "config.json")
    config = cli.config_from_args(args)
    workdir = Path(args.workdir) if args.workdir else run_dir.parent
    path = workflow.run_importance(run_dir, config, workdir, args.method or config.method.importance, args.quiet,
                                   Path(args.out) if args.out else None)
    print(f"importance: {path}")
    return 0


if __name__ == "__main__":
    cli.run(main)
