"""Build and validate the corpus and train the joint SentencePiece vocabulary.

    python -m jax_namnmt.prepare --workdir DIR [--data DIR --pairs de-en,...]
    python -m jax_namnmt.prepare --workdir DIR --from-multiway DIR [--splits train=train,valid=val,test=test]
    python -m jax_namnmt.prepare --workdir DIR --from-ntrex ../shared/data/ntrex128 --pairs en-de,en-fr
    python -m jax_namnmt.prepare --workdir DIR --from-tfds NAME[,NAME...] --pairs de-en,... [--tfds-data-dir D]
"""

from __future__ import annotations

from pathlib import Path

from jax_namnmt import cli, workflow
from jax_namnmt.data.corpus import parse_pairs
from jax_namnmt.data.multiway import build_from_multiway, build_from_ntrex
from jax_namnmt.errors import ConfigError


def _split_map(flag: str, text: str) -> dict[str, str]:
    """``out=in,out=in`` as a dict (TFDS slices such as ``train[:95%]`` hold no comma)."""
    try:
        return dict(item.split("=", 1) for item in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected out=in,out=in,...") from None


def main() -> int:
    p = cli.parser("Build, validate and tokenize the corpus")
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--from-multiway", default=None, help="a multi-way corpus, one {split}.{lang}[.gz] file per language")
    p.add_argument("--pattern", default="{split}.{lang}.gz", help="file name pattern of --from-multiway")
    p.add_argument("--splits", default="train=train,valid=val,test=test",
                   help="out=in split names for --from-multiway")
    p.add_argument("--from-ntrex", default=None, help="NTREX-128 directory: split by document 80/10/10")
    p.add_argument("--from-tfds", default=None,
                   help="TFDS translation datasets (registered names or dataset directories), comma-separated; "
                        "array_record format, read without TensorFlow (see jax_namnmt/data/tfds_source.py)")
    p.add_argument("--tfds-data-dir", default=None, help="TFDS data directory of --from-tfds names")
    p.add_argument("--tfds-splits", default="train=train,valid=validation,test=test",
                   help="out=in split names for --from-tfds (TFDS slices allowed: valid=train[:2000])")
    p.add_argument("--tfds-download", action="store_true",
                   help="let TFDS download and prepare --from-tfds datasets (array_record)")
    args = p.parse_args()
    workdir = Path(args.workdir)
    sources = [flag for flag, value in (("--from-multiway", args.from_multiway), ("--from-ntrex", args.from_ntrex),
                                        ("--from-tfds", args.from_tfds)) if value]
    if len(sources) > 1:
        raise ConfigError(f"{' and '.join(sources)}: give one corpus source")
    overrides = []
    if args.from_multiway or args.from_ntrex or args.from_tfds:
        overrides.append(f"data.data_dir={workdir / 'data'}")
    config = cli.config_from_args(args)
    if overrides:
        config = config.override(overrides).validate()
    pairs = parse_pairs(config.data.pairs)
    if args.from_multiway:
        splits = _split_map("--splits", args.splits)
        build_from_multiway(args.from_multiway, workdir / "data", pairs, splits, pattern=args.pattern)
    elif args.from_tfds:
        from jax_namnmt.data.tfds_source import build_from_tfds

        report = build_from_tfds(args.from_tfds, workdir / "data", pairs, _split_map("--tfds-splits", args.tfds_splits),
                                 args.tfds_data_dir, args.tfds_download, args.quiet)
        print(report.summary())
    elif args.from_ntrex:
        build_from_ntrex(args.from_ntrex, workdir / "data", pairs)
    summary = workflow.prepare(config, workdir, args.quiet)
    print(f"corpus: {summary['data_dir']}  vocabulary: {summary['vocab']}")
    return 0


if __name__ == "__main__":
    cli.run(main)
