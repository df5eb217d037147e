"""CPU throughput, training and beam decoding: ours (JAX/Flax) against HuggingFace MarianMTModel
(PyTorch eager, float32) on the same sentences, same shapes, same thread count.

Training: our jit train step (Adam) against Marian with AdamW (weight decay 0), both at a
constant learning rate of 5e-4 with label smoothing 0.1 from random initialisations, so
each side's ``final_loss`` in the JSON is a check that both do the same work.

Both sides train on one identical set of random token sentences with Multi30k-like lengths
(12-25 tokens a side, tag and EOS included). JAX gets them as the packed fixed-shape batches
of ``PackedBatcher`` (rows x 64 tokens, ~4,000 target tokens a batch); Marian gets the very
same sentences as padded, length-bucketed batches (sorted by length, cut so each batch holds
at most ``tokens_per_batch`` padded target tokens). Throughput is counted in target
(non-padding) tokens per second, EOS included, for both.

Decoding: beam 4 (length penalty 0.6, fairseq form on both sides), both models randomly
initialised (quality is irrelevant), on one identical set of random source sentences with the
same lengths as above, cut into the same batches (``padded_batches``: sorted by length,
``--decode-batch`` sentences a batch). Ours is ``decoding.translate_ids`` (one compiled
``lax.while_loop`` a batch); Marian is ``generate(num_beams=4)`` (KV cache, eager). Both are
forced to write exactly ``--decode-len`` tokens a sentence, EOS included, so the work is equal:
ours with ``DecodeConfig(max_len_a=0, max_len_b=N, min_len=N-1)`` (EOS banned for the first
N-1 tokens, only EOS allowed at the N-th), Marian with ``min_new_tokens=N-1, max_new_tokens=N,
forced_eos_token_id=EOS``. The lengths are checked on both sides. Counted: sentences/s and
output tokens/s (N per sentence), after an untimed warm-up (compilation) on the first batch.
Ours decodes ``decoding.decode_workers()`` batches at once (2 on CPU); Marian's ``generate``
one at a time. When ``ctranslate2`` is importable too, the Marian model (its very weights)
converted to CTranslate2 decodes the same batches as well, one side per ``--ct2-compute-types``
entry (float32, ours' precision, and int8) and ``--ct2-layouts`` entry (one batch at a time on
2 threads, or two at once on one thread each), held to N decoding steps a sentence (it cannot
force a final EOS; ``min_decoding_length = max_decoding_length = N``).

Rounds: each measurement runs ``--rounds`` times (default 3), ours and Marian alternating, and
each side's fastest round counts (all rounds are in the JSON): this 2-core VM's speed drifts by
+-10% over minutes, and alternating makes the drift hit both sides alike. The JSON also has the
ratio of each back-to-back round pair and their median (``paired_ratio_jax_over_marian``), which
a drift between rounds does not move; ``--rounds 8 --steps 8`` gives more, shorter pairs.

    python -m benchmarks.cpu_throughput                # full benchmark (needs torch + transformers)
    python -m benchmarks.cpu_throughput --quick        # tiny shapes, 2 steps, 2 decode batches, JAX only if no torch

(``python benchmarks/cpu_throughput.py`` works too.) A full run writes
``benchmarks/results/cpu_throughput.json``; a ``--quick`` one a new temporary directory (it says
which) unless ``--out`` names a path.

Run torch from a separate venv (benchmark-only dependencies, never runtime ones):

    python3 -m venv /tmp/benchvenv
    /tmp/benchvenv/bin/pip install torch==2.13.0          # the CPU build on this machine's disk
    /tmp/benchvenv/bin/pip install transformers ctranslate2 -r requirements.txt && /tmp/benchvenv/bin/pip install --no-deps -e .
    /tmp/benchvenv/bin/python -m benchmarks.cpu_throughput
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run as a file, ``python benchmarks/NAME.py``: run as ``python -m benchmarks.NAME``
    from _as_module import run_as_module

    run_as_module(__file__)

from .ours import constant_schedule, run_steps  # noqa: E402
from .peers_ct2 import BatchSession, ctranslate2_available, ctranslate2_from_marian  # noqa: E402
from .peers_torch import (build_marian, forced_generate_kwargs, marian_buckets, marian_sources,  # noqa: E402
                          marian_tensors, torch_available)
from .report import best_round, resolve_out  # noqa: E402
from .shapes import LEARNING_RATE  # noqa: E402
from .synthetic import forced_lengths, make_sentences, packed_data  # noqa: E402

THREADS_DEFAULT = 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny shapes, 2 timed steps (< 30 s)")
    p.add_argument("--steps", type=int, default=20, help="timed JAX steps (Marian gets the same sentences)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps each")
    p.add_argument("--threads", type=int, default=THREADS_DEFAULT)
    p.add_argument("--tokens-per-batch", type=int, default=4096, help="target token slots a batch")
    p.add_argument("--row-len", type=int, default=64, help="packed row length (src and tgt)")
    p.add_argument("--layout", choices=("compact", "rows"), default="compact",
                   help="our batches: compact (what `train` uses on one device) or rows (data.layout)")
    p.add_argument("--min-len", type=int, default=12)
    p.add_argument("--max-len", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true", help="JAX only")
    p.add_argument("--no-ctranslate2", action="store_true", help="decoding without the CTranslate2 sides")
    p.add_argument("--decode-only", action="store_true", help="skip training; decoding sides only")
    p.add_argument("--no-marian-decode", action="store_true",
                   help="decoding without Marian's generate (the CTranslate2 sides still need torch to convert)")
    p.add_argument("--ct2-compute-types", default="float32,int8",
                   help="CTranslate2 decoding sides, one per compute type (float32 is ours' precision) and layout")
    p.add_argument("--ct2-layouts", default="1x2,2x1",
                   help="CTranslate2 thread layouts INTERxINTRA: 1x2 = one batch at a time on 2 threads, 2x1 = "
                        "two batches at once (two Python threads, inter_threads=2), one thread each")
    p.add_argument("--decode-sentences", type=int, default=512, help="timed decoding sentences each side")
    p.add_argument("--decode-batch", type=int, default=128, help="sentences a decoding batch")
    p.add_argument("--decode-len", type=int, default=20, help="forced output tokens a sentence, EOS included")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3,
                   help="timed rounds each side, ours and Marian alternating; the fastest round counts")
    p.add_argument("--out", default=None,
                   help="JSON report (default benchmarks/results/cpu_throughput.json; with --quick a new temporary "
                        "directory)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.rounds = 2, 1, 1
        args.tokens_per_batch, args.row_len = 256, 32
        args.min_len, args.max_len = 4, 10
        args.decode_sentences, args.decode_batch, args.decode_len = 8, 4, 6
    if args.decode_len < 2:
        p.error("--decode-len must be >= 2 (at least one word, then EOS)")
    resolve_out(args, "cpu_throughput")
    return args


def set_threads(n: int) -> None:
    # Before jax/torch are imported. XLA CPU sizes its pool from the visible cores; on this
    # machine (2 cores) that equals --threads. The env vars bound torch/OpenMP/MKL.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)


# ----------------------------------------------------------------------------- JAX


def build_jax_batches(args, config):
    """``common.packed_data``: warm-up and timed batches of ``args.layout`` over random sentences."""
    d = packed_data(args.tokens_per_batch, args.row_len, args.min_len, args.max_len, args.steps, args.warmup,
                    config.vocab_size, args.seed, layout=args.layout)
    return d["rows"], d["src"], d["tgt"], d["warm"], d["timed"], d["timed_ids"]


def jax_train_session(args, config, warm_batches, timed_batches):
    """Compiles and warms our train step; returns ``(run_round() -> seconds, result(seconds) -> dict)``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jax_namnmt.model.transformer import init_params
    from jax_namnmt.systems import count_params
    from jax_namnmt.training.step import init_state, make_optimizer, make_train_step

    train_step = make_train_step(config, 0.1, 0.9, 0.98, 1e-9, 0.0)
    box = {"state": init_state(init_params(config, seed=args.seed), make_optimizer(0.9, 0.98, 1e-9))}
    sched = constant_schedule()
    key = jax.random.key(args.seed)
    to_dev = lambda b: {k: jnp.asarray(v) for k, v in b.items()}  # noqa: E731
    warm = [to_dev(b) for b in warm_batches]
    timed = [to_dev(b) for b in timed_batches]
    jax.block_until_ready(timed)
    box["state"], _, warm_s = run_steps(train_step, box["state"], warm, None, key, sched)

    def run_round():
        box["state"], box["metrics"], secs = run_steps(train_step, box["state"], timed, None, key, sched)
        return secs

    def result(seconds):
        tokens = int(sum(int((np.asarray(b["tgt_segments"]) > 0).sum()) for b in timed_batches))
        slots = int(sum(b["tgt_segments"].size for b in timed_batches))
        sentences = int(sum(int(((b["tgt_positions"] == 0) & (b["tgt_segments"] > 0)).sum()) for b in timed_batches))
        first = timed_batches[0]
        shape = (f"compact: {first['tgt_segments'].shape[1]} target / {first['src_segments'].shape[1]} source "
                 f"token slots, attention on {first['tgt_index'].shape[1]} rows x {args.row_len}"
                 if args.layout == "compact" else f"packed: {first['tgt_segments'].shape[0]} rows x {args.row_len} tokens")
        return {
            "framework": f"jax {jax.__version__} (jit, {args.layout} layout)",
            "layout": shape,
            "sentences": sentences, "target_tokens": tokens, "target_slots": slots,
            **best_round(seconds, len(timed), tokens), "warmup_seconds": warm_s,
            "final_loss": float(box["metrics"]["loss"]), "params": count_params(box["state"]["params"]),
        }

    return run_round, result


