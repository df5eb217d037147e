"""Cost of the neuron masks as the number of pairs grows: our fine-tuning step with masks against
the plain step (masks=None), same model, same packed batches, same step, for each of ``--pairs``
(8, 32 and 128 by default) in one run.

Masks are what ``jax_namnmt.finetune`` feeds the step (``method.masks.to_model_masks`` of the flat
boolean masks of ``allocate``): nested ``[num_pairs, F]`` float32 arrays, one per masked projection
(q, k, v, out of every attention, fc1 and fc2 of every FFN), here random with ``--keep`` (0.9) ones.
The batches are the packed fixed-shape ones of ``PackedBatcher`` with the pairs mixed freely (each
sentence a random one of the P pairs; the same sentences for every P), so every token looks up its
own pair's mask row (``ModelConfig.mask_lookup``; ``--mask-lookup``).

Check (always, untimed, for each P): from the same initial parameters, dropout key and batch, one
step with all-ones masks gives the same loss as the plain step (``ones_mask_check``; f32 compute:
relative difference <= 1e-5, bf16: <= 1e-3).

Timing: both steps compiled (warm-up, untimed), then ``--repeats`` rounds of ``--steps`` timed steps
each, plain and masked alternating, each round closed by ``block_until_ready`` only at its end.
Reported per P: ms/step of the fastest round, target tokens/s, overhead = masked / plain - 1 of the
fastest rounds and the median of the round pairs' ratios, in wall time and in this process's CPU
time (less disturbed on a shared machine). Defaults: transformer-base, bf16 compute, f32 master
weights (the GPU shapes); ``--cpu``: the CPU benchmark's model (3+3, d 256, float32, 4,096 tokens).

    python -m benchmarks.masked_overhead --out results.json                      # GPU
    python -m benchmarks.masked_overhead --cpu --out benchmarks/results/masked_overhead_cpu.json
    python -m benchmarks.masked_overhead --quick                    # tiny shapes, CPU (report in /tmp)
"""

from __future__ import annotations

import argparse
import os
import time

if not __package__:  # run as a file, ``python benchmarks/NAME.py``: run as ``python -m benchmarks.NAME``
    from _as_module import run_as_module

    run_as_module(__file__)

from .driver import Driver, add_common_args, add_packed_args, finish_packed_args, run_side  # noqa: E402
from .ours import init_params, jax_device_info, to_device  # noqa: E402
from .pair_scaling import add_pair_args, finish_pair_args, interleaved_rounds, ratios  # noqa: E402
from .report import base_report, best_round, device_names, fmt, model_dict, print_table, write_json  # noqa: E402
from .shapes import model_config  # noqa: E402
from .synthetic import batch_counts, packed_data  # noqa: E402

NAME = "masked_overhead"
LOOKUPS = ("onehot", "gather", "bits")  # jax_namnmt.model.transformer.MASK_LOOKUPS (not imported: no jax here)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, steps=20, warmup=2)
    add_packed_args(p)
    add_pair_args(p)
    p.add_argument("--keep", type=float, default=0.9, help="share of ones in the random masks")
    p.add_argument("--repeats", type=int, default=2, help="timed rounds each side (alternating); best counts")
    p.add_argument("--mask-lookup", choices=("auto",) + LOOKUPS, default="auto",
                   help="how tokens look up their pair's mask row (jax_namnmt.model.transformer.mask_lookup_method)")
    args = p.parse_args(argv)
    finish_pair_args(p, args)
    args = finish_packed_args(p, args, NAME)
    args.warmup = max(args.warmup, 1)
    return args


def side_jax(args) -> dict:
    import jax

    from jax_namnmt.model.transformer import MASK_LOOKUP_ENV, mask_lookup_method
    from jax_namnmt.training.step import make_optimizer, make_train_step, schedule_args

    config = model_config(args)
    info = jax_device_info()
    train_step = make_train_step(config, 0.1, 0.9, 0.98, 1e-9, 0.0)
    optimizer = make_optimizer(0.9, 0.98, 1e-9)
    params = init_params(config, args.seed)
    sched = schedule_args(1e-4, 4000, 1e-7)
    key = jax.random.key(args.seed)
    per_pairs = {str(n): measure(args, config, n, train_step, optimizer, params, sched, key) for n in args.pairs}
    return {
        "framework": f"jax {jax.__version__} (jit train step, {config.dtype} compute, f32 params, packed rows)",
        **info, "mask_lookup": mask_lookup_method(config.mask_lookup),
        "mask_lookup_env": os.environ.get(MASK_LOOKUP_ENV, ""), "pairs": per_pairs,
    }


