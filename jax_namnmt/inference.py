"""A trained model ready to translate, loaded once, and the translation of lines with it.

``load_model`` reads a package (the shipped model is one) with NumPy and SentencePiece alone:
the model code (Flax) is imported, and the parameters checked against it, only when the beam
search has to be compiled, not when its program comes from the ahead-of-time cache
(``jax_namnmt.aot``). A run directory is read by ``workflow.load_run`` (Orbax).

``Translator.translate`` gives one output line per input line, in order, whatever the line:
empty or blank lines (also lines of only control characters) give empty lines; a line with no
piece the vocabulary knows (a script it does not cover) is copied through with a warning; a
line longer than the model was trained for follows ``long_lines`` (``segment``).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from jax_namnmt import packaged, segment
from jax_namnmt.config import Config, ModelConfig, SampleSearch
from jax_namnmt.data.vocab import EOS_ID, UNK_ID, Vocab
from jax_namnmt.errors import CheckpointError, ConfigError, DataError
from jax_namnmt.jsonfile import load_json
from jax_namnmt.model.low_precision import check_weights, convert_params


@dataclass
class Model:
    """A trained model for translation (the fields of ``workflow.Run`` that translation reads)."""

    directory: Path
    config: Config
    vocab: Vocab
    params: dict
    masks: dict | None = None  # flat boolean masks by module, or None for a plain model
    step: int = 0
    checked: bool = True  # False: the parameters still have to be checked against the model code

    @property
    def pairs(self) -> list[str]:
        return list(self.config.data.pairs)

    def check(self) -> None:
        """Check the parameters against the model code (shapes and paths; a CheckpointError
        naming the package otherwise). Needs Flax; done once."""
        if self.checked:
            return
        from jax_namnmt.method.masks import flatten

        packaged.check_params_fit(flatten(self.params), param_shapes(self.config.model), self.directory)
        self.checked = True


def is_baked(config: Config) -> bool:
    """Whether ``config`` is a baked per-pair model's (``python -m jax_namnmt.bake export``; its
    ``model`` a ``BakedModelConfig`` with per-module ``widths``)."""
    return hasattr(config.model, "widths")


def param_shapes(model: ModelConfig) -> dict:
    """The parameter tree (ShapeDtypeStructs) of ``model``, a plain or a baked model's config
    (imports the model code, Flax)."""
    import jax

    if hasattr(model, "widths"):
        from jax_namnmt.model.baked import param_shapes as baked_shapes

        return baked_shapes(model)
    from jax_namnmt.model.transformer import init_params

    return jax.eval_shape(lambda: init_params(model))


def parse_config(raw: dict, where: str) -> Config:
    """The validated config of a ``config.json`` (``where`` names it in errors). A ``model.widths``
    entry (a baked package's) makes ``model`` a ``BakedModelConfig``; that imports the model
    code, so only a baked package's config needs Flax."""
    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model, dict) or "widths" not in model:
        return Config.from_dict(raw, where=where).validate()
    from jax_namnmt.model.baked import BakedModelConfig

    model = dict(model)
    widths = model.pop("widths")
    if not isinstance(widths, dict):
        raise CheckpointError(f"{where}: model.widths must map module names to widths, got {widths!r}")
    config = Config.from_dict({**raw, "model": model}, where=where)
    return dataclasses.replace(config, model=BakedModelConfig.from_dict(model, widths)).validate()


def read_config_and_vocab(directory: Path, holder: str) -> tuple[Config, Vocab]:
    """A run directory's or package's validated config and its vocabulary, checked to fit each
    other (``holder`` names the kind of directory in the errors). No model code needed, but for a
    baked package's config (``parse_config``)."""
    config = parse_config(load_json(directory / "config.json"), str(directory / "config.json"))
    vocab_path = directory / "spm.model"
    if not vocab_path.exists():
        raise CheckpointError(f"{vocab_path} is missing: the {holder} must hold its vocabulary")
    vocab = Vocab.load(vocab_path)
    if vocab.size != config.model.vocab_size:
        raise CheckpointError(f"{vocab_path} has {vocab.size} pieces but the model in {directory} expects "
                              f"{config.model.vocab_size}: the vocabulary belongs to another model")
    return config, vocab


