"""The steps of the method as functions over run directories; the doors and the pipeline call these.

Layout of a work directory::

    WORKDIR/data/            fairseq layout (built from the embedded Multi30k unless --data)
    WORKDIR/spm.model        joint SentencePiece model with <2xx> tags
    WORKDIR/prepare.json     corpus statistics
    WORKDIR/<run>/           a self-contained model: config.json, spm.model, checkpoints/,
                             masks.npz (masked runs), importance_<method>.npz, metrics.jsonl, tb/
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jax_namnmt import directions, packaged, parallel, run_lock
from jax_namnmt.config import Config
from jax_namnmt.data.batching import Examples, encode_parallel, make_batcher, resolve_layout
from jax_namnmt.data.corpus import find_split_files, parse_pairs, read_parallel
from jax_namnmt.data.multiway import MULTI30K_SPLITS, build_from_multiway, multi30k_dir
from jax_namnmt.data.vocab import EOS_ID, Vocab, train_vocab
from jax_namnmt.decoding import translate_ids
from jax_namnmt.inference import is_baked, param_shapes, read_config_and_vocab
from jax_namnmt.errors import CheckpointError, ConfigError, DataError, WriteError, atomic_write, reading
from jax_namnmt.method.allocation import allocate, load_masks, save_masks, summarize
from jax_namnmt.method.importance import compute_importance
from jax_namnmt.method.masks import canonical_name, module_sizes, to_model_masks
from jax_namnmt.metrics import score_by_pair
from jax_namnmt.model.transformer import init_params
from jax_namnmt.training.checkpoint import Checkpointer, save_json
from jax_namnmt.training.loop import (check_resumable, finetune_schedule, patience_exhausted, pretrain_schedule,
                                     train, write_run_files)
from jax_namnmt.training.metrics_log import read_records

SPLITS = ("train", "valid", "test")


# ----------------------------------------------------------------------------- data


def data_dir_for(config: Config, workdir: Path) -> Path:
    return Path(config.data.data_dir) if config.data.data_dir else Path(workdir) / "data"


def prepare(config: Config, workdir: Path, quiet: bool = False, vocab_from: Path | None = None) -> dict:
    """Build (if needed) and validate the corpus, and train the joint vocabulary (or, with ``vocab_from``,
    use that SentencePiece model: the vocabulary of a pre-trained model the work starts from).
    Holds ``workdir``'s lock (``run_lock``)."""
    with run_lock.hold(workdir):
        return _prepare(config, Path(workdir), quiet, vocab_from)


def _prepare(config: Config, workdir: Path, quiet: bool, vocab_from: Path | None) -> dict:
    pairs = parse_pairs(config.data.pairs)
    data_dir = data_dir_for(config, workdir)
    if not config.data.data_dir:
        build_from_multiway(multi30k_dir(), data_dir, pairs, MULTI30K_SPLITS)
    stats = {}
    texts = {}
    for split in SPLITS:
        texts[split] = read_parallel(data_dir, split, pairs, empty_lines=config.data.empty_lines)
        stats[split] = {name: text.stats for name, text in texts[split].items()}
    langs = sorted({lang for p in pairs for lang in (p.src, p.tgt)})
    vocab_path = workdir / "spm.model"
    if vocab_from is not None:
        if vocab_path.exists() and vocab_path.read_bytes() != Path(vocab_from).read_bytes():
            raise DataError(f"{vocab_path} is another vocabulary than {vocab_from}: use another --workdir")
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(vocab_from, vocab_path)
    if not vocab_path.exists():
        per_lang: dict[str, dict[str, None]] = {lang: {} for lang in langs}
        for text in texts["train"].values():
            per_lang[text.pair.src].update(dict.fromkeys(text.src))
            per_lang[text.pair.tgt].update(dict.fromkeys(text.tgt))
        sentences = [line for lang in langs for line in per_lang[lang]]
        train_vocab(sentences, langs, workdir / "spm", config.data.vocab_size, config.data.spm_model_type,
                    config.data.spm_max_sentences, seed=config.train.seed)
    summary = {"data_dir": str(data_dir), "pairs": [p.name for p in pairs], "vocab": str(vocab_path),
               "stats": stats}
    save_json(workdir / "prepare.json", summary)
    if not quiet:
        for split in SPLITS:
            kept = sum(s["kept"] for s in stats[split].values())
            dropped = sum(s["dropped_empty"] for s in stats[split].values())
            print(f"[prepare] {split}: {kept} examples over {len(pairs)} pairs ({dropped} empty dropped)")
    return summary


_EXAMPLES_CACHE: dict = {}


