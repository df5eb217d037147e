"""Translate text with a trained model: one output line per input line, in order.

    echo "Zwei Hunde spielen im Schnee." | python -m jax_namnmt.translate --src de --tgt en   # the shipped model
    echo "Zwei Hunde spielen im Schnee." | python -m jax_namnmt.translate --checkpoint DIR --src de --tgt en
    python -m jax_namnmt.translate --checkpoint DIR --src de --tgt en --input FILE [--output FILE]
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from jax_namnmt import cli, packaged, workflow
from jax_namnmt.data.corpus import read_lines
from jax_namnmt.errors import CheckpointError


def main() -> int:
    p = cli.parser("Translate with beam search", config=False)
    p.add_argument("--checkpoint", default=None,
                   help="a run directory or package (config, vocabulary, masks are in it); default: the shipped "
                        "Multi30k model (de, en, fr, cs)")
    p.add_argument("--src", required=True)
    p.add_argument("--tgt", required=True)
    p.add_argument("--input", default=None, help="input file (plain or .gz; default: stdin)")
    p.add_argument("--output", default=None, help="output file (default: stdout)")
    p.add_argument("--beam", type=int, default=None, help="beam size (default: the config's, 4)")
    p.add_argument("--lenpen", type=float, default=None, help="length penalty (default: the config's, 0.6)")
    args = p.parse_args()
    if args.checkpoint is None:
        shipped = packaged.shipped_model_dir()
        if not packaged.is_package(shipped):
            raise CheckpointError(f"no --checkpoint given and the shipped model {shipped} is missing from this "
                                  "installation; pass --checkpoint RUN")
        args.checkpoint = shipped
    run = workflow.load_run(Path(args.checkpoint))
    decode = run.config.decode
    if args.beam is not None:
        decode = dataclasses.replace(decode, beam_size=args.beam)
    if args.lenpen is not None:
        decode = dataclasses.replace(decode, length_penalty=args.lenpen)
    run.config = dataclasses.replace(run.config, decode=decode)
    if args.input:
        lines = read_lines(args.input)
    else:
        data = sys.stdin.buffer.read().decode("utf-8", errors="replace")
        lines = data.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
    outputs = workflow.translate_lines(run, lines, args.src, args.tgt, progress=not args.quiet and bool(args.output))
    text = "".join(line.replace("\n", " ") + "\n" for line in outputs)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    cli.run(main)
