"""BLEU and chrF (sacreBLEU) of a trained model per pair and on average.

    python -m jax_namnmt.evaluate --checkpoint DIR [--workdir DIR] [--data DIR] [--split test] [--max-lines N]
                                  [--weights float32|bfloat16|int8]

The data: ``--data``; else the corpus the run was trained on (its config's ``data.data_dir``);
for a run or package trained on the embedded Multi30k (``data.data_dir`` empty), ``WORKDIR/data``
when ``--workdir`` is given or the checkpoint's parent holds ``data/``, else the embedded
Multi30k itself (``python -m jax_namnmt.evaluate --checkpoint jax_namnmt/resources/model``).
"""

from __future__ import annotations

import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from jax_namnmt import cli, workflow
from jax_namnmt.config import DECODE_WEIGHTS
from jax_namnmt.data.multiway import MULTI30K_SPLITS, build_from_multiway, multi30k_dir
from jax_namnmt.errors import ConfigError
from jax_namnmt.metrics import format_table
from jax_namnmt.training.checkpoint import save_json


def embedded_data(pairs, split: str, out_dir: Path) -> Path:
    """``split`` of the embedded Multi30k for ``pairs`` in the fairseq layout under ``out_dir``
    (what ``prepare`` builds in ``WORKDIR/data``, one split only)."""
    if split not in MULTI30K_SPLITS:
        raise ConfigError(f"split {split!r} is not a split of the embedded Multi30k "
                          f"({', '.join(MULTI30K_SPLITS)}); pass --data for another corpus")
    return build_from_multiway(multi30k_dir(), out_dir, pairs, {split: MULTI30K_SPLITS[split]})


def data_dir(run, checkpoint: Path, workdir: str | None, data: str | None, split: str, stack: ExitStack) -> Path:
    """The corpus to score on (see the module docstring); an embedded Multi30k split is built in a
    temporary directory that ``stack`` removes."""
    if data:
        return Path(data)
    if run.config.data.data_dir or workdir:
        return workflow.data_dir_for(run.config, Path(workdir) if workdir else checkpoint.parent)
    beside = workflow.data_dir_for(run.config, checkpoint.parent)
    if beside.is_dir():
        return beside
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jax_namnmt_eval_")))
    print(f"data: the embedded Multi30k ({split}: {MULTI30K_SPLITS.get(split, split)})", file=sys.stderr)
    return embedded_data(run.pairs, split, tmp)


def main() -> int:
    p = cli.parser("Evaluate with beam search and sacreBLEU", config=False)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--workdir", default=None,
                   help="work directory holding data/ (default: the checkpoint's parent if it holds data/, "
                        "else the embedded Multi30k for a run trained on it)")
    p.add_argument("--data", default=None,
                   help="a corpus in the fairseq layout (default: the run's corpus; see --workdir)")
    p.add_argument("--split", default=None, help="split name (default: the config's, test)")
    p.add_argument("--max-lines", type=int, default=None, help="first N lines per pair (default: the config's)")
    p.add_argument("--zero-shot", default=None,
                   help="zero-shot directions to score too: auto (every untrained direction between the model's "
                        "languages that the corpus has), none, or e.g. de-cs,cs-de (default: the config's "
                        "decode.zero_shot, auto)")
    p.add_argument("--zero-shot-masks", default=None, choices=("union", "intersection", "general"),
                   help="how a masked model's zero-shot mask is composed (default: the run's method.zero_shot_masks)")
    p.add_argument("--weights", default=None, choices=DECODE_WEIGHTS,
                   help="precision of the model's matrices while decoding, as translate --weights (default: the "
                        "config's decode.weights, float32)")
    p.add_argument("--out", default=None, help="write the scores and hypotheses as JSON")
    args = p.parse_args()
    checkpoint = Path(args.checkpoint)
    run = workflow.load_run(checkpoint)
    if args.zero_shot_masks:
        run.config = run.config.with_sections(method={"zero_shot_masks": args.zero_shot_masks})
    if args.weights:
        run.config = run.config.with_sections(decode={"weights": args.weights})
    split = args.split or run.config.decode.test_split
    max_lines = run.config.decode.test_max_lines if args.max_lines is None else args.max_lines
    with ExitStack() as stack:
        data = data_dir(run, checkpoint, args.workdir, args.data, split, stack)
        zero_shot = workflow.zero_shot_test_set(run, data, split, args.zero_shot,
                                                embedded=False if args.data else None)
        scores = workflow.evaluate_run(run, data, split, max_lines, args.quiet, zero_shot=zero_shot)
    rows = {}
    for metric, key in (("BLEU", "bleu"), ("chrF", "chrf")):
        rows[metric] = {pair: scores[pair][key] for pair in run.pairs} | {"avg": scores["avg"][key]}
        if zero_shot:  # after the trained pairs' average, which they are not part of
            rows[metric] |= {f"{d} (0-shot)": scores[d][key] for d in zero_shot}
            rows[metric]["0-shot avg"] = scores["zero_shot_avg"][key]
    print(format_table(rows, run.pairs, title=f"{args.checkpoint} on {split} ({max_lines or 'all'} lines per pair)"))
    if zero_shot:
        print(f"zero-shot (not trained): {', '.join(zero_shot)}; their average BLEU "
              f"{scores['zero_shot_avg']['bleu']:.2f}; the trained pairs' {scores['avg']['bleu']:.2f}")
    print(f"signature: {scores['signature']['bleu']}")
    if args.out:
        save_json(args.out, {**scores, "weights": run.config.decode.weights})
    return 0


if __name__ == "__main__":
    cli.run(main)
