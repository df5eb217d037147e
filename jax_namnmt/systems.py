"""The paper's systems (Table 1) as configs over one model and one trainer.

=============  ===========================================================================
individual     one bilingual model per pair (same architecture); params = the sum
multilingual   the pre-trained model trained on for the fine-tuning steps, no masks
ts             +TS: a cross-attention (and, by ``systems.ts_self_attn``, self-attention) per
               target language in every decoder layer; from scratch
adapter        +Adapter: a residual adapter per pair after every layer; from scratch
method_av      importance = |h| (absolute value), allocation, masked fine-tuning
method_te      importance = |h * dL/dh| (Taylor expansion), allocation, masked fine-tuning
expansion      +Expansion: a wider FFN (paper 2048 -> 3000), pre-trained on its own, then method_te
=============  ===========================================================================

Systems trained from scratch get the same number of updates as the pre-trained + fine-tuned
ones (``train.steps + finetune.steps``); each individual model gets that budget divided by the
number of pairs (so each sees about as many examples of its pair as the multilingual model does).
"""

from __future__ import annotations


import jax
import numpy as np

from jax_namnmt.config import Config
from jax_namnmt.errors import ConfigError
from jax_namnmt.model.transformer import init_params, target_language_table

SYSTEMS = ("individual", "multilingual", "ts", "adapter", "method_av", "method_te", "expansion")
FROM_SCRATCH = ("individual", "ts", "adapter", "expansion")  # need their own pre-training
IMPORTANCE = {"method_av": "absolute", "method_te": "taylor", "expansion": "taylor"}


def parse_systems(text: str) -> list[str]:
    """``all`` or a comma-separated list, in the paper's order; unknown names are named in the error."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if names == ["all"]:
        return list(SYSTEMS)
    unknown = [s for s in names if s not in SYSTEMS]
    if unknown or not names:
        raise ConfigError(f"--systems {text!r}: unknown system(s) {', '.join(unknown) or '(none given)'}; "
                          f"choose from all, {', '.join(SYSTEMS)}")
    return [s for s in SYSTEMS if s in names]


def scratch_steps(config: Config) -> int:
    """Updates of a system trained from scratch: as many as pre-training plus fine-tuning."""
    return config.train.steps + config.finetune.steps


def expansion_ffn_dim(config: Config) -> int:
    return config.systems.expansion_ffn_dim or round(config.model.ffn_dim * 3000 / 2048)


def expansion_config(config: Config) -> Config:
    """+Expansion's pre-training config: the FFN widened; then method_te over it with the usual schedule."""
    return config.with_sections(model={"ffn_dim": expansion_ffn_dim(config)})


def ts_config(config: Config) -> Config:
    table = target_language_table(config.data.pairs)
    return config.with_sections(model={"ts_target_of_pair": table, "ts_self_attn": config.systems.ts_self_attn},
                    train={"steps": scratch_steps(config)})


def adapter_config(config: Config) -> Config:
    return config.with_sections(model={"adapter_pairs": len(config.data.pairs), "adapter_dim": config.systems.adapter_dim},
                    train={"steps": scratch_steps(config)})


def individual_steps(config: Config) -> int:
    return config.systems.individual_steps or max(1, scratch_steps(config) // len(config.data.pairs))


def individual_config(config: Config, pair: str) -> Config:
    """The bilingual model of one pair (the joint vocabulary and the target tag are kept)."""
    return config.with_sections(data={"pairs": (pair,)}, train={"steps": individual_steps(config)})


# ----------------------------------------------------------------------------- parameter accounting (Para)


def count_params(params) -> int:
    """Number of parameters of a tree (arrays or ShapeDtypeStructs)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def param_count(config: Config) -> int:
    """Parameters of a run's model: the table's Para column (summed over a system's runs), from
    the shapes only (nothing is computed)."""
    return count_params(jax.eval_shape(lambda: init_params(config.model)))


def param_breakdown(params) -> dict[str, int]:
    """Parameter counts by kind: ``total``; ``adapter`` (the per-pair adapters of +Adapter);
    ``target_specific`` (all R copies of the per-target-language attention projections of +TS);
    ``shared`` (everything else, i.e. the plain model's parameters outside +TS's projections)."""
    counts = {"total": 0, "shared": 0, "target_specific": 0, "adapter": 0}
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [getattr(p, "key", str(p)) for p in path]
        n = int(np.prod(x.shape))
        if "adapter" in keys:
            kind = "adapter"
        elif keys[-2:-1] == ["dense"] and len(x.shape) == (3 if keys[-1] == "kernel" else 2):
            kind = "target_specific"  # a routed projection: [R, in, out] kernel, [R, out] bias
        else:
            kind = "shared"
        counts[kind] += n
        counts["total"] += n
    return counts
