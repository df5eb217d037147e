"""Our Transformer as HuggingFace's ``MarianMTModel`` and back: the parameter mapping, pure numpy.

What each of our choices becomes in Marian (checked against ``model/transformer.py``):

- post-norm layers, ReLU, attention ``q * head_dim**-0.5`` after the bias, no layer norm on the
  embeddings or after the stacks: Marian's own layout (``normalize_before`` false); a pre-norm
  model, +TS or +Adapter has no Marian equivalent and is refused (:func:`check_expressible`).
- tied embeddings scaled by ``sqrt(d_model)``: ``scale_embedding``, one ``model.shared`` table
  used by the encoder, the decoder and ``lm_head``; no output bias (``final_logits_bias`` 0).
- sinusoidal positions from 0: ours are fairseq's (frequencies ``10000**(-i / (d/2 - 1))``),
  Marian computes ``10000**(-2i / d)``, so our tables are written into
  ``model.{encoder,decoder}.embed_positions.weight``, which ``from_pretrained`` loads (and
  ``save_pretrained`` leaves out: see :func:`position_tables`).
- the decoder starts from BOS (id 2, a trained embedding). Marian and CTranslate2 start from a
  zero embedding (CTranslate2's Marian loader forces it), so the export adds one id, ``V`` =
  ``<pad>`` (Marian's convention: its last id), whose embedding row is zero, starts the decoder
  with it, and folds ``BOS``'s scaled embedding into row 0 of the decoder's position table (only
  the first decoder position ever holds the start token). Its output logit gets
  ``final_logits_bias = -1e9`` (probability exactly 0; CTranslate2 drops that row). Our ids
  0..V-1 keep their meaning; id 0 (our padding) is named ``<blank>``.
- layer norm epsilon: ours 1e-6 (Flax), Marian's and CTranslate2's 1e-5, fixed. ``LN(c x; eps)
  = LN(x; eps / c**2)``, so with ``c = sqrt(10)`` every layer-norm input is carried ``c`` times
  larger: the embeddings and positions and every layer norm's scale and bias times ``c`` (so its
  output, the next residual, is ``c`` times ours), the projections that read a layer-norm output
  (q, k, v, fc1, cross-attention k/v) divided by ``c``, those that write into the residual (out,
  fc2: weight and bias) times ``c``, and the last decoder layer norm divided by ``c`` (it feeds
  only the tied output layer, whose table is ``c`` times ours). The same function up to float32
  rounding; :func:`rescale` with ``1 / c`` undoes it on import.
"""

from __future__ import annotations

import math
import re
from typing import Mapping

import numpy as np

from jax_namnmt.config import DecodeConfig, ModelConfig
from jax_namnmt.errors import CheckpointError, ConfigError
from jax_namnmt.method.masks import layer_path

OURS_LN_EPS = 1e-6  # flax.linen.LayerNorm's default (the model's every layer norm)
MARIAN_LN_EPS = 1e-5  # torch.nn.LayerNorm's default: MarianMTModel's and CTranslate2's
LN_SCALE = math.sqrt(MARIAN_LN_EPS / OURS_LN_EPS)  # c: LN(c x; 1e-5) = LN(x; 1e-6)
START_LOGIT = -1e9  # final_logits_bias of the added start/padding id: probability exactly 0 in float32
PAD_NAME, START_NAME = "<blank>", "<pad>"  # our id 0; the added last id (Marian's padding and decoder start)
CONFIG_KEY = "jax_namnmt"  # config.json entry holding our config and the export's constants
_TAG = re.compile(r"^<2(.+)>$")

# (our sublayer, its residual norm) -> Marian's names, per stack
_ATTENTION = {"encoder": (("self_attn", "self_attn"),),
              "decoder": (("self_attn", "self_attn"), ("cross_attn", "encoder_attn"))}
_PROJECTIONS = (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("out", "out_proj"))
_NORMS = {"self_attn": "self_attn_layer_norm", "cross_attn": "encoder_attn_layer_norm", "ffn": "final_layer_norm"}


