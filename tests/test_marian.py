"""The Marian export (``export_marian``) and import (``import_marian``): the mapping's invariants
(pure numpy), then its real clients on a tiny model: HuggingFace's ``MarianTokenizer`` and
``MarianMTModel`` (same ids, same log-probabilities, ``generate(num_beams=4)`` gives our beam
search's tokens) and CTranslate2's converter (same tokens), and the import back (same parameters,
same translations). The clients' tests are skipped where the optional ``[marian]`` extra
(torch, transformers, ctranslate2) is not installed."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jax_namnmt import marian, packaged
from jax_namnmt.config import ModelConfig, load_config
from jax_namnmt.data.corpus import parse_pairs, read_parallel
from jax_namnmt.data.vocab import BOS_ID, EOS_ID, Vocab, train_vocab
from jax_namnmt.decoding import make_beam_decoder, max_output_len
from jax_namnmt.errors import CheckpointError, ConfigError
from jax_namnmt.method.masks import flatten, nest

REPO = Path(__file__).resolve().parent.parent
FAST_COMPILE = {"xla_backend_optimization_level": 0}
HAVE_HF = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "safetensors"))
HAVE_CT2 = HAVE_HF and importlib.util.find_spec("ctranslate2") is not None
HAVE_ST = importlib.util.find_spec("safetensors") is not None
needs_hf = pytest.mark.skipif(not HAVE_HF, reason="the [marian] extra (torch, transformers, safetensors) is not "
                              "installed: pip install -r requirements-dev.txt")
needs_ct2 = pytest.mark.skipif(not HAVE_CT2, reason="ctranslate2 (the [marian] extra) is not installed")
needs_st = pytest.mark.skipif(not HAVE_ST, reason="safetensors (the [marian] extra) is not installed")


def layer_norm(x, scale, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def test_layer_norm_epsilons_and_the_rescaling_identity():
    import flax.linen as nn

    assert nn.LayerNorm().epsilon == marian.OURS_LN_EPS
    if importlib.util.find_spec("torch"):
        import torch

        assert torch.nn.LayerNorm(4).eps == marian.MARIAN_LN_EPS
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 16)) * 1e-3  # small variance: where the epsilon matters
    g, b = rng.standard_normal(16), rng.standard_normal(16)
    c = marian.LN_SCALE
    ours = layer_norm(x, g, b, marian.OURS_LN_EPS)
    np.testing.assert_allclose(layer_norm(c * x, g, b, marian.MARIAN_LN_EPS), ours, rtol=1e-12, atol=1e-12)
    assert np.abs(layer_norm(x, g, b, marian.MARIAN_LN_EPS) - ours).max() > 0.1  # without it: another function


def test_sinusoid_is_the_models_table():
    from jax_namnmt.model.transformer import sinusoidal_positions

    for dim in (16, 17, 256):
        np.testing.assert_allclose(marian.sinusoid(50, dim), sinusoidal_positions(50, dim), atol=2e-6)


def test_rescale_round_trip_and_norms(tiny_config, make_params):
    flat = flatten(jax.device_get(make_params(tiny_config, seed=3)))
    c = marian.LN_SCALE
    there = marian.rescale(flat, c)
    back = marian.rescale(there, 1 / c)
    for k, v in flat.items():
        np.testing.assert_allclose(back[k], v, rtol=1e-12, atol=1e-15)
    # the last decoder norm feeds only the output layer (embedding * c): divided by c; others times c
    for layer, factor in (("decoder_layer_0", 1 / c), ("encoder_layer_0", c)):
        name = f"{layer}/ffn_res/norm/scale"
        np.testing.assert_allclose(there[name], flat[name] * factor)
    np.testing.assert_allclose(there["embed/embedding"], flat["embed/embedding"] * c)


def test_padded_ffn_units_change_nothing():
    rng = np.random.default_rng(1)
    d, widths = 8, (5, 12)
    flat = {}
    for i, w in enumerate(widths):
        p = f"encoder_layer_{i}/ffn"
        flat |= {f"{p}/fc1/dense/kernel": rng.standard_normal((d, w)), f"{p}/fc1/dense/bias": rng.standard_normal(w),
                 f"{p}/fc2/dense/kernel": rng.standard_normal((w, d)), f"{p}/fc2/dense/bias": rng.standard_normal(d)}
    padded, got = marian.pad_ffn(flat)
    assert got == {"encoder": 12, "decoder": 1}
    x = rng.standard_normal((3, d))
    for i in range(2):
        p = f"encoder_layer_{i}/ffn"
        ffn = lambda q: np.maximum(x @ q[f"{p}/fc1/dense/kernel"] + q[f"{p}/fc1/dense/bias"], 0) @ \
            q[f"{p}/fc2/dense/kernel"] + q[f"{p}/fc2/dense/bias"]  # noqa: E731
        assert padded[f"{p}/fc1/dense/kernel"].shape == (d, 12)
        np.testing.assert_allclose(ffn(padded), ffn(flat), rtol=1e-12)


@pytest.mark.parametrize("field, value", [("pre_norm", True), ("ts_target_of_pair", (0, 1)), ("adapter_pairs", 2),
                                          ("dec_layers", 0)])
def test_refuses_what_marian_cannot_express(field, value):
    config = dataclasses.replace(ModelConfig(vocab_size=20, d_model=8, num_heads=2, ffn_dim=16), **{field: value})
    with pytest.raises(ConfigError, match=f"model.{field} = .*cannot be exported as a MarianMTModel"):
        marian.check_expressible(config)


def test_refuses_dropped_attention_features(tiny_config, make_params):
    flat = flatten(jax.device_get(make_params(tiny_config, seed=0)))
    flat["encoder_layer_0/self_attn/q/dense/kernel"] = flat["encoder_layer_0/self_attn/q/dense/kernel"][:, :8]
    with pytest.raises(ConfigError, match="encoder_layer_0/self_attn/q/dense/kernel has shape"):
        marian.to_marian_state(flat, tiny_config, BOS_ID, 16)


def test_vocab_tokens_names_the_specials_and_tags():
    pieces = ["<pad>", "<unk>", "<s>", "</s>", "<2de>", "<2en>", "▁a", "b"]
    tokens = marian.vocab_tokens(pieces)
    assert tokens == ["<blank>", "<unk>", "<s>", "</s>", ">>de<<", ">>en<<", "▁a", "b", "<pad>"]
    with pytest.raises(ConfigError, match="ids 4 and 6 would both be named '>>de<<'"):
        marian.vocab_tokens(pieces[:6] + [">>de<<"])


def test_decoding_settings_marian_cannot_follow():
    from jax_namnmt.config import DecodeConfig

    with pytest.raises(ConfigError, match="penalty_form = 'gnmt'"):
        marian.hf_generate_kwargs(DecodeConfig(penalty_form="gnmt"), 10, EOS_ID, 99)
    with pytest.raises(ConfigError, match="stop_early = 'exact'"):
        marian.hf_generate_kwargs(DecodeConfig(stop_early="exact"), 10, EOS_ID, 99)


# ----------------------------------------------------------------------------- a tiny model, exported


def our_beam_search(params, config, sources):
    """Our beam search (``decoding.make_beam_decoder``, the program ``translate_ids`` runs) over
    ``sources`` in one batch, compiled without XLA's backend optimizations (faster to compile);
    also each sentence's length limit."""
    decode = config.decode
    width = max(len(s) for s in sources)
    max_len = max_output_len(width, decode, 1024)
    src = np.zeros((len(sources), width), np.int32)
    for i, s in enumerate(sources):
        src[i, :len(s)] = s
    pairs = np.zeros(len(sources), np.int32)
    decoder = make_beam_decoder(config.model, decode.beam_size, max_len, decode.length_penalty, decode.penalty_form,
                                decode.stop_early, decode.max_len_a, decode.max_len_b, decode.min_len)
    compiled = decoder.lower(params, src, pairs, None).compile(FAST_COMPILE)
    out = np.asarray(compiled(params, src, pairs, None))
    hyps = [[int(t) for t in row[:list(row).index(EOS_ID) + 1]] for row in out]
    return hyps, marian.output_limits([len(s) for s in sources], decode, max_len)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_corpus, make_params):
    """A tiny 1+1-layer model on a real 300-piece SentencePiece vocabulary with tags, as a package and
    exported; its random parameters are sharpened (last layer norm x3) and given an EOS direction so
    that beam searches end by themselves after 3-16 tokens, far below the limits (max_len_b 40): at
    the limit HF and CTranslate2 differ from us by design (``marian.hf_generate_kwargs``)."""
    pytest.importorskip("safetensors")
    from jax_namnmt.export_marian import export_marian

    root = tmp_path_factory.mktemp("marian")
    config = load_config("tiny")
    pairs = parse_pairs(config.data.pairs)
    texts = read_parallel(tiny_corpus, "train", pairs)
    spm = train_vocab(sorted({line for t in texts.values() for line in t.src + t.tgt}), ["de", "en", "fr"],
                      root / "spm", config.data.vocab_size)
    vocab = Vocab.load(spm)
    config = config.with_sections(model={"vocab_size": vocab.size},
                                  decode={"beam_size": 4, "length_penalty": 0.6, "max_len_a": 1.2, "max_len_b": 40})
    flat = {k: np.array(v) for k, v in flatten(jax.device_get(make_params(config.model, seed=0))).items()}
    u = np.random.default_rng(1).standard_normal(config.model.d_model)
    u *= math.sqrt(3.5) / np.linalg.norm(u)
    flat["embed/embedding"][EOS_ID] += u
    norm = "decoder_layer_0/ffn_res/norm"
    flat[f"{norm}/bias"] = (flat[f"{norm}/bias"] + u) * 3
    flat[f"{norm}/scale"] = flat[f"{norm}/scale"] * 3
    params = nest(flat)
    package = packaged.save_package(root / "package", params, config.to_dict(), spm, "float32")
    lines, sources = [], []
    test = read_parallel(tiny_corpus, "test", pairs)
    for name, tgt in (("de-en", "en"), ("en-de", "de")):
        for line in test[name].src:
            text = " ".join(line.split()[:3])  # short sources: a short program to compile
            lines.append((tgt, text))
            sources.append([vocab.tag_id(tgt)] + vocab.encode(text) + [EOS_ID])
    hyps, limits = our_beam_search(params, config, sources)
    lengths = [len(h) for h in hyps]
    assert max(lengths) < min(limits) - 10, (lengths, limits)
    assert len(set(lengths)) >= 5  # a spread of lengths, not one degenerate answer
    out = export_marian(package, root / "marian")
    return dict(root=root, config=config, params=params, flat=flat, vocab=vocab, package=package, marian=out,
                lines=lines, sources=sources, hyps=hyps, limits=limits)