def load_examples(config: Config, data_dir: Path, vocab: Vocab, split: str, max_lines: int = 0,
                  quiet: bool = True) -> tuple[Examples, dict]:
    """Read, validate and encode one split (memoized per process: the pipeline's phases share it)."""
    key = (str(Path(data_dir).resolve()), split, str(Path(vocab.path).resolve()), max_lines, config.data)
    if key not in _EXAMPLES_CACHE:
        _EXAMPLES_CACHE[key] = _load_examples(config, data_dir, vocab, split, max_lines, quiet)
    return _EXAMPLES_CACHE[key]


def _load_examples(config, data_dir, vocab, split, max_lines, quiet):
    pairs = parse_pairs(config.data.pairs)
    texts = read_parallel(data_dir, split, pairs, empty_lines=config.data.empty_lines)
    if max_lines:
        for text in texts.values():
            text.src, text.tgt = text.src[:max_lines], text.tgt[:max_lines]
            text.line_numbers = text.line_numbers[:max_lines]
    index = {p.name: i for i, p in enumerate(pairs)}
    examples, stats = encode_parallel(texts, vocab, index, config.data.max_len, config.data.overlong)
    if not quiet:
        dropped = sum(s["dropped_overlong"] for s in stats.values())
        print(f"[data] {split}: {len(examples)} examples ({dropped} over {config.data.max_len} tokens dropped)")
    return examples, stats


# ----------------------------------------------------------------------------- runs


@dataclasses.dataclass
class Run:
    """A trained model loaded from its run directory alone."""

    directory: Path
    config: Config
    vocab: Vocab
    params: dict
    masks: dict | None  # flat boolean masks, or None for the plain model
    step: int

    @property
    def pairs(self) -> list[str]:
        return list(self.config.data.pairs)

    def model_masks(self):
        return None if self.masks is None else to_model_masks(self.masks)


def load_run(run_dir: Path) -> Run:
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.json); pass a directory written by "
                              "train, finetune or pipeline")
    config, vocab = read_config_and_vocab(run_dir, "run directory")
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), param_shapes(config.model))
    if packaged.is_package(run_dir):
        params = jax.tree.map(jnp.asarray, packaged.load_package_params(run_dir, target))
        meta = packaged.read_package_info(run_dir)
    else:
        params, meta = Checkpointer(run_dir).restore_params(target=target)
    masks = _load_mask_file(run_dir / "masks.npz", config)[0] if (run_dir / "masks.npz").exists() else None
    return Run(run_dir, config, vocab, params, masks, int(meta.get("step", 0)))


def export_run(run_dir: Path, out: Path, dtype: str = "bfloat16", info: dict | None = None,
               config: Config | None = None) -> Path:
    """Write ``run_dir``'s latest parameters, config and vocabulary as a package (see ``packaged``).
    ``config`` replaces the stored config (e.g. newer fine-tuning or decoding settings for users of the
    package); its model and pairs must be the run's. Holds ``out``'s lock."""
    with run_lock.hold(out):
        return _export_run(run_dir, Path(out), dtype, info, config)


def _export_run(run_dir: Path, out: Path, dtype: str, info: dict | None, config: Config | None) -> Path:
    run = load_run(run_dir)
    if run.masks is not None:
        raise CheckpointError(f"{run_dir} is a masked run; packages hold plain models only")
    if is_baked(run.config):
        raise CheckpointError(f"{run_dir} is a baked package already (python -m jax_namnmt.bake export writes one)")
    if config is not None:
        _check_same_model(run.config, config, run_dir)
    details = {"step": run.step, "from": str(Path(run_dir).resolve()), **(info or {})}
    return packaged.save_package(out, jax.device_get(run.params), (config or run.config).to_dict(), run.vocab.path,
                                 dtype, details)


def is_finished(run_dir: Path, steps: int, patience: int = 0) -> bool:
    """Whether ``run_dir`` holds an intact checkpoint of at least ``steps`` steps, or of the step where
    ``patience`` (``train.patience``) stopped it early: by the validation records up to that step, the
    loop's own rule."""
    run_dir = Path(run_dir)
    step = Checkpointer(run_dir).latest_intact_step() if (run_dir / "checkpoints").exists() else None
    if step is None:
        return False
    if step >= steps:
        return True
    # the validation records are read only where patience could have stopped the run
    return patience > 0 and patience_exhausted([r["nll"] for r in read_records(run_dir, "*_valid", up_to=step)],
                                               patience)