# ----------------------------------------------------------------------------- Marian (PyTorch)


def marian_train_session(args, config, src, tgt, warm_ids, timed_ids):
    """Builds and warms Marian's training; returns ``(run_round() -> seconds, result(seconds) -> dict)``."""
    import torch
    import transformers

    from jax_namnmt.data.vocab import BOS_ID, EOS_ID, PAD_ID

    torch.set_num_threads(args.threads)
    model = build_marian(config, PAD_ID, EOS_ID, BOS_ID, args.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1, ignore_index=PAD_ID)
    warm = [marian_tensors(b, src, tgt, PAD_ID, BOS_ID)
            for b in marian_buckets(warm_ids, src, tgt, args.tokens_per_batch)][:args.warmup]
    timed = [marian_tensors(b, src, tgt, PAD_ID, BOS_ID)
             for b in marian_buckets(timed_ids, src, tgt, args.tokens_per_batch)]
    box = {}

    def step(b):
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                       decoder_input_ids=b["decoder_input_ids"],
                       decoder_attention_mask=b["decoder_attention_mask"], use_cache=False).logits
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), b["labels"].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    t0 = time.perf_counter()
    for b in warm:
        step(b)
    warm_s = time.perf_counter() - t0

    def run_round():
        t0 = time.perf_counter()
        for b in timed:
            box["loss"] = step(b)
        return time.perf_counter() - t0

    def result(seconds):
        tokens = int(sum(int((b["labels"] != PAD_ID).sum()) for b in timed))
        slots = int(sum(b["labels"].numel() for b in timed))
        sentences = int(sum(b["labels"].shape[0] for b in timed))
        attn = getattr(model.config, "_attn_implementation", "?")
        return {
            "framework": f"torch {torch.__version__} eager + transformers {transformers.__version__} "
                         f"MarianMTModel ({attn})",
            "layout": "padded, length-bucketed (<= tokens_per_batch padded target tokens)",
            "sentences": sentences, "target_tokens": tokens, "target_slots": slots,
            **best_round(seconds, len(timed), tokens), "warmup_seconds": warm_s, "final_loss": box["loss"].item(),
            "params": sum(q.numel() for q in model.parameters()),
            "tied_embeddings": model.get_output_embeddings().weight is model.get_input_embeddings().weight,
            "torch_threads": torch.get_num_threads(),
        }

    return run_round, result


