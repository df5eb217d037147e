"""GPU throughput of the one-pass all-pairs importance scoring against a training step, same model
(transformer-base, bf16 compute, f32 params), same packed batches.

Importance: ``method.importance.batch_importance`` (Taylor expansion by default: one forward and one
backward to the activations through ``perturb`` variables, no parameter gradients; the per-pair
sums of every masked projection by a segment sum over each token's pair id), all 8 pairs in ONE
pass over mixed packed batches; the per-batch sums are accumulated on the device (one small jitted
add a batch, as ``compute_importance`` accumulates them on the host). Training:
``training.step.make_train_step`` (forward, backward to the parameters, Adam update), plain.

Check: the importance side's per-pair token counts add up to the real source and target tokens of
the batches (``tokens_match``). Timing: both compiled (warm-up, untimed), then ``--repeats`` rounds
of ``--steps`` batches each (training, then importance), each closed by ``block_until_ready`` only
at its end; the best round counts. Reported: target tokens/s (non-padding) each, ratio importance /
training.

    python -m benchmarks.importance_throughput --out results.json
    python -m benchmarks.importance_throughput --quick              # tiny shapes, CPU (report in /tmp)
"""

from __future__ import annotations

import argparse
import time

if not __package__:  # run as a file, ``python benchmarks/NAME.py``: run as ``python -m benchmarks.NAME``
    from _as_module import run_as_module

    run_as_module(__file__)

from .driver import Driver, add_common_args, add_packed_args, finish_packed_args, run_side  # noqa: E402
from .ours import init_params, jax_device_info, run_steps, to_device  # noqa: E402
from .report import base_report, best_round, device_names, fmt, model_dict, print_table, write_json  # noqa: E402
from .shapes import model_config  # noqa: E402
from .synthetic import batch_counts, packed_data  # noqa: E402

NAME = "importance_throughput"
NUM_PAIRS = 8


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, steps=20, warmup=2)
    add_packed_args(p)
    p.add_argument("--method", choices=("taylor", "absolute"), default="taylor")
    p.add_argument("--repeats", type=int, default=2, help="timed rounds each side (alternating); best counts")
    args = finish_packed_args(p, p.parse_args(argv), NAME)
    args.warmup = max(args.warmup, 1)
    return args


def side_jax(args) -> dict:
    import jax
    import numpy as np

    from jax_namnmt.method.importance import batch_importance
    from jax_namnmt.training.step import init_state, make_optimizer, make_train_step, schedule_args

    config = model_config(args)
    info = jax_device_info()
    data = packed_data(args.tokens_per_batch, args.row_len, args.min_len, args.max_len, args.steps,
                       args.warmup, config.vocab_size, args.seed, NUM_PAIRS)
    train_step = make_train_step(config, 0.1, 0.9, 0.98, 1e-9, 0.0)
    params = init_params(config, args.seed)
    state = init_state(jax.tree.map(lambda x: x.copy(), params), make_optimizer(0.9, 0.98, 1e-9))
    sched = schedule_args(5e-4, 4000, 1e-7)
    key = jax.random.key(args.seed)
    warm, timed = to_device(data["warm"]), to_device(data["timed"])
    score = lambda b: batch_importance(params, b, None, config=config, num_pairs=NUM_PAIRS,  # noqa: E731
                                       method=args.method, label_smoothing=0.1)
    add = jax.jit(lambda a, b: jax.tree.map(lambda x, y: x + y, a, b))

    state, metrics, compile_train = run_steps(train_step, state, warm, None, key, sched)
    t0 = time.perf_counter()
    acc = score(warm[0])
    for b in warm:
        acc = add(acc, score(b))
    jax.block_until_ready(acc)
    compile_importance = time.perf_counter() - t0

    rounds = {"train": [], "importance": []}
    for _ in range(args.repeats):
        state, metrics, secs = run_steps(train_step, state, timed, None, key, sched)
        rounds["train"].append(secs)
        t0 = time.perf_counter()
        acc = score(timed[0])
        for b in timed[1:]:
            acc = add(acc, score(b))
        jax.block_until_ready(acc)
        rounds["importance"].append(time.perf_counter() - t0)

    counts = batch_counts(data["timed"])
    sums, src_tokens, tgt_tokens = jax.device_get(acc)
    scored_src, scored_tgt = int(round(float(np.sum(src_tokens)))), int(round(float(np.sum(tgt_tokens))))
    finite = bool(all(np.isfinite(v).all() for v in sums.values()))
    sides = {name: best_round(rounds[name], len(timed), counts["target_tokens"])
             for name in ("train", "importance")}
    sides["train"]["final_loss"] = float(metrics["loss"])
    sides["importance"].update({
        "method": args.method, "modules": len(sums), "scored_source_tokens": scored_src,
        "scored_target_tokens": scored_tgt, "scored_target_tokens_per_pair": [int(round(float(t))) for t in tgt_tokens],
        "sums_finite": finite,
        "tokens_match": scored_src == counts["source_tokens"] and scored_tgt == counts["target_tokens"],
    })
    return {
        "framework": f"jax {jax.__version__} ({config.dtype} compute, f32 params, packed rows)",
        "layout": f"packed: {data['rows']} rows x {args.row_len} tokens", **counts, **info, "num_pairs": NUM_PAIRS,
        "compile_seconds": {"train": compile_train, "importance": compile_importance},
        "train": sides["train"], "importance": sides["importance"],
        "ratio_importance_over_train": sides["train"]["seconds"] / sides["importance"]["seconds"],
    }


def main(argv=None):
    args = parse_args(argv)
    if run_side(args, {"jax": lambda: side_jax(args)}):
        return None
    config = model_config(args)
    report = base_report(NAME, args)
    report.update({"model": model_dict(config), "tokens_per_batch": args.tokens_per_batch,
                   "row_len": args.row_len, "sentence_lengths": [args.min_len, args.max_len],
                   "num_pairs": NUM_PAIRS, "method": args.method})
    driver = Driver(__spec__.name, args, argv)
    r = report["results"] = {"jax": driver.run("jax")}["jax"]
    report["wall_seconds"] = time.perf_counter() - driver.start
    report["devices"] = device_names({"jax": r})
    write_json(report, args.out)

    title = (f"All-pairs importance ({args.method}, one pass, {NUM_PAIRS} pairs mixed) against a training step "
             f"on {r.get('device_name', '?')}, model {config.enc_layers}+{config.dec_layers} d {config.d_model} "
             f"vocab {config.vocab_size}, same batches")
    if "error" in r:
        print_table(title, ["side", "result"], [["train", "error"], ["importance", "error: " + r["error"][:200]]])
    else:
        rows = [[name, r["layout"], str(r[name]["steps"]), str(r["target_tokens"]), f"{r[name]['step_ms']:.2f}",
                 fmt(r[name]["target_tokens_per_s"])] for name in ("train", "importance")]
        print_table(title, ["side", "layout", "batches", "target tokens", "ms/batch", "target tok/s"], rows)
        imp = r["importance"]
        print(f"\nratio importance / training (target tokens/s): {r['ratio_importance_over_train']:.2f}")
        print(f"importance scored {imp['scored_target_tokens']} target and {imp['scored_source_tokens']} source tokens "
              f"(batches hold {r['target_tokens']} and {r['source_tokens']}): "
              f"{'match' if imp['tokens_match'] else 'MISMATCH'}")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
