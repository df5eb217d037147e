"""Configs as data: frozen dataclasses, loaded from ``configs/*.py`` or JSON, typo-proof.

A config file is a Python file defining ``get_config() -> Config``. Any field can be
overridden from the command line with ``--set section.field=value`` (parsed as JSON when
possible, else as a string). Unknown fields and wrong types raise ``ConfigError`` naming
the field.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from jax_namnmt.data.sampling import check_temperature
from jax_namnmt.errors import ConfigError

LAYOUTS = ("auto", "compact", "rows")  # data.layout (see jax_namnmt/data/batching.py)

IMPORTANCE_LOSSES = ("label_smoothed", "cross_entropy")  # method.importance_loss
MODULE_SETS = ("all", "no_embedding_inputs")  # method.modules
DECODE_WEIGHTS = ("float32", "bfloat16", "int8")  # decode.weights (model/low_precision.py)
NORMALIZATIONS = ("none", "pair_mean")  # method.normalize

MANY_TO_MANY_8 = ("de-en", "en-de", "fr-en", "en-fr", "cs-en", "en-cs", "de-fr", "fr-de")


@dataclass(frozen=True)
class ModelConfig:
    """Transformer shape (fairseq transformer base at paper scale)."""

    vocab_size: int = 8000
    d_model: int = 256
    num_heads: int = 4
    ffn_dim: int = 1024
    enc_layers: int = 3
    dec_layers: int = 3
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    pre_norm: bool = False  # post-norm like fairseq's transformer base by default
    max_positions: int = 256
    dtype: str = "float32"  # compute dtype: float32 or bfloat16 (params stay float32)
    # "xla": attention as XLA einsums; "cudnn": training/scoring attention as cuDNN's fused kernel
    # on GPUs (bfloat16, no attention dropout); CPUs and decoding keep the einsums either way.
    attention_kernel: str = "xla"
    # The loss's logits (training, scoring) as the output layer's matmul writes them: "float32", or
    # "bfloat16" (half the memory traffic of the [tokens, vocab] logits; softmax and loss still
    # computed in float32). Decoding's logits stay float32.
    logits_dtype: str = "float32"
    # +TS (Blackwood et al. 2018): target-language-specific decoder attention. Entry i is the
    # target-language id of pair i (data.pairs order); () = off. Every decoder layer then holds
    # max+1 copies of its cross-attention q/k/v/out projections, one per target language, and
    # each token uses its example's copy (pairs mix freely within a batch).
    ts_target_of_pair: tuple[int, ...] = ()
    ts_self_attn: bool = False  # +TS also for the decoder self-attention
    # +Adapter (Bapna & Firat 2019): one residual bottleneck adapter per pair after every encoder
    # and decoder layer (LN, down to adapter_dim, ReLU, up, add), each token using its pair's.
    adapter_pairs: int = 0  # number of pairs (= len(data.pairs)); 0 = off
    adapter_dim: int = 128
    # How each token finds its pair's mask row (same 0/1 rows each way): "onehot" (a one-hot
    # matmul; its cost grows with the number of pairs), "gather" (fuses into the multiply on
    # accelerators), "bits" (the rows packed 32 neurons a word, gathered and unpacked: CPU), "auto"
    # (bits on CPU, gather elsewhere, decided when a step is traced; under auto,
    # $JAX_NAMNMT_MASK_LOOKUP=onehot|gather|bits picks one). model/transformer.py: mask_lookup_method.
    mask_lookup: str = "auto"

    @property
    def ts_languages(self) -> int:
        """Number of target-language-specific attention copies (0: +TS off)."""
        return max(self.ts_target_of_pair) + 1 if self.ts_target_of_pair else 0

    def validate(self, where: str = "model") -> "ModelConfig":
        """Field checks of the model alone (``Config.validate`` adds those across sections)."""
        sizes = ("vocab_size", "d_model", "num_heads", "ffn_dim", "max_positions", "adapter_dim")
        for name in sizes:
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name} = {getattr(self, name)!r}: must be at least 1")
        for name in ("enc_layers", "dec_layers", "adapter_pairs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name} = {getattr(self, name)!r}: must not be negative")
        bad = [t for t in self.ts_target_of_pair if isinstance(t, bool) or not isinstance(t, int) or t < 0]
        if bad:
            raise ConfigError(f"{where}.ts_target_of_pair = {list(self.ts_target_of_pair)!r}: entries must be "
                              "target-language ids >= 0 (one per pair)")
        choices = (("dtype", ("float32", "bfloat16")), ("attention_kernel", ("xla", "cudnn")),
                   ("logits_dtype", ("float32", "bfloat16")), ("mask_lookup", ("auto", "onehot", "gather", "bits")))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{where}.{name} = {getattr(self, name)!r}: must be one of {', '.join(allowed)}")
        if self.attention_kernel == "cudnn":
            head_dim = self.d_model // self.num_heads
            needs = ((self.dtype != "bfloat16", "a bfloat16 compute dtype"),
                     (self.attention_dropout > 0, f"{where}.attention_dropout = 0"),
                     (head_dim % 8 or head_dim > 128,
                      "a head size (d_model / num_heads) that is a multiple of 8 and at most 128"))
            for unmet, why in needs:
                if unmet:
                    raise ConfigError(f"{where}.attention_kernel = 'cudnn' needs {why} "
                                      f"({where}.dtype = {self.dtype!r}, head size {head_dim})")
        if self.ts_self_attn and not self.ts_target_of_pair:
            raise ConfigError(f"{where}.ts_self_attn needs {where}.ts_target_of_pair (+TS is off without it)")
        return self


@dataclass(frozen=True)
class DataConfig:
    """Where the corpus is and how it is cleaned, tokenized and batched."""

    data_dir: str = ""  # fairseq layout; empty = the embedded Multi30k (built on the fly)
    pairs: tuple[str, ...] = MANY_TO_MANY_8
    vocab_size: int = 8000
    spm_model_type: str = "unigram"
    spm_max_sentences: int = 200000
    max_len: int = 128  # subword tokens per side, tag and EOS included
    overlong: str = "drop"  # drop (and count) or fail
    empty_lines: str = "drop"  # drop (and count) or fail
    train_max_lines: int = 0  # 0 = all
    src_row_len: int = 64  # packed row lengths (one jit shape)
    tgt_row_len: int = 64
    # training batches: "compact" (projections, norms and loss on real tokens only, attention on
    # the packed rows; one device), "rows" (everything on the packed rows), "auto" (compact on
    # one CPU device, rows on accelerators and meshes)
    layout: str = "auto"
    # Sampling across pairs (training batches): pair m is drawn with probability proportional to
    # n_m ** (1 / T), n_m its training examples; 1 = proportional (each example once an epoch),
    # larger = flatter (5 is usual for unbalanced corpora); see jax_namnmt/data/sampling.py
    sampling_temperature: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """Pre-training (and, with FinetuneConfig's overrides, fine-tuning)."""

    steps: int = 1000
    tokens_per_batch: int = 4096  # target tokens (rows x tgt_row_len)
    learning_rate: float = 5e-4
    warmup_steps: int = 4000
    warmup_init_lr: float = 1e-7
    adam_b1: float = 0.9
    adam_b2: float = 0.98
    adam_eps: float = 1e-9
    clip_norm: float = 0.0  # 0 = no clipping (fairseq default)
    label_smoothing: float = 0.1
    seed: int = 1
    eval_every: int = 500
    save_every: int = 500
    log_every: int = 50
    keep_checkpoints: int = 2
    valid_max_lines: int = 0  # per pair, for validation loss; 0 = all
    max_bad_steps: int = 5  # consecutive skipped (non-finite loss/gradient) updates before training stops
    # early stopping (fairseq's --patience): stop once the validation NLL has not improved for this
    # many validations in a row (0 = never); fine-tuning counts its step-0 validation
    patience: int = 0
    # keep the checkpoint of the lowest validation NLL in <out>/best/, a run directory of its own
    # (fairseq's checkpoint_best.pt): translate --checkpoint <out>/best
    keep_best: bool = False


@dataclass(frozen=True)
class FinetuneConfig:
    """Masked fine-tuning from the pre-trained model, with a fresh optimizer."""

    steps: int = 1000
    learning_rate: float = 1e-4
    warmup_steps: int = 4000
    warmup_init_lr: float = 1e-7
    eval_every: int = 0  # validation (loss, NLL per pair) every this many steps; 0 = train.eval_every


@dataclass(frozen=True)
class MethodConfig:
    """Importance scoring and neuron allocation."""

    importance: str = "taylor"  # taylor | absolute
    importance_max_lines: int = 0  # per pair from the validation split; 0 = all
    importance_tokens_per_batch: int = 4096
    importance_split: str = "valid"  # the split importance is scored on (reproduce: a held-out part of val)
    # The loss whose gradient Taylor importance uses: "label_smoothed" (the training loss) or
    # "cross_entropy" (plain NLL, as the original code's scoring script: it passes no --criterion)
    importance_loss: str = "label_smoothed"
    # Which projections are masked: "all" (the paper's words) or "no_embedding_inputs" (the original
    # code: the first layer's self-attention q/k/v, which read the token embeddings, stay shared)
    modules: str = "all"
    # Per-pair normalisation of importance before allocation: "none" (paper and original code) or
    # "pair_mean" (each pair's scores divided by their mean over the module, so pairs with small
    # gradients everywhere compete on equal terms; beyond the paper)
    normalize: str = "none"
    rho: float = 0.9
    k: float = 0.7
    variant: str = "pair"  # pair | source | target | separate
    # The mask of a direction no pair was trained on (zero-shot, method/zero_shot.py): the encoder from
    # the pairs sharing its source, the decoder from those sharing its target, combined by
    # "union" | "intersection"; or "general" (the neurons every pair uses)
    zero_shot_masks: str = "union"


@dataclass(frozen=True)
class DecodeConfig:
    beam_size: int = 4
    length_penalty: float = 0.6
    penalty_form: str = "fairseq"  # fairseq: /len^a ; gnmt: /((5+len)/6)^a
    stop_early: str = "fairseq"  # fairseq: a sentence stops with beam finished hypotheses; exact: bound-based
    max_len_a: float = 1.2  # max output tokens = a * source tokens + b
    max_len_b: int = 10
    min_len: int = 1  # EOS is banned before this many tokens (fairseq: 1, so no empty output)
    batch_sentences: int = 128
    # the matrices' precision while decoding (model/low_precision.py): float32, bfloat16 (~1.4x the
    # sentences/s on an AVX512-BF16 CPU) or int8 (per-feature scales; dequantized to bfloat16 once a search)
    weights: str = "float32"
    test_split: str = "test"
    test_max_lines: int = 0  # per pair; 0 = all
    # zero-shot directions evaluate and pipeline also score: "auto" (every untrained direction from a
    # language some pair reads to one some pair writes, if the corpus has it), "none", or "de-cs,cs-de"
    zero_shot: str = "auto"


@dataclass(frozen=True)
class SampleSearch:
    """Decoding by sampling instead of beam search (``translate --sampling``;
    ``model/beam_search.py: sample_search``): log-probabilities divided by ``temperature``, cut to
    the ``topk`` most likely tokens (0: the whole vocabulary). The seed is not part of it (it is an
    input of the compiled search, so another seed compiles nothing)."""

    temperature: float = 1.0
    topk: int = 0

    def __post_init__(self):
        if not self.temperature > 0:
            raise ConfigError(f"--temperature must be positive, got {self.temperature}")
        if self.topk < 0:
            raise ConfigError(f"--sampling-topk must be 0 (the whole vocabulary) or positive, got {self.topk}")


@dataclass(frozen=True)
class SystemsConfig:
    """The paper's comparison systems (``pipeline --systems``)."""

    individual_steps: int = 0  # steps of each bilingual model; 0 = (train.steps + finetune.steps) / pairs
    expansion_ffn_dim: int = 0  # +Expansion's FFN size; 0 = model.ffn_dim * 3000 / 2048 (the paper's 2048 -> 3000)
    adapter_dim: int = 128  # +Adapter bottleneck (Bapna and Firat 2019)
    ts_self_attn: bool = False  # +TS: also a self-attention per target language (cross-attention always)


@dataclass(frozen=True)
class ReproduceConfig:
    """The controlled reproduction (``python -m jax_namnmt.reproduce``; see that module)."""

    settings: tuple[str, ...] = ("many_to_many", "one_to_many")
    many_to_many_pairs: tuple[str, ...] = MANY_TO_MANY_8
    one_to_many_pairs: tuple[str, ...] = ("en-de", "en-fr", "en-cs")
    # the multi-way corpus: one {split}.{lang}.gz file per split and language, all line-aligned
    # ("" = the embedded Multi30k); corpus_splits maps train, valid and test to its split names
    corpus: str = ""
    corpus_splits: tuple[str, ...] = ("train=train", "valid=val", "test=test_2016_flickr")
    seeds: tuple[int, ...] = (1, 2, 3)  # fine-tuning seeds (data order and dropout)
    # multilingual (the equal-steps control), method_te, method_av, random (the chosen masks' counts,
    # drawn at random), k0 (method_te's masks with k = 0: every pair every neuron)
    systems: tuple[str, ...] = ("multilingual", "method_te", "method_av", "random")
    one_seed_systems: tuple[str, ...] = ()  # systems run with the first seed only (budget)
    skip: tuple[str, ...] = ()  # "setting:system" entries left out (budget), e.g. "one_to_many:method_av"
    importance_lines: int = 500  # the first N val lines per pair score importance; the rest choose and curve
    # the start model is trained on (plain, all the setting's pairs) until the validation NLL improves
    # by less than converge_min_delta for converge_patience evaluations in a row, every converge_eval_every
    converge_eval_every: int = 50
    converge_patience: int = 2
    converge_min_delta: float = 0.002
    converge_max_steps: int = 1000
    # choices made on the validation part (step-0 masked NLL for the scoring choices, NLL after
    # fine-tuning for rho/k); "rho/k" strings
    rho_k: tuple[str, ...] = ("0.9/0.7", "0.7/0.9")
    importance_losses: tuple[str, ...] = ("label_smoothed", "cross_entropy")
    normalizations: tuple[str, ...] = ("none", "pair_mean")
    module_sets: tuple[str, ...] = ("all", "no_embedding_inputs")
    bootstrap_samples: int = 1000
    out_dir: str = "docs"  # results.md, results.json and figures/


def corpus_splits(items) -> dict[str, str]:
    """``reproduce.corpus_splits`` entries as {train, valid, test: the corpus's split name}."""
    try:
        splits = dict(item.split("=", 1) for item in items)
    except ValueError:
        splits = {}
    if sorted(splits) != ["test", "train", "valid"] or not all(splits.values()):
        raise ConfigError(f"reproduce.corpus_splits = {list(items)!r}: give train=NAME, valid=NAME and "
                          "test=NAME, each once (the corpus's split names)")
    return splits


MESH_AXES = ("data", "fsdp", "tensor")  # the named axes of the device mesh, outermost first

# Logical axis name -> mesh axes ("+"-joined; empty = replicated). Kernels and activations of the
# model are annotated with the logical names (model/transformer.py); parallel.py maps them.
DEFAULT_AXIS_RULES = (
    "batch=data+fsdp",  # batch rows of inputs and activations
    "vocab=tensor",  # embedding rows, logits
    "embed=fsdp",  # the model dimension of kernels, biases and the embedding
    "heads=tensor",  # attention heads: q/k/v outputs, the out projection's input
    "mlp=tensor",  # the FFN hidden dimension
    "head_dim=",
    "length=",
    "act_embed=",  # the model dimension of activations (replicated)
    "routes=",  # +TS / +Adapter copies
    "adapter=",  # the adapter bottleneck
)


@dataclass(frozen=True)
class ParallelConfig:
    """Sharding across devices and hosts (see jax_namnmt/parallel.py).

    ``mesh``: ``"data=2,fsdp=2,tensor=2"``; an axis left out has size 1, except ``data``, which
    takes the devices the others leave (so ``""`` puts every device on ``data``, and
    ``"tensor=2"`` on 8 devices is data=4, tensor=2). The product must be the device count.
    ``rules``: ``logical=mesh_axis[+mesh_axis]`` entries (see ``DEFAULT_AXIS_RULES``).
    Multi-host: ``coordinator_address`` (``host:port`` of process 0, or ``auto`` for the cluster
    detection of ``jax.distributed.initialize``: SLURM, Open MPI, ...), ``num_processes`` and
    ``process_id``; each falls back to the environment (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``); with no coordinator it is a single process.
    """

    mesh: str = ""
    rules: tuple[str, ...] = DEFAULT_AXIS_RULES
    coordinator_address: str = ""
    num_processes: int = 0  # 0 = JAX_NUM_PROCESSES (or auto-detected)
    process_id: int = -1  # -1 = JAX_PROCESS_ID (or auto-detected)

    def mesh_axes(self, where: str = "parallel.mesh") -> dict[str, int]:
        """The axes given in ``mesh`` (``{"data": 2, "tensor": 2}``); syntax checked, no devices."""
        axes: dict[str, int] = {}
        for item in (part.strip() for part in self.mesh.split(",")):
            if not item:
                continue
            name, eq, size = item.partition("=")
            name = name.strip()
            if not eq or name not in MESH_AXES:
                raise ConfigError(f"{where} = {self.mesh!r}: expected axis=size entries with the axes "
                                  f"{', '.join(MESH_AXES)}, e.g. data=2,tensor=2")
            if name in axes:
                raise ConfigError(f"{where} = {self.mesh!r}: axis {name!r} given twice")
            try:
                axes[name] = int(size)
            except ValueError:
                raise ConfigError(f"{where} = {self.mesh!r}: the size of {name!r} must be an integer") from None
            if axes[name] < 1:
                raise ConfigError(f"{where} = {self.mesh!r}: the size of {name!r} must be at least 1")
        return axes

    def axis_rules(self, where: str = "parallel.rules") -> tuple[tuple[str, Any], ...]:
        """``rules`` as Flax logical axis rules: ``(("batch", ("data", "fsdp")), ("vocab", "tensor"), ...)``."""
        out, seen = [], set()
        for rule in self.rules:
            name, eq, axes = rule.partition("=")
            name = name.strip()
            names = tuple(a.strip() for a in axes.split("+") if a.strip())
            if not eq or not name or any(a not in MESH_AXES for a in names):
                raise ConfigError(f"{where}: bad rule {rule!r}: expected logical=axis[+axis] with the mesh axes "
                                  f"{', '.join(MESH_AXES)} (nothing after = replicates), e.g. embed=fsdp")
            if name in seen:
                raise ConfigError(f"{where}: logical axis {name!r} has two rules")
            seen.add(name)
            out.append((name, None if not names else names[0] if len(names) == 1 else names))
        return tuple(out)

    def validate(self, where: str = "parallel") -> "ParallelConfig":
        self.mesh_axes(f"{where}.mesh")
        self.axis_rules(f"{where}.rules")
        if self.num_processes < 0:
            raise ConfigError(f"{where}.num_processes = {self.num_processes}: must be >= 0 (0 = from the environment)")
        if self.process_id < -1 or (self.num_processes and self.process_id >= self.num_processes):
            raise ConfigError(f"{where}.process_id = {self.process_id}: must lie in [0, num_processes) "
                              "(-1 = from the environment)")
        return self


@dataclass(frozen=True)
class Config:
    name: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    systems: SystemsConfig = field(default_factory=SystemsConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    reproduce: ReproduceConfig = field(default_factory=ReproduceConfig)

    def with_sections(self, **sections: Mapping[str, Any]) -> "Config":
        """A validated copy with fields of some sections replaced: ``with_sections(train={"seed": 2})``."""
        return dataclasses.replace(self, **{name: dataclasses.replace(getattr(self, name), **fields)
                                            for name, fields in sections.items()}).validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "config") -> "Config":
        return _build(cls, data, where)

    def override(self, assignments: list[str]) -> "Config":
        """Apply ``section.field=value`` assignments (from ``--set``)."""
        data = self.to_dict()
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: expected section.field=value")
            key, raw = item.split("=", 1)
            parts = key.strip().split(".")
            node = data
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"--set {item!r}: unknown config section {part!r}")
                node = node[part]
            if parts[-1] not in node:
                raise ConfigError(
                    f"--set {item!r}: unknown config field {key!r}; "
                    f"fields here: {', '.join(sorted(node))}"
                )
            node[parts[-1]] = _parse_value(raw)
        return Config.from_dict(data, where="--set")

    def validate(self) -> "Config":
        checks = [
            ("data.overlong", self.data.overlong, ("drop", "fail")),
            ("data.empty_lines", self.data.empty_lines, ("drop", "fail")),
            ("method.importance", self.method.importance, ("taylor", "absolute")),
            ("method.variant", self.method.variant, ("pair", "source", "target", "separate")),
            ("method.importance_loss", self.method.importance_loss, IMPORTANCE_LOSSES),
            ("method.modules", self.method.modules, MODULE_SETS),
            ("method.normalize", self.method.normalize, NORMALIZATIONS),
            ("method.zero_shot_masks", self.method.zero_shot_masks, ("union", "intersection", "general")),
            ("decode.penalty_form", self.decode.penalty_form, ("fairseq", "gnmt")),
            ("decode.stop_early", self.decode.stop_early, ("fairseq", "exact")),
            ("decode.weights", self.decode.weights, DECODE_WEIGHTS),
        ]
        for name, value, allowed in checks:
            if value not in allowed:
                raise ConfigError(f"{name} = {value!r}: must be one of {', '.join(allowed)}")
        for name in ("individual_steps", "expansion_ffn_dim"):
            if getattr(self.systems, name) < 0:
                raise ConfigError(f"systems.{name} must be >= 0 (0 = the default)")
        if self.systems.adapter_dim < 1:
            raise ConfigError("systems.adapter_dim must be at least 1")
        if self.finetune.eval_every < 0:
            raise ConfigError("finetune.eval_every must be >= 0 (0 = train.eval_every)")
        if self.train.max_bad_steps < 1:
            raise ConfigError("train.max_bad_steps must be at least 1")
        if self.train.patience < 0:
            raise ConfigError("train.patience must be >= 0 (0 = no early stopping)")
        self.model.validate("model")
        self.parallel.validate("parallel")
        num_pairs = len(self.data.pairs)
        if self.model.ts_target_of_pair and len(self.model.ts_target_of_pair) != num_pairs:
            raise ConfigError(f"model.ts_target_of_pair has {len(self.model.ts_target_of_pair)} entries: "
                              f"needs one per pair of data.pairs ({num_pairs})")
        if self.model.adapter_pairs and self.model.adapter_pairs != num_pairs:
            raise ConfigError(f"model.adapter_pairs = {self.model.adapter_pairs}: must equal the number of "
                              f"pairs in data.pairs ({num_pairs}), or 0 for no adapters")
        if self.model.d_model % self.model.num_heads:
            raise ConfigError("model.d_model must be divisible by model.num_heads")
        if not 0.0 <= self.method.rho <= 1.0 or not 0.0 <= self.method.k <= 1.0:
            raise ConfigError("method.rho and method.k must lie in [0, 1]")
        if self.data.max_len > min(self.data.src_row_len, self.data.tgt_row_len):
            raise ConfigError(
                "data.max_len must not exceed data.src_row_len and data.tgt_row_len "
                "(a sentence must fit in one packed row)"
            )
        odd = [f"data.{n} = {getattr(self.data, n)}" for n in ("src_row_len", "tgt_row_len")
               if getattr(self.data, n) % 2]
        if self.model.attention_kernel == "cudnn" and odd:
            raise ConfigError(f"model.attention_kernel = 'cudnn' trains on rows of an even length: {', '.join(odd)}")
        check_temperature(self.data.sampling_temperature, "data.sampling_temperature")
        if self.data.layout not in LAYOUTS:
            raise ConfigError(f"data.layout must be one of {LAYOUTS}, not {self.data.layout!r}")
        if self.data.max_len > self.model.max_positions:
            raise ConfigError("data.max_len must not exceed model.max_positions")
        if self.model.vocab_size != self.data.vocab_size:
            raise ConfigError("model.vocab_size must equal data.vocab_size")
        return self


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw.strip()


