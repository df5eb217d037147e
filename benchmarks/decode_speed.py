"""GPU beam-4 decoding speed: ours (JAX, one compiled ``lax.while_loop`` beam search a batch, bf16
compute) against HuggingFace ``MarianMTModel.generate(num_beams=4)`` (bf16 weights on CUDA, KV cache,
sdpa), the same transformer-base shape (6+6, d 512, FFN 2048, 8 heads, vocabulary 40000), both
randomly initialised (quality is irrelevant), on the same source sentences cut into the same batches.

Sources: random tokens with Multi30k-like lengths (12-25 tokens, tag and EOS included), cut by
``data.batching.padded_batches`` (sorted by length, ``--batch`` sentences a batch). Ours pads every
batch to the widest one (one compiled shape; ``decoding.translate_ids`` now gives each batch its own width) and runs
``decoding.make_beam_decoder`` on each batch, all batches dispatched before one final
``block_until_ready`` (no host sync inside the timed loop); Marian gets each batch's real rows
(dummy rows dropped), padded to the batch's longest source.

Both are forced to write exactly ``--decode-len`` tokens a sentence, EOS included, so the work is
equal: ours with ``DecodeConfig(max_len_a=0, max_len_b=N, min_len=N-1)`` (EOS banned for the first
N-1 tokens, only EOS allowed at the N-th), Marian with ``min_new_tokens=N-1, max_new_tokens=N,
forced_eos_token_id=EOS``. Beam 4, length penalty 0.6 (fairseq form on both sides), no early
stopping. The output lengths are checked on both sides (``all_lengths_forced``). Counted:
sentences/s and output tokens/s (N a sentence), after an untimed warm-up (compilation) on the
first batch. Each side runs in its own process; a failing side is recorded as ``{"error": ...}``.

    python -m benchmarks.decode_speed --out results.json            # full (GPU; needs torch + transformers)
    python -m benchmarks.decode_speed --quick --no-torch            # tiny shapes, CPU, JAX only (report in /tmp)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import time

if not __package__:  # run as a file, ``python benchmarks/NAME.py``: run as ``python -m benchmarks.NAME``
    from _as_module import run_as_module

    run_as_module(__file__)

from jax_namnmt.config import DECODE_WEIGHTS  # noqa: E402

from .driver import Driver, add_common_args, run_side  # noqa: E402
from .ours import init_params, jax_device_info  # noqa: E402
from .peers_torch import (build_marian, forced_generate_kwargs, marian_sources, torch_device,  # noqa: E402
                          torch_device_info, torch_sync)
from .report import (base_report, device_names, fmt, model_dict, print_table, ratio, resolve_out,  # noqa: E402
                     write_json)
from .shapes import model_config  # noqa: E402
from .synthetic import forced_lengths, make_sentences  # noqa: E402

NAME = "decode_speed"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, steps=0, warmup=1)  # --steps/--warmup unused: sentences and batches decide
    p.add_argument("--sentences", type=int, default=2048, help="timed source sentences each side")
    p.add_argument("--batch", type=int, default=256, help="sentences a batch")
    p.add_argument("--decode-len", type=int, default=20, help="forced output tokens a sentence, EOS included")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--weights", choices=DECODE_WEIGHTS, default="float32",
                   help="our side's matrices while decoding (decode.weights, model/low_precision.py)")
    p.add_argument("--hf-dtype", choices=("bfloat16", "float32"), default="bfloat16",
                   help="Marian weights on CUDA (CPU: always float32)")
    args = p.parse_args(argv)
    if args.quick:
        args.sentences, args.batch, args.decode_len = 8, 4, 6
        args.min_len, args.max_len = 4, 10
    if args.decode_len < 2:
        p.error("--decode-len must be >= 2 (at least one word, then EOS)")
    resolve_out(args, NAME)
    return args


def decode_setup(args, config):
    """The source sentences and their batches, shared by both sides: ``(src, pairs, batches)``."""
    from jax_namnmt.data.batching import padded_batches

    src, _, pairs = make_sentences(args.sentences, config.vocab_size, args.min_len, args.max_len, 8,
                                   args.seed + 1)
    return src, pairs, padded_batches(src, pairs, args.batch)


def decode_result(framework, sentences, secs, warm_s, lengths, args, extra):
    n_tokens = sentences * args.decode_len
    out = {
        "framework": framework, "sentences": sentences, "output_tokens": n_tokens, "seconds": secs,
        "warmup_seconds": warm_s, "sentences_per_s": sentences / secs, "output_tokens_per_s": n_tokens / secs,
        "output_lengths": sorted(set(lengths)), "decoded_rows": len(lengths),
        "all_lengths_forced": len(lengths) == sentences and all(n == args.decode_len for n in lengths),
    }
    out.update(extra)
    return out


def side_jax(args) -> dict:
    import jax
    import numpy as np

    from jax_namnmt.config import DecodeConfig
    from jax_namnmt.data.vocab import EOS_ID, PAD_ID
    from jax_namnmt.decoding import make_beam_decoder, max_output_len
    from jax_namnmt.model.low_precision import convert_params

    config = model_config(args)
    info = jax_device_info()
    src, pairs, batches = decode_setup(args, config)
    n = args.decode_len
    # max output = 0 * src_len + n; EOS banned for the first n - 1 tokens: exactly n tokens.
    decode = DecodeConfig(beam_size=args.beam, length_penalty=0.6, penalty_form="fairseq", stop_early="fairseq",
                          max_len_a=0.0, max_len_b=n, min_len=n - 1, batch_sentences=args.batch,
                          weights=args.weights)
    width = max(s.shape[1] for _, s, _ in batches)
    max_len = max_output_len(width, decode, 1024)
    decoder = make_beam_decoder(config, decode.beam_size, max_len, decode.length_penalty, decode.penalty_form,
                                decode.stop_early, decode.max_len_a, decode.max_len_b, decode.min_len)
    params = convert_params(init_params(config, args.seed), args.weights)
    inputs = []
    for _, s, p in batches:
        padded = np.full((s.shape[0], width), PAD_ID, np.int32)
        padded[:, :s.shape[1]] = s
        inputs.append((jax.device_put(padded), jax.device_put(p)))
    jax.block_until_ready(inputs)

    t0 = time.perf_counter()
    jax.block_until_ready(decoder(params, *inputs[0], None))
    warm_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    outputs = [decoder(params, s, p, None) for s, p in inputs]
    jax.block_until_ready(outputs)
    secs = time.perf_counter() - t0

    lengths = []
    for (indices, _, _), out in zip(batches, outputs):
        out = np.asarray(out)
        lengths += forced_lengths(out[indices >= 0], EOS_ID)
    return decode_result(
        f"jax {jax.__version__} (decoding.make_beam_decoder, jit lax.while_loop, {config.dtype} compute, "
        f"{args.weights} weights)",
        len(src), secs, warm_s, lengths, args,
        {"batches": len(batches), "batch_shape": [int(batches[0][1].shape[0]), int(width)], "max_len": max_len,
         "decode_config": dataclasses.asdict(decode), **info})


def side_marian(args) -> dict:
    import torch
    import transformers

    from jax_namnmt.data.vocab import BOS_ID, EOS_ID, PAD_ID

    config = model_config(args)
    device = torch_device()
    info = torch_device_info(device)
    src, pairs, batches = decode_setup(args, config)
    model = build_marian(config, PAD_ID, EOS_ID, BOS_ID, args.seed).to(device)
    dtype = torch.bfloat16 if device.type == "cuda" and args.hf_dtype == "bfloat16" else torch.float32
    model = model.to(dtype)
    model.eval()
    n = args.decode_len
    gen = {**forced_generate_kwargs(n, args.beam, PAD_ID, EOS_ID, BOS_ID), "use_cache": True}
    inputs = [marian_sources(b[0], src, PAD_ID, device) for b in batches]  # our rows minus dummies
    torch_sync(device)
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(**inputs[0], **gen)
        torch_sync(device)
        warm_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        outputs = [model.generate(**b, **gen) for b in inputs]
        torch_sync(device)
        secs = time.perf_counter() - t0

    # Marian's output starts with the decoder start token; rows are padded to the batch's longest.
    lengths = [k for out in outputs for k in forced_lengths(out[:, 1:].cpu().numpy(), EOS_ID)]
    attn = getattr(model.config, "_attn_implementation", "?")
    sentences = sum(int(b["input_ids"].shape[0]) for b in inputs)
    return decode_result(
        f"torch {torch.__version__} eager {str(dtype).replace('torch.', '')} + transformers "
        f"{transformers.__version__} MarianMTModel.generate ({attn}, KV cache)", sentences, secs, warm_s, lengths,
        args, {"batches": len(inputs), "generate_kwargs": gen, **info})


def main(argv=None):
    args = parse_args(argv)
    sides = {"jax": lambda: side_jax(args), "marian": lambda: side_marian(args)}
    if run_side(args, sides):
        return None

    config = model_config(args)
    have_torch = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))
    names = ["jax"] + (["marian"] if not args.no_torch and have_torch else [])
    report = base_report(NAME, args)
    report.update({
        "model": model_dict(config), "beam": args.beam, "length_penalty": 0.6,
        "forced_output_len": args.decode_len, "sentences": args.sentences, "batch_sentences": args.batch,
        "source_lengths": [args.min_len, args.max_len], "same_sentences": True, "same_batches": True,
        "params": "random init (seed), no masks",
        "torch": "used" if len(names) > 1 else ("disabled (--no-torch)" if args.no_torch else "not importable"),
        "sides": names, "results": {},
    })
    driver = Driver(__spec__.name, args, argv)
    for name in names:
        report["results"][name] = driver.run(name)
        write_json(report, args.out)
    res = report["results"]
    report["ratio_jax_over_marian"] = ratio(res.get("jax"), res.get("marian"), "sentences_per_s")
    report["wall_seconds"] = time.perf_counter() - driver.start
    report["devices"] = device_names(res)
    write_json(report, args.out)

    rows = []
    for name, r in res.items():
        if "error" in r:
            rows.append([name, "error", r["error"][:120]] + ["error"] * 6)
            continue
        rows.append([name, r["framework"], str(r["batches"]), str(r["sentences"]), str(r["output_lengths"]),
                     f"{r['warmup_seconds']:.1f}", f"{r['seconds']:.2f}", fmt(r["sentences_per_s"], "{:,.1f}"),
                     fmt(r["output_tokens_per_s"])])
    print_table(
        f"Beam-{args.beam} decoding on {next((r['device_name'] for r in res.values() if 'device_name' in r), '?')}, "
        f"same {args.sentences} sources and batches of {args.batch} each side, every output forced to "
        f"{args.decode_len} tokens (EOS included)",
        ["side", "framework", "batches", "sentences", "output lengths", "warm-up s", "seconds", "sentences/s",
         "output tok/s"], rows)
    print(f"\nratio ours / Marian (sentences/s): {fmt(report['ratio_jax_over_marian'], '{:.2f}')}")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