# ----------------------------------------------------------------------------- decoding


def decode_setup(args, config):
    """The source sentences and their batches, shared by both sides: ``(src, pairs, batches)``."""
    from jax_namnmt.data.batching import padded_batches

    src, _, pairs = make_sentences(args.decode_sentences, config.vocab_size, args.min_len, args.max_len, 8,
                                   args.seed + 1)
    batches = padded_batches(src, pairs, args.decode_batch)
    return src, pairs, batches


def decode_result(framework, sentences, n_tokens, seconds, warm_s, lengths, args, extra=None):
    """The decoding record of the fastest of ``seconds`` (one entry a round)."""
    secs = min(seconds)
    out = {
        "framework": framework, "sentences": sentences, "output_tokens": n_tokens, "seconds": secs,
        "round_seconds": list(seconds),
        "warmup_seconds": warm_s, "sentences_per_s": sentences / secs, "output_tokens_per_s": n_tokens / secs,
        "output_lengths": sorted(set(lengths)),
        "all_lengths_forced": all(n == args.decode_len for n in lengths),
    }
    out.update(extra or {})
    return out


def jax_decode_session(args, config, src, pairs, batches):
    """Compiles our decoder (first batch); returns ``(run_round() -> seconds, result(seconds) -> dict)``."""
    import jax

    from jax_namnmt.config import DecodeConfig
    from jax_namnmt.data.vocab import EOS_ID
    from jax_namnmt.decoding import translate_ids
    from jax_namnmt.model.transformer import init_params

    n = args.decode_len
    # max output = 0 * src_len + n; EOS banned for the first n - 1 tokens: exactly n tokens.
    decode = DecodeConfig(beam_size=args.beam, length_penalty=0.6, penalty_form="fairseq", stop_early="fairseq",
                          max_len_a=0.0, max_len_b=n, min_len=n - 1, batch_sentences=args.decode_batch)
    params = init_params(config, seed=args.seed)
    jax.block_until_ready(params)

    # Warm-up: one whole round (each batch width is its own compiled program).
    t0 = time.perf_counter()
    translate_ids(params, config, None, src, pairs, decode)
    warm_s = time.perf_counter() - t0
    box = {}

    def run_round():
        t0 = time.perf_counter()
        box["outputs"] = translate_ids(params, config, None, src, pairs, decode)
        return time.perf_counter() - t0

    def result(seconds):
        lengths = forced_lengths(box["outputs"], EOS_ID)
        return decode_result(f"jax {jax.__version__} (decoding.translate_ids, jit lax.while_loop)",
                             len(src), len(src) * n, seconds, warm_s, lengths, args,
                             {"batches": len(batches), "batch_shape": [int(batches[0][1].shape[0]),
                                                                       int(max(b[1].shape[1] for b in batches))],
                              "decode_config": dataclasses.asdict(decode)})

    return run_round, result


