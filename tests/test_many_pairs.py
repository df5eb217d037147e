"""The machinery at NTREX-128 scale (127 one-to-many pairs): mask tables of 128 rows keep masked
neurons at exactly zero under every mask lookup (the CPU default packs them into bits), the lookups
agree, and an NTREX-shaped folder with 127 target languages (codes with a script or region among
them) becomes 127 pairs with their own ``<2xx>`` tags and pair ids."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_namnmt.config import load_config
from jax_namnmt.data.batching import encode_parallel
from jax_namnmt.data.corpus import parse_pairs, read_parallel
from jax_namnmt.data.multiway import build_from_ntrex, ntrex_file, ntrex_languages
from jax_namnmt.data.vocab import Vocab, train_vocab
from jax_namnmt.errors import DataError
from jax_namnmt.method.masks import flatten, module_sizes, nest
from jax_namnmt.model.transformer import (MASK_LOOKUP_ENV, MASK_LOOKUPS, lookup_mask, mask_lookup_method,
                                          pack_mask_bits)

PAIRS = 128


def test_mask_lookups_give_the_same_rows_for_128_pairs():
    """``onehot``, ``gather`` and ``bits`` look up exactly the table's rows, for any pair id and a
    width that is not a multiple of 32 (the last word half used), with the same gradient with
    respect to the table (the per-pair sums of the rows' cotangents); the CPU default is ``bits``."""
    rng = np.random.default_rng(0)
    table = (rng.random((PAIRS, 70)) < 0.6).astype(np.float32)
    pairs = rng.integers(0, PAIRS, size=(3, 17)).astype(np.int32)
    pairs[0, :3] = (0, PAIRS - 1, 64)
    expected = table[pairs]
    weights = rng.standard_normal(expected.shape).astype(np.float32)
    grad_expected = np.zeros_like(table)
    np.add.at(grad_expected, pairs.reshape(-1), weights.reshape(-1, table.shape[1]))
    for method in MASK_LOOKUPS:
        look = lambda t, m=method: lookup_mask({"fc1": t}, "fc1", pairs, jnp.float32, m)  # noqa: E731
        np.testing.assert_array_equal(np.asarray(jax.jit(look)(table)), expected, err_msg=method)
        grad = jax.jit(jax.grad(lambda t, look=look: jnp.sum(look(t) * weights)))(table)
        np.testing.assert_allclose(np.asarray(grad), grad_expected, rtol=1e-6, atol=1e-6, err_msg=method)
    words = np.asarray(pack_mask_bits(jnp.asarray(table)))
    assert words.shape == (PAIRS, 3) and words.dtype == np.uint32
    assert int(words[5, 0]) == sum(int(table[5, j]) << j for j in range(32))
    if jax.default_backend() == "cpu" and not __import__("os").environ.get(MASK_LOOKUP_ENV):
        assert mask_lookup_method() == "bits"


def _batch_of_many_pairs(pack, example):
    """Three rows of 16 tokens, six examples from pairs 0, 5, 64, 90, 126, 127."""
    rng = np.random.default_rng(3)
    rows = [[example(rng, 4, 3, 0), example(rng, 3, 5, 127), example(rng, 5, 4, 64)],
            [example(rng, 6, 4, 90), example(rng, 2, 3, 5)],
            [example(rng, 7, 6, 126)]]
    return pack(rows, 16, 16), [0, 5, 64, 90, 126, 127]


@pytest.mark.parametrize("method", ["bits", "onehot"])
def test_masked_step_at_128_pairs_keeps_masked_neurons_at_zero(method, tiny_config, tiny_params, pack, example,
                                                               fns, monkeypatch):
    """With 128-row masks and a batch mixing six of the pairs: every masked (token, neuron) output
    is exactly 0, a neuron masked for all six pairs gets exactly zero kernel and bias gradient
    while one kept for some pair does not, and both lookups give the same loss and gradients."""
    monkeypatch.setenv(MASK_LOOKUP_ENV, method)
    batch, used = _batch_of_many_pairs(pack, example)
    rng = np.random.default_rng(7)
    flat = {name: (rng.random((PAIRS, n)) < 0.7).astype(np.float32) for name, n in module_sizes(tiny_config).items()}
    for m in flat.values():  # neuron 0: off for every pair in the batch; neuron 1: on for pair 127 only
        m[used, 0] = 0.0
        m[used, 1] = 0.0
        m[127, 1] = 1.0
    masks = nest(flat)
    _, acts = fns.forward_h(tiny_params, batch, masks, config=tiny_config)
    for name, h in acts.items():
        side = "src" if name.startswith("encoder") or name.endswith(("cross_attn/k", "cross_attn/v")) else "tgt"
        keep = flat[name][batch[f"{side}_pairs"]]  # [B, L, F]: each token's pair's row
        real = (batch[f"{side}_segments"] > 0)[..., None]
        assert np.all(np.asarray(h)[(keep == 0) & real] == 0.0), name
    grads = fns.loss_grad(tiny_params, batch, masks, config=tiny_config)
    for name in flat:
        dense = flatten(grads)
        kernel, bias = dense[f"{name}/dense/kernel"], dense[f"{name}/dense/bias"]
        assert np.all(np.asarray(kernel[:, 0]) == 0.0) and float(bias[0]) == 0.0, name
        assert np.any(np.asarray(kernel[:, 1]) != 0.0), name
    other = "onehot" if method == "bits" else "gather"
    monkeypatch.setenv(MASK_LOOKUP_ENV, other)
    ref = jax.jit(lambda p: jax.value_and_grad(fns.summed_loss)(p, batch, masks, tiny_config))(tiny_params)
    monkeypatch.setenv(MASK_LOOKUP_ENV, method)
    got = jax.jit(lambda p: jax.value_and_grad(fns.summed_loss)(p, batch, masks, tiny_config))(tiny_params)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(ref[1]), jax.tree.leaves(got[1])):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


