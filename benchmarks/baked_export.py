"""Size and beam-search speed of a baked per-pair model (``python -m jax_namnmt.bake``) against the
masked model it comes from, in one process.

For each mask set: the masked model (all pairs' masks, every sentence the baked pair's id) and the
model baked for ``--pair`` translate the first ``--lines`` sources of that pair's
``test_2016_flickr`` (embedded Multi30k) with the run's decoding settings (beam 4, length penalty
0.6). Checked, untimed: the two give the same tokens for every sentence (the count is reported).
Timed: ``--repeats`` rounds of the whole set, masked and baked alternating, after a warm-up call of
each (compilation); the fastest round of each counts. Reported: parameters, float32 bytes, the
kept share of the masked neurons, sentences/s, and the ratios baked / masked.

Mask sets: the run's own ``masks.npz`` when it has one (``allocated``), and random masks with
``--keep`` of each pair's neurons kept (``random 0.95``, ...): an allocation at the paper's rho 0.9,
k 0.7 keeps about 97% of the neurons of a pair (the controlled reproduction's runs).

    python -m benchmarks.baked_export                       # the shipped model, random masks 0.95 and 0.5
    python -m benchmarks.baked_export --checkpoint RUN      # a masked run: its masks, and the random ones
    python -m benchmarks.baked_export --quick               # 32 lines, one round (report in /tmp)
"""

from __future__ import annotations

import argparse
import time

if not __package__:  # run as a file, ``python benchmarks/NAME.py``: run as ``python -m benchmarks.NAME``
    from _as_module import run_as_module

    run_as_module(__file__)

from .report import base_report, fmt, model_dict, print_table, resolve_out, write_json  # noqa: E402

NAME = "baked_export"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="a run or package (default: the shipped model)")
    p.add_argument("--pair", default="de-en")
    p.add_argument("--keep", default="0.95,0.5", help="random mask sets: kept share of each pair's neurons, "
                                                      "comma-separated ('' for none)")
    p.add_argument("--lines", type=int, default=256, help="test sentences of the pair")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds of each model (alternating)")
    p.add_argument("--seed", type=int, default=0, help="of the random masks")
    p.add_argument("--quick", action="store_true", help="32 lines, one round")
    p.add_argument("--out", default=None, help=f"the JSON report (default: benchmarks/results/{NAME}.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.lines, args.repeats = min(args.lines, 32), 1
    resolve_out(args, NAME)
    return args


def mask_sets(run, keeps, seed: int) -> dict:
    import numpy as np

    from jax_namnmt.method.masks import module_sizes

    sets = {}
    if run.masks is not None:
        sets["allocated"] = {name: np.asarray(m, bool) for name, m in run.masks.items()}
    rng = np.random.default_rng(seed)
    for keep in keeps:
        sets[f"random {keep:g}"] = {name: rng.random((len(run.pairs), n)) < keep
                                    for name, n in module_sizes(run.config.model).items()}
    return sets


def measure(run, masks: dict, pair: str, sources, repeats: int) -> dict:
    import dataclasses

    import jax
    import numpy as np

    from jax_namnmt.bake import bake_run
    from jax_namnmt.decoding import translate_ids
    from jax_namnmt.method.masks import to_model_masks

    masked_run = dataclasses.replace(run, masks=masks)
    params, config, info = bake_run(masked_run, pair=pair)
    pid = run.pairs.index(pair)
    model_masks = jax.tree.map(np.asarray, to_model_masks(masks))
    sides = {
        "masked": lambda: translate_ids(run.params, run.config.model, model_masks, sources,
                                        np.full(len(sources), pid, np.int32), run.config.decode),
        "baked": lambda: translate_ids(params, config.model, None, sources, np.zeros(len(sources), np.int32),
                                       run.config.decode),
    }
    outputs, warm, rounds = {}, {}, {name: [] for name in sides}
    for name, go in sides.items():
        start = time.perf_counter()
        outputs[name] = go()
        warm[name] = time.perf_counter() - start
    for _ in range(repeats):
        for name, go in sides.items():
            start = time.perf_counter()
            go()
            rounds[name].append(time.perf_counter() - start)
    same = sum(np.array_equal(a, b) for a, b in zip(outputs["masked"], outputs["baked"]))
    row = pid
    kept = sum(int(m[row].sum()) for m in masks.values()) / sum(m.shape[1] for m in masks.values())
    result = {"kept_neurons": kept, "same_tokens": int(same), "sentences": len(sources),
              "params": {"masked": info["params_masked"], "baked": info["params_baked"]},
              "float32_bytes": {"masked": 4 * info["params_masked"], "baked": 4 * info["params_baked"]},
              "widths": dict(config.model.widths)}
    for name in sides:
        best = min(rounds[name])
        result[name] = {"warmup_s": warm[name], "round_s": rounds[name], "best_s": best,
                        "sentences_per_s": len(sources) / best}
    result["params_ratio"] = info["params_baked"] / info["params_masked"]
    result["speed_ratio"] = result["baked"]["sentences_per_s"] / result["masked"]["sentences_per_s"]
    return result


def main(argv=None):
    args = parse_args(argv)
    import jax

    from jax_namnmt import packaged, workflow
    from jax_namnmt.data.corpus import read_lines
    from jax_namnmt.data.multiway import MULTI30K_SPLITS, multi30k_dir

    run = workflow.load_run(args.checkpoint or packaged.shipped_model_dir())
    src, tgt = args.pair.split("-")
    lines = read_lines(multi30k_dir() / f"{MULTI30K_SPLITS['test']}.{src}.gz")[:args.lines]
    sources = workflow.encode_sources(run, lines, tgt)
    keeps = [float(k) for k in args.keep.split(",") if k.strip()]
    report = base_report(NAME, args)
    report.update({"device": str(jax.devices()[0]), "model": model_dict(run.config.model), "pair": args.pair,
                   "checkpoint": str(args.checkpoint or "shipped model"), "decode": vars(run.config.decode)
                   if hasattr(run.config.decode, "__dict__") else str(run.config.decode), "results": {}})
    for name, masks in mask_sets(run, keeps, args.seed).items():
        print(f"{name}: masked and baked {args.pair}, {len(sources)} sentences ...", flush=True)
        report["results"][name] = measure(run, masks, args.pair, sources, args.repeats)
        write_json(report, args.out)
    rows = []
    for name, r in report["results"].items():
        rows.append([name, f"{r['kept_neurons']:.1%}", fmt(r["params"]["masked"]), fmt(r["params"]["baked"]),
                     f"{r['params_ratio']:.3f}", fmt(r["masked"]["sentences_per_s"], "{:.1f}"),
                     fmt(r["baked"]["sentences_per_s"], "{:.1f}"), f"{r['speed_ratio']:.2f}x",
                     f"{r['same_tokens']}/{r['sentences']}"])
    print_table(f"baked {args.pair} vs masked, {jax.devices()[0].platform}, beam {run.config.decode.beam_size}",
                ["masks", "kept", "params masked", "params baked", "size ratio", "masked sent/s", "baked sent/s",
                 "speed ratio", "same tokens"], rows)
    print(f"\nreport: {args.out}")


if __name__ == "__main__":
    main()