def marian_decode_session(args, config, src, pairs, batches):
    """Builds and warms Marian's ``generate``; returns ``(run_round() -> seconds, result(seconds) -> dict)``."""
    import torch
    import transformers

    from jax_namnmt.data.vocab import BOS_ID, EOS_ID, PAD_ID

    torch.set_num_threads(args.threads)
    model = build_marian(config, PAD_ID, EOS_ID, BOS_ID, args.seed)
    model.eval()
    n = args.decode_len
    gen = forced_generate_kwargs(n, args.beam, PAD_ID, EOS_ID, BOS_ID)
    inputs = [marian_sources(b[0], src, PAD_ID) for b in batches]  # the same rows as ours, minus dummy rows
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(**inputs[0], **gen)
        warm_s = time.perf_counter() - t0
    box = {}

    def run_round():
        with torch.inference_mode():
            t0 = time.perf_counter()
            box["outputs"] = [model.generate(**b, **gen) for b in inputs]
            return time.perf_counter() - t0

    def result(seconds):
        # Marian's output starts with the decoder start token; rows are padded to the batch's longest.
        lengths = [n_ for out in box["outputs"] for n_ in forced_lengths(out[:, 1:].numpy(), EOS_ID)]
        attn = getattr(model.config, "_attn_implementation", "?")
        sentences = sum(int(b["input_ids"].shape[0]) for b in inputs)
        return decode_result(f"torch {torch.__version__} eager + transformers {transformers.__version__} "
                             f"MarianMTModel.generate ({attn}, KV cache)", sentences, sentences * n, seconds,
                             warm_s, lengths, args, {"batches": len(inputs), "torch_threads": torch.get_num_threads(),
                                                     "generate_kwargs": gen})

    return run_round, result