def _build(cls, data: Mapping[str, Any], where: str):
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(unknown)} in {cls.__name__}; "
            f"known fields: {', '.join(sorted(known))}"
        )
    values = {}
    for name, value in data.items():
        hint = hints[name]
        path = f"{where}.{name}"
        if dataclasses.is_dataclass(hint):
            values[name] = value if isinstance(value, hint) else _build(hint, value, path)
        else:
            values[name] = _coerce(hint, value, path)
    return cls(**values)


def _coerce(hint, value, path: str):
    origin = typing.get_origin(hint)
    if origin is tuple:
        if int in typing.get_args(hint):  # tuple[int, ...]: a JSON list, or "1,0,1" from --set
            if isinstance(value, str):
                try:
                    value = [int(v) for v in value.split(",") if v.strip()]
                except ValueError:
                    raise ConfigError(f"{path}: expected a list of integers, got {value!r}") from None
            if not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"{path}: expected a list of integers, got {value!r}")
            return tuple(value)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: expected a list of strings, got {value!r}")
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported field type {hint}")


# The config files are package data (jax_namnmt/configs/, in the wheel too); a checkout's top-level
# configs/ is a symlink to it, so configs/NAME.py paths work from the repository root.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def config_path(path: str) -> Path:
    """The file of a ``--config`` value: an existing path; else the package's config of that name
    (``NAME``, ``NAME.py`` or ``configs/NAME.py``: the last works from any directory, installed
    or not)."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    if not candidate.is_absolute() and candidate.parts[:-1] in ((), ("configs",)):
        packaged = CONFIG_DIR / (candidate.name if candidate.suffix == ".py" else f"{candidate.name}.py")
        if packaged.exists():
            return packaged
    raise ConfigError(f"config file {path!r} not found (looked in . and {CONFIG_DIR})")


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Load a config: a config file of the package's ``configs/`` (``jax_namnmt/configs/*.py``:
    its path or its bare name, see :func:`config_path`), another ``.py`` file defining
    ``get_config()``, or a JSON file.

    With no path, ``demo``.
    """
    candidate = config_path(path or "demo")
    if candidate.suffix == ".json":
        try:
            data = json.loads(candidate.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{candidate}:{err.lineno}: invalid JSON: {err.msg}") from None
        config = Config.from_dict(data, where=str(candidate))
    else:
        spec = importlib.util.spec_from_file_location(f"_config_{candidate.stem}", candidate)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ConfigError(f"{candidate}: defines no get_config()")
        config = module.get_config()
        if not isinstance(config, Config):
            raise ConfigError(f"{candidate}: get_config() must return a jax_namnmt.config.Config")
    if overrides:
        config = config.override(overrides)
    return config.validate()
