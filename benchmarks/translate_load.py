"""``translate`` on a large file: peak memory, sentences/s and the line count, at several input sizes.

    python -m benchmarks.translate_load [--sizes 2000,10000,100000] [--chunk-lines 1024] [--out FILE]

Each size is a file of German Multi30k test sources (``test_2016_flickr``, 1000 lines) repeated,
translated de-en by the shipped model in a new process (``python -m jax_namnmt.translate --input F
--output O``), with the compile cache warm (a first small run fills it). The child's resident
memory is sampled from ``/proc`` every 0.2 s (peak and the samples); sentences/s is measured
between the first and the last output lines written (steady state: start-up excluded) and over
the whole run. Memory that stays flat across sizes is the point of the chunked reading.
"""

from __future__ import annotations

if not __package__:  # run as a file: python benchmarks/translate_load.py
    from _as_module import run_as_module

    run_as_module(__file__)

import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .report import base_report, print_table, resolve_out, write_json

CHECKOUT = Path(__file__).resolve().parents[1]
SOURCES = CHECKOUT / "jax_namnmt" / "resources" / "multi30k" / "test_2016_flickr.de.gz"


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _count(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return 0


def run_size(lines: int, chunk: int, scratch: Path) -> dict:
    base = gzip.decompress(SOURCES.read_bytes()).decode("utf-8").splitlines()
    src = scratch / f"in_{lines}.de"
    with open(src, "w", encoding="utf-8") as f:
        for i in range(lines):
            f.write(base[i % len(base)] + "\n")
    out = scratch / f"out_{lines}.en"
    argv = [sys.executable, "-m", "jax_namnmt.translate", "--src", "de", "--tgt", "en", "--input", str(src),
            "--output", str(out), "--quiet", "--chunk-lines", str(chunk)]
    env = dict(os.environ, PYTHONPATH=str(CHECKOUT))
    started = time.perf_counter()
    child = subprocess.Popen(argv, env=env, cwd=scratch, stderr=subprocess.PIPE)
    samples, written = [], []
    while child.poll() is None:
        now = time.perf_counter() - started
        rss = _rss_mb(child.pid)
        if rss is not None:
            samples.append((round(now, 2), round(rss, 1)))
        written.append((now, _count(out)))
        time.sleep(0.2)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(f"translate failed: {child.stderr.read().decode()[-2000:]}")
    got = _count(out)
    first = next(((t, n) for t, n in written if n > 0), None)
    steady = (got - first[1]) / (wall - first[0]) if first and wall > first[0] and got > first[1] else None
    return {"lines": lines, "output_lines": got, "line_count_ok": got == lines, "wall_s": wall,
            "sentences_per_s": lines / wall, "steady_sentences_per_s": steady,
            "peak_rss_mb": max(r for _, r in samples) if samples else None,
            "rss_mb_at_quarters": [samples[int(q * (len(samples) - 1))][1] for q in (0.25, 0.5, 0.75, 1.0)]
            if samples else None, "rss_samples": samples[:: max(1, len(samples) // 200)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="2000,10000,100000", help="comma-separated line counts")
    p.add_argument("--chunk-lines", type=int, default=1024)
    p.add_argument("--quick", action="store_true", help="sizes 200,400")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.quick:
        args.sizes = "200,400"
    resolve_out(args, "translate_load")
    scratch = Path(tempfile.mkdtemp(prefix="translate_load_"))
    run_size(8, args.chunk_lines, scratch)  # fills the compile cache
    report = base_report("translate_load", args)
    report["results"] = []
    for size in [int(s) for s in args.sizes.split(",")]:
        report["results"].append(run_size(size, args.chunk_lines, scratch))
        write_json(report, args.out)  # after each size: a long run leaves what it measured
    rows = [[f"{r['lines']:,}", "yes" if r["line_count_ok"] else "NO", f"{r['peak_rss_mb']:.0f}",
             " / ".join(f"{x:.0f}" for x in r["rss_mb_at_quarters"]), f"{r['wall_s']:.0f}",
             f"{r['sentences_per_s']:.1f}", f"{r['steady_sentences_per_s']:.1f}" if r["steady_sentences_per_s"] else "-"]
            for r in report["results"]]
    print_table("translate de-en, shipped model, beam 4", ["lines", "all lines out", "peak RSS MB",
                "RSS MB at 1/4, 1/2, 3/4, end", "wall s", "sentences/s (all)", "sentences/s (steady)"], rows)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