def ctranslate2_decode_session(args, config, src, pairs, batches, compute_type: str, layout: str = "1x2"):
    """Marian's model converted to CTranslate2 (``ctranslate2_from_marian``: the same weights),
    ``Translator.translate_batch`` on the same batches, beam ``--beam``, length penalty 0.6;
    ``layout`` ``INTERxINTRA``: ``inter_threads`` batches at once (from as many Python threads,
    as ours decodes two batches at once on CPU), ``intra_threads`` each. CTranslate2 cannot force
    a final EOS, so it is held to exactly ``--decode-len`` decoding steps
    (``min_decoding_length = max_decoding_length = N``): the same number of decoder steps as ours
    and Marian's (their N-th token is the forced EOS). Returns
    ``(run_round() -> seconds, result(seconds) -> dict)``."""
    import tempfile

    from jax_namnmt.data.vocab import BOS_ID, EOS_ID, PAD_ID

    model = build_marian(config, PAD_ID, EOS_ID, BOS_ID, args.seed).eval()
    workdir = tempfile.TemporaryDirectory(prefix="ct2_")
    tokens = ctranslate2_from_marian(model, config.vocab_size, workdir.name)
    n = args.decode_len
    options = dict(beam_size=args.beam, length_penalty=0.6, min_decoding_length=n, max_decoding_length=n,
                   return_end_token=True, max_batch_size=args.decode_batch)
    inputs = [[[tokens[t] for t in src[int(i)]] for i in b[0] if i >= 0] for b in batches]
    session = BatchSession(workdir, compute_type, layout, inputs, options)

    def result(seconds):
        lengths = [len(r.hypotheses[0]) for out in session.outputs for r in out]
        sentences = sum(len(b) for b in inputs)
        return decode_result(f"ctranslate2 {session.version} Translator.translate_batch ({compute_type}, "
                             f"{session.inter} batch(es) at once x {session.intra} thread(s), converted from the "
                             "Marian model)",
                             sentences, sentences * n, seconds, session.warm_s, lengths, args,
                             {"batches": len(inputs), "compute_type": compute_type, "inter_threads": session.inter,
                              "intra_threads": session.intra, "translate_options": options,
                              "lengths": "decoding steps (no forced EOS)"})

    return session.run_round, result


def interleaved(sessions: dict, rounds: int) -> dict:
    """Runs ``rounds`` rounds of every session in turn (ours, then Marian, then ours...), so a
    drift of the machine's speed hits both sides alike; each side's result is its fastest round."""
    seconds = {name: [] for name in sessions}
    cpu = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, (run_round, _) in sessions.items():
            # process_time: user + system CPU of the whole process (all threads), to the nanosecond;
            # os.times counts 10 ms clock ticks, so a quick round could read 0 and divide by it
            before = time.process_time()
            seconds[name].append(run_round())
            cpu[name].append(time.process_time() - before)
    results = {name: result(seconds[name]) for name, (_, result) in sessions.items()}
    for name, r in results.items():
        # the process's CPU seconds a round (all its threads): on a machine that other work keeps
        # busy, wall time measures the share the side got, CPU time more nearly its work
        r["round_cpu_seconds"] = cpu[name]
    return results