def run_pretrain(config: Config, workdir: Path, out: Path, quiet: bool = False) -> Path:
    """Pre-train the plain multilingual model (resumes if ``out`` holds checkpoints); holds ``out``'s lock."""
    workdir, out = Path(workdir), Path(out)
    with run_lock.hold(out):
        return _run_pretrain(config, workdir, out, quiet)


def _run_pretrain(config: Config, workdir: Path, out: Path, quiet: bool) -> Path:
    data_dir = data_dir_for(config, workdir)
    vocab = _workdir_vocab(workdir)
    train_ex, valid_ex = _train_and_valid(config, data_dir, vocab, quiet)
    check_resumable(out, config)  # before write_run_files: a refused resume must not overwrite config.json
    write_run_files(out, config, vocab.path, {"kind": "pretrain"})
    params = init_params(config.model, config.train.seed)
    train(out, config, pretrain_schedule(config), train_ex, valid_ex, params, None, phase="pretrain", quiet=quiet)
    return out


def run_finetune(config: Config, workdir: Path, source: Path, out: Path, masks_path: Path | None,
                 quiet: bool = False) -> Path:
    """Fine-tune from ``source``'s parameters with a fresh optimizer, each example under its pair's mask
    (``masks_path=None``: continue the plain model with the same schedule: the equal-steps baseline).
    Holds ``out``'s lock from the start: a second writer stops before anything is read or written."""
    workdir, out = Path(workdir), Path(out)
    with run_lock.hold(out):
        return _run_finetune(config, workdir, source, out, masks_path, quiet)


def _run_finetune(config: Config, workdir: Path, source: Path, out: Path, masks_path: Path | None,
                  quiet: bool) -> Path:
    base = load_run(source)
    _check_same_model(base.config, config, source)
    flat = None
    if masks_path is not None:  # checked before anything is written to ``out``
        flat, pairs, meta = _load_mask_file(masks_path, config)
    train_ex, valid_ex = _train_and_valid(config, data_dir_for(config, workdir), base.vocab, quiet)
    check_resumable(out, config)  # before write_run_files: a refused resume must not overwrite config.json
    write_run_files(out, config, base.vocab.path, {"kind": "finetune", "from": str(source),
                                                   "masks": str(masks_path) if masks_path else None})
    model_masks = None
    if flat is not None:
        if Path(masks_path).resolve() != (out / "masks.npz").resolve():
            save_masks(out / "masks.npz", flat, pairs, meta)
        model_masks = to_model_masks(flat)
    train(out, config, finetune_schedule(config), train_ex, valid_ex, base.params, model_masks,
          phase="finetune" if masks_path else "continue", quiet=quiet)
    return out


def run_importance(run_dir: Path, config: Config, workdir: Path | None, method: str, quiet: bool = False,
                   out: Path | None = None) -> Path:
    """Score every neuron for every pair on the validation split (one pass over mixed batches); written to
    ``out`` (default ``run_dir/importance_<method>.npz``) through a temporary file, so never half-written.
    Holds the lock of the directory written to."""
    path = Path(out) if out else Path(run_dir) / f"importance_{method}.npz"
    if out is None and Path(run_dir).is_dir() and not os.access(run_dir, os.W_OK):
        raise WriteError(f"{run_dir} is not writable (an installed package?): pass --out FILE to write the "
                         "importance scores elsewhere")
    with run_lock.hold(path.parent):
        return _run_importance(run_dir, config, workdir, method, quiet, path)


def _run_importance(run_dir: Path, config: Config, workdir: Path | None, method: str, quiet: bool,
                    path: Path) -> Path:
    run = load_run(run_dir)
    data_dir = data_dir_for(config, workdir or run_dir)
    mc = config.method
    examples, _ = load_examples(run.config, data_dir, run.vocab, mc.importance_split, mc.importance_max_lines)
    smoothing = run.config.train.label_smoothing if mc.importance_loss == "label_smoothed" else 0.0
    mesh, rules = parallel.mesh_from_config(config.parallel)
    batcher = make_batcher(examples, resolve_layout(config.data.layout, mesh.size, jax.default_backend()),
                           config.method.importance_tokens_per_batch, run.config.data.src_row_len,
                           run.config.data.tgt_row_len, seed=0, shuffle=False)
    with tqdm(total=batcher.num_batches(0), desc=f"importance ({method})", disable=quiet) as bar:
        theta = compute_importance(run.params, batcher.epoch(0), run.model_masks(), config=run.config.model,
                                   num_pairs=len(run.pairs), method=method,
                                   label_smoothing=smoothing, progress=bar,
                                   mesh=mesh, rules=rules)
    save_importance(path, theta, run.pairs)
    return path


