"""The other per-pair costs as the number of pairs grows (8, 32, 128 by default), in one run: the
mask tables the device holds, allocation (``method.allocation.allocate``, pair and target variants,
from random importance), the mask file (``save_masks`` / ``load_masks``: bytes, seconds), and
beam-4 decoding of one batch mixing the pairs under their masks against the same batch unmasked.

Decoding: ``decoding.make_beam_decoder`` (the program ``translate`` runs), every output forced to
``--decode-len`` tokens (EOS banned before: the same work with and without masks; checked),
``--sentences`` random sources of 12-25 tokens, each of a random pair, rounds alternating masked and
unmasked, best round each; ratio masked / plain seconds. Model: the CPU benchmark's (3+3, d 256,
FFN 1024, vocab 8000, float32) unless ``--quick``. The timed parts are host work or one compiled
call each, so the figures carry to any backend only as ratios.

    python -m benchmarks.pair_costs --out benchmarks/results/pair_costs_cpu.json
    python -m benchmarks.pair_costs --quick                          # tiny, seconds (report in /tmp)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

if not __package__:  # run as a file, ``python benchmarks/NAME.py``: run as ``python -m benchmarks.NAME``
    from _as_module import run_as_module

    run_as_module(__file__)

from .pair_scaling import DEFAULT_PAIRS, interleaved_rounds, ratios  # noqa: E402
from .report import base_report, fmt, print_table, resolve_out, write_json  # noqa: E402

NAME = "pair_costs"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", default=DEFAULT_PAIRS, help="numbers of pairs, comma-separated")
    p.add_argument("--quick", action="store_true", help="tiny model, 8 sentences (seconds)")
    p.add_argument("--sentences", type=int, default=128, help="sources in the mixed decoding batch")
    p.add_argument("--decode-len", type=int, default=20, help="forced output tokens, EOS included")
    p.add_argument("--repeats", type=int, default=3, help="decoding rounds each side (alternating)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON report (default benchmarks/results/pair_costs.json)")
    args = p.parse_args(argv)
    try:
        args.pairs = [int(x) for x in args.pairs.split(",") if x.strip()]
    except ValueError:
        p.error(f"--pairs {args.pairs!r}: expected numbers separated by commas")
    if not args.pairs or min(args.pairs) < 1:
        p.error("--pairs: every number of pairs must be at least 1")
    if args.quick:
        args.sentences, args.decode_len, args.repeats = 8, 6, 1
    resolve_out(args, NAME)
    return args


def model(quick: bool):
    from jax_namnmt.config import ModelConfig

    if quick:
        return ModelConfig(vocab_size=256, d_model=32, num_heads=2, ffn_dim=64, enc_layers=1, dec_layers=1,
                           max_positions=128, dtype="float32")
    return ModelConfig(vocab_size=8000, d_model=256, num_heads=4, ffn_dim=1024, enc_layers=3, dec_layers=3,
                       max_positions=256, dtype="float32")


def host_costs(config, num_pairs: int, seed: int) -> dict:
    """Allocation of random importance (pair and target variants) and the mask file round trip."""
    import numpy as np

    from jax_namnmt.method.allocation import allocate, load_masks, save_masks
    from jax_namnmt.method.masks import module_sizes

    rng = np.random.default_rng(seed)
    sizes = module_sizes(config)
    theta = {name: rng.random((num_pairs, n)).astype(np.float32) for name, n in sizes.items()}
    # one-to-many: en to num_pairs targets (the target variant groups pairs by target: one each here,
    # so half the pairs share a target to make it group)
    pairs = [f"en-t{i}" for i in range(num_pairs)]
    target_pairs = [f"{'en' if i % 2 == 0 else 'fr'}-t{i // 2}" for i in range(num_pairs)]
    out = {}
    for variant, names in (("pair", pairs), ("target", target_pairs)):
        t0 = time.perf_counter()
        masks = allocate(theta, names, 0.9, 0.7, variant=variant)
        out[f"allocate_{variant}_seconds"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "masks.npz")
        t0 = time.perf_counter()
        save_masks(path, masks, target_pairs, {"rho": 0.9, "k": 0.7})
        out["save_seconds"] = time.perf_counter() - t0
        out["file_bytes"] = os.path.getsize(path)
        t0 = time.perf_counter()
        loaded = load_masks(path, expected=sizes, num_pairs=num_pairs)[0]
        out["load_seconds"] = time.perf_counter() - t0
    out["roundtrip_equal"] = all(np.array_equal(loaded[n], masks[n]) for n in masks)
    out["device_table_bytes"] = int(sum(n * num_pairs * 4 for n in sizes.values()))  # float32 [P, F] tables
    out["kept_share"] = float(np.mean(np.concatenate([m.reshape(-1) for m in masks.values()])))
    return out


def decode_costs(config, params, num_pairs: int, args) -> dict:
    import jax
    import numpy as np

    from jax_namnmt.config import DecodeConfig
    from jax_namnmt.data.vocab import EOS_ID
    from jax_namnmt.decoding import make_beam_decoder, max_output_len
    from jax_namnmt.method.masks import module_sizes, to_model_masks

    from .synthetic import forced_lengths, make_sentences

    src, _, pairs = make_sentences(args.sentences, config.vocab_size, 12 if not args.quick else 4,
                                   25 if not args.quick else 10, num_pairs, args.seed)
    width = max(len(s) for s in src)
    tokens = np.zeros((len(src), width), np.int32)
    for i, s in enumerate(src):
        tokens[i, :len(s)] = s
    n = args.decode_len
    decode = DecodeConfig(beam_size=4, length_penalty=0.6, max_len_a=0.0, max_len_b=n, min_len=n - 1,
                          batch_sentences=len(src))
    decoder = make_beam_decoder(config, 4, max_output_len(width, decode, config.max_positions), 0.6, "fairseq",
                                "fairseq", 0.0, n, n - 1)
    rng = np.random.default_rng(args.seed + 1)
    masks = jax.device_put(to_model_masks({k: rng.random((num_pairs, f)) < 0.9
                                           for k, f in module_sizes(config).items()}))
    tokens, pair_ids = jax.device_put(tokens), jax.device_put(pairs)
    out, compile_s = {}, {}
    for name, m in (("plain", None), ("masked", masks)):
        t0 = time.perf_counter()
        out[name] = jax.block_until_ready(decoder(params, tokens, pair_ids, m))
        compile_s[name] = time.perf_counter() - t0

    def run(name, m):
        return lambda: out.__setitem__(name, jax.block_until_ready(decoder(params, tokens, pair_ids, m)))

    rounds = interleaved_rounds({"plain": run("plain", None), "masked": run("masked", masks)}, args.repeats)
    lengths = {name: forced_lengths(np.asarray(o), EOS_ID) for name, o in out.items()}
    r = ratios(rounds, "masked", "plain")
    return {"sentences": len(src), "pairs_in_batch": int(len(np.unique(pairs))), "compile_seconds": compile_s,
            "plain_seconds": min(rounds["plain"]["wall"]), "masked_seconds": min(rounds["masked"]["wall"]),
            "rounds": rounds, "all_lengths_forced": all(x == n for v in lengths.values() for x in v),
            "ratio_masked_over_plain": r["wall"]["best"], "ratio_median_of_pairs": r["wall"]["median_of_pairs"],
            "ratio_cpu_time_median_of_pairs": r["cpu"]["median_of_pairs"]}


def main(argv=None):
    args = parse_args(argv)
    import jax

    from jax_namnmt.model.transformer import init_params, mask_lookup_method

    config = model(args.quick)
    report = base_report(NAME, args)
    params = jax.jit(lambda: init_params(config, args.seed))()
    results = {}
    for n in args.pairs:
        results[str(n)] = {"host": host_costs(config, n, args.seed), "decode": decode_costs(config, params, n, args)}
    report.update({"backend": jax.default_backend(), "mask_lookup": mask_lookup_method(config.mask_lookup),
                   "model": {"layers": config.enc_layers, "d_model": config.d_model, "ffn": config.ffn_dim,
                             "vocab": config.vocab_size, "dtype": config.dtype},
                   "results": results})
    write_json(report, args.out)
    rows = [[n, fmt(r["host"]["device_table_bytes"] / 2**20, "{:.2f}"), fmt(r["host"]["file_bytes"] / 2**20, "{:.2f}"),
             f"{r['host']['allocate_pair_seconds']:.3f}", f"{r['host']['allocate_target_seconds']:.3f}",
             f"{r['host']['load_seconds']:.3f}", str(r["decode"]["pairs_in_batch"]),
             f"{r['decode']['plain_seconds']:.2f}", f"{r['decode']['masked_seconds']:.2f}",
             f"{r['decode']['ratio_median_of_pairs']:.2f}",
             "yes" if r["decode"]["all_lengths_forced"] and r["host"]["roundtrip_equal"] else "NO"]
            for n, r in results.items()]
    print_table(f"Per-pair costs, model {config.enc_layers}+{config.dec_layers} d {config.d_model} {config.dtype}, "
                f"{jax.default_backend()}, mask lookup {report['mask_lookup']}",
                ["pairs", "device tables MiB", "mask file MiB", "allocate pair s", "allocate target s",
                 "load file s", "pairs in the decoded batch", "decode plain s", "decode masked s",
                 "masked / plain (median)", "checks"], rows)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