def measure(args, config, num_pairs, train_step, optimizer, params, sched, key) -> dict:
    """The all-ones check and the interleaved plain / masked rounds with ``num_pairs`` pairs."""
    import jax
    import numpy as np

    from jax_namnmt.method.masks import all_ones, module_sizes, to_model_masks
    from jax_namnmt.training.step import init_state

    data = packed_data(args.tokens_per_batch, args.row_len, args.min_len, args.max_len, args.steps,
                       args.warmup, config.vocab_size, args.seed, num_pairs)
    rng = np.random.default_rng(args.seed + 7)
    flat = {name: rng.random((num_pairs, n)) < args.keep for name, n in module_sizes(config).items()}
    masks = jax.device_put(to_model_masks(flat))
    ones = jax.device_put(all_ones(config, num_pairs))
    kept = float(np.mean(np.concatenate([m.reshape(-1) for m in flat.values()])))
    copy = lambda tree: jax.tree.map(lambda x: x.copy(), tree)  # noqa: E731 - states are donated
    state = {"plain": init_state(copy(params), optimizer), "masked": init_state(copy(params), optimizer)}
    warm, timed = to_device(data["warm"]), to_device(data["timed"])

    # Compile both variants; the first step of each is the all-ones check (same params, key, batch).
    compile_s = {}
    first = {}
    for name, m in (("plain", None), ("masked", ones)):
        t0 = time.perf_counter()
        state[name], first[name] = train_step(state[name], warm[0], m, key, sched)
        jax.block_until_ready(state[name])
        compile_s[name] = time.perf_counter() - t0
    for b in warm[1:]:
        state["plain"], _ = train_step(state["plain"], b, None, key, sched)
        state["masked"], _ = train_step(state["masked"], b, masks, key, sched)
    jax.block_until_ready(state)
    loss_plain, loss_ones = float(first["plain"]["loss"]), float(first["masked"]["loss"])
    rel = abs(loss_plain - loss_ones) / max(abs(loss_plain), 1e-12)
    tol = 1e-5 if config.dtype == "float32" else 1e-3

    last = {}

    def runner(name, m):
        def run():
            for b in timed:
                state[name], last[name] = train_step(state[name], b, m, key, sched)
            jax.block_until_ready((state[name], last[name]))
        return run

    rounds = interleaved_rounds({"plain": runner("plain", None), "masked": runner("masked", masks)}, args.repeats)
    counts = batch_counts(data["timed"])
    per_batch_pairs = [len(np.unique(b["tgt_pairs"][b["tgt_segments"] > 0])) for b in data["timed"]]
    sides = {name: {**best_round(rounds[name]["wall"], len(timed), counts["target_tokens"]),
                    "round_cpu_seconds": rounds[name]["cpu"], "final_loss": float(last[name]["loss"])}
             for name in ("plain", "masked")}
    ratio = ratios(rounds, "masked", "plain")
    return {
        "num_pairs": num_pairs, "layout": f"packed: {data['rows']} rows x {args.row_len} tokens", **counts,
        "mask_keep_share": kept, "masked_modules": len(flat),
        "mask_table_bytes": int(sum(m.size for m in flat.values()) * 4),
        "pairs_per_batch": [min(per_batch_pairs), max(per_batch_pairs)],
        "compile_seconds": compile_s,
        "ones_mask_check": {"loss_plain": loss_plain, "loss_all_ones_masks": loss_ones, "relative_difference": rel,
                            "tolerance": tol, "match": rel <= tol},
        "plain": sides["plain"], "masked": sides["masked"],
        "overhead": ratio["wall"]["best"] - 1,
        "overhead_median_of_pairs": ratio["wall"]["median_of_pairs"] - 1,
        "overhead_cpu_time": ratio["cpu"]["best"] - 1,
        "overhead_cpu_time_median_of_pairs": ratio["cpu"]["median_of_pairs"] - 1,
    }


def main(argv=None):
    args = parse_args(argv)
    if args.mask_lookup != "auto":  # before any side runs (each side is a child process)
        os.environ["JAX_NAMNMT_MASK_LOOKUP"] = args.mask_lookup
    if run_side(args, {"jax": lambda: side_jax(args)}):
        return None
    config = model_config(args)
    report = base_report(NAME, args)
    report.update({"model": model_dict(config), "tokens_per_batch": args.tokens_per_batch,
                   "row_len": args.row_len, "sentence_lengths": [args.min_len, args.max_len],
                   "num_pairs": args.pairs, "mask_keep": args.keep, "learning_rate": "1e-4 (fine-tuning)"})
    driver = Driver(__spec__.name, args, argv)
    r = report["results"] = {"jax": driver.run("jax")}["jax"]
    report["wall_seconds"] = time.perf_counter() - driver.start
    report["devices"] = device_names({"jax": r})
    write_json(report, args.out)

    title = (f"Masked fine-tuning step against the plain step on {r.get('device_name', '?')}, model "
             f"{config.enc_layers}+{config.dec_layers} d {config.d_model} vocab {config.vocab_size} {config.dtype}, "
             f"the pairs mixed in every batch, random masks with {args.keep:.0%} ones, "
             f"mask lookup: {r.get('mask_lookup', '?')}")
    if "error" in r:
        print_table(title, ["pairs", "result"], [[str(n), "error: " + r["error"][:200]] for n in args.pairs])
    else:
        rows = []
        for n, p in r["pairs"].items():
            c = p["ones_mask_check"]
            rows.append([n, fmt(p["mask_table_bytes"] / 2**20, "{:.2f}"), f"{p['plain']['step_ms']:.2f}",
                         f"{p['masked']['step_ms']:.2f}", f"{p['overhead']:+.1%}",
                         f"{p['overhead_median_of_pairs']:+.1%}", f"{p['overhead_cpu_time_median_of_pairs']:+.1%}",
                         "match" if c["match"] else f"MISMATCH ({c['relative_difference']:.1e})"])
        print_table(title, ["pairs", "mask tables MiB", "plain ms/step", "masked ms/step", "overhead (fastest)",
                            "overhead (median of round pairs)", "overhead, CPU time (median)",
                            "all-ones masks = plain"], rows)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