def paired_ratios(ours_seconds: list[float], theirs_seconds: list[float]) -> dict:
    """Ours / theirs throughput of each round pair (the same work each side, so the ratio of
    their seconds to ours), and the median: the two rounds of a pair ran back to back, so a slow
    drift of the machine cancels in each pair, where the fastest rounds of the two sides may
    come from different machine states."""
    ratios = [t / o for o, t in zip(ours_seconds, theirs_seconds)]
    return {"per_round": ratios, "median": statistics.median(ratios) if ratios else None}


# ----------------------------------------------------------------------------- main


def cpu_model_config(quick: bool):
    """The measured model: ``ModelConfig()`` (3+3 layers, d 256, 4 heads, FFN 1024, vocabulary
    8000, dropout 0.1, tied embeddings), or a 1+1-layer d-32 one for ``--quick``."""
    from jax_namnmt.config import ModelConfig

    if quick:
        return ModelConfig(vocab_size=256, d_model=32, num_heads=2, ffn_dim=64, enc_layers=1,
                           dec_layers=1, max_positions=64)
    return ModelConfig()  # 3+3, d 256, 4 heads, FFN 1024, vocab 8000, dropout 0.1, tied


def compare_training(args, config, use_torch: bool):
    """Our train step and (``use_torch``) Marian's on the same sentences, rounds interleaved:
    ``(rows of our batches, {side: result})``."""
    rows, src, tgt, warm_b, timed_b, timed_ids = build_jax_batches(args, config)
    warm_ids = list(range(len(src) - 400, len(src)))  # Marian warm-up on sentences outside the timed set
    warm_ids = [i for i in warm_ids if i not in set(timed_ids)] or timed_ids[:50]

    sessions = {"jax": jax_train_session(args, config, warm_b, timed_b)}
    if use_torch:
        sessions["marian"] = marian_train_session(args, config, src, tgt, warm_ids, timed_ids)
    return rows, interleaved(sessions, args.rounds)


def training_report(args, config, rows, results: dict, use_torch: bool) -> dict:
    """The report's header and its training part (with Marian: the ratios, fastest rounds and round pairs)."""
    import jax

    report = {
        "benchmark": "cpu_train_throughput",
        "quick": args.quick,
        "model": {k: getattr(config, k) for k in ("vocab_size", "d_model", "num_heads", "ffn_dim",
                                                   "enc_layers", "dec_layers", "dropout")},
        "label_smoothing": 0.1, "optimizer": "Adam(0.9, 0.98, 1e-9) / AdamW(wd=0)",
        "tokens_per_batch": args.tokens_per_batch, "row_len": args.row_len, "rows": rows,
        "sentence_lengths": [args.min_len, args.max_len], "threads": args.threads, "rounds": args.rounds,
        "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "python": sys.version.split()[0], "jax_backend": jax.default_backend(),
        "same_sentences": True, "results": results,
        "torch": "used" if use_torch else "not importable or disabled: JAX only",
    }
    if use_torch:
        report["ratio_jax_over_marian"] = (results["jax"]["target_tokens_per_s"]
                                           / results["marian"]["target_tokens_per_s"])
        report["paired_ratio_jax_over_marian"] = paired_ratios(results["jax"]["round_seconds"],
                                                               results["marian"]["round_seconds"])
    return report


def ctranslate2_sides(args, use_torch: bool) -> dict:
    """``{side name: (compute type, layout)}`` of the CTranslate2 decoding sides (none without torch,
    with ``--no-ctranslate2`` or where ``ctranslate2`` does not import)."""
    use_ct2 = use_torch and not args.no_ctranslate2 and ctranslate2_available()
    return {f"ctranslate2_{t}_{lay}": (t, lay) for t in args.ct2_compute_types.split(",") if t
            for lay in args.ct2_layouts.split(",") if lay} if use_ct2 else {}


