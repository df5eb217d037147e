"""Does allocation beat its baseline? The controlled reproduction, end to end.

    python -m jax_namnmt.reproduce --config configs/reproduce_cpu.py [--workdir runs/reproduce]

For each setting of ``reproduce.settings`` (many-to-many: ``reproduce.many_to_many_pairs``, by
default the 8 directions; one-to-many: ``reproduce.one_to_many_pairs``, by default en-de, en-fr,
en-cs) on the embedded Multi30k or the multi-way corpus ``reproduce.corpus``:

1. data: train; valid (Multi30k's val) split in two, its first ``reproduce.importance_lines`` lines
   per pair score importance, the rest (``valid``) make every choice and the validation curves; test
   (Multi30k's test_2016_flickr; ``decode.test_max_lines``, 0 = all) is decoded once per final system;
2. start: the pre-trained model (``--pretrained``, default the shipped one) trained on, plain, on the
   setting's pairs until its validation NLL stops improving (the criterion is ``reproduce.converge_*``);
3. importance (Taylor with each ``importance_losses``, absolute value) on the importance part;
4. the scoring choices (loss, normalisation, module set) for each rho/k: the lowest masked
   validation NLL before any update (the cost of the masks);
5. rho/k: each candidate fine-tuned (first seed), the lowest validation NLL after fine-tuning;
6. the systems of ``reproduce.systems`` x seeds (the same steps and schedule for all);
7. test BLEU/chrF per direction, mean and spread over seeds, paired bootstrap p-values of method_te
   against the pre-trained model (the paper's control) and the equal-steps multilingual run.

Everything lands in WORKDIR (each phase is skipped when its output exists, so a killed run is
resumed by the same command); the report goes to ``reproduce.out_dir`` (``docs/results.md``,
``docs/results.json``, ``docs/figures/``).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jax_namnmt import cli, packaged, run_lock, workflow
from jax_namnmt.config import IMPORTANCE_LOSSES, MODULE_SETS, NORMALIZATIONS, Config, corpus_splits
from jax_namnmt.data.batching import resolve_layout
from jax_namnmt.data.corpus import parse_pairs, read_lines
from jax_namnmt.data.multiway import build_from_multiway, multi30k_dir, read_multiway_split, write_split
from jax_namnmt.errors import ConfigError, DataError
from jax_namnmt.method.allocation import allocate, mask_report, random_masks, save_masks, load_masks
from jax_namnmt.method.masks import to_model_masks
from jax_namnmt.significance import paired_bootstrap, paired_bootstrap_mean, sentence_stats
from jax_namnmt.training.checkpoint import load_json, save_json
from jax_namnmt.training.loop import validation_batches, validation_loss
from jax_namnmt.training.metrics_log import read_records

SETTINGS = ("many_to_many", "one_to_many")
SYSTEMS = ("multilingual", "method_te", "method_av", "random", "k0")
IMPORTANCE_OF = {"method_te": "taylor", "random": "taylor", "k0": "taylor", "method_av": "absolute"}


@dataclasses.dataclass(frozen=True)
class Scoring:
    """One allocation recipe: importance loss, normalisation, module set, rho and k."""

    loss: str
    normalize: str
    modules: str
    rho: float
    k: float

    @property
    def tag(self) -> str:
        return f"{self.loss}-{self.normalize}-{self.modules}-rho{self.rho:g}-k{self.k:g}"


def parse_rho_k(items) -> list[tuple[float, float]]:
    out = []
    for item in items:
        rho, slash, k = str(item).partition("/")
        try:
            pair = (float(rho), float(k))
        except ValueError:
            pair = None
        if not slash or pair is None or not all(0.0 <= v <= 1.0 for v in pair):
            raise ConfigError(f"reproduce.rho_k: {item!r} is not 'rho/k' with both in [0, 1] (e.g. 0.9/0.7)")
        out.append(pair)
    return out


def check_config(config: Config) -> Config:
    r = config.reproduce
    lists = (("settings", r.settings, SETTINGS), ("systems", r.systems, SYSTEMS),
             ("one_seed_systems", r.one_seed_systems, SYSTEMS),
             ("importance_losses", r.importance_losses, IMPORTANCE_LOSSES),
             ("normalizations", r.normalizations, NORMALIZATIONS), ("module_sets", r.module_sets, MODULE_SETS))
    for name, values, allowed in lists:
        bad = [v for v in values if v not in allowed]
        if bad or (not values and name not in ("one_seed_systems",)):
            raise ConfigError(f"reproduce.{name} = {list(values)!r}: each entry must be one of {', '.join(allowed)}")
    if "method_te" not in r.systems or "multilingual" not in r.systems:
        raise ConfigError("reproduce.systems must hold method_te and multilingual (the comparison)")
    if not r.seeds or r.importance_lines < 1 or r.converge_eval_every < 1 or r.converge_patience < 1:
        raise ConfigError("reproduce: seeds must not be empty; importance_lines, converge_eval_every and "
                          "converge_patience must be at least 1")
    bad = [item for item in r.skip if item.partition(":")[0] not in SETTINGS
           or item.partition(":")[2] not in SYSTEMS or item.partition(":")[2] in ("multilingual", "method_te")]
    if bad:
        raise ConfigError(f"reproduce.skip: {bad} must be 'setting:system' with a setting of {', '.join(SETTINGS)} "
                          "and a system other than multilingual and method_te")
    parse_rho_k(r.rho_k)
    for field in ("many_to_many_pairs", "one_to_many_pairs"):
        try:
            parse_pairs(getattr(r, field))
        except DataError as e:
            raise ConfigError(f"reproduce.{field}: {e}") from None
    corpus_splits(r.corpus_splits)
    if r.corpus and not Path(r.corpus).is_dir():
        raise ConfigError(f"reproduce.corpus: {r.corpus!r} is not a directory (a multi-way corpus, one "
                          "{split}.{lang}.gz file per split and language; '' = the embedded Multi30k)")
    return config


def valid_history(run_dir: Path, up_to: int | None = None) -> list[dict]:
    """The validation records of a run's metrics.jsonl, one per step (the last if a step repeats);
    ``up_to``: only steps up to it."""
    return read_records(run_dir, "*_valid", up_to)


class Setting:
    """One setting's work directory and phases."""

    def __init__(self, name: str, config: Config, workdir: Path, start: Path, report: dict, quiet: bool,
                 save=lambda: None):
        r = config.reproduce
        pairs = tuple(r.many_to_many_pairs if name == "many_to_many" else r.one_to_many_pairs)
        self.name, self.workdir, self.start, self.quiet, self.report = name, workdir, start, quiet, report
        self.config = config.with_sections(data={"pairs": pairs, "data_dir": str((workdir / "data").resolve())},
                                           method={"importance_split": "importance", "importance_max_lines": 0})
        self.pairs = list(pairs)
        self.seconds = report.setdefault("seconds", {})
        self.save = save  # writes the report so far (called after every phase: a killed run loses nothing)
        self._valid = None  # the validation part's batches, built at the first step-0 evaluation

    def phase(self, name, fn):
        begin = time.perf_counter()
        result = fn()
        spent = time.perf_counter() - begin
        if spent > 0.5:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + spent, 1)
            print(f"[reproduce {self.name}] {name}: {spent:.0f} s", flush=True)
        self.save()
        return result

    # -- data and start model ----------------------------------------------------------

    def prepare(self) -> None:
        """The setting's corpus (rewritten each time: every file is written whole, atomically, and the
        same; about a second) and the start model's vocabulary."""
        data, r = self.workdir / "data", self.config.reproduce
        pairs, splits = parse_pairs(self.pairs), corpus_splits(r.corpus_splits)
        corpus = Path(r.corpus) if r.corpus else multi30k_dir()
        build_from_multiway(corpus, data, pairs, {"train": splits["train"], "test": splits["test"]})
        val = read_multiway_split(corpus, splits["valid"], sorted({lang for p in pairs for lang in (p.src, p.tgt)}))
        write_split(data, "importance", pairs, {lang: lines[:r.importance_lines] for lang, lines in val.items()})
        write_split(data, "valid", pairs, {lang: lines[r.importance_lines:] for lang, lines in val.items()})
        workflow.prepare(self.config, self.workdir, True, vocab_from=self.start / "spm.model")

    def converge(self) -> Path:
        """Train the start model on, plain, until the validation NLL stops improving."""
        r, out = self.config.reproduce, self.workdir / "base"
        steps = r.converge_eval_every
        while True:
            c = self.config.with_sections(finetune={"steps": steps, "eval_every": r.converge_eval_every})
            if not workflow.is_finished(out, steps, c.train.patience):
                self.phase("converge", lambda: workflow.run_finetune(c, self.workdir, self.start, out, None, self.quiet))
            # the records up to this round only: a resumed run (whose base went further) replays the
            # rounds and stops, and reports, where the first did
            history = valid_history(out, up_to=steps)
            nll = [h["nll"] for h in history]
            stalled = len(nll) > r.converge_patience and (
                min(nll[:-r.converge_patience]) - min(nll[-r.converge_patience:]) < r.converge_min_delta)
            if stalled or steps >= r.converge_max_steps:
                self.report["start"] = {"from": str(self.start), "steps": steps, "converged": bool(stalled),
                                        "valid_nll": [(h["step"], h["nll"]) for h in history]}
                return out
            steps += r.converge_eval_every

    # -- importance, masks, choices ----------------------------------------------------

    def importance(self, base: Path, method: str, loss: str) -> Path:
        path = self.workdir / f"importance_{method}_{loss}.npz"
        if not path.exists():
            c = self.config.with_sections(method={"importance_loss": loss})
            self.phase("importance", lambda: workflow.run_importance(base, c, self.workdir, method, True, out=path))
        return path

    def masks(self, base: Path, scoring: Scoring, method: str = "taylor") -> Path:
        path = self.workdir / "masks" / f"{method}-{scoring.tag}.npz"
        if not path.exists():
            theta, pairs = workflow.load_importance(self.importance(base, method, scoring.loss))
            masks = allocate(theta, pairs, scoring.rho, scoring.k, "pair", scoring.normalize, scoring.modules)
            save_masks(path, masks, pairs, {**dataclasses.asdict(scoring), "importance": method})
        return path

    def step0_nll(self, base_run, masks: dict | None) -> dict:
        """Validation of ``base_run`` under flat ``masks`` (None: unmasked), before any update."""
        config = self.config
        if self._valid is None:
            examples, _ = workflow.load_examples(config, Path(config.data.data_dir), base_run.vocab, "valid")
            layout = resolve_layout(config.data.layout, 1, jax.default_backend())
            shape = (config.train.tokens_per_batch, config.data.src_row_len, config.data.tgt_row_len)
            self._valid = validation_batches(examples, layout, shape)
        return validation_loss(base_run.params, self._valid, None if masks is None else to_model_masks(masks), config)

    def choose_scoring(self, base: Path) -> list[Scoring]:
        """For each rho/k, the scoring with the lowest masked validation NLL before any update."""
        r = self.config.reproduce
        grid = self.report.setdefault("step0", {})
        run = workflow.load_run(base)
        if "none" not in grid:
            grid["none"] = self.phase("step0", lambda: self.step0_nll(run, None))
        chosen = []
        for rho, k in parse_rho_k(r.rho_k):
            best = None
            for loss in r.importance_losses:
                for norm in r.normalizations:
                    for modules in r.module_sets:
                        s = Scoring(loss, norm, modules, rho, k)
                        if s.tag not in grid:
                            flat = load_masks(self.masks(base, s))[0]
                            theta, _ = workflow.load_importance(self.importance(base, "taylor", loss))
                            grid[s.tag] = {**self.phase("step0", lambda: self.step0_nll(run, flat)),
                                           "masks": mask_report(flat, theta, self.pairs)["per_pair"]}
                        if best is None or grid[s.tag]["nll"] < grid[best.tag]["nll"]:
                            best = s
            chosen.append(best)
        self.report["scoring_candidates"] = [s.tag for s in chosen]
        return chosen

    # -- fine-tuning ---------------------------------------------------------------------

    def finetune(self, base: Path, system: str, scoring: Scoring | None, seed: int) -> Path:
        name = system if scoring is None else f"{system}-{scoring.tag}"
        out = self.workdir / "runs" / f"{name}-s{seed}"
        c = self.config.with_sections(train={"seed": seed})
        if workflow.is_finished(out, c.finetune.steps, c.train.patience):
            return out
        masks = None
        if system != "multilingual":
            if system == "random":
                flat, pairs, _ = load_masks(self.masks(base, scoring))
                masks = self.workdir / "masks" / f"random{seed}-{scoring.tag}.npz"
                save_masks(masks, random_masks(flat, seed), pairs, {"random_like": scoring.tag, "seed": seed})
            elif system == "k0":
                masks = self.masks(base, dataclasses.replace(scoring, k=0.0))
            else:
                masks = self.masks(base, scoring, IMPORTANCE_OF[system])
        self.phase(f"finetune_{system}", lambda: workflow.run_finetune(c, self.workdir, base, out, masks, self.quiet))
        return out

    def choose_rho_k(self, base: Path, candidates: list[Scoring]) -> Scoring:
        seed = self.config.reproduce.seeds[0]
        finals = {}
        for s in candidates:
            history = valid_history(self.finetune(base, "method_te", s, seed))
            finals[s.tag] = history[-1]["nll"]
        self.report["rho_k_choice"] = finals
        return min(candidates, key=lambda s: finals[s.tag])

    # -- evaluation ----------------------------------------------------------------------

    def evaluate(self, run_dir: Path, key: str) -> dict:
        path = self.workdir / "eval" / f"{key}.json"
        if path.exists():
            return load_json(path)
        dc = self.config.decode
        run = workflow.load_run(run_dir)
        scores = self.phase("evaluate", lambda: workflow.evaluate_run(
            run, Path(self.config.data.data_dir), dc.test_split, dc.test_max_lines, self.quiet))
        result = {p: {"bleu": scores[p]["bleu"], "chrf": scores[p]["chrf"], "hyps": scores["hypotheses"][p]}
                  for p in self.pairs}
        result["signature"] = scores["signature"]
        save_json(path, result)
        return result

    def run(self) -> dict:
        r = self.config.reproduce
        self.phase("prepare", self.prepare)
        base = self.converge()
        chosen = self.choose_rho_k(base, self.choose_scoring(base))
        self.report["chosen"] = dataclasses.asdict(chosen) | {"tag": chosen.tag}
        theta, _ = workflow.load_importance(self.importance(base, "taylor", chosen.loss))
        self.report["chosen_masks"] = mask_report(load_masks(self.masks(base, chosen))[0], theta, self.pairs)
        runs: dict[str, dict[int, Path]] = {}
        for system in [s for s in r.systems if f"{self.name}:{s}" not in r.skip]:
            seeds = r.seeds[:1] if system in r.one_seed_systems else r.seeds
            scoring = None if system == "multilingual" else chosen
            runs[system] = {seed: self.finetune(base, system, scoring, seed) for seed in seeds}
        history = {system: {seed: valid_history(d) for seed, d in by_seed.items()} for system, by_seed in runs.items()}
        self.report["curves"] = {system: {seed: [(h["step"], h["nll"]) for h in records]
                                          for seed, records in by_seed.items()} for system, by_seed in history.items()}
        self.report["step0_per_pair"] = {system: {seed: {p: records[0][f"nll_{p}"] for p in self.pairs}
                                                  for seed, records in by_seed.items() if records}
                                          for system, by_seed in history.items()}
        evals = {"pretrained": {0: self.evaluate(base, "pretrained")}}
        for system, by_seed in runs.items():
            evals[system] = {seed: self.evaluate(d, d.name) for seed, d in by_seed.items()}
        self.report["bleu"], self.report["chrf"] = _tables(evals, self.pairs)
        self.report["signature"] = evals["pretrained"][0]["signature"]
        self.report["significance"] = self.phase("bootstrap", lambda: _significance(
            evals, self.pairs, Path(self.config.data.data_dir), self.config.decode, r.bootstrap_samples))
        return self.report


