"""Export a trained run as a package: parameters (bfloat16 by default), config and vocabulary in one
small read-only directory that ``translate``, ``evaluate``, ``importance`` and ``pipeline --pretrained``
read like a run directory (this is how ``jax_namnmt/resources/model`` was made).

    python -m jax_namnmt.export --checkpoint RUN --out DIR [--dtype bfloat16|float32]
"""

from __future__ import annotations

from pathlib import Path

from jax_namnmt import cli, packaged, workflow


def main() -> int:
    p = cli.parser("Export a run as a package", config=False)
    p.add_argument("--checkpoint", required=True, help="a run directory (its latest checkpoint is exported)")
    p.add_argument("--out", required=True, help="the package directory (replaced if it exists)")
    p.add_argument("--dtype", default="bfloat16", choices=packaged.STORED_DTYPES)
    args = p.parse_args()
    out = workflow.export_run(Path(args.checkpoint), Path(args.out), args.dtype)
    print(f"package: {out} ({packaged.package_size(out) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    cli.run(main)