def compare_decoding(args, config, use_torch: bool, ct2_sides: dict) -> dict:
    """Our beam decoder, Marian's ``generate`` (``use_torch``) and the CTranslate2 sides on the same
    batches, rounds interleaved: ``{side: result}``."""
    dsrc, dpairs, dbatches = decode_setup(args, config)
    sessions = {"jax": jax_decode_session(args, config, dsrc, dpairs, dbatches)}
    if use_torch and not args.no_marian_decode:
        sessions["marian"] = marian_decode_session(args, config, dsrc, dpairs, dbatches)
    for side, (compute_type, lay) in ct2_sides.items():
        sessions[side] = ctranslate2_decode_session(args, config, dsrc, dpairs, dbatches, compute_type, lay)
    return interleaved(sessions, args.rounds)


def decoding_report(args, dres: dict, use_torch: bool, ct2_sides: dict) -> dict:
    """The report's ``decode`` part: settings, results, ours over each peer (fastest rounds and round pairs)."""
    from jax_namnmt.decoding import decode_workers

    decode = {
        "beam": args.beam, "length_penalty": 0.6, "forced_output_len": args.decode_len,
        "sentences": args.decode_sentences, "batch_sentences": args.decode_batch,
        "source_lengths": [args.min_len, args.max_len], "same_sentences": True, "same_batches": True,
        "params": "random init (seed), no masks", "results": dres,
        "ours_batches_at_once": decode_workers(), "threads": args.threads,
    }
    if "marian" in dres:
        decode["ratio_jax_over_marian"] = (dres["jax"]["sentences_per_s"]
                                           / dres["marian"]["sentences_per_s"])
        decode["paired_ratio_jax_over_marian"] = paired_ratios(dres["jax"]["round_seconds"],
                                                               dres["marian"]["round_seconds"])
    for side in ct2_sides:
        decode[f"ratio_jax_over_{side}"] = dres["jax"]["sentences_per_s"] / dres[side]["sentences_per_s"]
        decode[f"paired_ratio_jax_over_{side}"] = paired_ratios(dres["jax"]["round_seconds"],
                                                                dres[side]["round_seconds"])
        decode[f"paired_cpu_ratio_jax_over_{side}"] = paired_ratios(dres["jax"]["round_cpu_seconds"],
                                                                    dres[side]["round_cpu_seconds"])
    return decode


