"""Build and validate the corpus and train the joint SentencePiece vocabulary.

    python -m jax_namnmt.prepare --workdir DIR [--data DIR --pairs de-en,...]
    python -m jax_namnmt.prepare --workdir DIR --from-multiway DIR [--splits train=train,valid=val,test=test]
    python -m jax_namnmt.prepare --workdir DIR --from-ntrex ../shared/data/ntrex128 --pairs en-de,en-fr
"""

from __future__ import annotations

from pathlib import Path

from jax_namnmt import cli, workflow
from jax_namnmt.data.corpus import parse_pairs
from jax_namnmt.data.multiway import build_from_multiway, build_from_ntrex
from jax_namnmt.errors import ConfigError


def main() -> int:
    p = cli.parser("Build, validate and tokenize the corpus")
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--from-multiway", default=None, help="a multi-way corpus, one {split}.{lang}[.gz] file per language")
    p.add_argument("--pattern", default="{split}.{lang}.gz", help="file name pattern of --from-multiway")
    p.add_argument("--splits", default="train=train,valid=val,test=test",
                   help="out=in split names for --from-multiway")
    p.add_argument("--from-ntrex", default=None, help="NTREX-128 directory: split by document 80/10/10")
    args = p.parse_args()
    workdir = Path(args.workdir)
    overrides = []
    if args.from_multiway or args.from_ntrex:
        overrides.append(f"data.data_dir={workdir / 'data'}")
    config = cli.config_from_args(args)
    if overrides:
        config = config.override(overrides).validate()
    pairs = parse_pairs(config.data.pairs)
    if args.from_multiway:
        try:
            splits = dict(item.split("=", 1) for item in args.splits.split(","))
        except ValueError:
            raise ConfigError(f"--splits {args.splits!r}: expected out=in,out=in,...") from None
        build_from_multiway(args.from_multiway, workdir / "data", pairs, splits, pattern=args.pattern)
    elif args.from_ntrex:
        build_from_ntrex(args.from_ntrex, workdir / "data", pairs)
    summary = workflow.prepare(config, workdir, args.quiet)
    print(f"corpus: {summary['data_dir']}  vocabulary: {summary['vocab']}")
    return 0


if __name__ == "__main__":
    cli.run(main)
