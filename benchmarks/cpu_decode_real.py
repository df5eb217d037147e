"""CPU beam-4 decoding of real sources with the shipped model: ours (``decoding.translate_ids``)
against CTranslate2 running the very same weights (``peers_ct2.ctranslate2_from_params``), on
all of Multi30k's test_2016_flickr in one direction (1,000 sentences), real lengths, real
stopping.

Both sides decode the same batches (``padded_batches``: sorted by length, ``--batch`` sentences a
batch) with beam 4 and length penalty 0.6 and stop a sentence with its EOS; each side drops
finished sentences from its batch in its own way (ours: ``beam_search(shrink_to=...)``). Ours runs
the shipped model's decoding settings (output limit 1.2 x source + 10); CTranslate2 is held to
the same overall limit (``max_decoding_length``, the longest source's). Counted: sentences/s and
output tokens/s (EOS included), the fastest of ``--rounds`` rounds, ours and each peer side
alternating, and the median of back-to-back round pairs. The JSON also says how many outputs are
token for token the same on both sides (the same model and search: they should nearly all be).
With ``--bleu``, sacreBLEU of each side's output against the references.

    python -m benchmarks.cpu_decode_real --rounds 4            # de-en, CTranslate2 float32 in both layouts
    python -m benchmarks.cpu_decode_real --ct2-compute-types float32,int8 --bleu
    python -m benchmarks.cpu_decode_real --weights float32,bfloat16,int8 --ct2-compute-types float32,int8 --bleu

``--weights`` adds our decoder with the matrices in bfloat16 or int8 (``DecodeConfig.weights``,
``model/low_precision.py``) as further sides: ``jax`` is float32, ``jax_bfloat16`` and ``jax_int8``
the others; every ours/peer pair gets its ratios.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import sys
import time

if not __package__:  # run as a file, ``python benchmarks/NAME.py``: run as ``python -m benchmarks.NAME``
    from _as_module import run_as_module

    run_as_module(__file__)

from .cpu_throughput import interleaved, paired_ratios, set_threads, write_report  # noqa: E402
from .peers_ct2 import BatchSession, ctranslate2_from_params  # noqa: E402
from .peers_torch import importable  # noqa: E402
from .report import resolve_out  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", default="de")
    p.add_argument("--tgt", default="en")
    p.add_argument("--split", default="test_2016_flickr")
    p.add_argument("--lines", type=int, default=0, help="first N lines (0: all)")
    p.add_argument("--batch", type=int, default=128, help="sentences a batch, both sides")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--weights", default="float32", help="our sides: decode.weights settings, comma-separated")
    p.add_argument("--ct2-compute-types", default="float32")
    p.add_argument("--ct2-layouts", default="1x2,2x1", help="INTERxINTRA, as in cpu_throughput")
    p.add_argument("--no-ctranslate2", action="store_true")
    p.add_argument("--bleu", action="store_true", help="sacreBLEU of each side against the references")
    p.add_argument("--quick", action="store_true", help="64 lines, batches of 16, one round")
    p.add_argument("--out", default=None, help="JSON (default benchmarks/results/cpu_decode_real.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.lines, args.batch, args.rounds = 64, 16, 1
    resolve_out(args, "cpu_decode_real")
    return args


def read_split(path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def ours_session(run, sources, pid, masks, batch, weights="float32"):
    """Our decoder on ``sources`` (compiled on the first batch first), the matrices in ``weights``
    (converted once, before the rounds); ``(run_round, result)``."""
    import dataclasses

    import jax
    import numpy as np

    from jax_namnmt.decoding import translate_ids
    from jax_namnmt.model.low_precision import convert_params

    decode = dataclasses.replace(run.config.decode, batch_sentences=batch, weights=weights)
    params = convert_params(run.params, weights)
    pairs = np.full(len(sources), pid, np.int32)
    t0 = time.perf_counter()
    translate_ids(params, run.config.model, masks, sources, pairs, decode)
    warm_s = time.perf_counter() - t0
    box = {}

    def run_round():
        t0 = time.perf_counter()
        box["outputs"] = translate_ids(params, run.config.model, masks, sources, pairs, decode)
        return time.perf_counter() - t0

    def result(seconds):
        outputs = [[int(t) for t in o[: int(np.argmax(o == 3)) + 1] if (o == 3).any()] or [int(t) for t in o if t]
                   for o in box["outputs"]]
        return side_result(f"jax {jax.__version__} (decoding.translate_ids, {weights} weights)", outputs, seconds, warm_s,
                           {"decode_config": dataclasses.asdict(decode)})

    return run_round, result


def ct2_session(run, sources, batches, compute_type, layout, max_len):
    """CTranslate2 on the same batches, the shipped model's weights; ``(run_round, result)``."""
    import tempfile

    workdir = tempfile.TemporaryDirectory(prefix="ct2_")
    tokens = ctranslate2_from_params(run.params, run.config.model, workdir.name)
    ids = {t: i for i, t in enumerate(tokens)}
    options = dict(beam_size=run.config.decode.beam_size, length_penalty=run.config.decode.length_penalty,
                   max_decoding_length=max_len, return_end_token=True, max_batch_size=len(batches[0]))
    inputs = [[[tokens[t] for t in sources[i]] for i in b] for b in batches]
    session = BatchSession(workdir, compute_type, layout, inputs, options)

    def result(seconds):
        outputs = [None] * len(sources)
        for b, out in zip(batches, session.outputs):
            for i, r in zip(b, out):
                outputs[i] = [ids[t] for t in r.hypotheses[0]]
        return side_result(f"ctranslate2 {session.version} ({compute_type}, {session.inter} batch(es) at once x "
                           f"{session.intra} thread(s))", outputs, seconds, session.warm_s,
                           {"compute_type": compute_type, "inter_threads": session.inter,
                            "intra_threads": session.intra, "translate_options": options})

    return session.run_round, result


