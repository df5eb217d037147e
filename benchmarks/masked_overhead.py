"""GPU cost of the neuron masks: our fine-tuning step with masks against the plain step (masks=None),
same model (transformer-base, bf16 compute, f32 master weights), same packed batches, same step.

Masks are what ``jax_namnmt.finetune`` feeds the step (``method.masks.to_model_masks`` of the flat
boolean masks of ``allocate``): nested ``[num_pairs, F]`` float32 arrays, one per masked projection
(q, k, v, out of every attention, fc1 and fc2 of every FFN), here random with ``--keep`` (0.9) ones,
8 pairs. The batches are the packed fixed-shape ones of ``PackedBatcher`` with the pairs mixed freely
(each sentence a random pair), so every token looks up its own pair's mask row.

Check (always, untimed): from the same initial parameters, dropout key and batch, one step with
all-ones masks gives the same loss as the plain step (``ones_mask_check``; f32 compute: relative
difference <= 1e-5, bf16: <= 1e-3).

Timing: both steps compiled (warm-up, untimed), then ``--repeats`` rounds of ``--steps`` timed steps
each, plain then masked, each round closed by ``block_until_ready`` only at its end; the best round
of each counts. Reported: ms/step, target tokens/s (non-padding), overhead = masked / plain - 1.

    python -m benchmarks.masked_overhead --out results.json
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
from .ours import init_params, jax_device_info, run_steps, to_device  # noqa: E402
from .report import base_report, best_round, device_names, fmt, model_dict, print_table, write_json  # noqa: E402
from .shapes import model_config  # noqa: E402
from .synthetic import batch_counts, packed_data  # noqa: E402

NAME = "masked_overhead"
NUM_PAIRS = 8


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, steps=20, warmup=2)
    add_packed_args(p)
    p.add_argument("--keep", type=float, default=0.9, help="share of ones in the random masks")
    p.add_argument("--repeats", type=int, default=2, help="timed rounds each side (alternating); best counts")
    p.add_argument("--mask-lookup", choices=("auto", "onehot", "gather"), default="auto",
                   help="how tokens look up their pair's mask row (jax_namnmt.model.transformer.mask_lookup_method;"
                        " auto: one-hot matmul on CPU, gather elsewhere)")
    args = finish_packed_args(p, p.parse_args(argv), NAME)
    args.warmup = max(args.warmup, 1)
    return args


def side_jax(args) -> dict:
    import jax
    import numpy as np

    from jax_namnmt.method.masks import all_ones, module_sizes, to_model_masks
    from jax_namnmt.model.transformer import MASK_LOOKUP_ENV, mask_lookup_method
    from jax_namnmt.training.step import init_state, make_optimizer, make_train_step, schedule_args

    config = model_config(args)
    info = jax_device_info()
    data = packed_data(args.tokens_per_batch, args.row_len, args.min_len, args.max_len, args.steps,
                       args.warmup, config.vocab_size, args.seed, NUM_PAIRS)
    rng = np.random.default_rng(args.seed + 7)
    flat = {name: rng.random((NUM_PAIRS, n)) < args.keep for name, n in module_sizes(config).items()}
    masks = jax.device_put(to_model_masks(flat))
    ones = jax.device_put(all_ones(config, NUM_PAIRS))
    kept = float(np.mean(np.concatenate([m.reshape(-1) for m in flat.values()])))

    train_step = make_train_step(config, 0.1, 0.9, 0.98, 1e-9, 0.0)
    optimizer = make_optimizer(0.9, 0.98, 1e-9)
    params = init_params(config, args.seed)
    copy = lambda tree: jax.tree.map(lambda x: x.copy(), tree)  # noqa: E731 - states are donated
    plain, masked = init_state(copy(params), optimizer), init_state(copy(params), optimizer)
    sched = schedule_args(1e-4, 4000, 1e-7)
    key = jax.random.key(args.seed)
    warm, timed = to_device(data["warm"]), to_device(data["timed"])

    # Compile both variants; the first step of each is the all-ones check (same params, key, batch).
    t0 = time.perf_counter()
    plain, m_plain = train_step(plain, warm[0], None, key, sched)
    jax.block_until_ready(plain)
    compile_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    masked, m_ones = train_step(masked, warm[0], ones, key, sched)
    jax.block_until_ready(masked)
    compile_masked = time.perf_counter() - t0
    for b in warm[1:]:
        plain, _ = train_step(plain, b, None, key, sched)
        masked, _ = train_step(masked, b, masks, key, sched)
    jax.block_until_ready((plain, masked))
    loss_plain, loss_ones = float(m_plain["loss"]), float(m_ones["loss"])
    rel = abs(loss_plain - loss_ones) / max(abs(loss_plain), 1e-12)
    tol = 1e-5 if config.dtype == "float32" else 1e-3

    rounds = {"plain": [], "masked": []}
    for _ in range(args.repeats):
        plain, mp, secs = run_steps(train_step, plain, timed, None, key, sched)
        rounds["plain"].append(secs)
        masked, mm, secs = run_steps(train_step, masked, timed, masks, key, sched)
        rounds["masked"].append(secs)

    counts = batch_counts(data["timed"])
    per_batch_pairs = [len(np.unique(b["tgt_pairs"][b["tgt_segments"] > 0])) for b in data["timed"]]
    sides = {name: {**best_round(rounds[name], len(timed), counts["target_tokens"]),
                    "final_loss": float(final["loss"])}
             for name, final in (("plain", mp), ("masked", mm))}
    return {
        "framework": f"jax {jax.__version__} (jit train step, {config.dtype} compute, f32 params, packed rows)",
        "layout": f"packed: {data['rows']} rows x {args.row_len} tokens", **counts, **info,
        "num_pairs": NUM_PAIRS, "mask_keep_share": kept, "masked_modules": len(flat),
        "mask_lookup": mask_lookup_method(), "mask_lookup_env": os.environ.get(MASK_LOOKUP_ENV, ""),
        "pairs_per_batch": [min(per_batch_pairs), max(per_batch_pairs)],
        "compile_seconds": {"plain": compile_plain, "masked": compile_masked},
        "ones_mask_check": {"loss_plain": loss_plain, "loss_all_ones_masks": loss_ones, "relative_difference": rel,
                            "tolerance": tol, "match": rel <= tol},
        "plain": sides["plain"], "masked": sides["masked"],
        "overhead": sides["masked"]["seconds"] / sides["plain"]["seconds"] - 1,
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
                   "num_pairs": NUM_PAIRS, "mask_keep": args.keep, "learning_rate": "1e-4 (fine-tuning)"})
    driver = Driver(__spec__.name, args, argv)
    r = report["results"] = {"jax": driver.run("jax")}["jax"]
    report["wall_seconds"] = time.perf_counter() - driver.start
    report["devices"] = device_names({"jax": r})
    write_json(report, args.out)

    title = (f"Masked fine-tuning step against the plain step on {r.get('device_name', '?')}, model "
             f"{config.enc_layers}+{config.dec_layers} d {config.d_model} vocab {config.vocab_size}, "
             f"{NUM_PAIRS} pairs mixed in every batch, random masks with {args.keep:.0%} ones")
    if "error" in r:
        print_table(title, ["side", "result"], [["plain", "error"], ["masked", "error: " + r["error"][:200]]])
    else:
        rows = [[name, r["layout"], str(r[name]["steps"]), str(r["target_tokens"]), f"{r[name]['step_ms']:.2f}",
                 fmt(r[name]["target_tokens_per_s"])] for name in ("plain", "masked")]
        print_table(title, ["step", "layout", "steps", "target tokens", "ms/step", "target tok/s"], rows)
        c = r["ones_mask_check"]
        print(f"\noverhead of the masks: {r['overhead']:+.1%} (masked / plain step time - 1; "
              f"mask lookup: {r.get('mask_lookup', '?')})")
        print(f"all-ones masks check: loss {c['loss_all_ones_masks']:.6f} vs plain {c['loss_plain']:.6f}, "
              f"relative difference {c['relative_difference']:.2e}: {'match' if c['match'] else 'MISMATCH'}")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