WORDS = ("river house green light stone paper window morning garden bridge silver winter market "
         "letter music forest island doctor summer table").split()


def _ntrex_fixture(root, codes, lines: int = 20):
    """An NTREX-shaped folder: the English source, one reference per NTREX code (with its ``-``),
    the second Spanish reference (not a language) and the document ids (10 documents of 2 lines)."""
    root.mkdir()
    rng = np.random.default_rng(0)
    english = [" ".join(rng.choice(WORDS, 6)) for _ in range(lines)]
    (root / "newstest2019-src.eng.txt").write_text("\n".join(english) + "\n")
    for code in codes:
        text = [f"{code} " + " ".join(rng.choice(WORDS, 5)) for _ in range(lines)]
        (root / f"newstest2019-ref.{code.replace('_', '-')}.txt").write_text("\n".join(text) + "\n")
    (root / "newstest2019-ref-2.spa.txt").write_text("\n".join(english) + "\n")
    (root / "DOCUMENT_IDS.tsv").write_text("".join(f"doc{i // 2}\t{i}\n" for i in range(lines)))
    return root


def test_ntrex_folder_with_127_targets_becomes_127_pairs(tmp_path):
    """The config's 127 targets, hyphenated NTREX codes written with ``_``; an NTREX folder of them
    becomes 127 pairs split by document, every example tagged with its target's own ``<2xx>`` and
    its pair id; an unknown code is an error naming the folder and the ``_`` spelling."""
    config = load_config("ntrex_o2m_tiny")
    pairs = parse_pairs(config.data.pairs)
    targets = [p.tgt for p in pairs]
    assert len(pairs) == len(set(targets)) == 127 and {p.src for p in pairs} == {"en"}
    assert {"aze_Latn", "eng_GB", "zho_TW", "deu"} <= set(targets)
    src = _ntrex_fixture(tmp_path / "ntrex", targets)
    assert ntrex_languages(src) == sorted(targets)
    out = build_from_ntrex(src, tmp_path / "data", pairs)
    assert len(list(out.glob("*.en-aze_Latn.*"))) == 6  # train / valid / test, both sides
    assert (out / "valid.en-eng_GB.eng_GB").read_text().startswith("eng_GB ")  # the eng-GB file's lines

    texts = read_parallel(out, "train", pairs)
    assert len(texts) == 127 and all(len(t.src) == 16 for t in texts.values())  # 8 of 10 documents
    langs = sorted({"en", *targets})
    spm = train_vocab([line for t in texts.values() for line in (*t.src, *t.tgt)], langs,
                      tmp_path / "spm", vocab_size=200)
    vocab = Vocab.load(spm)
    assert vocab.langs == langs
    index = {p.name: i for i, p in enumerate(pairs)}
    examples, stats = encode_parallel(texts, vocab, index, max_len=64)
    assert len(examples) == 127 * 16 and sorted(set(examples.pair_ids.tolist())) == list(range(127))
    tags = {p.name: vocab.tag_id(p.tgt) for p in pairs}
    assert len(set(tags.values())) == 127
    for src_ids, pair_id in zip(examples.src, examples.pair_ids):
        assert src_ids[0] == tags[pairs[pair_id].name]

    with pytest.raises(DataError, match="aze_Latn"):
        ntrex_file(src, "xyz_Latn")


