"""The paper's analyses, each one command over a pipeline's work directory (``python -m
jax_namnmt.pipeline --workdir W`` first; ``--system`` picks whose importance/masks/run, default
``method_te``). Tables are printed, data written as JSON and figures as PNG to ``W/analysis/``.

    python -m jax_namnmt.analyze importance --workdir W [--module decoder_layer_2/ffn/fc1] [--show-pairs a,b,c]
        Fig. 2: every neuron's importance in one module, for three pairs (and how alike they are)
    python -m jax_namnmt.analyze scores --workdir W
        Fig. 3: LScore (layer x pair) and MScore (layer x module) of the masks
    python -m jax_namnmt.analyze erasure --workdir W [--general 0.2] [--specific 0.5] [--seeds 1]
        Fig. 5: BLEU lost by every pair when a random share of the general neurons, or of one
        pair's specific neurons, is erased from the fine-tuned model
    python -m jax_namnmt.analyze gradients --workdir W [--lines 1000]
        beyond the paper: do the pairs' gradients agree (cosines, corrected for sampling noise) on
        the model the system was fine-tuned from, over all parameters and over the general and specific
        neurons of the masks (``analysis/gradients.py``)
    python -m jax_namnmt.analyze sweep --workdir W --param k --values 0,0.3,0.5,0.7,1
        Fig. 4 (k) / Table 3 (rho): allocate, fine-tune and evaluate per value, BLEU against the
        multilingual baseline; each finished point is kept, so a rerun continues where it stopped

``--max-lines N`` evaluates on the first N test lines per pair (default: the run's
``decode.test_max_lines``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jax_namnmt import cli, workflow
from jax_namnmt.analysis import erasure, plots, scores
from jax_namnmt.config import Config
from jax_namnmt.errors import CheckpointError, ConfigError
from jax_namnmt.inference import parse_config
from jax_namnmt.method.allocation import load_masks
from jax_namnmt.method.masks import canonical_name
from jax_namnmt.metrics import format_table
from jax_namnmt.training.checkpoint import load_json, save_json


def _paths(args) -> dict[str, Path]:
    w = Path(args.workdir)
    if not w.is_dir():
        raise ConfigError(f"--workdir {w} does not exist: run `python -m jax_namnmt.pipeline --workdir {w}` first")
    return {"workdir": w, "importance": w / f"importance_{args.system}.npz", "masks": w / f"masks_{args.system}.npz",
            "run": w / args.system, "out": Path(args.out) if args.out else w / "analysis"}


def _require(path: Path, what: str, system: str) -> Path:
    if not path.exists():
        raise CheckpointError(f"{path} is missing ({what} of system {system!r}): run the pipeline with "
                              f"--systems {system} in this work directory, or pick another --system")
    return path


def _start_model(run_dir: Path, system: str) -> Path:
    """The model the fine-tuned run ``run_dir`` of ``system`` started from (its ``run.json``)."""
    source = load_json(_require(run_dir / "run.json", "the run record", system)).get("from")
    if not source:
        raise CheckpointError(f"{run_dir / 'run.json'} names no model it was fine-tuned from")
    return Path(source)


def _csv(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def _bleu_row(result: dict, pairs: list[str]) -> dict[str, float]:
    row = {p: round(float(result[p]["bleu"]), 4) for p in pairs}
    row["avg"] = round(float(np.mean([row[p] for p in pairs])), 4)
    return row


def _evaluate(run, workdir: Path, max_lines: int | None) -> dict[str, float]:
    """BLEU per pair and on average (the callers show one progress bar over all evaluations)."""
    dc = run.config.decode
    result = workflow.evaluate_run(run, workflow.data_dir_for(run.config, workdir), dc.test_split,
                                   dc.test_max_lines if max_lines is None else max_lines, quiet=True)
    return _bleu_row(result, run.pairs)


def _table(rows: dict[str, dict[str, float]], cols: list[str]) -> str:
    """A matrix of scores (no average column: ``metrics.format_table`` prints the BLEU tables)."""
    width = max(len(name) for name in rows)
    sizes = [max(7, len(c)) for c in cols]
    lines = [f"{'':<{width}} " + " ".join(f"{c:>{n}}" for c, n in zip(cols, sizes))]
    cell = lambda v, n: f"{v:>{n}d}" if isinstance(v, (int, np.integer)) else f"{v:>{n}.2f}"  # noqa: E731
    lines += [f"{name:<{width}} " + " ".join(cell(row[c], n) for c, n in zip(cols, sizes))
              for name, row in rows.items()]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- commands


def importance(args) -> dict:
    p = _paths(args)
    theta, pairs = workflow.load_importance(_require(p["importance"], "importance", args.system))
    module = canonical_name(args.module) if args.module else next((m for m in reversed(list(theta)) if m.endswith("ffn/fc1")), next(iter(theta)))
    if module not in theta:
        raise ConfigError(f"--module {module!r} is not in {p['importance']}; modules: {', '.join(theta)}")
    show = _csv(args.show_pairs) or pairs[:3]
    unknown = [pair for pair in show if pair not in pairs]
    if unknown:
        raise ConfigError(f"--show-pairs {','.join(unknown)}: not in {p['importance']} (pairs: {','.join(pairs)})")
    values = np.asarray(theta[module], np.float64)[[pairs.index(pair) for pair in show]]
    correlation = np.corrcoef(values) if len(show) > 1 else np.ones((1, 1))
    stem = f"importance_{module.replace('/', '_')}"
    figure = plots.importance_lines(values, show, module, p["out"] / f"{stem}.png")
    report = {"module": module, "pairs": show, "importance": values.tolist(),
              "correlation": correlation.round(4).tolist(), "figure": str(figure)}
    save_json(p["out"] / f"{stem}.json", report)
    print(f"importance of {module} ({values.shape[1]} neurons); Pearson correlation between pairs:")
    print(_table({a: {b: correlation[i, j] for j, b in enumerate(show)} for i, a in enumerate(show)}, show))
    print(f"figure: {figure}")
    return report


def scores_command(args) -> dict:
    p = _paths(args)
    masks, pairs, _ = load_masks(_require(p["masks"], "masks", args.system))
    report = scores.scores_report(masks, pairs)
    report["figure"] = str(plots.scores_heatmaps({**report["lscore"], "pairs": pairs}, report["mscore"],
                                                 p["out"] / "scores.png"))
    save_json(p["out"] / "scores.json", report)
    nan = float("nan")
    as_rows = lambda names, cols, table: {n: {c: nan if v is None else v for c, v in zip(cols, row)}  # noqa: E731
                                          for n, row in zip(names, table)}
    print("LScore: share of each layer's specific neurons that each pair holds")
    print(_table(as_rows(report["lscore"]["layers"], pairs, report["lscore"]["scores"]), pairs))
    modules = report["mscore"]["modules"]
    print("MScore: mean over pairs of that share, per module")
    print(_table(as_rows(report["mscore"]["layers"], modules, report["mscore"]["scores"]), modules))
    print(f"figure: {report['figure']}")
    return report


def erasure_command(args) -> dict:
    for flag, value in (("--general", args.general), ("--specific", args.specific)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{flag} {value}: a share of the neurons, in [0, 1]")
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: at least 1")
    p = _paths(args)
    run = workflow.load_run(_require(p["run"], "fine-tuned run", args.system))
    if run.masks is None:
        raise CheckpointError(f"{p['run']} has no masks.npz: erasure needs a run fine-tuned with masks")
    pairs = run.pairs
    settings = {"none": (run.masks, 0)}
    for seed in range(args.seeds):
        suffix = f" (seed {seed})" if args.seeds > 1 else ""
        settings[f"general {args.general:.0%}{suffix}"] = erasure.erase_general(run.masks, args.general, seed)
        for m, pair in enumerate(pairs):
            settings[f"{pair} specific {args.specific:.0%}{suffix}"] = erasure.erase_specific(
                run.masks, m, args.specific, seed)
    bleu = {}
    for name, (masks, _) in tqdm(settings.items(), desc="erasure", disable=args.quiet):
        bleu[name] = _evaluate(dataclasses.replace(run, masks=masks), p["workdir"], args.max_lines)
    cols = pairs + ["avg"]
    drops = {name: {c: bleu["none"][c] - row[c] for c in cols} for name, row in bleu.items() if name != "none"}
    figure = plots.erasure_heatmap(np.array([[row[c] for c in pairs] for row in drops.values()]), list(drops), pairs,
                                   p["out"] / "erasure.png")
    report = {"run": str(p["run"]), "general_fraction": args.general, "specific_fraction": args.specific,
              "seeds": args.seeds, "erased_neurons": {name: count for name, (_, count) in settings.items()},
              "bleu": bleu, "drop": drops, "figure": str(figure)}
    save_json(p["out"] / "erasure.json", report)
    print(f"BLEU without erasure: {bleu['none']['avg']:.2f} on average; BLEU lost per pair (columns) by each erasure:")
    print(format_table(drops, pairs))
    print(f"figure: {figure}")
    return report


def sweep(args) -> dict:
    p = _paths(args)
    try:
        values = [float(v) for v in _csv(args.values)]
    except ValueError:
        values = []
    if args.param not in ("k", "rho") or not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise ConfigError(f"--param {args.param} --values {args.values}: k or rho, values in [0, 1]")
    run_dir = _require(p["run"], "fine-tuned run", args.system)
    config = Config.from_dict(load_json(run_dir / "config.json"), where=str(run_dir / "config.json")).validate()
    source = _start_model(run_dir, args.system)  # the sweep's points start where the system did
    importance_path = _require(p["importance"], "importance", args.system)
    out = p["out"] / f"sweep_{args.param}"
    record_path = p["out"] / f"sweep_{args.param}.json"
    settings = {"system": args.system, "max_lines": args.max_lines, "variant": config.method.variant,
                "fixed": {"rho": config.method.rho, "k": config.method.k}, "finetune_steps": config.finetune.steps}
    record = load_json(record_path) if record_path.exists() else {}
    if record.get("settings") != settings:
        record = {"settings": settings, "points": {}}
    if "baseline" not in record:
        baseline = _require(p["workdir"] / "multilingual", "the baseline run", "multilingual")
        record["baseline"] = _evaluate(workflow.load_run(baseline), p["workdir"], args.max_lines)
        save_json(record_path, record)
    for value in tqdm(values, desc=f"{args.param} sweep", disable=args.quiet):
        key = f"{value:g}"
        if key in record["points"]:
            continue
        method = dataclasses.replace(config.method, **{args.param: value})
        masks = workflow.run_allocate(importance_path, out / f"masks_{args.param}{key}.npz", method.rho, method.k,
                                      method.variant, quiet=True)
        point = dataclasses.replace(config, method=method)
        run_out = out / f"{args.param}{key}"
        if not workflow.is_finished(run_out, point.finetune.steps, point.train.patience):
            workflow.run_finetune(point, p["workdir"], source, run_out, masks, args.quiet)
        record["points"][key] = _evaluate(workflow.load_run(run_out), p["workdir"], args.max_lines)
        save_json(record_path, record)  # a finished point is never redone
    keys = sorted(record["points"], key=float)
    cols = list(config.data.pairs) + ["avg"]
    deltas = {c: [record["points"][k][c] - record["baseline"][c] for k in keys] for c in cols}
    record["figure"] = str(plots.sweep_lines(args.param, [float(k) for k in keys], deltas,
                                             p["out"] / f"sweep_{args.param}.png"))
    save_json(record_path, record)
    print(f"BLEU minus the multilingual baseline ({record['baseline']['avg']:.2f} on average) per {args.param}:")
    print(format_table({f"{args.param}={k}": {c: deltas[c][i] for c in cols} for i, k in enumerate(keys)},
                       config.data.pairs))
    print(f"figure: {record['figure']}")
    return record


def gradients_command(args) -> dict:
    """Per-pair gradient agreement of the pre-trained model the pipeline started from, over all
    parameters and over the general and specific neurons of ``--system``'s masks."""
    from jax_namnmt.analysis import gradients
    from jax_namnmt.data.batching import make_batcher

    p = _paths(args)
    start = _start_model(_require(p["run"], "fine-tuned run", args.system), args.system)
    run = workflow.load_run(start)
    masks, mask_pairs, _ = load_masks(_require(p["masks"], "masks", args.system))
    if list(mask_pairs) != list(run.pairs):
        raise CheckpointError(f"{p['masks']} is for pairs {', '.join(mask_pairs)}, the start model {start} "
                              f"for {', '.join(run.pairs)}")
    if args.lines < 2:
        raise ConfigError(f"--lines {args.lines}: at least 2 (two halves)")
    # the pipeline's data and settings (its fine-tuned run's config): the start may have been trained
    # elsewhere, on data its config names or not at all
    config = parse_config(load_json(p["run"] / "config.json"), str(p["run"] / "config.json"))
    method = config.method
    data = workflow.data_dir_for(config, p["workdir"])
    examples, _ = workflow.load_examples(config, data, run.vocab, method.importance_split, args.lines)
    halves = []
    for pair, name in enumerate(tqdm(run.pairs, desc="gradients", disable=args.quiet)):
        rows = np.flatnonzero(examples.pair_ids == pair)
        if len(rows) < 2:
            raise ConfigError(f"pair {name} has {len(rows)} {method.importance_split} examples: at least 2 are needed")
        pair_halves = []
        for part in (rows[0::2], rows[1::2]):  # alternate lines: the halves see alike sentences
            batcher = make_batcher(examples.take(part), "rows", method.importance_tokens_per_batch, config.data.src_row_len,
                                   config.data.tgt_row_len, seed=0, shuffle=False)
            pair_halves.append(gradients.pair_gradients(run.params, batcher.epoch(0), run.config.model))
        halves.append(tuple(pair_halves))
    result = gradients.agreement(halves, masks)
    rows = gradients.summary(result)
    figure = plots.agreement_heatmaps({g: result[g]["corrected"] for g in ("all", "general", "specific")},
                                      run.pairs, p["out"] / "gradients.png")
    as_list = lambda a: [[None if not np.isfinite(v) else round(float(v), 4) for v in row] for row in a]  # noqa: E731
    report = {"start": str(start), "masks": str(p["masks"]), "split": method.importance_split,
              "lines_per_pair": args.lines, "pairs": run.pairs, "summary": rows,
              "groups": {g: {"self": [round(float(v), 4) for v in r["self"]], "cross": as_list(r["cross"]),
                             "corrected": as_list(r["corrected"]), "size": r["size"]} for g, r in result.items()},
              "figure": str(figure)}
    save_json(p["out"] / "gradients.json", report)
    cols = ["self", "cross_mean", "cross_min", "corrected_mean", "corrected_min", "negative", "entries"]
    print(f"gradient agreement of {start} ({method.importance_split}, up to {args.lines} lines a pair in two halves); "
          "rows: parameter groups")
    print(_table({g: {c: r[c] for c in cols} for g, r in rows.items()}, cols))
    print(format_table({"self": {pair: v for pair, v in zip(run.pairs, result["all"]["self"])}}, run.pairs))
    print(f"figure: {figure}")
    return report


