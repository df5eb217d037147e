"""Score given translations with a trained model (forced decoding): one score per line pair.

    python -m jax_namnmt.score --src de --tgt en --source test.de --target test.en     # the shipped model
    python -m jax_namnmt.score --checkpoint W/method_te --src de --tgt en --source S --target T \\
        [--normalize] [--jsonl] [--output FILE]

Each output line is the target line's log-probability given its source line (natural log,
summed over its subword tokens, EOS included), under the direction's mask as ``translate``
decodes it; ``--normalize`` divides it by the number of tokens (the mean per token), ``--jsonl``
writes ``{"line", "log_prob", "tokens"}`` objects instead. A summary (lines, tokens, nats/token,
perplexity) goes to stderr. The two files must be line-aligned; an empty line, or one longer than
the model was trained for, is an error naming its file and line. ``--output`` is written whole
or not at all. See ``jax_namnmt/scoring.py``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from jax_namnmt import cli
from jax_namnmt.errors import atomic_write


def _parser():
    p = cli.parser("Score translations (forced decoding): log p(target | source) per line", config=False)
    p.add_argument("--checkpoint", default=None,
                   help="a run directory or package (default: the shipped Multi30k model)")
    p.add_argument("--src", required=True, help="source language code")
    p.add_argument("--tgt", required=True, help="target language code")
    p.add_argument("--source", required=True, help="source sentences, one a line (plain or .gz)")
    p.add_argument("--target", required=True, help="their translations, line-aligned with --source (plain or .gz)")
    p.add_argument("--normalize", action="store_true",
                   help="print the mean log-probability per target token instead of the sum")
    p.add_argument("--jsonl", action="store_true",
                   help='one JSON object a line: {"line": N, "log_prob": sum, "tokens": count}')
    p.add_argument("--output", default=None, help="output file (default: stdout)")
    return p


def format_lines(log_prob, tokens, normalize: bool, jsonl: bool) -> list[str]:
    """The output lines for per-line ``log_prob`` sums and ``tokens`` counts."""
    if jsonl:
        return [json.dumps({"line": k + 1, "log_prob": round(float(lp), 6), "tokens": int(n)})
                for k, (lp, n) in enumerate(zip(log_prob, tokens))]
    values = log_prob / tokens if normalize else log_prob
    return [f"{float(v):.6f}" for v in values]


def summary(log_prob, tokens) -> str:
    total, count = float(log_prob.sum()), int(tokens.sum())
    nll = -total / max(count, 1)
    return (f"{len(tokens)} lines, {count} target tokens: {nll:.4f} nats/token "
            f"(perplexity {math.exp(min(nll, 700.0)):.2f}), log-probability {total:.2f}")


def main() -> int:
    args = _parser().parse_args()
    from tqdm.auto import tqdm

    from jax_namnmt import inference, packaged
    from jax_namnmt.data.corpus import read_lines
    from jax_namnmt.scoring import Scorer

    checkpoint = packaged.checkpoint_or_shipped(args.checkpoint)
    src_lines, tgt_lines = read_lines(args.source), read_lines(args.target)
    scorer = Scorer(inference.load_model(Path(checkpoint)), args.src, args.tgt, args.source, args.target)
    if not args.quiet:
        for note in scorer.notes:
            print(f"note: {note}", file=sys.stderr)
    with tqdm(total=len(src_lines), unit="line", disable=args.quiet, file=sys.stderr) as bar:
        log_prob, tokens = scorer.score(src_lines, tgt_lines, progress=bar)
    text = "".join(line + "\n" for line in format_lines(log_prob, tokens, args.normalize, args.jsonl))
    if args.output:
        with atomic_write(args.output, "w", f"output file {args.output}", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    if not args.quiet:
        print(summary(log_prob, tokens), file=sys.stderr)
    return 0


if __name__ == "__main__":
    cli.run(main)