def test_config_targets_are_the_ntrex_folders_languages():
    """Where NTREX-128 is present (``../shared/data/ntrex128``), the config's 127 targets are
    exactly its target languages."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "ntrex128"
    if not folder.is_dir():
        pytest.skip(f"no NTREX-128 folder at {folder}")
    targets = [p.tgt for p in parse_pairs(load_config("ntrex_o2m_tiny").data.pairs)]
    assert ntrex_languages(folder) == sorted(targets)


def test_benchmark_lookup_choices_are_the_models():
    """``masked_overhead --mask-lookup`` offers exactly the model's lookups (it cannot import them:
    its driver process stays free of jax)."""
    from benchmarks.masked_overhead import LOOKUPS

    assert LOOKUPS == MASK_LOOKUPS


def test_validation_of_many_small_pairs_is_a_few_mixed_batches():
    """Validation packs all pairs together (the eval step sums by pair): 12 pairs of 5 lines, whose
    length ratios differ as NTREX-128's languages do, are one or two batches of one shape, not a
    batch (and in the compact layout a compiled shape) a pair; every example is in exactly one."""
    from jax_namnmt.data.batching import Examples
    from jax_namnmt.training.loop import validation_batches

    rng = np.random.default_rng(0)
    src, tgt, pair_ids = [], [], []
    for pair in range(12):
        for _ in range(5):  # target length 3-30 times the pair's ratio: each pair packs differently
            n_src = int(rng.integers(4, 12))
            n_tgt = int(min(30, max(2, n_src * (0.5 + pair / 4))))
            src.append(rng.integers(4, 50, n_src).astype(np.int32))
            tgt.append(rng.integers(4, 50, n_tgt).astype(np.int32))
            pair_ids.append(pair)
    examples = Examples(src, tgt, np.asarray(pair_ids, np.int32), [("x", i + 1) for i in range(len(src))])
    for layout in ("compact", "rows"):
        batches = validation_batches(examples, layout, (1024, 32, 32))
        assert 1 <= len(batches) < 12
        assert len({tuple((k, v.shape) for k, v in sorted(b.items())) for b in batches}) == 1
        starts = np.zeros(12, int)
        for b in batches:
            first = (b["tgt_positions"] == 0) & (b["tgt_segments"] > 0)
            starts += np.bincount(b["tgt_pairs"][first], minlength=12)
        assert starts.tolist() == [5] * 12


def test_pair_costs_host_side_at_128_pairs():
    """The pair-cost benchmark's host side at 128 pairs: the mask file round-trips exactly, pair and
    target variants allocate, the device tables are 128 float32 rows of every module."""
    from benchmarks.pair_costs import host_costs, model

    config = model(quick=True)
    small, large = host_costs(config, 8, 0), host_costs(config, PAIRS, 0)
    assert large["roundtrip_equal"] and small["roundtrip_equal"]
    assert large["device_table_bytes"] == PAIRS * 4 * sum(module_sizes(config).values())
    assert large["file_bytes"] > 8 * small["file_bytes"] and 0.5 < large["kept_share"] < 1.0
