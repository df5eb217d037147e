"""Which directions a model can translate, and the pair ids and masks to decode them with.

A model translates between its languages (those of its trained pairs). A trained pair decodes
under its own mask row; any other direction between two of its languages is *zero-shot*: the
unmasked model only needs the target tag, a masked model gets a mask row composed from the
trained pairs (``method/zero_shot.py``, ``method.zero_shot_masks``). A code that is not one of
the model's languages, or the same language on both sides, is an error naming the languages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from jax_namnmt.errors import DataError
from jax_namnmt.method.masks import to_model_masks
from jax_namnmt.method.zero_shot import extend_masks, languages, split_direction, zero_shot_directions


@dataclass(frozen=True)
class DecodePlan:
    """Pair ids per direction and the model masks they index (None: the plain model)."""

    pair_ids: dict[str, int]
    masks: dict | None
    zero_shot: tuple[str, ...]
    notes: tuple[str, ...]


def check_direction(pairs: Sequence[str], src: str, tgt: str, where: str = "") -> str:
    langs = languages(pairs)
    suffix = f" {where}" if where else ""
    for side, code in (("source", src), ("target", tgt)):
        if code not in langs:
            raise DataError(f"{side} language {code!r} is not one of the model's languages{suffix} "
                            f"({', '.join(langs)})")
    if src == tgt:
        raise DataError(f"source and target are both {src!r}: pick two different languages of "
                        f"{', '.join(langs)}")
    return f"{src}-{tgt}"


def check_baked_direction(pairs: Sequence[str], src: str, tgt: str, where) -> str:
    """``src-tgt`` if a baked package (``where``) serves it: it was baked for ``pairs`` alone (their
    masks folded into its weights), so it has no other direction, zero-shot or not."""
    direction = f"{src}-{tgt}"
    if direction not in pairs:
        raise DataError(f"{where} is baked for {', '.join(pairs)}, not {direction}: a baked package translates "
                        "only the directions it was baked for (bake the masked run again for another)")
    return direction


def parse_zero_shot(spec: str, pairs: Sequence[str]) -> list[str]:
    """``decode.zero_shot``: "auto" (every untrained direction between a language some pair reads
    and one some pair writes), "none", or a comma-separated list of directions."""
    spec = spec.strip()
    if spec == "auto":
        return zero_shot_directions(pairs)
    if spec in ("", "none"):
        return []
    out = []
    for item in spec.split(","):
        try:
            src, tgt = split_direction(item.strip())
        except ValueError as e:
            raise DataError(f"decode.zero_shot: {e}") from None
        direction = check_direction(pairs, src, tgt, where="(decode.zero_shot)")
        if direction in pairs:
            raise DataError(f"decode.zero_shot: {direction} is a trained pair of this model, not zero-shot")
        out.append(direction)
    return out


def plan(run, directions: Sequence[str]) -> DecodePlan:
    """Pair ids and masks to decode ``directions`` (trained or zero-shot) of ``run`` in one batch."""
    pairs, model = run.pairs, run.config.model
    directions = list(dict.fromkeys(directions))
    for direction in directions:
        check_direction(pairs, *split_direction(direction), where=f"({run.directory})")
    zero = [d for d in directions if d not in pairs]
    if zero and model.adapter_pairs:
        raise DataError(f"{', '.join(zero)}: zero-shot directions need a model without per-pair adapters "
                        f"(+Adapter has adapters for {', '.join(pairs)} only)")
    ids = {d: pairs.index(d) for d in directions if d in pairs}
    if run.masks is None:
        for d in zero:  # any row: the plain model reads nothing per pair but +TS's target-language route
            tgt = split_direction(d)[1]
            ids[d] = next((i for i, p in enumerate(pairs) if split_direction(p)[1] == tgt), 0)
        notes = [f"{d} is zero-shot (not a trained pair of this model)" for d in zero]
        return DecodePlan(ids, None, tuple(zero), tuple(notes))
    if zero and model.ts_target_of_pair:
        raise DataError(f"{', '.join(zero)}: zero-shot directions of a masked +TS model are not supported")
    how = run.config.method.zero_shot_masks
    masks, extended, notes = extend_masks(run.masks, pairs, zero, how)
    ids.update({d: extended.index(d) for d in zero})
    notes = [f"{d} is zero-shot: its mask is the {how} of the trained pairs sharing its source (encoder) "
             f"and its target (decoder)" for d in zero] + notes
    return DecodePlan(ids, to_model_masks(masks), tuple(zero), tuple(notes))


def pair_ids(plan_: DecodePlan, directions: Sequence[str]) -> np.ndarray:
    return np.asarray([plan_.pair_ids[d] for d in directions], np.int32)
