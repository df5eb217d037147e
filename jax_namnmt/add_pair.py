"""Add a direction to a masked (fine-tuned) model without re-training its pairs.

    python -m jax_namnmt.add_pair --from W/method_te --pair de-cs --workdir W --out W/method_te+de-cs

Scores the importance of every neuron for the old pairs and the new one (one pass on the
validation split, the new pair under an all-ones mask row), gives the new pair the general
neurons, the ones the threshold rule shares with it, the free ones and ``--grow`` new FFN units
per layer (``method/extend.py``), and fine-tunes on the new pair's data alone with every parameter
an old pair reads frozen (the embeddings and layer norms included): the old pairs' parameters and
translations stay what they were, bit for bit. ``--report`` then measures it: BLEU of the old pairs
before and after (and whether every translation is the same), and of the new direction against
its zero-shot BLEU (the plain model the masked one was fine-tuned from, ``<2tgt>`` tag, no masks).
The run directory holds the grown config (``data.pairs`` + the pair, ``model.ffn_dim`` + grow),
``masks.npz`` with one more row, the importance scores and ``add_pair.json``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from jax_namnmt import cli, parallel, run_lock, workflow
from jax_namnmt.config import Config
from jax_namnmt.data.batching import Examples, make_batcher, resolve_layout
from jax_namnmt.data.corpus import parse_pairs
from jax_namnmt.errors import CheckpointError, ConfigError, DataError
from jax_namnmt.method import extend
from jax_namnmt.method.allocation import save_masks
from jax_namnmt.method.importance import compute_importance
from jax_namnmt.method.masks import to_model_masks
from jax_namnmt.method.zero_shot import compose_mask
from jax_namnmt.metrics import format_table
from jax_namnmt.training.checkpoint import load_json, save_json
from jax_namnmt.training.loop import check_resumable, finetune_schedule, train, write_run_files

DEFAULT_GROW = 128


# ----------------------------------------------------------------------------- checks


def check_source(run: workflow.Run, pair: str) -> None:
    """A masked run of plain parameters, and a new direction between its languages."""
    model = run.config.model
    if model.adapter_pairs or model.ts_target_of_pair:
        system = "+Adapter" if model.adapter_pairs else "+TS"
        raise ConfigError(f"{run.directory} is a {system} model, whose parameters depend on the pair list; "
                          "add_pair extends masked models (method_te, method_av) only")
    if run.masks is None:
        raise CheckpointError(f"{run.directory} has no masks.npz: add_pair extends a masked run (finetune --masks); "
                              "a plain model translates every direction of its languages already")
    (new,) = parse_pairs(pair)  # malformed or same-language pairs: a DataError naming it
    if new.name in run.pairs:
        raise ConfigError(f"pair {new.name} is already one of {run.directory}'s pairs ({', '.join(run.pairs)})")
    langs = sorted({lang for p in parse_pairs(run.pairs) for lang in (p.src, p.tgt)})
    unknown = [lang for lang in (new.src, new.tgt) if lang not in langs]
    if unknown:
        raise DataError(f"pair {new.name}: {', '.join(unknown)} is not one of the model's languages "
                        f"({', '.join(langs)})")
    run.vocab.tag_id(new.tgt)  # the target tag must be in the vocabulary


def extended_config(config: Config, pair: str, grow: int) -> Config:
    return config.with_sections(data={"pairs": tuple(config.data.pairs) + (pair,)},
                                model={"ffn_dim": config.model.ffn_dim + grow}).validate()


# ----------------------------------------------------------------------------- the steps


def score(run: workflow.Run, config: Config, data_dir: Path, pair: str, quiet: bool) -> dict[str, np.ndarray]:
    """Importance ``[P + 1, F]`` per module: every old pair under its mask and the new pair (last)
    under an all-ones row, in one pass over mixed batches of ``method.importance_split``."""
    mc = config.method
    scoring = config.with_sections(data={"pairs": tuple(run.pairs) + (pair,)})
    examples, _ = workflow.load_examples(scoring, data_dir, run.vocab, mc.importance_split, mc.importance_max_lines)
    masks = {name: np.concatenate([m, np.ones((1, m.shape[1]), bool)]) for name, m in run.masks.items()}
    smoothing = config.train.label_smoothing if mc.importance_loss == "label_smoothed" else 0.0
    mesh, rules = parallel.mesh_from_config(config.parallel)
    batcher = make_batcher(examples, resolve_layout(config.data.layout, mesh.size, jax.default_backend()),
                           mc.importance_tokens_per_batch, config.data.src_row_len, config.data.tgt_row_len,
                           seed=0, shuffle=False)
    with tqdm(total=batcher.num_batches(0), desc=f"importance ({mc.importance})", disable=quiet) as bar:
        return compute_importance(run.params, batcher.epoch(0), to_model_masks(masks), config=run.config.model,
                                  num_pairs=len(run.pairs) + 1, method=mc.importance, label_smoothing=smoothing,
                                  progress=bar, mesh=mesh, rules=rules)


def only_pair(examples: Examples, pid: int) -> Examples:
    return examples.take(np.flatnonzero(np.asarray(examples.pair_ids) == pid))


def run_add_pair(config: Config, workdir: Path, source: Path, out: Path, pair: str, grow: int = DEFAULT_GROW,
                 quiet: bool = False) -> Path:
    """Add ``pair`` to the masked run ``source`` as the run ``out`` (see the module's docstring);
    resumes from ``out``'s checkpoints. Holds ``out``'s lock."""
    out = Path(out)
    with run_lock.hold(out):
        return _run_add_pair(config, Path(workdir), Path(source), out, pair, grow, quiet)


def _run_add_pair(config, workdir, source, out, pair, grow, quiet) -> Path:
    base = workflow.load_run(source)
    check_source(base, pair)
    if config.model != base.config.model or list(config.data.pairs) != base.pairs:
        raise ConfigError(f"the config's model or data.pairs differ from {source}'s; add_pair takes the run's own "
                          "config (leave out --config and --pairs)")
    if grow < 0:
        raise ConfigError(f"--grow must be >= 0, got {grow}")
    ext = extended_config(config, pair, grow)
    workflow.prepare(ext, workdir, quiet=quiet, vocab_from=base.vocab.path)  # builds/validates the new pair's data
    data_dir = workflow.data_dir_for(ext, workdir)
    method = config.method.importance
    importance_path = out / f"importance_{method}.npz"
    out.mkdir(parents=True, exist_ok=True)
    if importance_path.exists():  # a resumed run allocates from the same scores
        theta, scored = workflow.load_importance(importance_path)
        if scored != list(ext.data.pairs):
            raise CheckpointError(f"{importance_path} scores pairs {scored}, not {list(ext.data.pairs)}")
    else:
        start = time.perf_counter()
        theta = score(base, config, data_dir, pair, quiet)
        workflow.save_importance(importance_path, theta, ext.data.pairs)
        if not quiet:
            print(f"[add_pair] importance of {len(ext.data.pairs)} pairs: {time.perf_counter() - start:.1f} s")
    mc = config.method
    masks, counts = extend.new_pair_row(base.masks, theta, mc.k, grow, mc.normalize)
    num_old = len(base.pairs)
    params = extend.grow_params(jax.device_get(base.params), grow, seed=config.train.seed)
    trainable = extend.trainable_tree(params, masks, num_old)
    totals = extend.summary(counts, trainable)
    if totals["trainable_params"] == 0:
        raise ConfigError(f"{pair} would have nothing to train: every neuron of {source} is used by an old pair "
                          "(no free neurons) and --grow is 0; pass --grow N (new FFN units per layer)")
    meta = {"added": pair, "from": str(source), "k": mc.k, "normalize": mc.normalize, "grow": grow,
            "importance": str(importance_path), "counts": counts, "totals": totals}
    save_masks(out / "masks.npz", masks, list(ext.data.pairs), meta)
    train_ex, valid_ex = workflow._train_and_valid(ext, data_dir, base.vocab, quiet)
    train_new = only_pair(train_ex, num_old)
    if not len(train_new):
        raise DataError(f"{data_dir} holds no training examples of {pair}")
    check_resumable(out, ext)
    write_run_files(out, ext, base.vocab.path, {"kind": "add_pair", "from": str(source), "pair": pair,
                                                "grow": grow, "totals": totals})
    if not quiet:
        print(f"[add_pair] {pair}: {totals['general']} general, {totals['shared']} shared (k = {mc.k}), "
              f"{totals['free']} free and {totals['grown']} grown neurons; training {totals['trainable_params']:,} "
              f"of {totals['params']:,} parameters on {len(train_new)} examples, the rest frozen")
    train(out, ext, finetune_schedule(ext), train_new, valid_ex, params, to_model_masks(masks), phase="add_pair",
          quiet=quiet, trainable=trainable)
    return out


# ----------------------------------------------------------------------------- the report


def restricted(run: workflow.Run, pairs: list[str], masks: bool = True) -> workflow.Run:
    """``run`` translating ``pairs`` (a prefix of its pairs, or any directions with ``masks=False``)."""
    config = run.config.with_sections(data={"pairs": tuple(pairs)})
    rows = None
    if masks and run.masks is not None:
        rows = {name: m[:len(pairs)] for name, m in run.masks.items()}
    return dataclasses.replace(run, config=config, masks=rows)


def zero_shot_model(source: Path) -> Path | None:
    """The plain model ``source`` was fine-tuned from (its ``run.json``'s ``from``), if it is there."""
    info = Path(source) / "run.json"
    start = load_json(info).get("from") if info.exists() else None
    return Path(start) if start and (Path(start) / "config.json").exists() else None


def report(out: Path, workdir: Path, split: str, max_lines: int, quiet: bool = False) -> dict:
    """BLEU of the old pairs from the source run and the new run (each pair's translations compared
    line by line), of the new pair on the new run, and its zero-shot BLEU with the ``<2tgt>`` tag: the
    plain model the source was fine-tuned from (``pretrained``), the source's parameters without masks
    (``source_unmasked``) and with the mask row composed from its pairs (``source_composed``)."""
    new = workflow.load_run(out)
    info = load_json(out / "run.json")
    source, pair = Path(info["from"]), info["pair"]
    old = workflow.load_run(source)
    data_dir = workflow.data_dir_for(new.config, workdir)
    before = workflow.evaluate_run(old, data_dir, split, max_lines, quiet)
    after = workflow.evaluate_run(restricted(new, old.pairs), data_dir, split, max_lines, quiet)
    added = workflow.evaluate_run(_only(new, pair), data_dir, split, max_lines, quiet)
    zero_shot = {"source_unmasked": workflow.evaluate_run(restricted(old, [pair], masks=False), data_dir, split,
                                                          max_lines, quiet)[pair],
                 "source_composed": workflow.evaluate_run(composed(old, pair), data_dir, split, max_lines,
                                                          quiet)[pair]}
    plain = zero_shot_model(source)
    if plain is not None:
        zero_shot["pretrained"] = workflow.evaluate_run(restricted(workflow.load_run(plain), [pair], masks=False),
                                                        data_dir, split, max_lines, quiet)[pair]
    result = {
        "pair": pair, "from": str(source), "run": str(out), "split": split, "max_lines": max_lines,
        "zero_shot_from": str(plain) if plain else None, "totals": info.get("totals"),
        "old_pairs": {p: {"before": before[p]["bleu"], "after": after[p]["bleu"],
                          "same_translations": before["hypotheses"][p] == after["hypotheses"][p]}
                      for p in old.pairs},
        "old_avg": {"before": before["avg"]["bleu"], "after": after["avg"]["bleu"]},
        "new_pair": {"bleu": added[pair]["bleu"], "chrf": added[pair]["chrf"],
                     "zero_shot": {k: v["bleu"] for k, v in zero_shot.items()},
                     "zero_shot_chrf": {k: v["chrf"] for k, v in zero_shot.items()}},
        "steps": new.step, "validation_nll": validation_nll(out), "signature": added["signature"],
        "machine": f"{platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s)",
        "date": time.strftime("%Y-%m-%d"),
    }
    save_json(out / "add_pair.json", result)
    return result


def validation_nll(out: Path) -> dict:
    """Per-pair validation NLL of the add_pair run at its first and last validation (``metrics.jsonl``)."""
    path = Path(out) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
    records = [r for r in records if r.get("phase") == "add_pair_valid"]
    pick = lambda r: {k[4:]: r[k] for k in r if k.startswith("nll_")}  # noqa: E731
    return {str(r["step"]): pick(r) for r in records[:1] + records[-1:]}


def composed(run: workflow.Run, pair: str) -> workflow.Run:
    """The masked ``run`` translating the untrained ``pair`` zero-shot, under the mask row composed from
    its pairs (``method.zero_shot_masks``, ``method/zero_shot.py``)."""
    row, _ = compose_mask(run.masks, run.pairs, pair, run.config.method.zero_shot_masks)
    config = run.config.with_sections(data={"pairs": (pair,)})
    return dataclasses.replace(run, config=config, masks={name: m[None] for name, m in row.items()})


def _only(run: workflow.Run, pair: str) -> workflow.Run:
    """``run`` translating ``pair`` alone, under its own mask row."""
    index = run.pairs.index(pair)
    config = run.config.with_sections(data={"pairs": (pair,)})
    rows = {name: m[index:index + 1] for name, m in run.masks.items()}
    return dataclasses.replace(run, config=config, masks=rows)


def format_report(result: dict) -> str:
    old = result["old_pairs"]
    rows = {"before": {p: r["before"] for p, r in old.items()}, "after": {p: r["after"] for p, r in old.items()}}
    same = [p for p, r in old.items() if r["same_translations"]]
    new = result["new_pair"]
    return "\n".join([
        format_table(rows, list(old), title=f"old pairs, BLEU ({result['split']}, first {result['max_lines']} lines)"),
        f"identical translations: {len(same)} of {len(old)} old pairs",
        f"{result['pair']}: {new['bleu']:.2f} BLEU after {result['steps']} steps; zero-shot "
        + ", ".join(f"{v:.2f} ({k})" for k, v in new["zero_shot"].items())])


def main() -> int:
    p = cli.parser("Add a direction to a masked model, the old pairs frozen")
    p.add_argument("--from", dest="source", required=True, help="the masked run directory (finetune --masks)")
    p.add_argument("--pair", required=True, help="the new direction, SRC-TGT (e.g. de-cs)")
    p.add_argument("--out", default=None, help="the new run directory (default: --from's name + '+PAIR')")
    p.add_argument("--workdir", default=None, help="work directory holding data/ (default: --from's parent)")
    p.add_argument("--grow", type=int, default=DEFAULT_GROW,
                   help=f"new FFN units per layer, the new pair's alone (default {DEFAULT_GROW})")
    p.add_argument("--report", action="store_true",
                   help="then evaluate: the old pairs' BLEU before and after, the new pair against its zero-shot "
                        "BLEU (decode.test_max_lines lines a pair of --split); writes OUT/add_pair.json")
    p.add_argument("--split", default="test")
    args = p.parse_args()
    source = Path(args.source)
    if args.config is None and (source / "config.json").exists():
        args.config = str(source / "config.json")
    config = cli.config_from_args(args)
    workdir = Path(args.workdir) if args.workdir else source.parent
    out = Path(args.out) if args.out else source.with_name(f"{source.name}+{args.pair}")
    run_add_pair(config, workdir, source, out, args.pair, args.grow, args.quiet)
    print(f"model: {out}")
    if args.report:
        result = report(out, workdir, args.split, config.decode.test_max_lines, args.quiet)
        print(format_report(result))
        print(f"wrote {out / 'add_pair.json'}")
    return 0


if __name__ == "__main__":
    cli.run(main)