def check_expressible(config: ModelConfig, where: str = "model") -> None:
    """A ConfigError naming the field when ``MarianMTModel`` cannot compute this model."""
    reasons = (
        (config.pre_norm, "pre_norm", "Marian's layers are post-norm"),
        (bool(config.ts_target_of_pair), "ts_target_of_pair",
         "+TS's per-target-language attention has no Marian equivalent"),
        (config.adapter_pairs > 0, "adapter_pairs", "+Adapter's per-pair adapters have no Marian equivalent"),
        (config.dec_layers < 1, "dec_layers", "the export folds the output scale into the last decoder layer norm"),
        (config.d_model % config.num_heads != 0, "num_heads", "d_model must be a multiple of num_heads"),
    )
    for unmet, name, why in reasons:
        if unmet:
            raise ConfigError(f"{where}.{name} = {getattr(config, name)!r}: cannot be exported as a MarianMTModel "
                              f"({why})")


def sinusoid(rows: int, dim: int) -> np.ndarray:
    """Our position table (``model.transformer.sinusoidal_positions``, repeated here in float64
    so that this module needs no JAX): sin in the first half, cos in the second, frequencies
    ``10000**(-i / (dim/2 - 1))``."""
    half = dim // 2
    freqs = np.exp(np.arange(half) * -(np.log(10000.0) / (half - 1)))
    angles = np.arange(rows)[:, None] * freqs[None, :]
    table = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    return np.pad(table, ((0, 0), (0, dim % 2))) if dim % 2 else table


def position_tables(embedding: np.ndarray, rows: int, bos_id: int, scale: float):
    """``(encoder, decoder)`` position tables of the export, float64: ours times ``scale``, the
    decoder's row 0 plus the start token's part (``scale * sqrt(d) * embedding[bos_id]``). A
    directory re-saved by ``save_pretrained`` lacks them (MarianMTModel never saves its tables):
    import rebuilds them from this function, and HuggingFace would compute Marian's own, which
    are not ours (export again, or copy them back)."""
    dim = embedding.shape[1]
    table = sinusoid(rows, dim) * scale
    decoder = table.copy()
    decoder[0] += scale * math.sqrt(dim) * np.asarray(embedding[bos_id], np.float64)
    return table, decoder


def _stack_layers(flat: Mapping[str, np.ndarray], stack: str) -> int:
    pattern = re.compile(rf"^{stack}_layer_(\d+)/")
    return len({m.group(1) for k in flat if (m := pattern.match(k))})


def rescale(flat: Mapping[str, np.ndarray], factor: float) -> dict[str, np.ndarray]:
    """Our parameters with every layer-norm input carried ``factor`` times larger (module
    docstring): ``rescale(p, LN_SCALE)`` is what the export writes, ``rescale(q, 1 / LN_SCALE)``
    its inverse. Computed in float64; the embedding is the tied input and output table."""
    out = {k: np.asarray(v, np.float64) for k, v in flat.items()}
    out["embed/embedding"] = out["embed/embedding"] * factor
    layers = {stack: _stack_layers(flat, stack) for stack in ("encoder", "decoder")}
    for stack, count in layers.items():
        for i in range(count):
            prefix = layer_path(stack, i)
            for ours, _ in _ATTENTION[stack]:
                for p in ("q", "k", "v"):
                    out[f"{prefix}/{ours}/{p}/dense/kernel"] = out[f"{prefix}/{ours}/{p}/dense/kernel"] / factor
                for leaf in ("kernel", "bias"):
                    out[f"{prefix}/{ours}/out/dense/{leaf}"] = out[f"{prefix}/{ours}/out/dense/{leaf}"] * factor
            out[f"{prefix}/ffn/fc1/dense/kernel"] = out[f"{prefix}/ffn/fc1/dense/kernel"] / factor
            for leaf in ("kernel", "bias"):
                out[f"{prefix}/ffn/fc2/dense/{leaf}"] = out[f"{prefix}/ffn/fc2/dense/{leaf}"] * factor
            for sub in _NORMS:
                if sub == "cross_attn" and stack == "encoder":
                    continue
                last = stack == "decoder" and i == count - 1 and sub == "ffn"
                norm = factor if not last else 1.0 / factor
                for leaf in ("scale", "bias"):
                    out[f"{prefix}/{sub}_res/norm/{leaf}"] = out[f"{prefix}/{sub}_res/norm/{leaf}"] * norm
    return out