def print_training(args, report: dict, use_torch: bool) -> None:
    """The training table, and ours / Marian round by round."""
    results = report["results"]
    print(f"\nCPU training throughput ({args.threads} threads, {os.cpu_count()} cores), "
          f"same {results['jax']['sentences']} sentences each side")
    print("| side | layout | steps | sentences | target tokens | pad share | seconds | target tok/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        pad = 1 - r["target_tokens"] / r["target_slots"]
        print(f"| {name}: {r['framework']} | {r['layout']} | {r['steps']} | {r['sentences']} | "
              f"{r['target_tokens']} | {pad:.1%} | {r['seconds']:.2f} | {r['target_tokens_per_s']:,.0f} |")
    if use_torch:
        paired = report["paired_ratio_jax_over_marian"]
        print(f"\nJAX / Marian ratio (target tokens/s): {report['ratio_jax_over_marian']:.3f} (fastest rounds); "
              f"round by round {', '.join(f'{r:.3f}' for r in paired['per_round'])}, median {paired['median']:.3f}")


def print_decoding(args, dres: dict) -> None:
    """The decoding table."""
    print(f"\nCPU beam-{args.beam} decoding ({args.threads} threads), same {args.decode_sentences} source "
          f"sentences and batches of {args.decode_batch} each side, every output forced to "
          f"{args.decode_len} tokens (EOS included)")
    print("| side | batches | sentences | output lengths | warm-up s | seconds | sentences/s | output tok/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in dres.items():
        print(f"| {name}: {r['framework']} | {r['batches']} | {r['sentences']} | {r['output_lengths']} | "
              f"{r['warmup_seconds']:.1f} | {r['seconds']:.2f} | {r['sentences_per_s']:,.1f} | "
              f"{r['output_tokens_per_s']:,.0f} |")


def print_summary(args, report: dict, ct2_sides: dict) -> None:
    """Ours against Marian, training and decoding in one table; then ours against each CTranslate2 side."""
    results, dres = report["results"], report["decode"]["results"]
    print("\nSummary (higher is better; ratio = ours / Marian)")
    print("| measure | ours (JAX) | Marian (PyTorch) | ratio |")
    print("| --- | --- | --- | --- |")
    rows_ = [("train: target tokens/s", results, "target_tokens_per_s", "{:,.0f}"),
             (f"decode beam {args.beam}: sentences/s", dres, "sentences_per_s", "{:,.1f}"),
             (f"decode beam {args.beam}: output tokens/s", dres, "output_tokens_per_s", "{:,.0f}")]
    for label, res, key, fmt in rows_:
        ours = fmt.format(res["jax"][key])
        theirs = fmt.format(res["marian"][key]) if "marian" in res else "-"
        ratio = f"{res['jax'][key] / res['marian'][key]:.3f}" if "marian" in res else "-"
        print(f"| {label} | {ours} | {theirs} | {ratio} |")
    for side in ct2_sides:
        paired = report["decode"][f"paired_ratio_jax_over_{side}"]
        print(f"decode, ours / {side} (sentences/s): {report['decode'][f'ratio_jax_over_{side}']:.3f} (fastest "
              f"rounds); round by round {', '.join(f'{r:.3f}' for r in paired['per_round'])}, median "
              f"{paired['median']:.3f}")


def print_decode_ratios(report: dict, ct2_sides: dict) -> None:
    """Ours over each decoding peer: fastest rounds, round by round, and the median of the pairs."""
    for side in (["marian"] if "paired_ratio_jax_over_marian" in report["decode"] else []) + list(ct2_sides):
        paired = report["decode"][f"paired_ratio_jax_over_{side}"]
        print(f"decode, ours / {side} (sentences/s): {report['decode'][f'ratio_jax_over_{side}']:.3f} (fastest "
              f"rounds); round by round {', '.join(f'{r:.3f}' for r in paired['per_round'])}, median "
              f"{paired['median']:.3f}; by CPU seconds, median of pairs "
              f"{report['decode'][f'paired_cpu_ratio_jax_over_{side}']['median']:.3f}")


def write_report(report: dict, load_start: list[float], out) -> None:
    """Adds the load averages at start and end (other work on the machine skews both sides), prints
    them and writes the report to ``out``."""
    report["load_average_start"], report["load_average_end"] = load_start, list(os.getloadavg())
    print(f"load average (1, 5, 15 min) at start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}, "
          f"at end {report['load_average_end'][0]:.2f} {report['load_average_end'][1]:.2f} "
          f"{report['load_average_end'][2]:.2f} on {os.cpu_count()} cores")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    load_start = list(os.getloadavg())  # other work on the machine skews both sides (torch's more)
    import jax  # noqa: F401 - loaded first (before torch_available loads torch), after set_threads

    config = cpu_model_config(args.quick)
    use_torch = not args.no_torch and torch_available()

    if args.decode_only:
        rows, results = 0, {}
        report = {"benchmark": "cpu_decode_throughput", "quick": args.quick, "threads": args.threads,
                  "rounds": args.rounds, "cpu_count": os.cpu_count(),
                  "machine": platform.processor() or platform.machine(), "python": sys.version.split()[0]}
    else:
        rows, results = compare_training(args, config, use_torch)
        report = training_report(args, config, rows, results, use_torch)
    ct2_sides = ctranslate2_sides(args, use_torch)
    dres = compare_decoding(args, config, use_torch, ct2_sides)
    report["decode"] = decoding_report(args, dres, use_torch, ct2_sides)
    report["ctranslate2"] = "used" if ct2_sides else "not importable or disabled"

    if not args.decode_only:
        print_training(args, report, use_torch)
    print_decoding(args, dres)
    if not args.decode_only:
        print_summary(args, report, ct2_sides)
    else:
        print_decode_ratios(report, ct2_sides)
    write_report(report, load_start, args.out)
    return report


if __name__ == "__main__":
    main()
