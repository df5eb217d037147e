"""Where the time of a `jax.profiler` trace goes, as a table: per track group (GPU streams, host
threads), the ops with the most summed duration.

    python benchmarks/profile_summary.py PROFILE_DIR [--top 25] [--out summary.json]

Reads the newest ``perfetto_trace.json.gz`` under PROFILE_DIR (written by
``jax.profiler.trace(..., create_perfetto_trace=True)``, as ``train_throughput.py --profile-dir``
does) with the standard library alone, so it runs where TensorBoard's profile plugin or xprof is
not installed. Op names are grouped by their stem (``fusion.12`` and ``fusion.40`` count as
``fusion``) and also listed whole.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import sys


def load_trace(profile_dir: pathlib.Path) -> dict:
    files = sorted(profile_dir.rglob("perfetto_trace.json.gz"), key=lambda f: f.stat().st_mtime)
    if not files:
        sys.exit(f"error: no perfetto_trace.json.gz under {profile_dir} "
                 "(trace with create_perfetto_trace=True)")
    with gzip.open(files[-1], "rt") as f:
        return json.load(f)


def summarize(trace: dict, top: int = 25) -> dict:
    """``{group: {"busy_ms", "span_ms", "events", "by_stem": [[stem, ms, count]], "by_name": [...]}}``
    where a group is a process name (e.g. ``/device:GPU:0``) plus its thread names' common kind."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    process, thread = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            process[e["pid"]] = e["args"]["name"]
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            thread[(e["pid"], e["tid"])] = e["args"]["name"]
    groups: dict = collections.defaultdict(lambda: {"names": collections.Counter(),
                                                    "counts": collections.Counter(),
                                                    "start": float("inf"), "end": 0.0})
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        tname = re.sub(r"[\s#:_-]*\d+$", "", thread.get((e["pid"], e.get("tid")), "?"))
        key = f"{process.get(e['pid'], e['pid'])} / {tname}"
        g = groups[key]
        g["names"][e["name"]] += e["dur"] / 1000.0
        g["counts"][e["name"]] += 1
        g["start"] = min(g["start"], e["ts"])
        g["end"] = max(g["end"], e["ts"] + e["dur"])
    out = {}
    for key, g in groups.items():
        stems, stem_counts = collections.Counter(), collections.Counter()
        for name, ms in g["names"].items():
            stem = re.sub(r"[._]\d+$", "", name)
            stems[stem] += ms
            stem_counts[stem] += g["counts"][name]
        out[key] = {
            "busy_ms": sum(g["names"].values()),  # summed; nested events count twice on host tracks
            "span_ms": (g["end"] - g["start"]) / 1000.0,
            "events": sum(g["counts"].values()),
            "by_stem": [[s, ms, stem_counts[s]] for s, ms in stems.most_common(top)],
            "by_name": [[n, ms, g["counts"][n]] for n, ms in g["names"].most_common(top)],
        }
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profile_dir", type=pathlib.Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", type=pathlib.Path, default=None, help="also write the summary as JSON")
    args = p.parse_args(argv)
    summary = summarize(load_trace(args.profile_dir), args.top)
    for key, g in sorted(summary.items(), key=lambda kv: -kv[1]["busy_ms"]):
        if g["busy_ms"] < 1.0:
            continue
        print(f"\n## {key}: {g['events']} events, {g['busy_ms']:.1f} ms summed over a {g['span_ms']:.1f} ms span")
        print("| op (stem) | ms | share | count |\n| --- | --- | --- | --- |")
        for stem, ms, n in g["by_stem"]:
            print(f"| {stem} | {ms:.2f} | {100 * ms / g['busy_ms']:.1f}% | {n} |")
        print("| op | ms | count |\n| --- | --- | --- |")
        for name, ms, n in g["by_name"][:12]:
            print(f"| {name[:90]} | {ms:.2f} | {n} |")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