def save_importance(path: Path, theta: dict[str, np.ndarray], pairs: Sequence[str]) -> None:
    """Write an importance table (``load_importance`` reads it) atomically; a failed write raises
    WriteError naming ``path`` and leaves no partial file (the previous one, if any, stays)."""
    with atomic_write(path, "wb", f"importance file {path}") as f:
        np.savez(f, __pairs__=np.asarray(json.dumps(list(pairs))), **theta)


def load_importance(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"importance file {path} does not exist; run `python -m jax_namnmt.importance` first")
    with reading(path, "importance file"), np.load(path) as data:
        if "__pairs__" not in data.files:
            raise CheckpointError(f"importance file {path} has no __pairs__ entry: it was not written by "
                                  "`python -m jax_namnmt.importance`")
        pairs = json.loads(str(data["__pairs__"]))
        if not isinstance(pairs, list) or not all(isinstance(p, str) for p in pairs):
            raise CheckpointError(f"importance file {path}: __pairs__ is not a list of pair names")
        return {canonical_name(k): data[k] for k in data.files if k != "__pairs__"}, pairs


def run_allocate(importance_path: Path, out: Path, rho: float, k: float, variant: str, quiet: bool = False,
                 normalize: str = "none", modules: str = "all") -> Path:
    """Masks from an importance file, written to ``out`` (holding the lock of its directory)."""
    with run_lock.hold(Path(out).parent):
        return _run_allocate(importance_path, out, rho, k, variant, quiet, normalize, modules)


def _run_allocate(importance_path, out, rho, k, variant, quiet, normalize, modules) -> Path:
    theta, pairs = load_importance(importance_path)
    masks = allocate(theta, pairs, rho, k, variant, normalize=normalize, modules=modules)
    save_masks(out, masks, pairs, {"rho": rho, "k": k, "variant": variant, "normalize": normalize,
                                   "modules": modules, "importance": str(importance_path)})
    if not quiet:
        print(summarize(masks, pairs))
    return Path(out)


# ----------------------------------------------------------------------------- translate / evaluate


def direction_plan(run: Run, src: str, tgt: str, quiet: bool = False) -> tuple[int, dict | None]:
    """The pair id and model masks that decode ``src-tgt`` (a trained pair or a zero-shot direction
    between two of the model's languages; anything else is a DataError naming them)."""
    plan = directions.plan(run, [directions.check_direction(run.pairs, src, tgt)])
    if not quiet:
        for note in plan.notes:
            print(f"note: {note}", file=sys.stderr)
    return plan.pair_ids[f"{src}-{tgt}"], plan.masks


def encode_sources(run: Run, lines: Sequence[str], tgt: str) -> list[np.ndarray]:
    """``<2tgt> pieces EOS`` for each line; input longer than ``data.max_len`` is truncated."""
    tag = run.vocab.tag_id(tgt)
    limit = run.config.data.max_len - 2
    return [np.asarray([tag] + ids[:limit] + [EOS_ID], np.int32) for ids in run.vocab.encode_batch(list(lines))]


def translate_lines(run: Run, lines: Sequence[str], src: str, tgt: str, progress: bool = False) -> list[str]:
    """One output line per input line, in order; an empty input line gives an empty output line."""
    pid, masks = direction_plan(run, src, tgt)
    keep = [i for i, line in enumerate(lines) if line.strip()]
    sources = encode_sources(run, [lines[i] for i in keep], tgt)
    with tqdm(total=len(sources), desc=f"translate {src}-{tgt}", disable=not progress) as bar:
        ids = translate_ids(run.params, run.config.model, masks, sources,
                            np.full(len(sources), pid, np.int32), run.config.decode, bar)
    outputs = [""] * len(lines)
    for i, hyp in zip(keep, run.vocab.decode_batch(ids) if ids else []):
        outputs[i] = hyp
    return outputs


def zero_shot_test_set(run: Run, data_dir: Path, split: str, spec: str | None = None,
                       embedded: bool | None = None) -> list[str]:
    """The zero-shot directions to score on ``split`` (``spec``: ``decode.zero_shot`` by default).
    On the embedded Multi30k (a run whose ``data.data_dir`` is empty) their files are built into
    ``data_dir`` from the multi-way corpus; on another corpus "auto" keeps the directions that have
    files for ``split`` and a named direction without them is an error."""
    spec = run.config.decode.zero_shot if spec is None else spec
    wanted = directions.parse_zero_shot(spec, run.pairs)
    if not wanted:
        return []
    if (not run.config.data.data_dir) if embedded is None else embedded:
        if split not in MULTI30K_SPLITS:
            raise ConfigError(f"split {split!r} is not a split of the embedded Multi30k ({', '.join(MULTI30K_SPLITS)})")
        build_from_multiway(multi30k_dir(), data_dir, wanted, {split: MULTI30K_SPLITS[split]})
        return wanted
    present = []
    for pair in parse_pairs(wanted):
        try:
            find_split_files(data_dir, split, pair)
            present.append(pair.name)
        except DataError:
            if spec.strip() != "auto":
                raise
    return present