def load_model(directory: Path) -> Model:
    """A package read without the model code, or a run directory through ``workflow.load_run``."""
    directory = Path(directory)
    if not packaged.is_package(directory):
        from jax_namnmt import workflow

        run = workflow.load_run(directory)
        return Model(run.directory, run.config, run.vocab, run.params, run.masks, run.step)
    import jax

    from jax_namnmt.method.masks import nest

    config, vocab = read_config_and_vocab(directory, "package")
    info = packaged.read_package_info(directory)
    params = jax.device_put(nest(packaged.read_package_params(directory)))
    return Model(directory, config, vocab, params, None, int(info.get("step", 0)), checked=False)


def source_limit(config: Config) -> int:
    """Subword tokens of a source line the model takes: the longest it was trained on
    (``data.max_len``, within ``model.max_positions``) less the tag and EOS."""
    return min(config.data.max_len, config.model.max_positions) - 2


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def resolve_direction(model: Model, src: str, tgt: str) -> tuple[int, dict | None, tuple[str, ...], int]:
    """``(pair id, masks, notes, target tag id)`` to decode ``src -> tgt`` with ``model``: a trained
    pair, or a zero-shot direction between two of its languages (``directions.plan``: composed
    masks for a masked model); a baked package serves only the pairs it was baked for. Unknown or
    equal language codes are DataErrors naming the model's languages."""
    from jax_namnmt import directions

    if is_baked(model.config):  # baked for its pairs alone: no zero-shot direction
        directions.check_baked_direction(model.pairs, src, tgt, model.directory)
    direction = directions.check_direction(model.pairs, src, tgt, where=f"({model.directory})")
    plan = directions.plan(model, [direction])
    return plan.pair_ids[direction], plan.masks, plan.notes, model.vocab.tag_id(tgt)


