"""Throughput of the one-pass all-pairs importance scoring against a training step as the number of
pairs grows: same model, same packed batches, for each of ``--pairs`` (8, 32 and 128 by default).

Importance: ``method.importance.batch_importance`` (Taylor expansion by default: one forward and one
backward to the activations through ``perturb`` variables, no parameter gradients; the per-pair
sums of every masked projection by a segment sum over each token's pair id), all P pairs in ONE
pass over mixed packed batches (each sentence a random one of the P pairs; the same sentences for
every P); the per-batch sums (``[P, F]`` a projection) are accumulated on the device (one small
jitted add a batch, as ``compute_importance`` accumulates them on the host). Training:
``training.step.make_train_step`` (forward, backward to the parameters, Adam update), plain.

Check: the importance side's per-pair token counts add up to the real source and target tokens of
the batches (``tokens_match``). Timing: both compiled (warm-up, untimed), then ``--repeats`` rounds
of ``--steps`` batches each (training, then importance, alternating), each closed by
``block_until_ready`` only at its end. Reported per P: target tokens/s of the fastest round each,
ratio importance / training (throughput; fastest rounds and median of round pairs, wall and CPU
time). Defaults: transformer-base, bf16 compute (GPU); ``--cpu``: the CPU benchmark's model.

    python -m benchmarks.importance_throughput --out results.json                  # GPU
    python -m benchmarks.importance_throughput --cpu --out benchmarks/results/importance_throughput_cpu.json
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
from .pair_scaling import add_pair_args, finish_pair_args, interleaved_rounds, ratios  # noqa: E402
from .report import base_report, best_round, device_names, fmt, model_dict, print_table, write_json  # noqa: E402
from .shapes import model_config  # noqa: E402
from .synthetic import batch_counts, packed_data  # noqa: E402

NAME = "importance_throughput"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, steps=20, warmup=2)
    add_packed_args(p)
    add_pair_args(p)
    p.add_argument("--method", choices=("taylor", "absolute"), default="taylor")
    p.add_argument("--repeats", type=int, default=2, help="timed rounds each side (alternating); best counts")
    args = p.parse_args(argv)
    finish_pair_args(p, args)
    args = finish_packed_args(p, args, NAME)
    args.warmup = max(args.warmup, 1)
    return args


def side_jax(args) -> dict:
    import jax

    from jax_namnmt.training.step import make_optimizer, make_train_step, schedule_args

    config = model_config(args)
    info = jax_device_info()
    train_step = make_train_step(config, 0.1, 0.9, 0.98, 1e-9, 0.0)
    params = init_params(config, args.seed)
    optimizer = make_optimizer(0.9, 0.98, 1e-9)
    sched = schedule_args(5e-4, 4000, 1e-7)
    key = jax.random.key(args.seed)
    per_pairs = {str(n): measure(args, config, n, train_step, optimizer, params, sched, key) for n in args.pairs}
    return {"framework": f"jax {jax.__version__} ({config.dtype} compute, f32 params, packed rows)", **info,
            "pairs": per_pairs}


def measure(args, config, num_pairs, train_step, optimizer, params, sched, key) -> dict:
    import jax
    import numpy as np

    from jax_namnmt.method.importance import batch_importance
    from jax_namnmt.training.step import init_state

    data = packed_data(args.tokens_per_batch, args.row_len, args.min_len, args.max_len, args.steps,
                       args.warmup, config.vocab_size, args.seed, num_pairs)
    state = {"train": init_state(jax.tree.map(lambda x: x.copy(), params), optimizer)}
    warm, timed = to_device(data["warm"]), to_device(data["timed"])
    score = lambda b: batch_importance(params, b, None, config=config, num_pairs=num_pairs,  # noqa: E731
                                       method=args.method, label_smoothing=0.1)
    add = jax.jit(lambda a, b: jax.tree.map(lambda x, y: x + y, a, b))

    state["train"], metrics, compile_train = run_steps(train_step, state["train"], warm, None, key, sched)
    t0 = time.perf_counter()
    acc = score(warm[0])
    for b in warm:
        acc = add(acc, score(b))
    jax.block_until_ready(acc)
    compile_importance = time.perf_counter() - t0
    out = {}

    def train():
        state["train"], out["metrics"], _ = run_steps(train_step, state["train"], timed, None, key, sched)

    def importance():
        acc = score(timed[0])
        for b in timed[1:]:
            acc = add(acc, score(b))
        out["acc"] = jax.block_until_ready(acc)

    rounds = interleaved_rounds({"train": train, "importance": importance}, args.repeats)
    counts = batch_counts(data["timed"])
    sums, src_tokens, tgt_tokens = jax.device_get(out["acc"])
    scored_src, scored_tgt = int(round(float(np.sum(src_tokens)))), int(round(float(np.sum(tgt_tokens))))
    finite = bool(all(np.isfinite(v).all() for v in sums.values()))
    sides = {name: {**best_round(rounds[name]["wall"], len(timed), counts["target_tokens"]),
                    "round_cpu_seconds": rounds[name]["cpu"]} for name in ("train", "importance")}
    sides["train"]["final_loss"] = float(out["metrics"]["loss"])
    sides["importance"].update({
        "method": args.method, "modules": len(sums), "scored_source_tokens": scored_src,
        "scored_target_tokens": scored_tgt, "scored_target_tokens_per_pair": [int(round(float(t))) for t in tgt_tokens],
        "sums_finite": finite, "sums_shape_per_module": [num_pairs, "F"],
        "sums_bytes": int(sum(v.nbytes for v in sums.values())),
        "tokens_match": scored_src == counts["source_tokens"] and scored_tgt == counts["target_tokens"],
    })
    ratio = ratios(rounds, "train", "importance")  # train seconds / importance seconds = throughput ratio
    return {
        "num_pairs": num_pairs, "layout": f"packed: {data['rows']} rows x {args.row_len} tokens", **counts,
        "compile_seconds": {"train": compile_train, "importance": compile_importance},
        "train": sides["train"], "importance": sides["importance"],
        "ratio_importance_over_train": ratio["wall"]["best"],
        "ratio_importance_over_train_median_of_pairs": ratio["wall"]["median_of_pairs"],
        "ratio_importance_over_train_cpu_time_median_of_pairs": ratio["cpu"]["median_of_pairs"],
    }


def main(argv=None):
    args = parse_args(argv)
    if run_side(args, {"jax": lambda: side_jax(args)}):
        return None
    config = model_config(args)
    report = base_report(NAME, args)
    report.update({"model": model_dict(config), "tokens_per_batch": args.tokens_per_batch,
                   "row_len": args.row_len, "sentence_lengths": [args.min_len, args.max_len],
                   "num_pairs": args.pairs, "method": args.method})
    driver = Driver(__spec__.name, args, argv)
    r = report["results"] = {"jax": driver.run("jax")}["jax"]
    report["wall_seconds"] = time.perf_counter() - driver.start
    report["devices"] = device_names({"jax": r})
    write_json(report, args.out)

    title = (f"All-pairs importance ({args.method}, one pass, the pairs mixed in every batch) against a training "
             f"step on {r.get('device_name', '?')}, model {config.enc_layers}+{config.dec_layers} d {config.d_model} "
             f"vocab {config.vocab_size} {config.dtype}, same batches")
    if "error" in r:
        print_table(title, ["pairs", "result"], [[str(n), "error: " + r["error"][:200]] for n in args.pairs])
    else:
        rows = []
        for n, p in r["pairs"].items():
            imp = p["importance"]
            rows.append([n, fmt(p["train"]["target_tokens_per_s"]), fmt(imp["target_tokens_per_s"]),
                         f"{p['ratio_importance_over_train']:.2f}", f"{p['ratio_importance_over_train_median_of_pairs']:.2f}",
                         f"{p['ratio_importance_over_train_cpu_time_median_of_pairs']:.2f}",
                         fmt(imp["sums_bytes"] / 2**20, "{:.2f}"), "yes" if imp["tokens_match"] else "NO"])
        print_table(title, ["pairs", "train tok/s", "importance tok/s", "importance / train (fastest)",
                            "(median of round pairs)", "(CPU time, median)", "sums MiB a batch",
                            "tokens counted = batch tokens"], rows)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
