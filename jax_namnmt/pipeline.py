"""Every step of the method, end to end, with a BLEU table.

    python -m jax_namnmt.pipeline                       # start from the shipped pre-trained model
    python -m jax_namnmt.pipeline --from-scratch        # pre-train first (configs/demo.py)
    python -m jax_namnmt.pipeline --pretrained RUN      # start from any pre-trained run or package
    python -m jax_namnmt.pipeline --from-scratch --systems all   # every system of the paper's Table 1

Importance -> allocation -> masked fine-tuning (method_te) and, for a fair comparison, the
multilingual model trained on for the same number of steps with the same schedule
(multilingual) -> beam search + BLEU per direction. ``--systems`` picks among individual,
multilingual, ts, adapter, method_av, method_te, expansion (see ``jax_namnmt/systems.py``).
Writes WORKDIR/results.json. Re-running resumes: finished phases are skipped, interrupted
training resumes from its last checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

from jax_namnmt import cli, packaged, run_lock, systems, workflow
from jax_namnmt.errors import ConfigError
from jax_namnmt.metrics import format_table
from jax_namnmt.training.checkpoint import load_json, save_json


def _start_model(args) -> Path | None:
    """The pre-trained model the method starts from, or None to pre-train from scratch."""
    if args.from_scratch and args.pretrained:
        raise ConfigError("--from-scratch and --pretrained exclude each other")
    if args.pretrained:
        return Path(args.pretrained)
    if args.from_scratch or args.config:
        return None
    shipped = packaged.shipped_model_dir()
    if not packaged.is_package(shipped):
        raise ConfigError(f"the shipped model {shipped} is missing from this installation; "
                          "use --from-scratch (pre-trains first) or --pretrained RUN")
    return shipped


def _claim_workdir(workdir: Path, start: Path | None) -> None:
    """A work directory serves one starting point: mixing runs from two would compare unlike things."""
    record = workdir / "pipeline.json"
    origin = str(start.resolve()) if start else "scratch"
    if record.exists():
        previous = load_json(record).get("start")
        if previous != origin:
            raise ConfigError(f"{workdir} holds a pipeline started from {previous}, not {origin}; "
                              "use another --workdir or delete it")
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        save_json(record, {"start": origin})


def main() -> int:
    p = cli.parser(__doc__.split("\n")[0])
    p.add_argument("--workdir", default=None,
                   help="where everything is written (default: runs/demo, or runs/scratch with --from-scratch "
                        "or --config)")
    p.add_argument("--from-scratch", action="store_true", help="pre-train the multilingual model first")
    p.add_argument("--pretrained", default=None,
                   help="a pre-trained run directory or package to start from (default: the shipped model, "
                        "unless --from-scratch or --config is given)")
    p.add_argument("--systems", default="multilingual,method_te",
                   help=f"comma-separated, or all: {', '.join(systems.SYSTEMS)}")
    p.add_argument("--variant", default=None, choices=("pair", "source", "target", "separate"),
                   help="allocation variant (default: the config's method.variant, pair)")
    args = p.parse_args()
    names = systems.parse_systems(args.systems)
    start = _start_model(args)
    if start is not None:
        if args.config is None:
            args.config = str(start / "config.json")
        scratch_only = [s for s in names if s in systems.FROM_SCRATCH]
        if scratch_only:
            raise ConfigError(f"--systems {','.join(scratch_only)} need pre-training of their own; add "
                              "--from-scratch so that every system gets the same pre-training budget")
    if args.variant:
        args.overrides.append(f"method.variant={args.variant}")
    config = cli.config_from_args(args)
    workdir = Path(args.workdir or ("runs/demo" if start is not None else "runs/scratch"))
    with run_lock.hold(workdir):  # one pipeline per work directory
        _claim_workdir(workdir, start)
        Pipeline(config, workdir, start, args.quiet).run(names)
    return 0


class Pipeline:
    def __init__(self, config, workdir: Path, start: Path | None, quiet: bool):
        self.config, self.workdir, self.start, self.quiet = config, workdir, start, quiet
        self.seconds: dict[str, float] = {}
        self.variant = config.method.variant
        self.suffix = "" if self.variant == "pair" else f"_{self.variant}"

    def phase(self, name, fn):
        begin = time.perf_counter()
        result = fn()
        self.seconds[name] = round(time.perf_counter() - begin, 1)
        print(f"[pipeline] {name}: {self.seconds[name]:.1f} s")
        return result

    # -- training ------------------------------------------------------------------

    def pretrain(self, config, out: Path) -> Path:
        if not workflow.is_finished(out, config.train.steps, config.train.patience):
            label = str(out.relative_to(self.workdir)).replace("/", "_")
            self.phase("pretrain" if label == "pretrain" else f"pretrain_{label}",
                       lambda: workflow.run_pretrain(config, self.workdir, out, self.quiet))
        return out

    def finetune(self, config, source: Path, out: Path, masks: Path | None) -> Path:
        if not workflow.is_finished(out, config.finetune.steps, config.train.patience):
            self.phase(f"finetune_{out.name}",
                       lambda: workflow.run_finetune(config, self.workdir, source, out, masks, self.quiet))
        return out

    def method(self, config, source: Path, importance: str, name: str) -> Path:
        mc = config.method
        scores = self.phase(f"importance_{name}", lambda: workflow.run_importance(
            source, config, self.workdir, importance, self.quiet, out=self.workdir / f"importance_{name}.npz"))
        masks = self.phase(f"allocate_{name}", lambda: workflow.run_allocate(
            scores, self.workdir / f"masks_{name}{self.suffix}.npz", mc.rho, mc.k, mc.variant, self.quiet,
            normalize=mc.normalize, modules=mc.modules))
        return self.finetune(config, source, self.workdir / f"{name}{self.suffix}", masks)

    def train_system(self, name: str, pretrained: Path) -> list[Path]:
        c, w = self.config, self.workdir
        if name == "multilingual":
            return [self.finetune(c, pretrained, w / "multilingual", None)]
        if name in ("method_av", "method_te"):
            return [self.method(c, pretrained, systems.IMPORTANCE[name], name)]
        if name == "expansion":
            wide = systems.expansion_config(c)
            return [self.method(wide, self.pretrain(wide, w / "expansion_pretrain"), "taylor", "expansion")]
        if name == "ts":
            return [self.pretrain(systems.ts_config(c), w / "ts")]
        if name == "adapter":
            return [self.pretrain(systems.adapter_config(c), w / "adapter")]
        if name == "individual":
            return [self.pretrain(systems.individual_config(c, pair), w / "individual" / pair)
                    for pair in c.data.pairs]
        raise AssertionError(name)

    # -- evaluation ----------------------------------------------------------------

    def evaluate(self, name: str, run_dirs: list[Path]) -> tuple[dict, dict]:
        dc = self.config.decode
        data_dir = workflow.data_dir_for(self.config, self.workdir)
        row: dict = {"params": 0}
        chrf: dict = {}
        hypotheses, signature = {}, None
        for run_dir in run_dirs:
            run = workflow.load_run(run_dir)
            # zero-shot directions: for the systems that are one model over all pairs and route nothing
            # per trained pair (not the bilingual models, not +Adapter)
            many = len(run_dirs) == 1 and len(run.pairs) > 1 and not run.config.model.adapter_pairs
            zero_shot = workflow.zero_shot_test_set(run, data_dir, dc.test_split) if many else []
            scores = self.phase(f"evaluate_{name}" + (f"_{run_dir.name}" if len(run_dirs) > 1 else ""),
                                lambda: workflow.evaluate_run(run, data_dir, dc.test_split, dc.test_max_lines,
                                                              self.quiet, zero_shot=zero_shot))
            for pair in run.pairs:
                row[pair] = scores[pair]["bleu"]
                chrf[pair] = scores[pair]["chrf"]
            if zero_shot:
                row["zero_shot"] = {d: scores[d]["bleu"] for d in zero_shot}
                row["zero_shot_avg"] = scores["zero_shot_avg"]["bleu"]
            row["params"] += systems.param_count(run.config)
            hypotheses.update(scores["hypotheses"])
            signature = scores["signature"]
        pairs = list(self.config.data.pairs)
        row["avg"] = sum(row[p] for p in pairs) / len(pairs)
        row["chrf_avg"] = sum(chrf[p] for p in pairs) / len(pairs)
        row["checkpoint"] = [str(d.resolve()) for d in run_dirs] if len(run_dirs) > 1 else str(run_dirs[0].resolve())
        _show_samples(name, hypotheses)
        return row, signature

    def run(self, names: list[str]) -> dict:
        c, w = self.config, self.workdir
        self.phase("prepare", lambda: workflow.prepare(
            c, w, self.quiet, vocab_from=self.start / "spm.model" if self.start else None))
        pretrained = self.start or self.pretrain(c, w / "pretrain")
        trained = {name: self.train_system(name, pretrained) for name in names}
        results, signature = {}, None
        for name in names:
            results[name], signature = self.evaluate(name, trained[name])
        self.report(results, signature)
        return results

    def report(self, results: dict, signature: dict) -> None:
        dc, pairs = self.config.decode, list(self.config.data.pairs)
        rows = {name: {k: v for k, v in s.items() if k in pairs or k in ("avg", "zero_shot_avg", "params")}
                for name, s in results.items()}
        for row in rows.values():
            row["params"] = f"{row['params'] / 1e6:.2f}M"
            if "zero_shot_avg" in row:
                row["0-shot avg"] = row.pop("zero_shot_avg")
        if "multilingual" in results:
            base = results["multilingual"]
            for name in results:
                if name.startswith("method") or name == "expansion":
                    delta = {k: results[name][k] - base[k] for k in pairs + ["avg"]}
                    if "zero_shot_avg" in results[name] and "zero_shot_avg" in base:
                        delta["0-shot avg"] = results[name]["zero_shot_avg"] - base["zero_shot_avg"]
                    rows[f"{name} - multilingual"] = delta
        data_dir = workflow.data_dir_for(self.config, self.workdir)
        lines = dc.test_max_lines or "all"
        test_name = f"{dc.test_split} split of {data_dir} (first {lines} lines per pair)"
        start = str(self.start) if self.start else f"pre-trained here ({self.config.train.steps} steps)"
        print()
        print(format_table(rows, pairs, title=f"BLEU, beam {dc.beam_size}, {test_name}; start: {start}; "
                                             f"allocation variant: {self.variant}"))
        print(f"signature: {signature['bleu']}")
        print("wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in self.seconds.items()))
        save_json(self.workdir / "results.json", {
            "systems": results, "test": test_name, "start": start, "variant": self.variant,
            "signature": signature["bleu"], "signature_chrf": signature["chrf"], "seconds": self.seconds,
            "config": self.config.to_dict()})
        print(f"results: {self.workdir / 'results.json'}")


def _show_samples(name: str, hypotheses: dict, n: int = 2) -> None:
    for pair, hyps in list(hypotheses.items())[:2]:
        for h in hyps[:n]:
            print(f"  [{name} {pair}] {h}")


if __name__ == "__main__":
    cli.run(main)