def evaluate_run(run: Run, data_dir: Path, split: str, max_lines: int, quiet: bool = False,
                 zero_shot: Sequence[str] = ()) -> dict:
    """BLEU/chrF per pair on ``split`` (first ``max_lines`` per pair), decoding all pairs in mixed
    batches; ``zero_shot`` directions (``directions.parse_zero_shot``) are decoded in the same batches
    and scored beside them: ``avg`` stays the trained pairs' mean, ``zero_shot_avg`` is theirs."""
    pairs = parse_pairs(list(run.pairs) + list(zero_shot))
    plan = directions.plan(run, [p.name for p in pairs])
    texts = read_parallel(data_dir, split, pairs, empty_lines="drop")
    sources, pair_ids, refs = [], [], {}
    for p in pairs:
        text = texts[p.name]
        src, ref = (text.src[:max_lines], text.tgt[:max_lines]) if max_lines else (text.src, text.tgt)
        sources.extend(encode_sources(run, src, p.tgt))
        pair_ids.extend([plan.pair_ids[p.name]] * len(src))
        refs[p.name] = ref
    start = time.perf_counter()
    with tqdm(total=len(sources), desc=f"beam search ({run.directory.name})", disable=quiet) as bar:
        ids = translate_ids(run.params, run.config.model, plan.masks, sources,
                            np.asarray(pair_ids, np.int32), run.config.decode, bar)
    seconds = time.perf_counter() - start
    hyps = run.vocab.decode_batch(ids)
    outputs, offset = {}, 0
    for p in pairs:
        n = len(refs[p.name])
        outputs[p.name] = (hyps[offset: offset + n], refs[p.name])
        offset += n
    scores = score_by_pair(outputs)
    if zero_shot:
        scores["avg"] = score_by_pair({p: outputs[p] for p in run.pairs})["avg"]
        scores["zero_shot"] = list(zero_shot)
        scores["zero_shot_avg"] = {m: float(np.mean([scores[d][m] for d in zero_shot])) for m in ("bleu", "chrf")}
    scores["decode_seconds"] = seconds
    scores["sentences"] = len(sources)
    scores["hypotheses"] = {name: h for name, (h, _) in outputs.items()}
    return scores


# ----------------------------------------------------------------------------- helpers


def _train_and_valid(config: Config, data_dir: Path, vocab: Vocab, quiet: bool) -> tuple[Examples, Examples]:
    train_ex, _ = load_examples(config, data_dir, vocab, "train", config.data.train_max_lines, quiet)
    valid_ex, _ = load_examples(config, data_dir, vocab, "valid", config.train.valid_max_lines, quiet)
    return train_ex, valid_ex


def _load_mask_file(path: Path, config: Config) -> tuple[dict, list[str], dict]:
    """A mask file checked against the model shape and the pair list of ``config``."""
    flat, pairs, meta = load_masks(path, expected=module_sizes(config.model), num_pairs=len(config.data.pairs))
    if list(pairs) != list(config.data.pairs):
        raise CheckpointError(f"{path} was allocated for pairs {list(pairs)}, the model is trained on "
                              f"{list(config.data.pairs)}")
    return flat, pairs, meta


def _workdir_vocab(workdir: Path) -> Vocab:
    path = Path(workdir) / "spm.model"
    if not path.exists():
        raise DataError(f"{path} does not exist: run `python -m jax_namnmt.prepare --workdir {workdir}` first")
    return Vocab.load(path)


def _check_same_model(saved: Config, config: Config, source: Path) -> None:
    """Same model shape; the same pair list too where the model has per-pair parts (adapters, +TS).
    A plain model reads its direction from the source's target tag alone, so it may go on with
    other pairs of its languages (e.g. a one-to-many model from a many-to-many one)."""
    per_pair = bool(saved.model.adapter_pairs or saved.model.ts_target_of_pair)
    if saved.model != config.model or (per_pair and list(saved.data.pairs) != list(config.data.pairs)):
        raise ConfigError(f"the config's model shape or pair list differs from the checkpoint in {source}; "
                          "fine-tune with the config the model was trained with")