@needs_st
def test_export_files_and_ids(tiny):
    d = tiny["marian"]
    names = {p.name for p in d.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "source.spm", "target.spm", "vocab.json",
            "tokenizer_config.json", "special_tokens_map.json"} <= names
    hf = json.loads((d / "config.json").read_text())
    v = tiny["config"].model.vocab_size
    assert hf["vocab_size"] == v + 1 and hf["decoder_start_token_id"] == hf["pad_token_id"] == v
    assert hf["eos_token_id"] == EOS_ID and hf["activation_function"] == "relu" and hf["scale_embedding"]
    vocab = json.loads((d / "vocab.json").read_text())
    assert vocab[">>en<<"] == tiny["vocab"].tag_id("en") and vocab["</s>"] == EOS_ID and vocab["<pad>"] == v
    from safetensors.numpy import load_file

    state = load_file(str(d / "model.safetensors"))
    assert not state["model.shared.weight"][v].any() and state["final_logits_bias"][0, v] == marian.START_LOGIT


@needs_st
def test_import_gives_back_the_parameters_and_translations(tiny, tmp_path):
    from jax_namnmt.import_marian import import_marian
    from jax_namnmt.workflow import load_run

    run = load_run(import_marian(tiny["marian"], tmp_path / "back"))
    assert run.config == tiny["config"]
    back = flatten(jax.device_get(run.params))
    assert back.keys() == tiny["flat"].keys()
    for k, v in tiny["flat"].items():
        np.testing.assert_allclose(back[k], v, rtol=3e-7, atol=1e-7, err_msg=k)  # float32 rounding of x * c / c
    hyps, _ = our_beam_search(run.params, run.config, tiny["sources"])
    assert hyps == tiny["hyps"]


