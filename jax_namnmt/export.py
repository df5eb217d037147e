"""Export a trained run as a package: parameters (bfloat16 by default), config and vocabulary in one
small read-only directory that ``translate``, ``evaluate``, ``importance`` and ``pipeline --pretrained``
read like a run directory (this is how ``jax_namnmt/resources/model`` was made).

    python -m jax_namnmt.export --checkpoint RUN --out DIR [--dtype bfloat16|float32] [--config FILE]
"""

from __future__ import annotations

from pathlib import Path

from jax_namnmt import cli, packaged, workflow
from jax_namnmt.config import load_config


def main() -> int:
    p = cli.parser("Export a run as a package", config=False)
    p.add_argument("--config", default=None,
                   help="store this config instead of the run's (same model and pairs; e.g. newer fine-tuning or "
                        "decoding settings)")
    p.add_argument("--checkpoint", required=True, help="a run directory (its latest checkpoint is exported)")
    p.add_argument("--out", required=True, help="the package directory (replaced if it exists)")
    p.add_argument("--dtype", default="bfloat16", choices=packaged.STORED_DTYPES)
    args = p.parse_args()
    config = load_config(args.config) if args.config else None
    out = workflow.export_run(Path(args.checkpoint), Path(args.out), args.dtype, config=config)
    print(f"package: {out} ({packaged.package_size(out) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    cli.run(main)
