"""Export a trained run as a package: parameters (bfloat16 by default), config and vocabulary in one
small read-only directory that ``translate``, ``evaluate``, ``importance`` and ``pipeline --pretrained``
read like a run directory (this is how ``jax_namnmt/resources/model`` was made).

    python -m jax_namnmt.export --checkpoint RUN --out DIR [--dtype bfloat16|float32] [--config FILE]
    python -m jax_namnmt.export --checkpoint RUN --out DIR --format marian   # = python -m jax_namnmt.export_marian
"""

from __future__ import annotations

from pathlib import Path

from jax_namnmt import cli, packaged, workflow
from jax_namnmt.config import load_config
from jax_namnmt.errors import ConfigError


def main() -> int:
    p = cli.parser("Export a run as a package", config=False)
    p.add_argument("--config", default=None,
                   help="store this config instead of the run's (same model and pairs; e.g. newer fine-tuning or "
                        "decoding settings)")
    p.add_argument("--checkpoint", required=True, help="a run directory (its latest checkpoint is exported)")
    p.add_argument("--out", required=True, help="the package directory (replaced if it exists)")
    p.add_argument("--dtype", default="bfloat16", choices=packaged.STORED_DTYPES)
    p.add_argument("--format", default="package", choices=("package", "marian"),
                   help="package (ours) or marian: a HuggingFace MarianMTModel directory, float32 "
                        "(see python -m jax_namnmt.export_marian)")
    args = p.parse_args()
    if args.format == "marian":
        if args.config:
            raise ConfigError("--config applies to --format package only")
        from jax_namnmt.export_marian import directory_size, export_marian

        out = export_marian(Path(args.checkpoint), Path(args.out))
        print(f"marian: {out} ({directory_size(out) / 1e6:.1f} MB)")
        return 0
    config = load_config(args.config) if args.config else None
    out = workflow.export_run(Path(args.checkpoint), Path(args.out), args.dtype, config=config)
    print(f"package: {out} ({packaged.package_size(out) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    cli.run(main)
