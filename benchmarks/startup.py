"""Start-up of ``translate``: one sentence through the shipped model from a fresh process, and where
its time goes.

    python -m benchmarks.startup [--rounds 5] [--cold-rounds 2] [--before DIR] [--quick] [--out FILE]

Each measurement is a new process (``echo SENTENCE | python -m jax_namnmt.translate --src de --tgt
en``), rounds interleaved so that all sides see the same machine load; the table gives medians of
wall time and of the child's CPU time (user + system). "warm": the compile cache (and the
ahead-of-time program cache) filled by an earlier run; "cold": a new, empty cache directory, as
on a first-ever call. Phases (from ``translate --timings``): interpreter and imports up to the
command's ``main`` (JAX included), the project's modules, loading the package (checksum
included), getting the search program (loaded ahead of time, or traced and compiled), the
search and the rest. ``--before DIR``: the same commands also with another checkout of the
project first on ``PYTHONPATH`` (e.g. ``git worktree add /tmp/before <commit>``), side by side.
"""

from __future__ import annotations

if not __package__:  # run as a file: python benchmarks/startup.py
    from _as_module import run_as_module

    run_as_module(__file__)

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .report import base_report, print_table, resolve_out, write_json

SENTENCE = "Zwei Hunde spielen im Schnee."
CHECKOUT = Path(__file__).resolve().parents[1]
PHASES = ("start", "import_project", "load_model", "program", "search_and_rest")


def _run(argv: list[str], env: dict, stdin: str = "") -> dict:
    """Wall and CPU seconds of one child process, its stdout and stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(),
                          timeout=900)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {"wall": wall, "cpu": cpu, "stdout": proc.stdout, "stderr": proc.stderr,
            "peak_rss_mb": after.ru_maxrss / 1024}


def _env(checkout: Path, cache: Path | None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(checkout) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if cache is not None:
        env["JAX_NAMNMT_XLA_CACHE"] = str(cache)
    return env


def _translate(checkout: Path, cache: Path, timings: bool) -> dict:
    argv = [sys.executable, "-m", "jax_namnmt.translate", "--src", "de", "--tgt", "en", "--quiet"]
    result = _run(argv + (["--timings"] if timings else []), _env(checkout, cache), SENTENCE + "\n")
    if "dog" not in result["stdout"].lower():
        raise RuntimeError(f"unexpected translation {result['stdout']!r}")
    if timings:
        line = [x for x in result["stderr"].splitlines() if x.startswith('{"timings"')][-1]
        t = json.loads(line)["timings"]
        t["search_and_rest"] = t["translate"] - t["program"]
        result["timings"] = t
    return result


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="warm rounds (default 5)")
    p.add_argument("--cold-rounds", type=int, default=2, help="cold rounds (default 2)")
    p.add_argument("--before", default=None, help="another checkout to time beside this one")
    p.add_argument("--quick", action="store_true", help="1 warm and 1 cold round")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.quick:
        args.rounds, args.cold_rounds = 1, 1
    resolve_out(args, "startup")
    sides = {"now": CHECKOUT}
    if args.before:
        sides["before"] = Path(args.before).resolve()
    scratch = Path(tempfile.mkdtemp(prefix="startup_"))
    warm_cache = {name: scratch / f"warm_{name}" for name in sides}
    for name, checkout in sides.items():  # fill the warm caches
        _translate(checkout, warm_cache[name], timings=False)
    runs: dict[str, list[dict]] = {"python": [], "import_jax": []}
    for name in sides:
        runs[f"{name}_warm"], runs[f"{name}_cold"] = [], []
    for r in range(max(args.rounds, args.cold_rounds)):
        if r < args.rounds:
            runs["python"].append(_run([sys.executable, "-c", "pass"], _env(CHECKOUT, None)))
            runs["import_jax"].append(_run([sys.executable, "-c", "import jax"], _env(CHECKOUT, None)))
            for name, checkout in sides.items():
                runs[f"{name}_warm"].append(_translate(checkout, warm_cache[name], timings=name == "now"))
        if r < args.cold_rounds:
            for name, checkout in sides.items():
                runs[f"{name}_cold"].append(_translate(checkout, scratch / f"cold_{name}_{r}", timings=name == "now"))
    report = base_report("startup", args)
    report["sentence"] = SENTENCE
    report["results"] = {
        key: {"wall_s": _median(rs, "wall"), "cpu_s": _median(rs, "cpu"), "rounds_wall_s": [r["wall"] for r in rs],
              **({"phases_s": {ph: statistics.median(r["timings"][ph] for r in rs) for ph in PHASES},
                  "aot": [r["timings"]["aot"] for r in rs]} if rs and "timings" in rs[0] else {})}
        for key, rs in runs.items() if rs}
    res = report["results"]
    rows = [[key, f"{v['wall_s']:.2f}", f"{v['cpu_s']:.2f}"] for key, v in res.items()]
    print_table(f"translate start-up, one sentence (medians of {args.rounds} warm / {args.cold_rounds} cold rounds)",
                ["what", "wall s", "CPU s"], rows)
    phase_rows = [[ph] + [f"{res[k]['phases_s'][ph]:.2f}" if "phases_s" in res[k] else "-"
                          for k in ("now_warm", "now_cold")] for ph in PHASES]
    print_table("where the time goes (translate --timings, seconds, medians)", ["phase", "warm", "cold"], phase_rows)
    if "before_warm" in res:
        report["ratios"] = {f"before/now {kind}": res[f"before_{kind}"]["wall_s"] / res[f"now_{kind}"]["wall_s"]
                            for kind in ("warm", "cold")}
        print("\n" + ", ".join(f"{k}: {v:.2f}x" for k, v in report["ratios"].items()))
    write_json(report, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
