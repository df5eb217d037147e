"""CPU training throughput: our jit train step (JAX/Flax) against HuggingFace MarianMTModel
(PyTorch eager, float32, AdamW) on the same sentences, same shapes, same thread count.

Both sides train on one identical set of random token sentences with Multi30k-like lengths
(12-25 tokens a side, tag and EOS included). JAX gets them as the packed fixed-shape batches
of ``PackedBatcher`` (rows x 64 tokens, ~4,000 target tokens a batch); Marian gets the very
same sentences as padded, length-bucketed batches (sorted by length, cut so each batch holds
at most ``tokens_per_batch`` padded target tokens). Throughput is counted in target
(non-padding) tokens per second, EOS included, for both.

    python benchmarks/cpu_throughput.py                # full benchmark (needs torch + transformers)
    python benchmarks/cpu_throughput.py --quick        # tiny shapes, 2 steps, JAX only if no torch

Run torch from a separate venv (benchmark-only dependencies, never runtime ones):

    python3 -m venv /tmp/benchvenv
    /tmp/benchvenv/bin/pip install torch==2.13.0          # the CPU build on this machine's disk
    /tmp/benchvenv/bin/pip install transformers -r requirements.txt && /tmp/benchvenv/bin/pip install --no-deps -e .
    /tmp/benchvenv/bin/python benchmarks/cpu_throughput.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

THREADS_DEFAULT = 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny shapes, 2 timed steps (< 30 s)")
    p.add_argument("--steps", type=int, default=20, help="timed JAX steps (Marian gets the same sentences)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps each")
    p.add_argument("--threads", type=int, default=THREADS_DEFAULT)
    p.add_argument("--tokens-per-batch", type=int, default=4096, help="target token slots a batch")
    p.add_argument("--row-len", type=int, default=64, help="packed row length (src and tgt)")
    p.add_argument("--min-len", type=int, default=12)
    p.add_argument("--max-len", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true", help="JAX only")
    p.add_argument("--out", default="benchmarks/results/cpu_throughput.json")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 2, 1
        args.tokens_per_batch, args.row_len = 256, 32
        args.min_len, args.max_len = 4, 10
    return args


def set_threads(n: int) -> None:
    # Before jax/torch are imported. XLA CPU sizes its pool from the visible cores; on this
    # machine (2 cores) that equals --threads. The env vars bound torch/OpenMP/MKL.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)


def make_sentences(n: int, vocab: int, min_len: int, max_len: int, num_pairs: int, seed: int):
    """Random token sentences: src = [tag, words..., EOS], tgt = [words..., EOS]."""
    import numpy as np

    from jax_namnmt.data.vocab import EOS_ID

    rng = np.random.default_rng(seed)
    first_word = 4 + 16  # ids 0-3 specials, then room for language tags
    src, tgt = [], []
    for _ in range(n):
        ls, lt = rng.integers(min_len, max_len + 1, size=2)
        tag = rng.integers(4, first_word)
        src.append(np.concatenate([[tag], rng.integers(first_word, vocab, ls - 2), [EOS_ID]]).astype(np.int32))
        tgt.append(np.concatenate([rng.integers(first_word, vocab, lt - 1), [EOS_ID]]).astype(np.int32))
    pairs = rng.integers(0, num_pairs, size=n).astype(np.int32)
    return src, tgt, pairs


# ----------------------------------------------------------------------------- JAX


def build_jax_batches(args, config):
    import numpy as np

    from jax_namnmt.data.batching import Examples, PackedBatcher, rows_for_budget

    rows = rows_for_budget(args.tokens_per_batch, args.row_len)
    # Enough sentences for warm-up + timed batches (~row_len / mean length sentences a row).
    mean = (args.min_len + args.max_len) / 2
    need = int((args.steps + args.warmup + 2) * rows * (args.row_len / mean) * 1.1) + rows
    src, tgt, pairs = make_sentences(need, config.vocab_size, args.min_len, args.max_len, 8, args.seed)
    examples = Examples(src, tgt, pairs, [("random", i + 1) for i in range(need)])
    batcher = PackedBatcher(examples, rows, args.row_len, args.row_len, seed=args.seed, shuffle=False)
    plan = batcher._plan(0)
    if len(plan) < args.warmup + args.steps + 1:
        raise SystemExit(f"only {len(plan)} batches planned, need {args.warmup + args.steps}")
    # Skip the last (padded-with-empty-rows) batch; warm-up first, then the timed ones.
    warm = [batcher._materialize(b) for b in plan[:args.warmup]]
    timed_plans = plan[args.warmup:args.warmup + args.steps]
    timed = [batcher._materialize(b) for b in timed_plans]
    timed_ids = [i for b in timed_plans for row in b for i in row]
    return rows, src, tgt, warm, timed, timed_ids


def run_jax(args, config, warm_batches, timed_batches):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jax_namnmt.model.transformer import count_params, init_params
    from jax_namnmt.training.step import init_state, make_optimizer, make_train_step, schedule_args

    train_step = make_train_step(config, 0.1, 0.9, 0.98, 1e-9, 0.0)
    state = init_state(init_params(config, seed=args.seed), make_optimizer(0.9, 0.98, 1e-9))
    sched = schedule_args(5e-4, 4000, 1e-7)
    key = jax.random.key(args.seed)
    to_dev = lambda b: {k: jnp.asarray(v) for k, v in b.items()}  # noqa: E731
    warm = [to_dev(b) for b in warm_batches]
    timed = [to_dev(b) for b in timed_batches]
    jax.block_until_ready(timed)

    t0 = time.perf_counter()
    for b in warm:
        state, metrics = train_step(state, b, None, key, sched)
    jax.block_until_ready((state, metrics))
    warm_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for b in timed:
        state, metrics = train_step(state, b, None, key, sched)
    jax.block_until_ready((state, metrics))
    secs = time.perf_counter() - t0

    tokens = int(sum(int((np.asarray(b["tgt_segments"]) > 0).sum()) for b in timed_batches))
    slots = int(sum(b["tgt_segments"].size for b in timed_batches))
    sentences = int(sum(int(np.asarray(b["tgt_segments"]).max(axis=1).sum()) for b in timed_batches))
    return {
        "framework": f"jax {jax.__version__} (jit, packed rows)",
        "layout": f"packed: {timed_batches[0]['tgt_segments'].shape[0]} rows x {args.row_len} tokens",
        "steps": len(timed), "sentences": sentences, "target_tokens": tokens, "target_slots": slots,
        "seconds": secs, "warmup_seconds": warm_s, "final_loss": float(metrics["loss"]), "params": count_params(state["params"]),
        "target_tokens_per_s": tokens / secs, "steps_per_s": len(timed) / secs,
    }


# ----------------------------------------------------------------------------- Marian (PyTorch)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except Exception:
        return False
    return True


def marian_buckets(ids, src, tgt, tokens_per_batch):
    """Same sentences, sorted by length, cut so padded target tokens <= tokens_per_batch."""
    order = sorted(ids, key=lambda i: (len(tgt[i]), len(src[i])), reverse=True)
    batches, cur, cur_max = [], [], 0
    for i in order:
        m = max(cur_max, len(tgt[i]))
        if cur and m * (len(cur) + 1) > tokens_per_batch:
            batches.append(cur)
            cur, m = [], len(tgt[i])
        cur.append(i)
        cur_max = m
    if cur:
        batches.append(cur)
    return batches


def marian_tensors(idx, src, tgt, pad, bos):
    import numpy as np
    import torch

    ls, lt = max(len(src[i]) for i in idx), max(len(tgt[i]) for i in idx)
    s = np.full((len(idx), ls), pad, np.int64)
    y = np.full((len(idx), lt), pad, np.int64)
    yin = np.full((len(idx), lt), pad, np.int64)
    for r, i in enumerate(idx):
        s[r, :len(src[i])] = src[i]
        y[r, :len(tgt[i])] = tgt[i]
        yin[r, 0] = bos
        yin[r, 1:len(tgt[i])] = tgt[i][:-1]
    s, y, yin = torch.from_numpy(s), torch.from_numpy(y), torch.from_numpy(yin)
    return {"input_ids": s, "attention_mask": (s != pad).long(), "decoder_input_ids": yin,
            "decoder_attention_mask": (yin != pad).long() | (torch.arange(lt) == 0).long(), "labels": y}


def build_marian(config, pad, eos, bos, seed):
    import torch
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(seed)
    mc = MarianConfig(
        vocab_size=config.vocab_size, d_model=config.d_model,
        encoder_layers=config.enc_layers, decoder_layers=config.dec_layers,
        encoder_attention_heads=config.num_heads, decoder_attention_heads=config.num_heads,
        encoder_ffn_dim=config.ffn_dim, decoder_ffn_dim=config.ffn_dim,
        activation_function="relu", dropout=config.dropout, attention_dropout=config.attention_dropout,
        activation_dropout=config.activation_dropout, max_position_embeddings=config.max_positions,
        scale_embedding=True, share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
        pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=bos, forced_eos_token_id=eos,
    )
    try:
        model = MarianMTModel._from_config(mc, attn_implementation="sdpa")
    except Exception:
        model = MarianMTModel(mc)
    return model


def run_marian(args, config, src, tgt, warm_ids, timed_ids):
    import torch
    import transformers

    from jax_namnmt.data.vocab import BOS_ID, EOS_ID, PAD_ID

    torch.set_num_threads(args.threads)
    model = build_marian(config, PAD_ID, EOS_ID, BOS_ID, args.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1, ignore_index=PAD_ID)
    warm = [marian_tensors(b, src, tgt, PAD_ID, BOS_ID)
            for b in marian_buckets(warm_ids, src, tgt, args.tokens_per_batch)][:args.warmup]
    timed = [marian_tensors(b, src, tgt, PAD_ID, BOS_ID)
             for b in marian_buckets(timed_ids, src, tgt, args.tokens_per_batch)]

    def step(b):
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                       decoder_input_ids=b["decoder_input_ids"],
                       decoder_attention_mask=b["decoder_attention_mask"]).logits
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), b["labels"].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    t0 = time.perf_counter()
    for b in warm:
        step(b)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in timed:
        loss = step(b)
    secs = time.perf_counter() - t0

    tokens = int(sum(int((b["labels"] != PAD_ID).sum()) for b in timed))
    slots = int(sum(b["labels"].numel() for b in timed))
    sentences = int(sum(b["labels"].shape[0] for b in timed))
    attn = getattr(model.config, "_attn_implementation", "?")
    return {
        "framework": f"torch {torch.__version__} eager + transformers {transformers.__version__} "
                     f"MarianMTModel ({attn})",
        "layout": "padded, length-bucketed (<= tokens_per_batch padded target tokens)",
        "steps": len(timed), "sentences": sentences, "target_tokens": tokens, "target_slots": slots,
        "seconds": secs, "warmup_seconds": warm_s, "final_loss": loss.item(),
        "params": sum(q.numel() for q in model.parameters()),
        "tied_embeddings": model.get_output_embeddings().weight is model.get_input_embeddings().weight,
        "target_tokens_per_s": tokens / secs, "steps_per_s": len(timed) / secs,
        "torch_threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    import jax

    from jax_namnmt.config import ModelConfig

    if args.quick:
        config = ModelConfig(vocab_size=256, d_model=32, num_heads=2, ffn_dim=64, enc_layers=1,
                             dec_layers=1, max_positions=64)
    else:
        config = ModelConfig()  # 3+3, d 256, 4 heads, FFN 1024, vocab 8000, dropout 0.1, tied

    rows, src, tgt, warm_b, timed_b, timed_ids = build_jax_batches(args, config)
    warm_ids = list(range(len(src) - 400, len(src)))  # Marian warm-up on sentences outside the timed set
    warm_ids = [i for i in warm_ids if i not in set(timed_ids)] or timed_ids[:50]

    results = {"jax": run_jax(args, config, warm_b, timed_b)}
    use_torch = not args.no_torch and torch_available()
    if use_torch:
        results["marian"] = run_marian(args, config, src, tgt, warm_ids, timed_ids)

    report = {
        "benchmark": "cpu_train_throughput",
        "quick": args.quick,
        "model": {k: getattr(config, k) for k in ("vocab_size", "d_model", "num_heads", "ffn_dim",
                                                   "enc_layers", "dec_layers", "dropout")},
        "label_smoothing": 0.1, "optimizer": "Adam(0.9, 0.98, 1e-9) / AdamW(wd=0)",
        "tokens_per_batch": args.tokens_per_batch, "row_len": args.row_len, "rows": rows,
        "sentence_lengths": [args.min_len, args.max_len], "threads": args.threads,
        "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "python": sys.version.split()[0], "jax_backend": jax.default_backend(),
        "same_sentences": True, "results": results,
        "torch": "used" if use_torch else "not importable or disabled: JAX only",
    }
    if use_torch:
        report["ratio_jax_over_marian"] = (results["jax"]["target_tokens_per_s"]
                                           / results["marian"]["target_tokens_per_s"])

    print(f"\nCPU training throughput ({args.threads} threads, {os.cpu_count()} cores), "
          f"same {results['jax']['sentences']} sentences each side")
    print(f"| side | layout | steps | sentences | target tokens | pad share | seconds | target tok/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        pad = 1 - r["target_tokens"] / r["target_slots"]
        print(f"| {name}: {r['framework']} | {r['layout']} | {r['steps']} | {r['sentences']} | "
              f"{r['target_tokens']} | {pad:.1%} | {r['seconds']:.2f} | {r['target_tokens_per_s']:,.0f} |")
    if use_torch:
        print(f"\nJAX / Marian ratio (target tokens/s): {report['ratio_jax_over_marian']:.3f}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