@dataclass
class Translator:
    """Translates lines ``src -> tgt`` with ``model`` (a trained pair, or a zero-shot direction
    between two of its languages: ``directions.plan``, whose ``notes`` say so); ``long_lines`` is a
    ``segment`` policy; ``where`` names the input in warnings and errors (``FILE`` or ``stdin``);
    ``warn`` prints one."""

    model: Model
    src: str
    tgt: str
    long_lines: str = "split"
    where: str = "stdin"
    warn: Callable[[str], None] = _warn
    stats: dict = field(default_factory=dict)
    sampling: SampleSearch | None = None  # a sample a line instead of the beam search's best
    seed: int = 0  # with sampling: a line's draws depend on the seed and its line number only

    def __post_init__(self):
        if self.long_lines not in segment.LONG_LINE_POLICIES:
            raise DataError(f"--long-lines must be one of {', '.join(segment.LONG_LINE_POLICIES)}, "
                            f"got {self.long_lines!r}")
        self.pair, self.masks, self.notes, self.tag = resolve_direction(self.model, self.src, self.tgt)
        self.limit = source_limit(self.model.config)
        # the matrices in decode.weights' precision, converted once (the model keeps its float32 ones)
        self.params = convert_params(self.model.params, self.model.config.decode.weights)

    def _unknown_only(self, ids: Sequence[int]) -> bool:
        """Whether ``ids`` hold no piece but the unknown piece and white space."""
        vocab = self.model.vocab
        return UNK_ID in ids and all(i == UNK_ID or not vocab.decode([i]).strip() for i in set(ids))

    def plan(self, text: str, ids: list[int], number: int) -> segment.Plan | str:
        """The plan for input line ``number`` (1-based, for messages), cleaned to ``text`` and
        encoded to ``ids``, or the output itself (a string) when nothing is to be translated."""
        if not text:
            return ""
        if self._unknown_only(ids):
            self.warn(f"{self.where}:{number}: no piece of the vocabulary in this line (a script the model does "
                      "not know?); copied through untranslated")
            return segment.one_line(text)
        sentences = [ids]
        if len(ids) > self.limit and self.long_lines == "split":
            parts = segment.split_sentences(text)
            if len(parts) > 1:
                sentences = self.model.vocab.encode_batch(parts, num_threads=1)
        plan = segment.plan_line(sentences, self.limit, self.long_lines)
        if plan.tokens > self.limit:
            if self.long_lines == "error":
                raise DataError(f"{self.where}:{number}: {plan.tokens} subword tokens, longer than the "
                                f"{self.limit} this model was trained for; split the line, or pass "
                                "--long-lines split or truncate")
            if plan.truncated:
                how = "a sentence of it is" if self.long_lines == "split" else "it is"
                self.warn(f"{self.where}:{number}: {plan.tokens} subword tokens, longer than the {self.limit} "
                          f"this model was trained for, and {how} too long to split: {plan.truncated} tokens "
                          "cut (--long-lines)")
        return plan

    def _decode(self, lines: Sequence[str], first_number: int, nbest: int):
        """``(plans, owners, results)``: each line's plan (or its output string), the line each
        source piece belongs to, and ``translate_ids``' result for the pieces."""
        from jax_namnmt.decoding import translate_ids

        texts = [segment.clean_line(line).strip() for line in lines]
        encoded = self.model.vocab.encode_batch(texts)
        plans = [self.plan(text, ids, first_number + k) for k, (text, ids) in enumerate(zip(texts, encoded))]
        sources, owners, sample_ids = [], [], []
        for k, plan in enumerate(plans):
            if isinstance(plan, segment.Plan):
                for part, piece in enumerate(plan.pieces):
                    sources.append(np.asarray((self.tag, *piece, EOS_ID), np.int32))
                    owners.append(k)
                    sample_ids.append((self.seed, first_number + k, part))
        decode = self.model.config.decode
        results = translate_ids(self.params, self.model.config.model, self.masks, sources,
                                np.full(len(sources), self.pair, np.int32), decode, progress=None, bucket=True,
                                aot=True, before_compile=self.model.check, stats=self.stats, nbest=nbest,
                                sampling=self.sampling, sample_ids=np.asarray(sample_ids, np.int64).reshape(-1, 3))
        return plans, owners, results

    def translate(self, lines: Sequence[str], first_number: int = 1, progress=None) -> list[str]:
        """One output line (no line break in it) per line of ``lines``, in order."""
        plans, owners, ids = self._decode(lines, first_number, 0)
        hyps = self.model.vocab.decode_batch(ids) if ids else []
        parts: list[list[str]] = [[] for _ in lines]
        for owner, text in zip(owners, hyps):
            parts[owner].append(text)
        outputs = [segment.one_line(" ".join(parts[k]) if isinstance(plan, segment.Plan) else plan)
                   for k, plan in enumerate(plans)]
        if progress is not None:
            progress.update(len(lines))
        return outputs

    def translate_nbest(self, lines: Sequence[str], nbest: int, first_number: int = 1,
                        progress=None) -> list[list[Hypothesis]]:
        """The ``nbest`` best translations of every line of ``lines`` (at most ``decode.beam_size``),
        best first, as :class:`Hypothesis` (text, summed log-probability, search score). A line
        split into sentences (``long_lines``) gives as its k-th hypothesis its sentences' k-th ones
        joined, their log-probabilities summed and that sum divided by the length penalty of their
        summed lengths; a line not translated (empty, or copied through) gives one hypothesis of
        log-probability 0. Hypotheses the search did not find (fewer than ``nbest`` exist) are left
        out. With ``sampling``: ``nbest`` 1, each line's sample and its log-probability."""
        decode = self.model.config.decode
        check_nbest(nbest, decode.beam_size, self.sampling)
        plans, owners, results = self._decode(lines, first_number, nbest)
        if not results:
            return [[Hypothesis(plan, 0.0, 0.0)] for plan in plans]
        from jax_namnmt.model.beam_search import length_penalty_divisor

        def divisors(lengths):
            return np.asarray(length_penalty_divisor(np.asarray(lengths), decode.length_penalty, decode.penalty_form),
                              np.float64)

        width = max(t.shape[-1] for t, _ in results)  # batches' output limits differ
        tokens = np.stack([np.pad(t, ((0, 0), (0, width - t.shape[-1]))) for t, _ in results])  # [pieces, n, width]
        lengths = np.array([[hypothesis_length(h) for h in piece] for piece in tokens])
        log_probs = np.stack([s for _, s in results]).astype(np.float64)  # a sample's: its log-probability
        if self.sampling is None:  # the search's scores: log-probabilities over the length penalty
            log_probs = log_probs * divisors(np.maximum(lengths, 1))
        texts = self.model.vocab.decode_batch(list(tokens.reshape(-1, tokens.shape[-1])))
        # per line: its pieces' k-th hypotheses joined, log-probabilities and lengths summed
        line_texts = [[[] for _ in range(nbest)] for _ in lines]
        line_log_probs, line_lengths = np.zeros((len(lines), nbest)), np.zeros((len(lines), nbest), np.int64)
        for piece, owner in enumerate(owners):
            for k in range(nbest):
                line_texts[owner][k].append(texts[piece * nbest + k])
            line_log_probs[owner] += log_probs[piece]
            line_lengths[owner] += lengths[piece]
        line_scores = line_log_probs / divisors(np.maximum(line_lengths, 1))
        outputs = []
        for k, plan in enumerate(plans):
            if not isinstance(plan, segment.Plan):
                outputs.append([Hypothesis(plan, 0.0, 0.0)])
                continue
            entries = [Hypothesis(segment.one_line(" ".join(line_texts[k][j])), float(line_log_probs[k, j]),
                                  float(line_scores[k, j]))
                       for j in range(nbest) if np.isfinite(line_log_probs[k, j])]
            outputs.append(sorted(entries, key=lambda h: -h.score))
        if progress is not None:
            progress.update(len(lines))
        return outputs