def _tables(evals: dict, pairs: list[str]) -> tuple[dict, dict]:
    bleu, chrf = {}, {}
    for system, by_seed in evals.items():
        for metric, table in (("bleu", bleu), ("chrf", chrf)):
            per_seed = {str(seed): {p: e[p][metric] for p in pairs} for seed, e in by_seed.items()}
            for row in per_seed.values():
                row["avg"] = float(np.mean([row[p] for p in pairs]))
            cols = pairs + ["avg"]
            values = np.array([[row[c] for c in cols] for row in per_seed.values()])
            table[system] = {"seeds": per_seed, "mean": dict(zip(cols, values.mean(0).tolist())),
                             "std": dict(zip(cols, values.std(0, ddof=1).tolist() if len(values) > 1 else [0.0] * len(cols)))}
    return bleu, chrf


def _significance(evals: dict, pairs: list[str], data_dir: Path, dc, samples: int) -> dict:
    """method_te against each control, per direction and over all directions (mean BLEU of the
    directions), paired bootstrap over test sentences, all seeds at once."""
    refs = {}
    for p in parse_pairs(pairs):
        lines = read_lines(data_dir / f"{dc.test_split}.{p.name}.{p.tgt}")
        refs[p.name] = lines[:dc.test_max_lines] if dc.test_max_lines else lines
    stats = {system: {seed: {p: sentence_stats(e[p]["hyps"], refs[p]) for p in pairs} for seed, e in by_seed.items()}
             for system, by_seed in evals.items()}
    out = {}
    for control in [s for s in evals if s != "method_te"]:
        row = {}
        for p in pairs:
            row[p] = paired_bootstrap([s[p] for s in stats["method_te"].values()],
                                      [s[p] for s in stats[control].values()], samples)
        row["avg"] = paired_bootstrap_mean([[s[p] for s in stats["method_te"].values()] for p in pairs],
                                           [[s[p] for s in stats[control].values()] for p in pairs], samples)
        out[control] = row
    return out


