"""GPU training throughput and MFU: our transformer-base training step (JAX/Flax, bf16 compute with
f32 master weights, packed rows) against HuggingFace ``MarianMTModel`` with the same shapes in
PyTorch, (a) eager under ``torch.autocast(bfloat16)`` with ``AdamW(fused=True)`` and (b) the same
under ``torch.compile``; on the same sentences.

Shapes (default): 6+6 layers, d 512, FFN 2048, 8 heads, vocabulary 40000 (tied embeddings,
post-norm, dropout 0.1), label smoothing 0.1, Adam(0.9, 0.98, 1e-9). Sentences: random tokens,
Multi30k-like lengths 12-25 a side (tag and EOS included; ``--min-len 20 --max-len 60 --row-len 128``
for WMT-like ones). Ours gets them as the packed fixed-shape batches of ``PackedBatcher``
(``--tokens-per-batch`` / ``--row-len`` rows of ``--row-len`` tokens, ~25k target slots); Marian gets
the very same timed sentences as padded, length-bucketed batches (sorted by length, cut at
``--tokens-per-batch`` padded target tokens). Throughput: real (non-padding) target tokens per
second, EOS included. Each side runs in its own process (one failing side is recorded as
``{"error": ...}``); warm-up steps (compilation) are untimed; the timed loop is closed by
``jax.block_until_ready`` / ``torch.cuda.synchronize`` only at its end.

MFU = model matmul FLOPs of the timed steps / their time / 989e12 (H100/H200 SXM dense bf16 peak,
``--peak-flops``). FLOPs count real tokens only (padding excluded, for both sides the same number,
since the sentences are the same). Per sentence with source length S and target length T (tag/BOS
and EOS included), d = d_model, f = FFN, V = vocabulary, Le / Ld = encoder / decoder layers:

    forward = S * Le * 2 * (4 d^2 + 2 d f)          encoder q, k, v, out, fc1, fc2
            + S * Ld * 2 * (2 d^2)                  decoder cross-attention k, v (on source tokens)
            + T * Ld * 2 * (6 d^2 + 2 d f)          decoder self q, k, v, out, cross q, out, fc1, fc2
            + T * 2 * d * V                         output projection
            + Le * 4 d * S^2                        encoder attention scores QK^T + context AV
            + Ld * 4 d * T (T + 1) / 2              causal decoder self-attention (t keys at step t)
            + Ld * 4 d * T * S                      cross-attention scores + context
    step FLOPs = 3 x forward (backward = 2 x forward), summed over the step's sentences.

(2 FLOPs per multiply-add of a weight matrix; embedding lookups, layer norms, softmax, the
optimizer and biases are not counted.)

    python -m benchmarks.train_throughput --out results.json          # full (GPU; needs torch + transformers)
    python -m benchmarks.train_throughput --quick --no-torch          # tiny shapes, CPU, JAX only (report in /tmp)
    python -m benchmarks.train_throughput --layers 1 --d-model 64 --heads 2 --ffn 128 --vocab 1000 \\
        --tokens-per-batch 1024 --steps 2                           # the full code path, shrunk
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import time
from pathlib import Path

if not __package__:  # run as a file, ``python benchmarks/NAME.py``: run as ``python -m benchmarks.NAME``
    from _as_module import run_as_module

    run_as_module(__file__)

from .driver import Driver, add_common_args, add_packed_args, finish_packed_args, run_side  # noqa: E402
from .ours import constant_schedule, init_params, jax_device_info, run_steps, to_device  # noqa: E402
from .peers_torch import (build_marian, marian_buckets, marian_tensors, torch_device,  # noqa: E402
                          torch_device_info, torch_sync)
from .report import base_report, device_names, fmt, model_dict, print_table, ratio, write_json  # noqa: E402
from .shapes import H100_BF16_DENSE_PEAK, LEARNING_RATE, model_config, train_matmul_flops  # noqa: E402
from .synthetic import batch_counts, packed_data  # noqa: E402

NAME = "train_throughput"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, steps=30, warmup=3)
    add_packed_args(p)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile side")
    p.add_argument("--compile-dynamic", choices=("true", "auto"), default="true",
                   help="torch.compile(dynamic=True) (one compile for all bucket shapes) or dynamic=None")
    p.add_argument("--peak-flops", type=float, default=H100_BF16_DENSE_PEAK)
    p.add_argument("--sides", default="jax,marian_eager,marian_compiled",
                   help="comma list of the sides to run (of jax, marian_eager, marian_compiled)")
    p.add_argument("--profile-dir", default=None,
                   help="after timing, trace 3 more of our steps with jax.profiler into this directory "
                        "(read it with TensorBoard's profile plugin or xprof: per-op device time)")
    p.add_argument("--layout", choices=("rows", "compact"), default="rows",
                   help="our batches (data.layout): rows (what `train` uses on a GPU) or compact (the CPU default; "
                        "10%% slower than rows on an H100)")
    p.add_argument("--merge", action="store_true",
                   help="keep the results of the sides not run now from an existing --out report (same settings)")
    return finish_packed_args(p, p.parse_args(argv), NAME)


def get_data(args, config):
    return packed_data(args.tokens_per_batch, args.row_len, args.min_len, args.max_len, args.steps,
                       args.warmup, config.vocab_size, args.seed, layout=args.layout)


def finish(result: dict, args, config, data, secs: float) -> dict:
    flops = train_matmul_flops([len(data["src"][i]) for i in data["timed_ids"]],
                               [len(data["tgt"][i]) for i in data["timed_ids"]], config)
    result.update({
        "seconds": secs, "step_ms": 1000 * secs / result["steps"],
        "target_tokens_per_s": result["target_tokens"] / secs,
        "pad_share": 1 - result["target_tokens"] / result["target_slots"],
        "matmul_flops": flops, "achieved_tflops": flops / secs / 1e12, "mfu": flops / secs / args.peak_flops,
    })
    return result


# ----------------------------------------------------------------------------- ours


def side_jax(args) -> dict:
    import jax

    from jax_namnmt.systems import count_params
    from jax_namnmt.training.step import init_state, make_optimizer, make_train_step

    config = model_config(args)
    info = jax_device_info()
    data = get_data(args, config)
    train_step = make_train_step(config, 0.1, 0.9, 0.98, 1e-9, 0.0)
    state = init_state(init_params(config, args.seed), make_optimizer(0.9, 0.98, 1e-9))
    sched = constant_schedule()
    key = jax.random.key(args.seed)
    warm, timed = to_device(data["warm"]), to_device(data["timed"])
    jax.block_until_ready(state)

    state, metrics, warm_s = run_steps(train_step, state, warm, None, key, sched)
    state, metrics, secs = run_steps(train_step, state, timed, None, key, sched)

    profiled = None
    if args.profile_dir:  # untimed: the trace of a few steps, for what bounds the step on this device
        with jax.profiler.trace(args.profile_dir, create_perfetto_trace=True):
            state, metrics, _ = run_steps(train_step, state, timed[:3], None, key, sched)
        profiled = str(args.profile_dir)

    counts = batch_counts(data["timed"])
    result = {
        "profile_dir": profiled,
        "framework": f"jax {jax.__version__} (jit train step, {config.dtype} compute, f32 params, {args.layout} layout)",
        "attention_kernel": config.attention_kernel, "logits_dtype": config.logits_dtype,
        "prng_impl": str(jax.random.key_impl(key)),  # JAX_DEFAULT_PRNG_IMPL (it seeds the dropout hash)
        "layout": (f"packed: {data['rows']} rows x {args.row_len} tokens" if args.layout == "rows" else
                   f"compact: {data['timed'][0]['tgt_labels'].shape[1]} target token slots"),
        "steps": len(timed), **counts, "warmup_steps": len(warm), "warmup_seconds": warm_s,
        "final_loss": float(metrics["loss"]), "params": count_params(state["params"]), **info,
    }
    return finish(result, args, config, data, secs)


# ----------------------------------------------------------------------------- Marian


def side_marian(args, compiled: bool) -> dict:
    import torch
    import transformers

    from jax_namnmt.data.vocab import BOS_ID, EOS_ID, PAD_ID

    config = model_config(args)
    device = torch_device()
    info = torch_device_info(device)
    data = get_data(args, config)
    src, tgt = data["src"], data["tgt"]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = build_marian(config, PAD_ID, EOS_ID, BOS_ID, args.seed).to(device)
    model.train()
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0,
                            **({"fused": True} if fused else {}))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1, ignore_index=PAD_ID)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext

    def fwd_loss(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, labels):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                       decoder_attention_mask=decoder_attention_mask, use_cache=False).logits
        return loss_fn(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))

    forward = fwd_loss
    if compiled:
        try:  # no "src len == tgt len" guard because one warm-up batch happened to have both equal
            import torch.fx.experimental._config as fx_config

            fx_config.use_duck_shape = False
        except Exception:  # noqa: BLE001 - a private knob; without it a recompile may land in the timed loop
            pass
        forward = torch.compile(fwd_loss, dynamic=True if args.compile_dynamic == "true" else None)

    def step(b):
        opt.zero_grad(set_to_none=True)
        with amp():
            loss = forward(**b)
        loss.backward()
        opt.step()
        return loss

    to = lambda ids: marian_tensors(ids, src, tgt, PAD_ID, BOS_ID, device)  # noqa: E731
    warm = [to(b) for b in marian_buckets(data["warm_ids"], src, tgt, args.tokens_per_batch)][:args.warmup]
    timed = [to(b) for b in marian_buckets(data["timed_ids"], src, tgt, args.tokens_per_batch)]
    torch_sync(device)

    t0 = time.perf_counter()
    for b in warm:
        loss = step(b)
    torch_sync(device)
    warm_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for b in timed:
        loss = step(b)
    torch_sync(device)
    secs = time.perf_counter() - t0

    attn = getattr(model.config, "_attn_implementation", "?")
    mode = (f"torch.compile(dynamic={'True' if args.compile_dynamic == 'true' else 'None'})" if compiled
            else "eager")
    prec = "bf16 autocast" if device.type == "cuda" else "float32"
    result = {
        "framework": f"torch {torch.__version__} {mode} {prec} + transformers {transformers.__version__} "
                     f"MarianMTModel ({attn}), AdamW(fused={fused})",
        "layout": f"padded, length-bucketed (<= {args.tokens_per_batch} padded target tokens)",
        "steps": len(timed), "target_tokens": int(sum(int((b["labels"] != PAD_ID).sum()) for b in timed)),
        "source_tokens": int(sum(int(b["attention_mask"].sum()) for b in timed)),
        "target_slots": int(sum(b["labels"].numel() for b in timed)),
        "sentences": int(sum(b["labels"].shape[0] for b in timed)),
        "warmup_steps": len(warm), "warmup_seconds": warm_s, "final_loss": float(loss.item()),
        "params": sum(q.numel() for q in model.parameters()),
        "tied_embeddings": model.get_output_embeddings().weight is model.get_input_embeddings().weight, **info,
    }
    if compiled:
        try:
            stats = torch._dynamo.utils.counters["stats"]
            result["dynamo_frames"] = {k: int(v) for k, v in stats.items()}
        except Exception:  # noqa: BLE001
            pass
    if device.type == "cuda":
        result["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return finish(result, args, config, data, secs)


# ----------------------------------------------------------------------------- main


def main(argv=None):
    args = parse_args(argv)
    sides = {"jax": lambda: side_jax(args), "marian_eager": lambda: side_marian(args, False),
             "marian_compiled": lambda: side_marian(args, True)}
    if run_side(args, sides):
        return None

    config = model_config(args)
    have_torch = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))
    wanted = [n for n in args.sides.split(",") if n]
    unknown = sorted(set(wanted) - set(sides))
    if unknown:
        raise SystemExit(f"--sides: unknown {unknown}; choose from {sorted(sides)}")
    names = [n for n in sides if n in wanted and (n == "jax" or (not args.no_torch and have_torch))
             and not (n == "marian_compiled" and args.no_compile)]
    previous = {}
    if args.merge and Path(args.out).exists():
        try:
            previous = json.loads(Path(args.out).read_text()).get("results", {})
        except Exception:  # noqa: BLE001 - an unreadable old report is just not merged
            previous = {}
    report = base_report(NAME, args)
    report.update({
        "model": model_dict(config), "label_smoothing": 0.1,
        "optimizer": "Adam(0.9, 0.98, 1e-9) (ours, optax) / AdamW(0.9, 0.98, 1e-9, wd=0, fused on CUDA) (Marian)",
        "tokens_per_batch": args.tokens_per_batch, "row_len": args.row_len,
        "sentence_lengths": [args.min_len, args.max_len], "peak_flops": args.peak_flops,
        "torch": "used" if len(names) > 1 else ("disabled (--no-torch)" if args.no_torch else "not importable"),
        "same_sentences": True, "sides": names, "results": {},
    })
    if previous:
        report["merged_from_previous_run"] = sorted(k for k in previous if k not in names)
        report["results"] = {k: v for k, v in previous.items() if k not in names}
    driver = Driver(__spec__.name, args, argv)
    for name in names:
        report["results"][name] = driver.run(name)
        write_json(report, args.out)  # partial reports survive a later side's crash

    res = report["results"]
    ours = res.get("jax")
    report["ratio_jax_over_marian_eager"] = ratio(ours, res.get("marian_eager"), "target_tokens_per_s")
    report["ratio_jax_over_marian_compiled"] = ratio(ours, res.get("marian_compiled"), "target_tokens_per_s")
    report["wall_seconds"] = time.perf_counter() - driver.start
    report["devices"] = device_names(res)
    write_json(report, args.out)

    rows = []
    for name, r in sorted(res.items(), key=lambda kv: list(sides).index(kv[0]) if kv[0] in sides else 9):
        if "error" in r:
            rows.append([name, "error", r["error"][:120]] + ["error"] * 7)
            continue
        rows.append([name, r["framework"], r["layout"], str(r["steps"]), str(r["sentences"]),
                     str(r["target_tokens"]), f"{r['pad_share']:.1%}", f"{r['step_ms']:.1f}",
                     fmt(r["target_tokens_per_s"]), f"{r['mfu']:.1%}"])
    print_table(
        f"Training throughput on {next((r['device_name'] for r in res.values() if 'device_name' in r), '?')}, "
        f"model {config.enc_layers}+{config.dec_layers} d {config.d_model} FFN {config.ffn_dim} "
        f"vocab {config.vocab_size}, same sentences each side (lengths {args.min_len}-{args.max_len})",
        ["side", "framework", "layout", "steps", "sentences", "target tokens", "pad share", "ms/step",
         "target tok/s", "MFU"], rows)
    print(f"\nratio ours / Marian eager: {fmt(report['ratio_jax_over_marian_eager'], '{:.2f}')}; "
          f"ours / Marian compiled: {fmt(report['ratio_jax_over_marian_compiled'], '{:.2f}')}")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