def side_result(framework, outputs, seconds, warm_s, extra) -> dict:
    secs = min(seconds)
    tokens = sum(len(o) for o in outputs)
    return {"framework": framework, "sentences": len(outputs), "output_tokens": tokens, "seconds": secs,
            "round_seconds": list(seconds), "warmup_seconds": warm_s, "sentences_per_s": len(outputs) / secs,
            "output_tokens_per_s": tokens / secs, "outputs": outputs, **extra}


def main(argv=None) -> dict:
    args = parse_args(argv)
    set_threads(args.threads)
    load_start = list(os.getloadavg())
    import numpy as np

    from jax_namnmt import packaged, workflow
    from jax_namnmt.data.batching import padded_batches
    from jax_namnmt.decoding import max_output_len
    from jax_namnmt.data.multiway import multi30k_dir

    run = workflow.load_run(packaged.shipped_model_dir())
    src_lines = read_split(multi30k_dir() / f"{args.split}.{args.src}.gz")
    ref_lines = read_split(multi30k_dir() / f"{args.split}.{args.tgt}.gz")
    if args.lines:
        src_lines, ref_lines = src_lines[: args.lines], ref_lines[: args.lines]
    if hasattr(workflow, "direction_plan"):
        pid, masks = workflow.direction_plan(run, args.src, args.tgt, quiet=True)
    else:
        pid, masks = workflow.pair_id(run, args.src, args.tgt), run.model_masks()
    sources = workflow.encode_sources(run, src_lines, args.tgt)
    batches = [[int(i) for i in b[0] if i >= 0]
               for b in padded_batches(sources, np.zeros(len(sources), np.int32), args.batch)]
    width = max(len(s) for s in sources)
    max_len = max_output_len(width, run.config.decode, 1024)

    ours_sides = {("jax" if w == "float32" else f"jax_{w}"): w for w in args.weights.split(",") if w}
    sessions = {name: ours_session(run, sources, pid, masks, args.batch, w) for name, w in ours_sides.items()}
    use_ct2 = not args.no_ctranslate2 and importable("ctranslate2")
    ct2_sides = [(t, lay) for t in args.ct2_compute_types.split(",") if t
                 for lay in args.ct2_layouts.split(",") if lay] if use_ct2 else []
    for t, lay in ct2_sides:
        sessions[f"ctranslate2_{t}_{lay}"] = ct2_session(run, sources, batches, t, lay, max_len)
    results = interleaved(sessions, args.rounds)

    ours = results[next(iter(ours_sides))]  # the first --weights side: "same output as ours" compares with it
    report = {"benchmark": "cpu_decode_real", "direction": f"{args.src}-{args.tgt}", "split": args.split,
              "sentences": len(sources), "batch_sentences": args.batch, "rounds": args.rounds,
              "threads": args.threads, "cpu_count": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "python": sys.version.split()[0],
              "model": "the shipped model (jax_namnmt/resources/model)", "results": results}
    print(f"\nCPU beam-{run.config.decode.beam_size} decoding, shipped model, {args.split} {args.src}-{args.tgt}: "
          f"{len(sources)} sentences in batches of {args.batch}, {args.threads} threads")
    print("| side | sentences/s | output tokens/s | output tokens | same output as ours | seconds (fastest) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        same = sum(a == b for a, b in zip(r["outputs"], ours["outputs"]))
        r["same_outputs_as_ours"] = same
        print(f"| {name}: {r['framework']} | {r['sentences_per_s']:,.1f} | {r['output_tokens_per_s']:,.0f} | "
              f"{r['output_tokens']} | {same} of {len(sources)} | {r['seconds']:.2f} |")
    for mine in ours_sides:
        for name in results:
            if name in ours_sides:
                continue
            me, peer = results[mine], results[name]
            paired = paired_ratios(me["round_seconds"], peer["round_seconds"])
            report[f"paired_ratio_{mine}_over_{name}"] = paired
            report[f"ratio_{mine}_over_{name}"] = me["sentences_per_s"] / peer["sentences_per_s"]
            cpu = paired_ratios(me["round_cpu_seconds"], peer["round_cpu_seconds"])
            report[f"paired_cpu_ratio_{mine}_over_{name}"] = cpu
            print(f"{mine} / {name} (sentences/s): {report[f'ratio_{mine}_over_{name}']:.3f} (fastest rounds); "
                  f"round by round {', '.join(f'{x:.3f}' for x in paired['per_round'])}, median "
                  f"{paired['median']:.3f}; by CPU seconds, median of pairs {cpu['median']:.3f}")
    if args.bleu:
        import sacrebleu

        for name, r in results.items():
            hyps = run.vocab.decode_batch([np.asarray(o, np.int32) for o in r["outputs"]])
            r["bleu"] = sacrebleu.corpus_bleu(hyps, [ref_lines]).score
            print(f"BLEU {name}: {r['bleu']:.2f}")
    for r in results.values():
        r["outputs"] = None if not args.quick else r["outputs"]
    write_report(report, load_start, args.out)
    return report


if __name__ == "__main__":
    main()
