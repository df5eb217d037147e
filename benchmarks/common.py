"""Shared helpers of the benchmark scripts: random Multi30k-like sentences, packed JAX batches and
padded length-bucketed Marian batches of the same sentences, the HuggingFace Marian twin of our
model, forced-length checks, the matmul FLOP count, versions, and the driver that runs each
measured side in its own process (so one side that crashes, hangs or runs out of memory is
recorded as an error and the others still run, and JAX and PyTorch never share a CUDA context).

Only numpy and the standard library are imported at module level: the driver process stays light.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python benchmarks/x.py`` from a checkout without an install
    sys.path.insert(1, str(ROOT))

H100_BF16_DENSE_PEAK = 989e12  # H100/H200 SXM dense bf16 tensor-core peak, FLOP/s
LEARNING_RATE = 5e-4  # both sides of a training comparison: our Adam and Marian's AdamW


def constant_schedule():
    """Our ``schedule_args`` at a constant ``LEARNING_RATE`` (a warm-up from the rate to itself,
    longer than any benchmark runs), so our side trains at Marian's learning rate."""
    from jax_namnmt.training.step import schedule_args

    return schedule_args(LEARNING_RATE, 4000, LEARNING_RATE)


# ----------------------------------------------------------------------------- data


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


def packed_data(tokens_per_batch: int, row_len: int, min_len: int, max_len: int, steps: int, warmup: int,
                vocab: int, seed: int, num_pairs: int = 8, layout: str = "rows"):
    """Sentences and the packed fixed-shape batches of ``PackedBatcher`` over them (rows x row_len a
    side, sentences in corpus order, mixed pair ids), warm-up batches first, then the timed ones;
    with ``layout="compact"`` the ``CompactBatcher`` batches of the same sentences.

    Returns a dict: rows (a batch's rows: of both sides, or of attention in the compact layout),
    src, tgt, pairs, warm (numpy batches), timed (numpy batches),
    warm_ids / timed_ids (the sentence indices each set holds), spare_ids (sentences in no batch).
    """
    from jax_namnmt.data.batching import Examples, make_batcher, rows_for_budget

    rows = rows_for_budget(tokens_per_batch, row_len)
    mean = (min_len + max_len) / 2
    need = int((steps + warmup + 2) * rows * (row_len / mean) * 1.1) + rows
    src, tgt, pairs = make_sentences(need, vocab, min_len, max_len, num_pairs, seed)
    examples = Examples(src, tgt, pairs, [("random", i + 1) for i in range(need)])
    batcher = make_batcher(examples, layout, tokens_per_batch, row_len, row_len, seed=seed, shuffle=False)
    plan = batcher._plan(0)
    if len(plan) < warmup + steps + 1:
        raise SystemExit(f"only {len(plan)} batches planned, need {warmup + steps + 1}")
    warm_plans, timed_plans = plan[:warmup], plan[warmup:warmup + steps]  # never the last, part-empty one
    ids = lambda plans: [i for b in plans for row in b for i in row]  # noqa: E731
    used = set(ids(warm_plans)) | set(ids(timed_plans))
    return {
        "rows": batcher.rows, "src": src, "tgt": tgt, "pairs": pairs,
        "warm": [batcher._materialize(b) for b in warm_plans],
        "timed": [batcher._materialize(b) for b in timed_plans],
        "warm_ids": ids(warm_plans), "timed_ids": ids(timed_plans),
        "spare_ids": [i for i in range(need) if i not in used],
    }


def batch_counts(batches) -> dict:
    """Real target tokens, target slots and sentences of packed numpy batches."""
    import numpy as np

    return {
        "target_tokens": int(sum(int((np.asarray(b["tgt_segments"]) > 0).sum()) for b in batches)),
        "source_tokens": int(sum(int((np.asarray(b["src_segments"]) > 0).sum()) for b in batches)),
        "target_slots": int(sum(b["tgt_segments"].size for b in batches)),
        "sentences": int(sum(int(((np.asarray(b["tgt_positions"]) == 0) & (np.asarray(b["tgt_segments"]) > 0)).sum())
                             for b in batches)),
    }


# ----------------------------------------------------------------------------- FLOPs