def marian_names(stack_layers: Mapping[str, int]) -> dict[str, tuple[str, bool]]:
    """``our flat parameter path -> (Marian state-dict name, transposed)`` for every layer
    parameter (the embedding, positions and start row are handled by :func:`to_marian_state`)."""
    names = {}
    for stack, count in stack_layers.items():
        for i in range(count):
            ours_prefix, hf_prefix = layer_path(stack, i), f"model.{stack}.layers.{i}"
            for ours, hf in _ATTENTION[stack]:
                for p, proj in _PROJECTIONS:
                    names[f"{ours_prefix}/{ours}/{p}/dense/kernel"] = (f"{hf_prefix}.{hf}.{proj}.weight", True)
                    names[f"{ours_prefix}/{ours}/{p}/dense/bias"] = (f"{hf_prefix}.{hf}.{proj}.bias", False)
            for fc in ("fc1", "fc2"):
                names[f"{ours_prefix}/ffn/{fc}/dense/kernel"] = (f"{hf_prefix}.{fc}.weight", True)
                names[f"{ours_prefix}/ffn/{fc}/dense/bias"] = (f"{hf_prefix}.{fc}.bias", False)
            for sub, hf in _NORMS.items():
                if sub == "cross_attn" and stack == "encoder":
                    continue
                names[f"{ours_prefix}/{sub}_res/norm/scale"] = (f"{hf_prefix}.{hf}.weight", False)
                names[f"{ours_prefix}/{sub}_res/norm/bias"] = (f"{hf_prefix}.{hf}.bias", False)
    return names


