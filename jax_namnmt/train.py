"""Pre-train the multilingual model on all pairs (resumes from the last checkpoint).

    python -m jax_namnmt.train --workdir DIR [--config FILE] [--out DIR]
"""

from __future__ import annotations

from pathlib import Path

from jax_namnmt import cli, workflow


def main() -> int:
    p = cli.parser("Pre-train the multilingual Transformer")
    p.add_argument("--workdir", default="runs/demo", help="prepared work directory (spm.model, data/)")
    p.add_argument("--out", default=None, help="run directory (default: WORKDIR/pretrain)")
    args = p.parse_args()
    config = cli.config_from_args(args)
    workdir = Path(args.workdir)
    out = Path(args.out) if args.out else workdir / "pretrain"
    workflow.run_pretrain(config, workdir, out, args.quiet)
    print(f"model: {out}")
    return 0


if __name__ == "__main__":
    cli.run(main)
