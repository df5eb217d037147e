"""Bake one pair's mask (or one target language's, for masks of the target variant) into the weights
of a masked run: a smaller plain Transformer package that translates that pair token for token as
the masked model does (the weight surgery: ``method/bake.py``; the model: ``model/baked.py``).

    python -m jax_namnmt.bake export --checkpoint RUN (--pair de-en | --target en) --out DIR [--dtype float32] [--multiple 1]
    python -m jax_namnmt.bake translate --model DIR --src de --tgt en [--input F] [--output F]

The package holds ``config.json`` (the run's config; ``model.widths`` the baked widths, ``data.pairs``
the pairs it serves), ``params.npz``, ``spm.model`` and ``package.json`` (checksum; ``baked``: the
pair or target, the run, the parameter counts).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import numpy as np

from jax_namnmt import cli, packaged
from jax_namnmt.config import Config
from jax_namnmt.errors import CheckpointError
from jax_namnmt.method.bake import bake, count_params, pair_keep
from jax_namnmt.model.baked import param_shapes


@dataclasses.dataclass
class Baked:
    """A loaded baked package (the fields ``workflow.encode_sources`` and decoding read)."""

    directory: Path
    config: Config  # config.model is a BakedModelConfig
    vocab: object
    params: dict
    info: dict

    @property
    def pairs(self) -> list[str]:
        return list(self.config.data.pairs)


def bake_run(run, pair: str | None = None, target: str | None = None,
             multiple: int = 1) -> tuple[dict, Config, dict]:
    """``(params, config, info)`` of ``run`` (``workflow.Run`` of a masked run) baked for ``pair``
    or ``target`` (widths rounded up to ``multiple``); ``config.data.pairs`` becomes the pairs it serves."""
    if run.masks is None:
        raise CheckpointError(f"{run.directory} has no masks.npz: only a masked (fine-tuned) run can be baked")
    keep, served = pair_keep(run.masks, run.pairs, pair=pair, target=target)
    masked = jax.device_get(run.params)
    params, model = bake(masked, run.config.model, keep, multiple)
    config = dataclasses.replace(run.config, model=model, data=dataclasses.replace(run.config.data, pairs=tuple(served)))
    info = {"pair": pair, "target": target, "serves": served, "params_masked": count_params(masked),
            "params_baked": count_params(params), "step": run.step, "from": str(Path(run.directory).resolve())}
    return params, config, info


def config_dict(config: Config) -> dict:
    return {**config.to_dict(), "model": config.model.to_dict()}


def save_baked(out: Path, params: dict, config: Config, vocab_path: Path, info: dict, dtype: str = "float32") -> Path:
    return packaged.save_package(out, params, config_dict(config), vocab_path, dtype, {"baked": info})


def load_baked(directory: Path) -> Baked:
    """A baked package written by :func:`save_baked` (checksum and shapes checked)."""
    from jax_namnmt.inference import is_baked, read_config_and_vocab

    directory = Path(directory)
    if not packaged.is_package(directory) or "baked" not in packaged.read_package_info(directory):
        raise CheckpointError(f"{directory} is not a baked package (python -m jax_namnmt.bake export writes one)")
    info = packaged.read_package_info(directory)
    config, vocab = read_config_and_vocab(directory, "baked package")
    if not is_baked(config):
        raise CheckpointError(f"{directory / 'config.json'}: model.widths is missing: not a baked model's config")
    params = packaged.load_package_params(directory, param_shapes(config.model))
    return Baked(directory, config, vocab, params, info["baked"])


def translate(baked: Baked, lines: list[str], src: str, tgt: str) -> list[str]:
    """One output line per input line (an empty line gives an empty line), beam search with the
    package's decoding settings."""
    from jax_namnmt.decoding import translate_ids
    from jax_namnmt.directions import check_baked_direction
    from jax_namnmt.workflow import encode_sources

    check_baked_direction(baked.pairs, src, tgt, baked.directory)
    keep = [i for i, line in enumerate(lines) if line.strip()]
    sources = encode_sources(baked, [lines[i] for i in keep], tgt)
    ids = translate_ids(baked.params, baked.config.model, None, sources, np.zeros(len(sources), np.int32),
                        baked.config.decode)
    outputs = [""] * len(lines)
    for i, hyp in zip(keep, baked.vocab.decode_batch(ids) if ids else []):
        outputs[i] = hyp
    return outputs


def main() -> int:
    p = cli.parser("Bake a pair's mask into a smaller plain model, or translate with one", config=False)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="bake a masked run for one pair or target language")
    e.add_argument("--checkpoint", required=True, help="a masked run directory (with masks.npz)")
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--pair", help="the pair to bake, e.g. de-en")
    which.add_argument("--target", help="a target language (masks of the target variant), e.g. en")
    e.add_argument("--out", required=True, help="the package directory (replaced if it exists)")
    e.add_argument("--dtype", default="float32", choices=packaged.STORED_DTYPES,
                   help="stored parameters (default float32: the masked run's translations exactly)")
    e.add_argument("--multiple", type=int, default=1,
                   help="round every width up to a multiple of this with zero features (e.g. 8 or 128 for "
                        "accelerators' matrix units; default 1: the smallest model)")
    t = sub.add_parser("translate", help="translate with a baked package")
    t.add_argument("--model", required=True, help="a baked package directory")
    t.add_argument("--src", required=True)
    t.add_argument("--tgt", required=True)
    t.add_argument("--input", default=None, help="input file (default: stdin)")
    t.add_argument("--output", default=None, help="output file (default: stdout)")
    for sp in (e, t):  # also after the subcommand (cli.run reads --debug from anywhere on the line)
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.command == "export":
        from jax_namnmt.workflow import load_run

        run = load_run(Path(args.checkpoint))
        params, config, info = bake_run(run, args.pair, args.target, args.multiple)
        out = save_baked(Path(args.out), params, config, run.vocab.path, info, args.dtype)
        print(f"baked {', '.join(info['serves'])}: {info['params_baked']:,} parameters "
              f"({info['params_baked'] / info['params_masked']:.1%} of the masked model's {info['params_masked']:,}); "
              f"package: {out} ({packaged.package_size(out) / 1e6:.1f} MB)")
        return 0
    baked = load_baked(Path(args.model))
    text = Path(args.input).read_text(encoding="utf-8") if args.input else sys.stdin.read()
    lines = translate(baked, text.splitlines(), args.src, args.tgt)
    result = "".join(line + "\n" for line in lines)
    if args.output:
        Path(args.output).write_text(result, encoding="utf-8")
    else:
        sys.stdout.write(result)
    return 0


if __name__ == "__main__":
    cli.run(main)