def pad_ffn(flat: Mapping[str, np.ndarray], to: Mapping[str, int] | None = None
            ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Marian has one FFN width per stack: layers with fewer hidden units (a baked model) get
    zero units up to the stack's widest, or ``to[stack]`` (``relu(0 x + 0) = 0`` and a zero row
    of fc2: the same function). Returns the padded parameters and ``{stack: width}``."""
    out = dict(flat)
    widths = {}
    for stack in ("encoder", "decoder"):
        count = _stack_layers(flat, stack)
        sizes = [np.shape(flat[f"{layer_path(stack, i)}/ffn/fc1/dense/kernel"])[1] for i in range(count)]
        widths[stack] = max(sizes, default=1) if to is None else max([to[stack], *sizes])
        for i, size in enumerate(sizes):
            extra = widths[stack] - size
            if extra:
                prefix = f"{layer_path(stack, i)}/ffn"
                out[f"{prefix}/fc1/dense/kernel"] = np.pad(flat[f"{prefix}/fc1/dense/kernel"], ((0, 0), (0, extra)))
                out[f"{prefix}/fc1/dense/bias"] = np.pad(flat[f"{prefix}/fc1/dense/bias"], (0, extra))
                out[f"{prefix}/fc2/dense/kernel"] = np.pad(flat[f"{prefix}/fc2/dense/kernel"], ((0, extra), (0, 0)))
    return out, widths


def pad_attention(flat: Mapping[str, np.ndarray], widths: Mapping[str, tuple[int, ...]], num_heads: int,
                  d_model: int) -> dict[str, np.ndarray]:
    """A baked model's attention (``model/baked.py``: per module ``(heads, qk, v)``, heads of ``qk``
    query/key and ``v`` value features) at Marian's fixed shape, ``num_heads`` heads of
    ``d_model / num_heads`` features: the missing features and heads are zeros. The same function: a
    zero query/key feature adds nothing to a head's scores, a zero value feature and its zero row of
    ``out`` nothing to the output, and a zero head (uniform weights over zero values) nothing either;
    queries are scaled by ``(d_model / num_heads) ** -0.5`` in both models."""
    head = d_model // num_heads
    out = dict(flat)
    for module, width in widths.items():
        if module.endswith("/ffn"):
            continue
        heads, qk, v = width
        if heads > num_heads or qk > head or v > head:
            raise ConfigError(f"{module}: baked widths {tuple(width)} exceed {num_heads} heads of {head} features")

        def grow(a, per_head, axis):  # [.., heads * per_head, ..] -> [.., num_heads * head, ..]
            a = np.moveaxis(np.asarray(a), axis, -1)
            a = a.reshape(a.shape[:-1] + (heads, per_head))
            a = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, num_heads - heads), (0, head - per_head)])
            return np.moveaxis(a.reshape(a.shape[:-2] + (num_heads * head,)), -1, axis)

        for name, per_head in (("q", qk), ("k", qk), ("v", v)):
            out[f"{module}/{name}/dense/kernel"] = grow(flat[f"{module}/{name}/dense/kernel"], per_head, 1)
            out[f"{module}/{name}/dense/bias"] = grow(flat[f"{module}/{name}/dense/bias"], per_head, 0)
        out[f"{module}/out/dense/kernel"] = grow(flat[f"{module}/out/dense/kernel"], v, 0)
    return out


def _check_attention_widths(flat: Mapping[str, np.ndarray], d_model: int) -> None:
    for key, value in flat.items():
        if re.search(r"_attn/(q|k|v|out)/dense/kernel$", key) and tuple(np.shape(value)) != (d_model, d_model):
            raise ConfigError(f"parameter {key} has shape {tuple(np.shape(value))}: Marian's attention projections "
                              f"are {d_model} x {d_model} (d_model); a model with fewer attention features needs "
                              "its baked widths (model.widths) to be padded back")


def to_marian_state(flat: Mapping[str, np.ndarray], config: ModelConfig, bos_id: int, positions: int,
                    widths: Mapping[str, tuple[int, ...]] | None = None, scale: float = LN_SCALE
                    ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Our flat parameters (``packaged.flatten`` paths) as a ``MarianMTModel`` state dict, float32,
    with ``positions`` rows of position tables; also ``{stack: FFN width}`` (after :func:`pad_ffn`).
    ``widths``: a baked model's per-module widths (``BakedModelConfig.widths``), its attention
    zero-padded to Marian's shape (:func:`pad_attention`). ``scale``: the layer-norm input scale
    (``LN_SCALE``; 1 would leave Marian's epsilon of 1e-5 in place of ours, to measure what that costs)."""
    check_expressible(config)
    flat = {k: np.asarray(v, np.float32) for k, v in flat.items()}
    if widths:
        flat = pad_attention(flat, widths, config.num_heads, config.d_model)
    _check_attention_widths(flat, config.d_model)
    flat, widths = pad_ffn(flat)
    layers = {stack: _stack_layers(flat, stack) for stack in ("encoder", "decoder")}
    names = marian_names(layers)
    expected = set(names) | {"embed/embedding"}
    if set(flat) != expected:
        extra, missing = sorted(set(flat) - expected), sorted(expected - set(flat))
        raise CheckpointError(f"the parameters do not fit a plain Transformer: unexpected {extra[:3]}, "
                              f"missing {missing[:3]}")
    scaled = rescale(flat, scale)
    state = {}
    for ours, (hf, transposed) in names.items():
        value = scaled[ours]
        state[hf] = (value.T if transposed else value).astype(np.float32)
    embedding = flat["embed/embedding"]
    vocab, dim = embedding.shape
    shared = np.zeros((vocab + 1, dim), np.float64)
    shared[:vocab] = scaled["embed/embedding"]
    state["model.shared.weight"] = shared.astype(np.float32)
    encoder_pos, decoder_pos = position_tables(embedding, positions, bos_id, scale)
    state["model.encoder.embed_positions.weight"] = encoder_pos.astype(np.float32)
    state["model.decoder.embed_positions.weight"] = decoder_pos.astype(np.float32)
    bias = np.zeros((1, vocab + 1), np.float32)
    bias[0, vocab] = START_LOGIT
    state["final_logits_bias"] = bias
    return {k: np.ascontiguousarray(v) for k, v in state.items()}, widths