def train_matmul_flops(src_lens, tgt_lens, config, backward: bool = True) -> float:
    """Model matmul FLOPs of one pass over these sentences, padding excluded (see the formula in
    ``train_throughput.py``'s docstring); ``backward``: forward + backward (x3), else forward only."""
    d, f, v = config.d_model, config.ffn_dim, config.vocab_size
    le, ld = config.enc_layers, config.dec_layers
    fwd = 0.0
    for ls, lt in zip(src_lens, tgt_lens):
        ls, lt = int(ls), int(lt)
        fwd += ls * le * 2 * (4 * d * d + 2 * d * f)  # encoder q,k,v,out + fc1,fc2
        fwd += ls * ld * 2 * (2 * d * d)  # cross-attention k,v projections read source tokens
        fwd += lt * ld * 2 * (4 * d * d + 2 * d * d + 2 * d * f)  # self q,k,v,out + cross q,out + FFN
        fwd += lt * 2 * d * v  # output projection (tied embedding)
        fwd += le * 4 * d * ls * ls  # encoder scores QK^T + context AV: 2 x 2*d per (query, key)
        fwd += ld * 4 * d * (lt * (lt + 1) // 2)  # causal decoder self-attention: t keys at step t
        fwd += ld * 4 * d * lt * ls  # cross-attention
    return fwd * (3 if backward else 1)


# ----------------------------------------------------------------------------- Marian (PyTorch)


def importable(*modules: str) -> bool:
    """Whether every one of ``modules`` imports (benchmark-only dependencies may be missing)."""
    try:
        for module in modules:
            importlib.import_module(module)
    except Exception:
        return False
    return True


def torch_available() -> bool:
    return importable("torch", "transformers")


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


def marian_tensors(idx, src, tgt, pad, bos, device=None):
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
    out = {"input_ids": s, "attention_mask": (s != pad).long(), "decoder_input_ids": yin,
           "decoder_attention_mask": (yin != pad).long() | (torch.arange(lt) == 0).long(), "labels": y}
    if device is not None:
        out = {k: t.to(device) for k, t in out.items()}
    return out


def marian_sources(indices, src, pad, device=None) -> dict:
    """Padded ``input_ids`` / ``attention_mask`` of sentences ``indices`` of ``src`` for
    ``generate`` (negative indices are a packed batch's dummy rows and are skipped)."""
    import numpy as np
    import torch

    idx = [int(i) for i in indices if i >= 0]
    s = np.full((len(idx), max(len(src[i]) for i in idx)), pad, np.int64)
    for r, i in enumerate(idx):
        s[r, :len(src[i])] = src[i]
    s = torch.from_numpy(s)
    if device is not None:
        s = s.to(device)
    return {"input_ids": s, "attention_mask": (s != pad).long()}


def forced_generate_kwargs(n: int, beam: int, pad: int, eos: int, bos: int) -> dict:
    """``generate`` settings that make Marian write exactly ``n`` tokens a sentence (EOS banned
    before the n-th, forced at it) with beam ``beam`` and length penalty 0.6, as our decoder does."""
    return dict(num_beams=beam, do_sample=False, length_penalty=0.6, early_stopping=False,
                min_new_tokens=n - 1, max_new_tokens=n, forced_eos_token_id=eos, eos_token_id=eos,
                pad_token_id=pad, decoder_start_token_id=bos, num_return_sequences=1)


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


def ctranslate2_available() -> bool:
    return importable("ctranslate2", "torch", "transformers")  # the model is converted from the Marian one


def ctranslate2_from_marian(model, vocab_size: int, out_dir) -> list[str]:
    """Converts the ``build_marian`` model (its very weights) with CTranslate2's own
    ``MarianMTLoader`` into ``out_dir``; returns the token of each id (``t<id>``; our special
    ids as ``<blank>`` (padding), ``<unk>``, ``<s>``, ``</s>``). The loader follows Marian's
    conversion: the decoder starts from a zero embedding and the vocabulary's last entry
    (Marian's ``<pad>``) is dropped, so the CTranslate2 model has ``vocab_size - 1`` words (id
    ``vocab_size - 1``, if a source holds it, reads as ``<unk>``)."""
    from ctranslate2.converters.transformers import MarianMTLoader

    from jax_namnmt.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID

    names = {PAD_ID: "<blank>", UNK_ID: "<unk>", BOS_ID: "<s>", EOS_ID: "</s>", vocab_size - 1: "<pad>"}
    tokens = [names.get(i, f"t{i}") for i in range(vocab_size)]

    class Vocabulary:  # what the loader asks of a tokenizer
        eos_token, unk_token, bos_token = "</s>", "<unk>", "<s>"

        @staticmethod
        def get_vocab():
            return {t: i for i, t in enumerate(tokens)}

    spec = MarianMTLoader()(model, Vocabulary())
    spec.validate()
    spec.optimize(quantization=None)
    spec.save(str(out_dir))
    return tokens


def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_device_info(device) -> dict:
    import torch

    info = {"torch_device": str(device)}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        info["device_name"] = platform.processor() or platform.machine()
        info["torch_threads"] = torch.get_num_threads()
    return info


# ----------------------------------------------------------------------------- decoding


def forced_lengths(tokens, eos: int) -> list[int]:
    """Output length of each row: tokens up to and including the first EOS. A row without EOS,
    or with padding (0) before its EOS, gets a negative length (never equal to the forced one)."""
    import numpy as np

    lengths = []
    for row in tokens:
        row = np.asarray(row)
        hits = np.flatnonzero(row == eos)
        n = int(hits[0]) + 1 if len(hits) else -len(row)
        if n > 0 and (row[:n - 1] == 0).any():
            n = -n
        lengths.append(n)
    return lengths


# ----------------------------------------------------------------------------- JAX


def jax_device_info() -> dict:
    import jax

    dev = jax.devices()[0]
    return {"jax_backend": jax.default_backend(), "device_name": getattr(dev, "device_kind", str(dev)),
            "device_count": jax.device_count()}


def init_params(config, seed: int):
    """``model.transformer.init_params`` under one jit (the eager init dispatches op by op: slower)."""
    import jax

    from jax_namnmt.model.transformer import init_params as init

    params = jax.jit(lambda: init(config, seed))()
    jax.block_until_ready(params)
    return params


def run_steps(train_step, state, batches, masks, key, sched):
    """Our train step over ``batches``, synced once at the end (never inside the loop):
    ``(state, last metrics, seconds)``."""
    import jax

    t0 = time.perf_counter()
    for b in batches:
        state, metrics = train_step(state, b, masks, key, sched)
    jax.block_until_ready((state, metrics))
    return state, metrics, time.perf_counter() - t0


def best_round(seconds: list[float], steps: int, target_tokens: int) -> dict:
    """Timing of the fastest of several rounds of ``steps`` steps over ``target_tokens`` tokens."""
    secs = min(seconds)
    return {"seconds": secs, "round_seconds": seconds, "steps": steps, "step_ms": 1000 * secs / steps,
            "target_tokens_per_s": target_tokens / secs}


def to_device(batches):
    import jax

    out = [jax.device_put(b) for b in batches]
    jax.block_until_ready(out)
    return out


# ----------------------------------------------------------------------------- reports


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin", "flax", "optax", "orbax-checkpoint",
                 "numpy", "torch", "transformers", "triton"):
        try:
            out[name] = importlib.metadata.version(name)
        except Exception:
            pass
    return out