def check_nbest(nbest: int, beam_size: int, sampling: SampleSearch | None) -> None:
    """A ConfigError unless ``nbest`` hypotheses a line can be had: 1 with sampling, else 1 to the beam size."""
    if sampling is not None and nbest != 1:
        raise ConfigError(f"--nbest must be 1 with --sampling (one sample a line; another --seed draws another), "
                          f"got {nbest}")
    if not 1 <= nbest <= beam_size:
        raise ConfigError(f"--nbest must be between 1 and the beam size ({beam_size}; --beam sets it), got {nbest}")


@dataclass(frozen=True)
class Hypothesis:
    """One translation of an n-best list: its text, its summed log-probability (natural log, EOS
    included) and its search score (that divided by the length penalty)."""

    text: str
    log_prob: float
    score: float


def hypothesis_length(tokens: np.ndarray) -> int:
    """Generated tokens of one hypothesis of ``translate_ids`` (its EOS included; zeros follow it)."""
    tokens = np.asarray(tokens)
    eos = np.flatnonzero(tokens == EOS_ID)
    if eos.size:
        return int(eos[0]) + 1
    filled = np.flatnonzero(tokens != 0)
    return int(filled[-1]) + 1 if filled.size else 0


def with_search(model: Model, beam: int | None = None, lenpen: float | None = None,
                weights: str | None = None) -> Model:
    """``model`` with its config's beam size, length penalty and weights' precision
    (``DecodeConfig.weights``) replaced where given."""
    decode = model.config.decode
    if weights is not None:
        decode = dataclasses.replace(decode, weights=check_weights(weights, "--weights"))
    if beam is not None:
        decode = dataclasses.replace(decode, beam_size=beam)
    if lenpen is not None:
        decode = dataclasses.replace(decode, length_penalty=lenpen)
    model.config = dataclasses.replace(model.config, decode=decode)
    return model
