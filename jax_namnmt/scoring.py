"""Forced decoding: the log-probability a model gives to given translations.

``Scorer.score`` returns, for every (source, target) line pair, the sum over the target's
subword tokens (its EOS included) of ``log p(token | source, previous tokens)``, natural log,
under the direction's mask (its trained pair's, or a zero-shot direction's composed one, as
``translate`` decodes it) and with dropout off. This is what fairseq's ``--score-reference``,
Marian's scorer and CTranslate2's ``score_batch`` give: for reranking n-best lists, filtering a
corpus, or comparing how well two models (a masked one and its baseline) explain a test set.

Each line pair is one row of a padded batch (no packing, so a row's result cannot depend on its
batch-mates); rows are sorted by length and each batch's two sides are as wide as its longest
sentence (source or target) rounded up to ``WIDTH_STEP``, one compiled program per width (all
1,000 lines of Multi30k test_2016_flickr de-en take 4). The per-token log-probabilities come from
``output_loss_by_segment`` with no label smoothing, chunked over tokens (no ``[tokens, vocab]``
array is kept).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_namnmt import segment
from jax_namnmt.config import ModelConfig
from jax_namnmt.data.vocab import BOS_ID, EOS_ID, PAD_ID
from jax_namnmt.errors import DataError
from jax_namnmt.inference import Model, resolve_direction, source_limit

WIDTH_STEP = 16  # a batch's two sides share one width, a multiple of this: one compiled program per width
BATCH_SENTENCES = 64


@functools.lru_cache(maxsize=None)
def make_scorer(config: ModelConfig):
    """``score(params, batch, masks) -> (log_prob [rows], tokens [rows])``: per row of a padded
    batch (``batch_rows``), the summed log-probability of its target tokens and their number."""
    from jax_namnmt.model.baked import module_for
    from jax_namnmt.training.loss import default_loss_chunk, output_loss_by_segment

    model = module_for(config)(config)
    chunk = default_loss_chunk()

    @jax.jit
    def score(params, batch, masks):
        hidden = model.apply({"params": params}, batch, masks, deterministic=True, return_hidden=True)
        rows, width = batch["tgt_labels"].shape
        row_of = jnp.broadcast_to(jnp.arange(rows, dtype=jnp.int32)[:, None], (rows, width)).reshape(-1)
        _, nll, tokens = output_loss_by_segment(
            hidden.reshape(-1, hidden.shape[-1]), params["embed"]["embedding"], batch["tgt_labels"].reshape(-1),
            (batch["tgt_segments"] > 0).reshape(-1), row_of, rows, 0.0, chunk, config.logits_dtype)
        return -nll, tokens

    return score


def batch_rows(sources: Sequence[np.ndarray], targets: Sequence[np.ndarray], pair_ids: np.ndarray,
               width_step: int = WIDTH_STEP, rows: int | None = None) -> dict[str, np.ndarray]:
    """A batch in the model's packed layout with one example a row: ``sources[i]`` (tag first,
    EOS last) and ``targets[i]`` (EOS last) in row ``i``, teacher-forced target inputs (BOS, then
    the target shifted). ``rows`` (at least ``len(sources)``) adds empty rows: one EOS on each
    side, scored and to be dropped. Both sides' width: the longest sentence rounded up to
    ``width_step``."""
    n = len(sources)
    rows = n if rows is None else rows
    if rows < n:
        raise ValueError(f"rows ({rows}) must be at least the number of examples ({n})")
    filler = np.asarray([EOS_ID], np.int32)
    sources = list(sources) + [filler] * (rows - n)
    targets = list(targets) + [filler] * (rows - n)
    pairs = np.concatenate([np.asarray(pair_ids, np.int32), np.zeros(rows - n, np.int32)])

    width = -(-max(len(s) for s in (*sources, *targets)) // width_step) * width_step

    def side(seqs):
        tokens = np.full((rows, width), PAD_ID, np.int32)
        for r, s in enumerate(seqs):
            tokens[r, :len(s)] = s
        segments = (np.arange(width)[None, :] < np.array([len(s) for s in seqs])[:, None]).astype(np.int32)
        positions = np.broadcast_to(np.arange(width, dtype=np.int32), (rows, width)).copy()
        return tokens, segments, positions, np.broadcast_to(pairs[:, None], (rows, width)).copy()

    src_tokens, src_segments, src_positions, src_pairs = side(sources)
    labels, tgt_segments, tgt_positions, tgt_pairs = side(targets)
    inputs = np.concatenate([np.full((rows, 1), BOS_ID, np.int32), labels[:, :-1]], axis=1) * tgt_segments
    return {"src_tokens": src_tokens, "src_segments": src_segments, "src_positions": src_positions,
            "src_pairs": src_pairs, "tgt_inputs": inputs, "tgt_labels": labels, "tgt_segments": tgt_segments,
            "tgt_positions": tgt_positions, "tgt_pairs": tgt_pairs}


def score_ids(params, config: ModelConfig, masks, sources: Sequence[np.ndarray], targets: Sequence[np.ndarray],
              pair_ids: np.ndarray, batch_sentences: int = BATCH_SENTENCES, progress=None
              ) -> tuple[np.ndarray, np.ndarray]:
    """``(log_prob float64 [N], tokens int64 [N])`` of every target given its source under its
    pair's masks (``pair_ids`` index ``masks``; None: a plain model). Batches of
    ``batch_sentences`` rows sorted by length; the result does not depend on the batching."""
    n = len(sources)
    if len(targets) != n or len(pair_ids) != n:
        raise ValueError(f"{n} sources, {len(targets)} targets and {len(pair_ids)} pair ids: one each per example")
    log_prob, tokens = np.zeros(n, np.float64), np.zeros(n, np.int64)
    if n == 0:
        return log_prob, tokens
    pair_ids = np.asarray(pair_ids, np.int32)
    order = np.argsort([-max(len(s), len(t)) for s, t in zip(sources, targets)], kind="stable")
    size = min(batch_sentences, n)
    scorer = make_scorer(config)
    for start in range(0, n, size):
        part = order[start:start + size]
        batch = batch_rows([sources[i] for i in part], [targets[i] for i in part], pair_ids[part], rows=size)
        lp, count = scorer(params, batch, masks)
        log_prob[part] = np.asarray(lp, np.float64)[:len(part)]
        tokens[part] = np.asarray(count).astype(np.int64)[:len(part)]
        if progress is not None:
            progress.update(len(part))
    return log_prob, tokens


@dataclass
class Scorer:
    """Scores translations ``src -> tgt`` with ``model`` (a trained pair, or a zero-shot direction
    between two of its languages, under the mask ``translate`` would use). ``where_src`` and
    ``where_tgt`` name the inputs in errors (``FILE``)."""

    model: Model
    src: str
    tgt: str
    where_src: str = "source"
    where_tgt: str = "target"
    notes: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self):
        self.pair, self.masks, self.notes, self.tag = resolve_direction(self.model, self.src, self.tgt)
        self.src_limit = source_limit(self.model.config)  # pieces, without the tag and EOS
        self.tgt_limit = self.src_limit + 1  # pieces, without EOS

    def encode(self, src_lines: Sequence[str], tgt_lines: Sequence[str], first_number: int = 1):
        """Token ids of each side (tag and EOS added); an empty line, or one longer than the model
        was trained for, is a DataError naming its file and line (a score of part of a line, or of
        nothing, would not be the line's)."""
        if len(src_lines) != len(tgt_lines):
            raise DataError(f"{self.where_src} has {len(src_lines)} lines but {self.where_tgt} has "
                            f"{len(tgt_lines)}: the two sides must be line-aligned")
        vocab = self.model.vocab
        sides = []
        for lines, where, limit in ((src_lines, self.where_src, self.src_limit),
                                    (tgt_lines, self.where_tgt, self.tgt_limit)):
            texts = [segment.clean_line(line).strip() for line in lines]
            for k, text in enumerate(texts):
                if not text:
                    raise DataError(f"{where}:{first_number + k}: empty line; there is nothing to score "
                                    "(remove the line from both sides)")
            encoded = vocab.encode_batch(texts)
            for k, ids in enumerate(encoded):
                if len(ids) > limit:
                    raise DataError(f"{where}:{first_number + k}: {len(ids)} subword tokens, longer than the "
                                    f"{limit} this model was trained for; split the line on both sides")
            sides.append(encoded)
        sources = [np.asarray((self.tag, *ids, EOS_ID), np.int32) for ids in sides[0]]
        targets = [np.asarray((*ids, EOS_ID), np.int32) for ids in sides[1]]
        return sources, targets

    def score(self, src_lines: Sequence[str], tgt_lines: Sequence[str], first_number: int = 1,
              progress=None) -> tuple[np.ndarray, np.ndarray]:
        """``(log_prob [N], tokens [N])``: each target line's summed log-probability (natural log,
        its EOS included) given its source line, and its number of subword tokens (EOS included)."""
        sources, targets = self.encode(src_lines, tgt_lines, first_number)
        self.model.check()
        return score_ids(self.model.params, self.model.config.model, self.masks, sources, targets,
                         np.full(len(sources), self.pair, np.int32), progress=progress)
