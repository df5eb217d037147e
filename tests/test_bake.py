"""Baking one pair's mask into the weights (method/bake.py, model/baked.py, python -m jax_namnmt.bake):
the smaller plain model computes the masked model's logits and translates token for token as it does."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from functools import partial

import jax
import numpy as np
import pytest
from conftest import TINY, noisy_params, pack_rows, random_example
from conftest import test_jit as fast_jit

from jax_namnmt.config import DecodeConfig
from jax_namnmt.decoding import translate_ids
from jax_namnmt.errors import CheckpointError, ConfigError, DataError
from jax_namnmt.method.bake import bake, count_params, pair_keep
from jax_namnmt.method.masks import module_sizes, nest, to_model_masks
from jax_namnmt.model.baked import BakedTransformer
from jax_namnmt.model.transformer import Transformer

PAIRS = ["de-en", "en-de", "fr-en"]


@partial(fast_jit, static_argnames=("config",))
def masked_logits(params, batch, masks, *, config):
    return Transformer(config).apply({"params": params}, batch, masks)


@partial(fast_jit, static_argnames=("config",))
def baked_logits(params, batch, *, config):
    return BakedTransformer(config).apply({"params": params}, batch)


def random_flat_masks(config, seed: int, keep: float = 0.6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.random((len(PAIRS), n)) < keep for name, n in module_sizes(config).items()}


def pair_batch(pair: int, seed: int = 0) -> dict:
    """Three packed rows of examples of one pair (as decoding sees one pair)."""
    rng = np.random.default_rng(seed)
    rows = [[random_example(rng, 5, 4, pair), random_example(rng, 4, 7, pair)], [random_example(rng, 9, 6, pair)],
            [random_example(rng, 3, 3, pair), random_example(rng, 6, 5, pair)]]
    return pack_rows(rows, 16, 16)


def assert_same_logits(params, flat, pair: int, seed: int = 0):
    keep, _ = pair_keep(flat, PAIRS, pair=PAIRS[pair])
    baked, config = bake(jax.device_get(params), TINY, keep)
    batch = pair_batch(pair, seed)
    want = np.asarray(masked_logits(params, batch, to_model_masks(flat), config=TINY))
    got = np.asarray(baked_logits(baked, batch, config=config))
    real = batch["tgt_segments"] > 0
    np.testing.assert_allclose(got[real], want[real], atol=2e-5, rtol=1e-5)
    return baked, config


def test_baked_logits_equal_the_masked_models():
    params = noisy_params(TINY, seed=3)
    flat = random_flat_masks(TINY, seed=1)
    for pair in range(len(PAIRS)):
        baked, config = assert_same_logits(params, flat, pair, seed=pair)
        assert count_params(baked) < count_params(jax.device_get(params))
        # the widths are what the masks leave: FFN units kept, heads with a value feature, the widest
        # head's query/key features kept on both sides and value features
        head = TINY.d_model // TINY.num_heads
        for module, width in config.widths:
            m = {name.rsplit("/", 1)[1]: flat[name][pair] for name in flat if name.startswith(module + "/")}
            if module.endswith("ffn"):
                assert width == (m["fc1"].sum(),)
            else:
                qk = (m["q"] & m["k"]).reshape(TINY.num_heads, head).sum(1)
                v = m["v"].reshape(TINY.num_heads, head).sum(1)
                assert width == ((v > 0).sum(), qk[v > 0].max(), v.max())


def test_edge_cases_of_the_surgery():
    """Whole modules masked, heads without query/key or value features, half a head's keys."""
    params = noisy_params(TINY, seed=4)
    flat = {name: np.ones((len(PAIRS), n), bool) for name, n in module_sizes(TINY).items()}
    head = TINY.d_model // TINY.num_heads
    flat["encoder_layer_0/self_attn/out"][0] = False  # the attention adds nothing (not even its bias)
    flat["decoder_layer_0/ffn/fc2"][0] = False  # the FFN adds nothing
    flat["decoder_layer_0/self_attn/q"][0, :head] = False  # head 0 scores every key 0: uniform attention
    flat["decoder_layer_0/cross_attn/v"][0, head:] = False  # head 1 has no value: dropped whole
    flat["decoder_layer_0/cross_attn/k"][0, : head // 2] = False
    flat["encoder_layer_0/ffn/fc1"][0, ::2] = False
    flat["decoder_layer_0/self_attn/out"][0, ::3] = False  # zeroed output features (the residual keeps d_model)
    baked, config = assert_same_logits(params, flat, 0)
    widths = dict(config.widths)
    assert widths["encoder_layer_0/self_attn"] == (1, 1, 1) and widths["decoder_layer_0/ffn"] == (1,)
    assert widths["decoder_layer_0/self_attn"] == (2, head, head)
    assert widths["decoder_layer_0/cross_attn"] == (1, head - head // 2, head)
    assert widths["encoder_layer_0/ffn"] == (TINY.ffn_dim // 2,)
    out = baked["decoder_layer_0"]["self_attn"]["out"]["dense"]
    assert not out["kernel"][:, ::3].any() and not out["bias"][::3].any()
    # widths rounded up to a multiple with zero features (never past the original's): same numbers
    keep = pair_keep(flat, PAIRS, pair="de-en")[0]
    padded, config = bake(jax.device_get(params), TINY, keep, multiple=8)
    assert dict(config.widths)["decoder_layer_0/cross_attn"] == (1, 8, 8)
    assert dict(config.widths)["encoder_layer_0/ffn"] == (16,)
    batch = pair_batch(0)
    np.testing.assert_allclose(np.asarray(baked_logits(padded, batch, config=config)),
                               np.asarray(baked_logits(baked, batch, config=bake(jax.device_get(params), TINY,
                                                                                  keep)[1])), atol=2e-5)
    # the other pairs keep everything: their baked model is the full model, same numbers
    full, config = bake(jax.device_get(params), TINY, pair_keep(flat, PAIRS, pair="en-de")[0])
    assert count_params(full) == count_params(jax.device_get(params))


def sharp_params(seed: int):
    """Random parameters whose beam search output depends on the source (kernels x2, embedding x4:
    at init scale every source gives one token repeated)."""
    scale = {"kernel": 2.0, "embedding": 4.0}
    return jax.tree_util.tree_map_with_path(lambda path, x: x * scale.get(path[-1].key, 1.0),
                                            noisy_params(TINY, seed=seed, scale=0.5))


def test_beam_search_gives_the_masked_models_tokens():
    params = sharp_params(5)
    flat = random_flat_masks(TINY, seed=2, keep=0.7)
    pair = 1
    baked, config = bake(jax.device_get(params), TINY, pair_keep(flat, PAIRS, pair=PAIRS[pair])[0])
    rng = np.random.default_rng(0)
    sources = [np.append(rng.integers(4, TINY.vocab_size, rng.integers(2, 12)), 2).astype(np.int32) for _ in range(24)]
    decode = DecodeConfig(beam_size=3, max_len_a=1.0, max_len_b=4, batch_sentences=12)
    want = translate_ids(params, TINY, to_model_masks(flat), sources, np.full(24, pair, np.int32), decode)
    got = translate_ids(baked, config, None, sources, np.zeros(24, np.int32), decode)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    # not vacuous: the outputs depend on the source and on the pair's mask (pair 0's differ)
    assert len({tuple(t) for t in want}) > 12
    other = translate_ids(params, TINY, to_model_masks(flat), sources, np.zeros(24, np.int32), decode)
    assert sum(not np.array_equal(a, b) for a, b in zip(other, want)) > 12


def test_pair_and_target_selection():
    flat = random_flat_masks(TINY, seed=6)
    for name in flat:  # target variant: the pairs into en (de-en, fr-en) share their rows
        flat[name][2] = flat[name][0]
    keep, served = pair_keep(flat, PAIRS, target="en")
    assert served == ["de-en", "fr-en"] and all(np.array_equal(keep[n], flat[n][0]) for n in flat)
    assert pair_keep(flat, PAIRS, target="de")[1] == ["en-de"]
    flat["decoder_layer_0/ffn/fc1"][2, 0] ^= True
    with pytest.raises(ConfigError, match="different masks.*decoder_layer_0/ffn/fc1"):
        pair_keep(flat, PAIRS, target="en")
    with pytest.raises(ConfigError, match="has no mask: the masks are for de-en, en-de, fr-en"):
        pair_keep(flat, PAIRS, pair="cs-en")
    with pytest.raises(ConfigError, match="no pair translates into 'cs'"):
        pair_keep(flat, PAIRS, target="cs")
    with pytest.raises(ConfigError, match="one pair"):
        pair_keep(flat, PAIRS)
    short = dict(flat)
    del short["encoder_layer_0/ffn/fc2"]
    with pytest.raises(ConfigError, match="no entry for encoder_layer_0/ffn/fc2"):
        bake(jax.device_get(noisy_params(TINY)), TINY, pair_keep(short, PAIRS, pair="de-en")[0])


@pytest.mark.slow
def test_cli_on_the_shipped_model_with_masks(tmp_path):
    """The shipped model (no masks of its own) with random masks of the density an allocation
    gives (about 95% of the neurons a pair): export, package, and translations token for token."""
    from jax_namnmt import bake as bake_cli
    from jax_namnmt import packaged, workflow
    from jax_namnmt.method.allocation import save_masks

    run_dir = tmp_path / "masked"
    shutil.copytree(packaged.shipped_model_dir(), run_dir)
    config = workflow.load_run(run_dir).config
    pairs = list(config.data.pairs)
    rng = np.random.default_rng(0)
    save_masks(run_dir / "masks.npz", {name: rng.random((len(pairs), n)) < 0.95
                                        for name, n in module_sizes(config.model).items()}, pairs, {"by": "test"})
    out = tmp_path / "baked"
    done = subprocess.run([sys.executable, "-m", "jax_namnmt.bake", "export", "--checkpoint", str(run_dir),
                           "--pair", "de-en", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "baked de-en:" in done.stdout
    info = json.loads((out / "package.json").read_text())["baked"]
    assert info["serves"] == ["de-en"] and info["params_baked"] < info["params_masked"]

    lines = ["Zwei Hunde spielen im Schnee.", "Ein Mann fährt mit dem Fahrrad eine Straße entlang.",
             "Eine Frau in einem roten Kleid singt auf einer Bühne."]
    masked = workflow.load_run(run_dir)
    sources = workflow.encode_sources(masked, lines, "en")
    want = translate_ids(masked.params, masked.config.model, masked.model_masks(), sources,
                         np.full(3, pairs.index("de-en"), np.int32), masked.config.decode)
    loaded = bake_cli.load_baked(out)
    got = translate_ids(loaded.params, loaded.config.model, None, sources, np.zeros(3, np.int32), loaded.config.decode)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    assert bake_cli.translate(loaded, lines, "de", "en") == masked.vocab.decode_batch(want)
    with pytest.raises(DataError, match="baked for de-en, not fr-en"):
        bake_cli.translate(loaded, lines, "fr", "en")
    # a run without masks cannot be baked
    with pytest.raises(CheckpointError, match="no masks.npz"):
        bake_cli.bake_run(workflow.load_run(packaged.shipped_model_dir()), pair="de-en")


def test_translate_cli_reads_a_baked_package(tmp_path, monkeypatch):
    """``python -m jax_namnmt.translate --checkpoint BAKED`` (the run loaders read ``model.widths``)
    translates as ``bake translate`` does, token for token, and refuses a direction it was not baked for."""
    from tiny_package import make_tiny_package

    from jax_namnmt import bake as bake_cli
    from jax_namnmt import inference, workflow
    from jax_namnmt import translate as translate_cli
    from jax_namnmt.method.allocation import save_masks

    run_dir = make_tiny_package(tmp_path / "masked", beam=2)
    plain = workflow.load_run(run_dir)
    rng = np.random.default_rng(0)
    save_masks(run_dir / "masks.npz", {name: rng.random((len(plain.pairs), n)) < 0.7
                                        for name, n in module_sizes(plain.config.model).items()}, plain.pairs,
               {"by": "test"})
    params, config, info = bake_cli.bake_run(workflow.load_run(run_dir), pair="de-en")
    out = bake_cli.save_baked(tmp_path / "baked", params, config, run_dir / "spm.model", info)
    lines = ["Zwei Hunde spielen im Schnee.", "", "Ein Mann fährt mit dem Fahrrad eine Straße entlang.",
             "Eine Frau in einem roten Kleid singt.", "Kinder spielen im Park."]
    want = bake_cli.translate(bake_cli.load_baked(out), lines, "de", "en")
    assert want[1] == "" and len({w for w in want if w}) > 1  # not vacuous: the outputs depend on the line
    src, got = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setenv("JAX_NAMNMT_XLA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", ["translate", "--checkpoint", str(out), "--src", "de", "--tgt", "en",
                                      "--input", str(src), "--output", str(got), "--quiet"])
    assert translate_cli.main() == 0
    assert got.read_text(encoding="utf-8").split("\n")[:-1] == want
    # en-de is between the package's languages, but not baked: refused (no zero-shot), naming what it has
    with pytest.raises(DataError, match=r"baked for de-en, not en-de"):
        inference.Translator(inference.load_model(out), "en", "de")
    with pytest.raises(DataError, match=r"baked for de-en, not en-de"):
        bake_cli.translate(bake_cli.load_baked(out), lines, "en", "de")
    # load_run reads it too (the baked widths, no masks); it is not exported again as a plain package
    run = workflow.load_run(out)
    assert run.config.model.widths == config.model.widths and run.masks is None
    with pytest.raises(CheckpointError, match="a baked package already"):
        workflow.export_run(out, tmp_path / "again")


def test_nest_helper_is_the_models_mask_tree():
    """The masks the tests hand the masked model are the allocation's flat masks, nested."""
    flat = random_flat_masks(TINY, seed=0)
    tree = to_model_masks(flat)
    assert jax.tree.structure(tree) == jax.tree.structure(nest({k: 0 for k in flat}))
