"""Masks for directions the model was never trained on (zero-shot), composed from trained pairs.

A multilingual model trained on de-en, en-de, cs-en, en-cs, ... can be asked for de-cs: the
unmasked model just needs the ``<2cs>`` tag, but a masked model has no mask row for de-cs. The
source side of a direction is read by the encoder (and by nothing else), its target side is
written by the decoder, so a composed mask takes

- every encoder module from the trained pairs that share the direction's **source** language,
- every decoder module (cross-attention included) from the trained pairs that share its
  **target** language,

and combines the group's rows by ``how``:

- ``union``: a neuron any pair of the group uses (the group's general and specific neurons);
- ``intersection``: a neuron every pair of the group uses;
- ``general``: only the neurons every trained pair uses (ignores the groups).

A side with no trained pair sharing the language (e.g. de-fr in a one-to-many model from
English, where no pair reads German) falls back to the general neurons on that side; the
returned note says so. Numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from jax_namnmt.method.masks import parse_name

COMPOSITIONS = ("union", "intersection", "general")


def split_direction(direction: str) -> tuple[str, str]:
    src, sep, tgt = direction.partition("-")
    if not sep or not src or not tgt or "-" in tgt:
        raise ValueError(f"direction {direction!r} is not SRC-TGT")
    return src, tgt


def languages(pairs: Sequence[str]) -> list[str]:
    """The languages of ``pairs``, in order of first appearance."""
    seen: dict[str, None] = {}
    for pair in pairs:
        for lang in split_direction(pair):
            seen.setdefault(lang, None)
    return list(seen)


def zero_shot_directions(pairs: Sequence[str]) -> list[str]:
    """Untrained directions whose source some pair reads and whose target some pair writes:
    on Multi30k's 8 directions, de-cs, cs-de, fr-cs and cs-fr."""
    sources = {split_direction(p)[0] for p in pairs}
    targets = {split_direction(p)[1] for p in pairs}
    langs = languages(pairs)
    return [f"{s}-{t}" for s in langs for t in langs
            if s != t and s in sources and t in targets and f"{s}-{t}" not in pairs]


def _combine(rows: np.ndarray, how: str) -> np.ndarray:
    return rows.any(axis=0) if how == "union" else rows.all(axis=0)


def compose_mask(masks: Mapping[str, np.ndarray], pairs: Sequence[str], direction: str,
                 how: str = "union") -> tuple[dict[str, np.ndarray], list[str]]:
    """``({module: bool [F]}, notes)``: the mask row of ``direction`` (see the module docstring)."""
    if how not in COMPOSITIONS:
        raise ValueError(f"zero-shot composition must be one of {', '.join(COMPOSITIONS)}; got {how!r}")
    src, tgt = split_direction(direction)
    pairs = list(pairs)
    groups = {
        "encoder": [i for i, p in enumerate(pairs) if split_direction(p)[0] == src],
        "decoder": [i for i, p in enumerate(pairs) if split_direction(p)[1] == tgt],
    }
    notes = []
    for stack, language, side in (("encoder", src, "source"), ("decoder", tgt, "target")):
        if how != "general" and not groups[stack]:
            notes.append(f"no trained pair has {language} as its {side}: the {stack} keeps the general neurons only")
    composed = {}
    for name, mask in masks.items():
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 2 or mask.shape[0] != len(pairs):
            raise ValueError(f"mask of {name} has shape {mask.shape}, expected [{len(pairs)}, F]")
        group = groups[parse_name(name).stack]
        if how == "general" or not group:
            composed[name] = mask.all(axis=0)
        else:
            composed[name] = _combine(mask[group], how)
    return composed, notes


def extend_masks(masks: Mapping[str, np.ndarray], pairs: Sequence[str], directions: Sequence[str],
                 how: str = "union") -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """The mask table with one composed row appended per direction: ``(masks [P + D, F], pairs +
    directions, notes)``; the trained pairs' rows are unchanged."""
    rows, notes = [], []
    for direction in directions:
        if direction in pairs:
            raise ValueError(f"{direction} is a trained pair, not a zero-shot direction")
        row, why = compose_mask(masks, pairs, direction, how)
        rows.append(row)
        notes.extend(f"{direction}: {n}" for n in why)
    extended = {name: np.concatenate([np.asarray(m, bool)] + [r[name][None] for r in rows]) for name, m in masks.items()}
    return extended, list(pairs) + list(directions), notes