@needs_st
def test_import_refuses_other_models(tiny, tmp_path):
    from jax_namnmt.import_marian import import_marian

    other = tmp_path / "other"
    other.mkdir()
    hf = json.loads((tiny["marian"] / "config.json").read_text())
    del hf[marian.CONFIG_KEY]
    (other / "config.json").write_text(json.dumps(hf))
    with pytest.raises(CheckpointError, match="has no 'jax_namnmt' entry"):
        import_marian(other, tmp_path / "out")
    # a Marian model whose positions are MarianMTModel's own sinusoids: not ours
    import shutil

    from safetensors.numpy import load_file, save_file

    moved = tmp_path / "moved"
    shutil.copytree(tiny["marian"], moved)
    state = load_file(str(moved / "model.safetensors"))
    rows, dim = state["model.encoder.embed_positions.weight"].shape
    j = np.arange(dim)
    angles = np.arange(rows)[:, None] / np.power(10000, 2 * (j // 2) / dim)[None, :]
    state["model.encoder.embed_positions.weight"] = np.concatenate(
        [np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])], 1).astype(np.float32)
    save_file(state, str(moved / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.encoder.embed_positions.weight is not the position table"):
        import_marian(moved, tmp_path / "out")


@needs_hf
def test_marian_tokenizer_reads_and_writes_our_ids(tiny):
    from transformers import AutoTokenizer, MarianTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["marian"])
    assert isinstance(tok, MarianTokenizer)
    texts = [f">>{tgt}<< {line}" for tgt, line in tiny["lines"]]
    assert tok(texts)["input_ids"] == tiny["sources"]
    vocab = tiny["vocab"]
    assert tok.batch_decode(tiny["hyps"], skip_special_tokens=True) == vocab.decode_batch(tiny["hyps"])


@pytest.fixture(scope="module")
def hf_model(tiny):
    if not HAVE_HF:
        pytest.skip("the [marian] extra (torch, transformers) is not installed")
    import torch
    from transformers import MarianMTModel

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads only add overhead
    yield MarianMTModel.from_pretrained(tiny["marian"]).eval()
    torch.set_num_threads(threads)


def hf_log_probs(model, sources, targets, start: int) -> list[np.ndarray]:
    """Teacher-forced log-probabilities ``[len(target), vocab + 1]`` of each target under ``model``
    (one padded batch; the decoder input is the start id and the target but its last token)."""
    import torch

    pad = lambda rows, n: torch.tensor([r + [start] * (n - len(r)) for r in rows])  # noqa: E731
    src = pad(sources, max(map(len, sources)))
    tgt = pad([[start] + t[:-1] for t in targets], max(map(len, targets)))
    with torch.no_grad():
        logits = model(input_ids=src, attention_mask=(src != start).long(), decoder_input_ids=tgt).logits
    logp = torch.log_softmax(logits, -1).numpy()
    return [logp[i, :len(t)] for i, t in enumerate(targets)]


@needs_hf
def test_hf_log_probabilities_are_ours(tiny, hf_model, pack, fns):
    v = tiny["config"].model.vocab_size
    sources, hyps = tiny["sources"], tiny["hyps"]
    theirs = hf_log_probs(hf_model, sources, hyps, v)
    rows = [[(s, h, 0)] for s, h in zip(sources, hyps)]
    ours = np.asarray(jax.nn.log_softmax(fns.forward(tiny["params"], pack(rows, max(map(len, sources)),
                                                                       max(map(len, hyps))), None,
                                                     config=tiny["config"].model), -1))
    worst = max(float(np.abs(ours[i, :len(h)] - t[:, :v]).max()) for i, (h, t) in enumerate(zip(hyps, theirs)))
    assert worst < 1e-4, worst
    assert all(np.all(t[:, v] < -1e8) for t in theirs)  # the start id is never a candidate


@needs_hf
def test_hf_generate_gives_our_beam_search_tokens(tiny, hf_model):
    import torch

    decode, v = tiny["config"].decode, tiny["config"].model.vocab_size
    agree = 0
    for src, hyp, limit in zip(tiny["sources"], tiny["hyps"], tiny["limits"]):
        kwargs = marian.hf_generate_kwargs(decode, int(limit), EOS_ID, v)
        with torch.no_grad():
            out = hf_model.generate(input_ids=torch.tensor([src]), **kwargs)
        agree += out[0].tolist()[1:] == hyp
    assert agree == len(tiny["sources"]), f"{agree} of {len(tiny['sources'])} agree"


@needs_ct2
def test_ctranslate2_decodes_the_converted_export_to_our_tokens(tiny, hf_model):
    """Same tokens, except where CTranslate2's ban of EOS at the first step (on the logits, before
    the softmax; ours after it) reorders finished hypotheses: every such sentence is checked to be
    one (its two hypotheses rank one way under our scores and the other way under CTranslate2's)."""
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    out = TransformersConverter(str(tiny["marian"])).convert(str(tiny["root"] / "ct2"), force=True)
    translator = ctranslate2.Translator(out, device="cpu", intra_threads=1)
    tokens = [t for t, _ in sorted(json.loads((tiny["marian"] / "vocab.json").read_text()).items(),
                                   key=lambda item: item[1])]
    ids = {t: i for i, t in enumerate(tokens)}
    decode, v = tiny["config"].decode, tiny["config"].model.vocab_size
    agree, explained = 0, 0
    for src, hyp, limit in zip(tiny["sources"], tiny["hyps"], tiny["limits"]):
        result = translator.translate_batch([[tokens[i] for i in src]], **marian.ct2_translate_kwargs(decode, limit))
        got = [ids[t] for t in result[0].hypotheses[0]]
        if got == hyp:
            agree += 1
            continue
        ours, theirs = (sum(lp[np.arange(len(h)), h]) for lp, h in zip(hf_log_probs(hf_model, [src, src], [hyp, got],
                                                                                      v), (hyp, got)))
        p_eos = math.exp(hf_log_probs(hf_model, [src], [[EOS_ID]], v)[0][0, EOS_ID])
        shift = -math.log1p(-p_eos)  # CTranslate2's renormalised first step
        alpha = decode.length_penalty
        assert ours / len(hyp) ** alpha > theirs / len(got) ** alpha, (hyp, got)
        assert (ours + shift) / len(hyp) ** alpha < (theirs + shift) / len(got) ** alpha, (hyp, got, p_eos)
        explained += 1
    assert agree >= 0.9 * len(tiny["sources"]), f"{agree} of {len(tiny['sources'])} agree"
    print(f"CTranslate2: {agree} of {len(tiny['sources'])} agree, {explained} differ by its first-step renormalisation")


def random_masks(config, pairs, seed: int = 5, keep: float = 0.6) -> dict[str, np.ndarray]:
    from jax_namnmt.method.masks import module_sizes

    rng = np.random.default_rng(seed)
    return {name: rng.random((len(pairs), n)) < keep for name, n in module_sizes(config.model).items()}


@needs_st
def test_masked_run_is_refused(tiny, tmp_path):
    import shutil

    from jax_namnmt.export_marian import export_marian
    from jax_namnmt.method.allocation import save_masks

    run = tmp_path / "masked"
    shutil.copytree(tiny["package"], run)
    pairs = list(tiny["config"].data.pairs)
    save_masks(run / "masks.npz", random_masks(tiny["config"], pairs), pairs, {})
    with pytest.raises(CheckpointError, match="is a masked run: MarianMTModel has no per-pair masks"):
        export_marian(run, tmp_path / "m")


@needs_hf
def test_baked_pair_exports_as_the_masked_model(tiny, hf_model, tmp_path, fns, pack):
    """One pair baked (``jax_namnmt.bake``: fewer heads, head features and FFN units than the
    model) and exported: zero-padded to Marian's one shape, HuggingFace computes the masked
    model's log-probabilities for that pair; the import gives a plain package of the same function."""
    from transformers import MarianMTModel

    from jax_namnmt.bake import save_baked
    from jax_namnmt.export_marian import export_marian
    from jax_namnmt.import_marian import import_marian
    from jax_namnmt.method.bake import bake, pair_keep
    from jax_namnmt.method.masks import to_model_masks
    from jax_namnmt.workflow import load_run

    config, v = tiny["config"], tiny["config"].model.vocab_size
    pairs = list(config.data.pairs)
    masks = random_masks(config, pairs)
    head = config.model.d_model // config.model.num_heads
    masks["decoder_layer_0/cross_attn/v"][pairs.index("de-en"), head:2 * head] = False  # its second head goes
    keep, served = pair_keep(masks, pairs, pair="de-en")
    params, model = bake(jax.device_get(tiny["params"]), config.model, keep)
    assert any(w[0] < config.model.num_heads for _, w in model.widths if len(w) == 3)  # heads were dropped
    baked = dataclasses.replace(config, model=model, data=dataclasses.replace(config.data, pairs=tuple(served)))
    package = save_baked(tmp_path / "baked", params, baked, tiny["vocab"].path, {"pair": "de-en", "serves": served})
    out = export_marian(package, tmp_path / "m")
    hf = json.loads((out / "config.json").read_text())
    assert hf["encoder_ffn_dim"] < config.model.ffn_dim and hf["d_model"] == config.model.d_model
    n = len(tiny["sources"]) // 2  # the de-en sources (target tag en)
    sources, hyps = tiny["sources"][:n], tiny["hyps"][:n]
    theirs = hf_log_probs(MarianMTModel.from_pretrained(out).eval(), sources, hyps, v)
    batch = pack([[(s, h, pairs.index("de-en"))] for s, h in zip(sources, hyps)], max(map(len, sources)),
                 max(map(len, hyps)))
    ours = np.asarray(jax.nn.log_softmax(fns.forward(tiny["params"], batch, to_model_masks(masks),
                                                     config=config.model), -1))
    worst = max(float(np.abs(ours[i, :len(h)] - t[:, :v]).max()) for i, (h, t) in enumerate(zip(hyps, theirs)))
    assert worst < 1e-4, worst
    back = load_run(import_marian(out, tmp_path / "back"))
    assert back.config.model.ffn_dim == max(hf["encoder_ffn_dim"], hf["decoder_ffn_dim"])
    assert back.pairs == ["de-en"] and back.masks is None


# ----------------------------------------------------------------------------- the shipped model, the doors


@pytest.mark.slow
@needs_hf
def test_shipped_model_export_translates_alike(tmp_path):
    """The shipped model exported: its tokenizer gives our ids and HF's ``generate`` gives our beam
    search's tokens (its decoding settings) on the first test lines of two directions; re-saved by
    ``transformers`` (which leaves the position tables out) and imported in bfloat16, it is the
    shipped package's very bits."""
    import gzip
    import shutil

    import torch
    from transformers import AutoTokenizer, MarianMTModel

    from jax_namnmt.data.multiway import multi30k_dir
    from jax_namnmt.export_marian import export_marian
    from jax_namnmt.import_marian import import_marian
    from jax_namnmt.workflow import encode_sources, load_run

    out = export_marian(packaged.shipped_model_dir(), tmp_path / "m")
    run = load_run(packaged.shipped_model_dir())
    tok = AutoTokenizer.from_pretrained(out)
    model = MarianMTModel.from_pretrained(out).eval()
    sources, texts = [], []
    for src, tgt in (("de", "en"), ("en", "fr")):
        with gzip.open(multi30k_dir() / f"test_2016_flickr.{src}.gz", "rt", encoding="utf-8") as f:
            lines = [next(f).strip() for _ in range(3)]
        sources += [[int(t) for t in s] for s in encode_sources(run, lines, tgt)]
        texts += [f">>{tgt}<< {line}" for line in lines]
    assert tok(texts)["input_ids"] == sources
    hyps, limits = our_beam_search(run.params, run.config, sources)
    v = run.config.model.vocab_size
    for src, hyp, limit in zip(sources, hyps, limits):
        with torch.no_grad():
            got = model.generate(input_ids=torch.tensor([src]),
                                 **marian.hf_generate_kwargs(run.config.decode, int(limit), EOS_ID, v))
        assert got[0].tolist()[1:] == hyp, tok.decode(hyp)
    model.save_pretrained(tmp_path / "resaved")
    for name in ("source.spm", "target.spm", "vocab.json"):
        shutil.copy(out / name, tmp_path / "resaved" / name)
    back = import_marian(tmp_path / "resaved", tmp_path / "back", "bfloat16")
    with np.load(back / "params.npz") as got, np.load(packaged.shipped_model_dir() / "params.npz") as want:
        assert sorted(got.files) == sorted(want.files)
        assert all(np.array_equal(got[k], want[k]) for k in want.files)


@pytest.mark.slow
@needs_st
def test_door_writes_what_the_function_writes(tiny, tmp_path):
    """``python -m jax_namnmt.export_marian`` (its errors are the function's, one ``error:`` line
    through ``cli.run``: tested above in-process)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "jax_namnmt.export_marian", "--checkpoint", str(tiny["package"]),
                           "--out", str(tmp_path / "m")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0 and "sources are '>>xx<< text'" in proc.stdout, proc.stderr
    for name in ("model.safetensors", "config.json", "vocab.json", "source.spm"):
        assert (tmp_path / "m" / name).read_bytes() == (tiny["marian"] / name).read_bytes(), name
