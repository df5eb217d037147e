"""The shipped model exported as a HuggingFace ``MarianMTModel`` (``python -m jax_namnmt.export_marian``):
how many test sentences ``MarianMTModel.generate`` and CTranslate2 (the export converted by its
``TransformersConverter``, float32) decode to our beam search's tokens, and the three decoding
speeds on the same sentences.

Sources: the first ``--lines`` lines of ``test_2016_flickr`` in each of the model's 8 directions,
encoded as ``translate`` encodes them. Ours: ``decoding.translate_ids`` with the model's decoding
settings (beam 4, length penalty 0.6, fairseq stopping, limit 1.2 x source + 10), after an untimed
warm-up (compilation). HF and CTranslate2 get the settings of ``marian.hf_generate_kwargs`` /
``marian.ct2_translate_kwargs``, sentences grouped by their length limit (one call per limit, padded
batches of at most ``--batch``). A sentence agrees when the output ids are equal, EOS included.
One round each, in one process, ``--threads`` threads each: the speeds are a same-run ratio.

    python -m benchmarks.marian_agreement                 # 8 x 100 sentences -> benchmarks/results/marian_agreement.json
    python -m benchmarks.marian_agreement --quick         # 2 directions x 8 sentences (report in /tmp)
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a file, ``python benchmarks/NAME.py``: run as ``python -m benchmarks.NAME``
    from _as_module import run_as_module

    run_as_module(__file__)

from .report import base_report, print_table, resolve_out, write_json  # noqa: E402

NAME = "marian_agreement"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=100, help="first N test lines a direction")
    p.add_argument("--batch", type=int, default=64, help="sentences a HF / CTranslate2 call at most")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="2 directions x 8 lines")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.lines = 8
    return args


def by_limit(limits, batch: int) -> list[list[int]]:
    """Sentence indices grouped by equal length limit, in calls of at most ``batch``."""
    groups: dict[int, list[int]] = {}
    for i, limit in enumerate(limits):
        groups.setdefault(int(limit), []).append(i)
    return [idx[k:k + batch] for idx in groups.values() for k in range(0, len(idx), batch)]


def main(argv=None) -> dict:
    args = parse_args(argv)
    resolve_out(args, NAME)
    import ctranslate2
    import numpy as np
    import torch
    from ctranslate2.converters import TransformersConverter
    from transformers import MarianMTModel

    from jax_namnmt import marian, packaged
    from jax_namnmt.data.multiway import multi30k_dir
    from jax_namnmt.data.vocab import EOS_ID
    from jax_namnmt.decoding import max_output_len, translate_ids
    from jax_namnmt.export_marian import export_marian
    from jax_namnmt.workflow import encode_sources, load_run

    torch.set_num_threads(args.threads)
    run = load_run(packaged.shipped_model_dir())
    decode, start = run.config.decode, run.config.model.vocab_size
    work = Path(tempfile.mkdtemp(prefix="marian_agreement_"))
    exported = export_marian(packaged.shipped_model_dir(), work / "marian")
    ct2_dir = TransformersConverter(str(exported)).convert(str(work / "ct2"), force=True)
    model = MarianMTModel.from_pretrained(exported).eval()
    translator = ctranslate2.Translator(ct2_dir, device="cpu", inter_threads=1, intra_threads=args.threads)
    tokens = [t for t, _ in sorted(__import__("json").loads((exported / "vocab.json").read_text()).items(),
                                   key=lambda item: item[1])]
    token_id = {t: i for i, t in enumerate(tokens)}

    directions = run.pairs[:2] if args.quick else run.pairs
    sources, names = [], []
    for pair in directions:
        src, tgt = pair.split("-")
        with gzip.open(multi30k_dir() / f"test_2016_flickr.{src}.gz", "rt", encoding="utf-8") as f:
            lines = [line.strip() for _, line in zip(range(args.lines), f)]
        sources += [[int(t) for t in s] for s in encode_sources(run, lines, tgt)]
        names += [pair] * len(lines)
    pair_ids = np.zeros(len(sources), np.int32)
    arrays = [np.asarray(s, np.int32) for s in sources]

    translate_ids(run.params, run.config.model, None, arrays[:8], pair_ids[:8], decode)  # warm-up: compile
    t0 = time.perf_counter()
    ours = translate_ids(run.params, run.config.model, None, arrays, pair_ids, decode)
    ours_s = time.perf_counter() - t0
    ours = [[int(t) for t in row[:list(row).index(EOS_ID) + 1]] for row in ours]
    width = max(map(len, sources))
    limits = marian.output_limits([len(s) for s in sources], decode, max_output_len(width, decode, 1024))
    groups = by_limit(limits, args.batch)

    hf = [None] * len(sources)
    t0 = time.perf_counter()
    for idx in groups:
        n = max(len(sources[i]) for i in idx)
        ids = torch.tensor([sources[i] + [start] * (n - len(sources[i])) for i in idx])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=(ids != start).long(),
                                 **marian.hf_generate_kwargs(decode, int(limits[idx[0]]), EOS_ID, start))
        for i, row in zip(idx, out.tolist()):
            row = row[1:]
            hf[i] = row[:row.index(EOS_ID) + 1] if EOS_ID in row else row
    hf_s = time.perf_counter() - t0

    ct2 = [None] * len(sources)
    t0 = time.perf_counter()
    for idx in groups:
        results = translator.translate_batch([[tokens[t] for t in sources[i]] for i in idx],
                                             **marian.ct2_translate_kwargs(decode, int(limits[idx[0]])))
        for i, r in zip(idx, results):
            ct2[i] = [token_id[t] for t in r.hypotheses[0]]
    ct2_s = time.perf_counter() - t0

    per_pair = {}
    for pair in directions:
        idx = [i for i, name in enumerate(names) if name == pair]
        per_pair[pair] = {"sentences": len(idx), "hf_agree": sum(hf[i] == ours[i] for i in idx),
                          "ct2_agree": sum(ct2[i] == ours[i] for i in idx)}
    total = len(sources)
    report = base_report(NAME, args)
    report.update({
        "model": str(packaged.shipped_model_dir()), "sentences": total, "per_pair": per_pair,
        "hf_agree": sum(p["hf_agree"] for p in per_pair.values()),
        "ct2_agree": sum(p["ct2_agree"] for p in per_pair.values()),
        "at_limit": int(sum(len(o) >= lim for o, lim in zip(ours, limits))),
        "seconds": {"ours": ours_s, "hf": hf_s, "ct2": ct2_s},
        "sentences_per_s": {"ours": total / ours_s, "hf": total / hf_s, "ct2": total / ct2_s},
        "ours_over_hf": hf_s / ours_s, "ours_over_ct2": ct2_s / ours_s,
        "export_mb": sum(p.stat().st_size for p in exported.iterdir()) / 1e6,
    })
    write_json(report, args.out)
    print_table(f"Shipped model exported to Marian: {total} test sentences, beam 4 ({report['date']})",
                ["direction", "sentences", "HF generate = ours", "CTranslate2 = ours"],
                [[p, str(v["sentences"]), str(v["hf_agree"]), str(v["ct2_agree"])] for p, v in per_pair.items()]
                + [["all", str(total), str(report["hf_agree"]), str(report["ct2_agree"])]])
    print_table("Decoding speed, same sentences, one round", ["side", "sentences/s", "ours over it"],
                [["ours (JAX)", f"{total / ours_s:.1f}", "1.00"],
                 ["HF generate (torch)", f"{total / hf_s:.1f}", f"{hf_s / ours_s:.2f}"],
                 ["CTranslate2 float32", f"{total / ct2_s:.1f}", f"{ct2_s / ours_s:.2f}"]])
    print(f"\nreport: {args.out}")
    return report


if __name__ == "__main__":
    main()