def from_marian_state(state: Mapping[str, np.ndarray], config: ModelConfig, bos_id: int, where: str,
                      tolerance: float = 1e-4) -> dict[str, np.ndarray]:
    """The inverse of :func:`to_marian_state`: our flat float32 parameters. The position tables
    (when present) must be the ones the export writes (else the directory holds another model:
    Marian's own positions are not ours); the start row must be zero and the output bias 0
    except the start id's. ``where`` names the file in errors."""
    check_expressible(config)
    state = {k: np.asarray(v) for k, v in state.items()}
    shared = _first(state, ("model.shared.weight", "model.encoder.embed_tokens.weight",
                            "model.decoder.embed_tokens.weight", "lm_head.weight"), where)
    vocab = shared.shape[0] - 1
    if vocab != config.vocab_size:
        raise CheckpointError(f"{where}: the embedding has {shared.shape[0]} rows; a model of vocab_size "
                              f"{config.vocab_size} exported here has {config.vocab_size + 1} (the start id added)")
    for name in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"):
        if name in state and not np.array_equal(state[name], shared):
            raise CheckpointError(f"{where}: {name} differs from the shared embedding; our model ties the "
                                  "encoder, decoder and output tables")
    if np.any(shared[vocab] != 0):
        raise CheckpointError(f"{where}: the start id's embedding row {vocab} is not zero")
    bias = np.asarray(state.get("final_logits_bias", np.zeros((1, vocab + 1))), np.float64).reshape(-1)
    if np.any(bias[:vocab] != 0):
        raise CheckpointError(f"{where}: final_logits_bias is not zero for ids 0..{vocab - 1}; our model has "
                              "no output bias")
    layers = {stack: _count_marian_layers(state, stack) for stack in ("encoder", "decoder")}
    names = marian_names(layers)
    flat = {}
    for ours, (hf, transposed) in names.items():
        if hf not in state:
            raise CheckpointError(f"{where}: tensor {hf} is missing")
        value = np.asarray(state[hf], np.float64)
        flat[ours] = value.T if transposed else value
    flat["embed/embedding"] = np.asarray(shared[:vocab], np.float64)
    ours = rescale(flat, 1.0 / LN_SCALE)
    embedding = ours["embed/embedding"]
    for side in ("encoder", "decoder"):
        name = f"model.{side}.embed_positions.weight"
        if name in state:
            stored = np.asarray(state[name], np.float64)
            want = position_tables(embedding, stored.shape[0], bos_id, LN_SCALE)[side == "decoder"]
            error = np.abs(stored - want).max() / max(np.abs(want).max(), 1.0)
            if error > tolerance:
                raise CheckpointError(
                    f"{where}: {name} is not the position table jax_namnmt's model computes (relative "
                    f"difference {error:.2g}); MarianMTModel's own sinusoids differ from ours, so this "
                    "directory holds a model that ModelConfig cannot express")
    return {k: v.astype(np.float32) for k, v in ours.items()}


def _first(state, names, where):
    for name in names:
        if name in state:
            return np.asarray(state[name])
    raise CheckpointError(f"{where}: no embedding table (looked for {', '.join(names)})")


def _count_marian_layers(state: Mapping[str, np.ndarray], stack: str) -> int:
    pattern = re.compile(rf"^model\.{stack}\.layers\.(\d+)\.")
    return len({m.group(1) for k in state if (m := pattern.match(k))})


def vocab_tokens(pieces: list[str]) -> list[str]:
    """The token of each id in ``vocab.json``: our SentencePiece pieces, id 0 (our padding)
    renamed ``<blank>``, every ``<2xx>`` tag written ``>>xx<<`` (Marian's language codes, which
    ``MarianTokenizer`` splits off before SentencePiece), and the added start id ``<pad>`` last."""
    tokens = [PAD_NAME] + [(">>" + m.group(1) + "<<") if (m := _TAG.match(p)) else p for p in pieces[1:]]
    tokens.append(START_NAME)
    seen = {}
    for i, token in enumerate(tokens):
        if token in seen:
            raise ConfigError(f"vocabulary ids {seen[token]} and {i} would both be named {token!r} in vocab.json")
        seen[token] = i
    return tokens


def hf_config(config: ModelConfig, widths: Mapping[str, int], positions: int, ids: Mapping[str, int]) -> dict:
    """``config.json`` fields of the export (``MarianConfig``)."""
    start = config.vocab_size
    return {
        "architectures": ["MarianMTModel"], "model_type": "marian",
        "vocab_size": config.vocab_size + 1, "decoder_vocab_size": config.vocab_size + 1,
        "d_model": config.d_model, "encoder_layers": config.enc_layers, "decoder_layers": config.dec_layers,
        "encoder_attention_heads": config.num_heads, "decoder_attention_heads": config.num_heads,
        "encoder_ffn_dim": int(widths["encoder"]), "decoder_ffn_dim": int(widths["decoder"]),
        "activation_function": "relu", "dropout": config.dropout, "attention_dropout": config.attention_dropout,
        "activation_dropout": config.activation_dropout, "max_position_embeddings": positions,
        "scale_embedding": True, "share_encoder_decoder_embeddings": True, "tie_word_embeddings": True,
        "pad_token_id": start, "decoder_start_token_id": start, "eos_token_id": ids["eos"],
        "forced_eos_token_id": ids["eos"], "bos_token_id": None, "is_encoder_decoder": True, "use_cache": True,
        "torch_dtype": "float32",
    }


