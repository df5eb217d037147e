"""Every step of the method, end to end, with a BLEU table.

    python -m jax_namnmt.pipeline [--config FILE] [--data DIR --pairs ...] [--workdir DIR]

prepare -> pre-train (multilingual) -> importance (Taylor) -> allocate -> masked fine-tuning
(method_te), and, for a fair comparison, the multilingual baseline trained on for the same
number of steps with the same schedule (multilingual) -> beam search + BLEU for both.
Writes WORKDIR/results.json. Re-running resumes: finished phases are skipped, interrupted
training resumes from its last checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

from jax_namnmt import cli, workflow
from jax_namnmt.metrics import format_table
from jax_namnmt.training.checkpoint import Checkpointer, save_json


def _done(run_dir: Path, steps: int) -> bool:
    step = Checkpointer(run_dir).latest_step() if (run_dir / "checkpoints").exists() else None
    return step is not None and step >= steps


def main() -> int:
    p = cli.parser(__doc__.split("\n")[0])
    p.add_argument("--workdir", default="runs/demo", help="where everything is written (default: runs/demo)")
    args = p.parse_args()
    config = cli.config_from_args(args)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    quiet = args.quiet
    seconds: dict[str, float] = {}

    def phase(name, fn):
        start = time.perf_counter()
        result = fn()
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"[pipeline] {name}: {seconds[name]:.1f} s")
        return result

    pretrain_dir = workdir / "pretrain"
    method_dir = workdir / "method_te"
    baseline_dir = workdir / "multilingual"
    mc = config.method

    phase("prepare", lambda: workflow.prepare(config, workdir, quiet))
    if not _done(pretrain_dir, config.train.steps):
        phase("pretrain", lambda: workflow.run_pretrain(config, workdir, pretrain_dir, quiet))
    importance = phase("importance", lambda: workflow.run_importance(pretrain_dir, config, workdir, mc.importance, quiet))
    masks_path = phase("allocate", lambda: workflow.run_allocate(importance, workdir / "masks_te.npz", mc.rho, mc.k,
                                                                 mc.variant, quiet))
    if not _done(method_dir, config.finetune.steps):
        phase("finetune_method_te",
              lambda: workflow.run_finetune(config, workdir, pretrain_dir, method_dir, masks_path, quiet))
    if not _done(baseline_dir, config.finetune.steps):
        phase("finetune_multilingual",
              lambda: workflow.run_finetune(config, workdir, pretrain_dir, baseline_dir, None, quiet))

    data_dir = workflow.data_dir_for(config, workdir)
    dc = config.decode
    systems = {}
    for name, run_dir in (("multilingual", baseline_dir), ("method_te", method_dir)):
        run = workflow.load_run(run_dir)
        scores = phase(f"evaluate_{name}", lambda: workflow.evaluate_run(run, data_dir, dc.test_split,
                                                                         dc.test_max_lines, quiet))
        systems[name] = {pair: scores[pair]["bleu"] for pair in run.pairs}
        systems[name].update(avg=scores["avg"]["bleu"], chrf_avg=scores["avg"]["chrf"],
                             params=workflow.param_count(run.config), checkpoint=str(run_dir.resolve()))
        signature = scores["signature"]
        _show_samples(name, scores["hypotheses"])

    pairs = list(config.data.pairs)
    rows = {name: {k: v for k, v in s.items() if k in pairs or k == "avg"} for name, s in systems.items()}
    rows["delta"] = {k: rows["method_te"][k] - rows["multilingual"][k] for k in rows["multilingual"]}
    lines = dc.test_max_lines or "all"
    test_name = f"{dc.test_split} split of {data_dir} (first {lines} lines per pair)"
    print()
    print(format_table(rows, pairs, title=f"BLEU, beam {dc.beam_size}, {test_name}"))
    print(f"signature: {signature['bleu']}")
    print("wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()))
    save_json(workdir / "results.json", {"systems": systems, "test": test_name, "signature": signature["bleu"],
                                         "signature_chrf": signature["chrf"], "seconds": seconds,
                                         "config": config.to_dict()})
    print(f"results: {workdir / 'results.json'}")
    return 0


def _show_samples(name: str, hypotheses: dict, n: int = 2) -> None:
    for pair, hyps in list(hypotheses.items())[:2]:
        for h in hyps[:n]:
            print(f"  [{name} {pair}] {h}")


if __name__ == "__main__":
    cli.run(main)