def error_result(exc: BaseException) -> dict:
    traceback.print_exc()
    return {"error": f"{type(exc).__name__}: {exc}"[:2000]}


def model_dict(config) -> dict:
    return {k: getattr(config, k) for k in ("vocab_size", "d_model", "num_heads", "ffn_dim", "enc_layers",
                                            "dec_layers", "dropout", "max_positions", "dtype")}


def base_report(name: str, args) -> dict:
    return {
        "benchmark": name, "quick": bool(getattr(args, "quick", False)),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "versions": versions(),
        "argv": sys.argv[1:], "settings": {k: v for k, v in vars(args).items() if not k.startswith("side")},
    }


def write_json(report: dict, out) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(out)


def fmt(value, spec: str = "{:,.0f}") -> str:
    if value is None:
        return "-"
    if isinstance(value, dict) and "error" in value:
        return "error"
    try:
        return spec.format(value)
    except (TypeError, ValueError):
        return str(value)


def ratio(a: dict | None, b: dict | None, key: str):
    """a[key] / b[key], or None when either side is missing or failed."""
    try:
        return a[key] / b[key]
    except Exception:
        return None


# ----------------------------------------------------------------------------- side processes


def add_common_args(p, *, steps: int, warmup: int) -> None:
    """Shape, timing and driver flags every GPU benchmark takes."""
    p.add_argument("--quick", action="store_true", help="tiny shapes, 2 timed steps, CPU-sized (< 20 s)")
    p.add_argument("--no-torch", action="store_true", help="JAX side only")
    p.add_argument("--out", default=None, help="JSON report (default benchmarks/results/<name>.json)")
    p.add_argument("--steps", type=int, default=steps, help="timed steps")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed warm-up steps (the first compiles)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=6, help="encoder and decoder layers each")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ffn", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=40000)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="our compute dtype")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout of both models (0: an ablation of its cost)")
    p.add_argument("--attention-kernel", default="xla", choices=("xla", "cudnn"),
                   help="our model.attention_kernel (cudnn: cuDNN fused attention on GPUs)")
    p.add_argument("--logits-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="our model.logits_dtype (the output layer's logits as its matmul writes them)")
    p.add_argument("--min-len", type=int, default=12, help="shortest sentence a side (tag and EOS included)")
    p.add_argument("--max-len", type=int, default=25, help="longest sentence a side (20-60 for WMT-like)")
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds for the whole script; each side process gets what is left (0: no limit)")
    p.add_argument("--side", default=None, help=argparse_suppress())
    p.add_argument("--side-out", default=None, help=argparse_suppress())


def add_packed_args(p) -> None:
    """The packed-batch shape flags of the training-step benchmarks."""
    p.add_argument("--tokens-per-batch", type=int, default=25600, help="target token slots a batch")
    p.add_argument("--row-len", type=int, default=64, help="packed row length (src and tgt)")


def finish_packed_args(p, args, name: str):
    """``--quick`` sizes (2 steps, 1 warm-up and 1 round where there are ``--repeats``, 256-token
    batches of 32-token rows, sentences of 4-10), the length check and the default ``--out``."""
    if args.quick:
        args.steps, args.warmup = 2, 1
        if hasattr(args, "repeats"):
            args.repeats = 1
        args.tokens_per_batch, args.row_len = 256, 32
        args.min_len, args.max_len = 4, 10
    if args.max_len > args.row_len:
        p.error(f"--max-len {args.max_len} > --row-len {args.row_len}")
    args.out = args.out or f"benchmarks/results/{name}.json"
    return args


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def model_config(args):
    from jax_namnmt.config import ModelConfig

    kernels = {"attention_kernel": args.attention_kernel, "logits_dtype": args.logits_dtype}
    if args.quick:  # (float32: the cuDNN kernel's bfloat16 check is skipped; CPUs use the einsums anyway)
        return ModelConfig(vocab_size=256, d_model=32, num_heads=2, ffn_dim=64, enc_layers=1, dec_layers=1,
                           max_positions=128, dtype="float32", **kernels)
    return ModelConfig(vocab_size=args.vocab, d_model=args.d_model, num_heads=args.heads, ffn_dim=args.ffn,
                       enc_layers=args.layers, dec_layers=args.layers, dropout=args.dropout,
                       max_positions=max(256, 2 * args.max_len + 8), dtype=args.dtype, **kernels).validate()


class Driver:
    """Runs the sides of one benchmark, each as ``python SCRIPT ARGV --side NAME --side-out F`` in its
    own process (under the time left of ``--time-budget``), and collects their JSON; a side that
    raises, dies or times out becomes ``{"error": ...}``. With ``--side`` given, this process IS a
    side: ``run_side`` calls the function and writes its result."""

    def __init__(self, script: str, args, argv):
        self.script, self.args = script, args
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.start = time.perf_counter()

    def remaining(self) -> float | None:
        if not self.args.time_budget:
            return None
        return self.args.time_budget - (time.perf_counter() - self.start)

    def run(self, side: str) -> dict:
        left = self.remaining()
        if left is not None and left < 5:
            return {"error": f"skipped: time budget ({self.args.time_budget:.0f} s) spent"}
        with tempfile.TemporaryDirectory() as tmp:
            out, log = Path(tmp) / "side.json", Path(tmp) / "stderr.txt"
            cmd = [sys.executable, self.script, *self.argv, "--side", side, "--side-out", str(out)]
            t0 = time.perf_counter()
            print(f"[{side}] starting" + (f" ({left:.0f} s left)" if left is not None else ""), flush=True)
            try:
                with open(log, "w") as err:
                    proc = subprocess.run(cmd, stderr=err, timeout=None if left is None else left - 2)
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            wall = time.perf_counter() - t0
            stderr = log.read_text(errors="replace") if log.exists() else ""
            sys.stderr.write(stderr)
            sys.stderr.flush()
            if out.exists():
                result = json.loads(out.read_text())
            elif rc == "timeout":
                result = {"error": f"Timeout: side killed after {wall:.0f} s (time budget)"}
            else:
                tail = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or [""]
                result = {"error": f"ProcessDied: exit code {rc}: {tail[0][:500]}"}
            result["process_wall_seconds"] = wall
            print(f"[{side}] done in {wall:.1f} s" + (f": {result['error']}" if "error" in result else ""),
                  flush=True)
            return result


def run_side(args, sides: dict) -> bool:
    """In a side process (``--side NAME``): run ``sides[NAME]()``, write its result (or the error) to
    ``--side-out``; returns True. In the driver: returns False."""
    if not args.side:
        return False
    try:
        result = sides[args.side]()
    except BaseException as exc:  # noqa: BLE001 - the error is the result
        result = error_result(exc)
    write_json(result, args.side_out)
    return True


def device_names(results: dict) -> dict:
    """``{side: device name}`` of the sides that got as far as naming their device."""
    return {k: r["device_name"] for k, r in results.items() if isinstance(r, dict) and "device_name" in r}


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