def environment() -> dict:
    import flax
    import sacrebleu
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"machine": f"{cpu}, {os.cpu_count()} cores, {jax.device_count()} "
                       f"{jax.default_backend()} device(s)",
            "device": str(jax.devices()[0].device_kind), "python": platform.python_version(),
            "jax": jax.__version__, "flax": flax.__version__, "sacrebleu": sacrebleu.__version__}


def main() -> int:
    p = cli.parser(__doc__.split("\n")[0])
    p.add_argument("--workdir", default="runs/reproduce", help="where the runs are written (resumable)")
    p.add_argument("--pretrained", default=None, help="the pre-trained model to start from (default: the shipped one)")
    p.add_argument("--settings", default=None, help="comma-separated subset of reproduce.settings to run now")
    args = p.parse_args()
    if args.config is None:
        raise ConfigError("--config is required (e.g. configs/reproduce_cpu.py)")
    config = check_config(cli.config_from_args(args))
    start = Path(args.pretrained) if args.pretrained else packaged.shipped_model_dir()
    workdir = Path(args.workdir)
    with run_lock.hold(workdir):  # one reproduction per work directory
        return _reproduce(args, config, start, workdir)


def _reproduce(args, config: Config, start: Path, workdir: Path) -> int:
    report_path = workdir / "report.json"
    report = load_json(report_path) if report_path.exists() else {}
    report.update({"command": "python -m jax_namnmt.reproduce " + " ".join(sys.argv[1:]),
                   "environment": environment(), "config": config.to_dict()})
    names = args.settings.split(",") if args.settings else list(config.reproduce.settings)
    for name in names:
        if name not in config.reproduce.settings:
            raise ConfigError(f"--settings: {name!r} is not in reproduce.settings {list(config.reproduce.settings)}")
        begin = time.time()
        setting_report = report.setdefault("settings", {}).setdefault(name, {})
        Setting(name, config, workdir / name, start, setting_report, args.quiet,
                save=lambda: save_json(report_path, report)).run()
        setting_report["wall_s"] = round(setting_report.get("wall_s", 0) + time.time() - begin, 1)
        report["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        save_json(report_path, report)
    from jax_namnmt.reproduce_report import write_report
    paths = write_report(report, Path(config.reproduce.out_dir))
    print("report: " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    cli.run(main)
