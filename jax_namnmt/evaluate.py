"""BLEU and chrF (sacreBLEU) of a trained model per pair and on average.

    python -m jax_namnmt.evaluate --checkpoint DIR [--workdir DIR] [--split test] [--max-lines N]
"""

from __future__ import annotations

from pathlib import Path

from jax_namnmt import cli, workflow
from jax_namnmt.metrics import format_table
from jax_namnmt.training.checkpoint import save_json


def main() -> int:
    p = cli.parser("Evaluate with beam search and sacreBLEU", config=False)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--workdir", default=None, help="work directory holding data/ (default: the checkpoint's parent)")
    p.add_argument("--data", default=None, help="a corpus in the fairseq layout (default: WORKDIR/data)")
    p.add_argument("--split", default=None, help="split name (default: the config's, test)")
    p.add_argument("--max-lines", type=int, default=None, help="first N lines per pair (default: the config's)")
    p.add_argument("--out", default=None, help="write the scores and hypotheses as JSON")
    args = p.parse_args()
    run = workflow.load_run(Path(args.checkpoint))
    workdir = Path(args.workdir) if args.workdir else Path(args.checkpoint).parent
    data_dir = Path(args.data) if args.data else workflow.data_dir_for(run.config, workdir)
    split = args.split or run.config.decode.test_split
    max_lines = run.config.decode.test_max_lines if args.max_lines is None else args.max_lines
    scores = workflow.evaluate_run(run, data_dir, split, max_lines, args.quiet)
    row = {pair: scores[pair]["bleu"] for pair in run.pairs}
    print(format_table({"BLEU": row, "chrF": {pair: scores[pair]["chrf"] for pair in run.pairs}}, run.pairs,
                       title=f"{args.checkpoint} on {split} ({max_lines or 'all'} lines per pair)"))
    print(f"signature: {scores['signature']['bleu']}")
    if args.out:
        save_json(args.out, scores)
    return 0


if __name__ == "__main__":
    cli.run(main)