COMMANDS = {"importance": importance, "scores": scores_command, "erasure": erasure_command, "sweep": sweep,
            "gradients": gradients_command}


def parse_args(argv: list[str] | None = None):
    p = cli.parser(__doc__.split("\n")[0], config=False)
    p.add_argument("command", choices=list(COMMANDS))
    p.add_argument("--workdir", required=True, help="a pipeline work directory")
    p.add_argument("--system", default="method_te", help="whose importance, masks and run (method_te, method_av, ...)")
    p.add_argument("--out", default=None, help="where to write (default WORKDIR/analysis)")
    p.add_argument("--max-lines", type=int, default=None, help="test lines per pair (default: the run's)")
    p.add_argument("--module", default=None, help="importance: the module (default: the last decoder fc1)")
    p.add_argument("--show-pairs", default=None, help="importance: the pairs to plot (default: the first three)")
    p.add_argument("--general", type=float, default=0.2, help="erasure: share of the general neurons erased")
    p.add_argument("--specific", type=float, default=0.5, help="erasure: share of a pair's specific neurons erased")
    p.add_argument("--seeds", type=int, default=1, help="erasure: random draws of each erasure")
    p.add_argument("--param", default="k", help="sweep: k or rho")
    p.add_argument("--values", default="0,0.3,0.5,0.7,0.9,1", help="sweep: comma-separated values in [0, 1]")
    p.add_argument("--lines", type=int, default=1000,
                   help="gradients: validation lines a pair, split in two halves (default 1000)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    COMMANDS[args.command](args)
    return 0


if __name__ == "__main__":
    cli.run(main)
