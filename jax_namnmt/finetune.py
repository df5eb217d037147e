"""Fine-tune a pre-trained model with neuron masks (fresh optimizer), or, without --masks,
continue the plain model with the same schedule (the equal-steps baseline).

    python -m jax_namnmt.finetune --from WORKDIR/pretrain --masks masks.npz --out WORKDIR/method_te
"""

from __future__ import annotations

from pathlib import Path

from jax_namnmt import cli, workflow


def main() -> int:
    p = cli.parser("Masked fine-tuning")
    p.add_argument("--from", dest="source", required=True, help="the pre-trained run directory")
    p.add_argument("--masks", default=None, help="mask file from jax_namnmt.allocate (omit for the baseline)")
    p.add_argument("--out", required=True, help="the new run directory")
    p.add_argument("--workdir", default=None, help="work directory holding data/ (default: --from's parent)")
    args = p.parse_args()
    source = Path(args.source)
    if args.config is None and (source / "config.json").exists():
        args.config = str(source / "config.json")
    config = cli.config_from_args(args)
    workdir = Path(args.workdir) if args.workdir else source.parent
    out = workflow.run_finetune(config, workdir, source, Path(args.out),
                                Path(args.masks) if args.masks else None, args.quiet)
    print(f"model: {out}")
    return 0


if __name__ == "__main__":
    cli.run(main)