def hf_generate_kwargs(decode: DecodeConfig, max_new_tokens: int, eos_id: int, start_id: int) -> dict:
    """``MarianMTModel.generate`` settings that search like ``decoding.translate_ids``: beam
    ``decode.beam_size``, ``sum log p / len**length_penalty`` with ``len`` counting EOS (HF's
    ``length_penalty`` is this form), EOS finishing a hypothesis only among the step's
    ``beam`` best of its ``2 * beam`` candidates (both), a sentence done with ``beam`` finished
    hypotheses (``early_stopping=True``, our ``stop_early="fairseq"``), EOS banned for the first
    ``min_len`` tokens (both after the log-softmax), and EOS forced at the sentence's limit
    ``max_new_tokens`` (:func:`output_limits`; HF's limit is per ``generate`` call, so sentences
    with other limits go in other calls). The limit is passed as ``max_length`` (it counts the
    decoder's start token), which overrides ``generation_config.json``'s without a warning.

    One difference: at the limit HF gives the forced EOS log-probability 0, we (and fairseq) its
    own; a search that reaches the limit can then pick another hypothesis."""
    if decode.penalty_form != "fairseq":
        raise ConfigError(f"decode.penalty_form = {decode.penalty_form!r}: HuggingFace's length penalty is "
                          "len ** length_penalty (penalty_form 'fairseq')")
    if decode.stop_early != "fairseq":
        raise ConfigError(f"decode.stop_early = {decode.stop_early!r}: HuggingFace's early_stopping=True is "
                          "stop_early 'fairseq'; its other rules are not our 'exact' bound")
    return dict(num_beams=decode.beam_size, num_return_sequences=1, do_sample=False,
                length_penalty=decode.length_penalty, early_stopping=True, min_new_tokens=decode.min_len,
                max_length=int(max_new_tokens) + 1, eos_token_id=eos_id, forced_eos_token_id=eos_id,
                pad_token_id=start_id, decoder_start_token_id=start_id, no_repeat_ngram_size=0,
                repetition_penalty=1.0)


def ct2_translate_kwargs(decode: DecodeConfig, max_decoding_length: int) -> dict:
    """``ctranslate2.Translator.translate_batch`` settings for the same search: its beam search
    keeps the ``beam`` best non-EOS of ``2 * beam`` candidates and stops a sentence with ``beam``
    finished hypotheses (``patience=1``) as ours; ``return_end_token=True`` makes its length
    penalty count EOS like ours. Two differences: CTranslate2 bans EOS for ``min_decoding_length``
    on the logits, before the softmax (we after it: its hypotheses all gain the same
    ``-log(1 - p(EOS at step 0))``, which can reorder finished hypotheses of different lengths when
    that probability is not negligible), and at the limit it keeps the best hypotheses without
    forcing EOS."""
    if decode.penalty_form != "fairseq" or decode.stop_early != "fairseq":
        raise ConfigError("CTranslate2's beam search is penalty_form 'fairseq' with stop_early 'fairseq'; got "
                          f"{decode.penalty_form!r} / {decode.stop_early!r}")
    return dict(beam_size=decode.beam_size, patience=1, length_penalty=decode.length_penalty,
                max_decoding_length=int(max_decoding_length), min_decoding_length=decode.min_len,
                return_end_token=True, num_hypotheses=1)


def output_limits(lengths, decode: DecodeConfig, max_len: int) -> np.ndarray:
    """Each sentence's length limit (tokens, EOS included) in ``decoding.translate_ids``:
    ``ceil(max_len_a * length + max_len_b)`` in float32 (as the decoder computes it), at most
    ``max_len`` (``decoding.max_output_len(width, decode, 1024)`` of the batch's program width) and at
    least 1."""
    lengths = np.asarray(lengths, np.float32)
    raw = np.ceil(np.float32(decode.max_len_a) * lengths + np.float32(decode.max_len_b)).astype(np.int32)
    return np.clip(raw, 1, max_len)
