"""``pipeline --systems all`` on the tiny config: every system of the paper's Table 1 is trained and
evaluated by the same code, with the paper's parameter accounting."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jax_namnmt import systems, workflow
from jax_namnmt.config import load_config
from jax_namnmt.data.multiway import MULTI30K_SPLITS, build_from_multiway, multi30k_dir
from jax_namnmt.method.allocation import load_masks
from jax_namnmt.pipeline import Pipeline

TINY_LINES = {"train": 200, "valid": 24, "test": 8}


@pytest.fixture(scope="module")
def run_all(tmp_path_factory):
    root = tmp_path_factory.mktemp("systems")
    base = load_config("tiny")
    data = build_from_multiway(multi30k_dir(), root / "tinydata", base.data.pairs, MULTI30K_SPLITS,
                               max_lines=TINY_LINES).resolve()
    config = load_config("tiny", [f"data.data_dir={data}", "train.steps=4", "finetune.steps=2",
                                  "decode.test_max_lines=4", "systems.adapter_dim=8"])
    workdir = root / "work"
    results = Pipeline(config, workdir, None, quiet=True).run(list(systems.SYSTEMS))
    return {"config": config, "workdir": workdir, "results": results}


def plain_count(config) -> int:
    """Hand count of the tiny Transformer: tied embeddings, per layer q/k/v/out + FFN + layer norms."""
    m = config.model
    d, f, v = m.d_model, m.ffn_dim, m.vocab_size
    attn = 4 * (d * d + d)
    ffn = d * f + f + f * d + d
    norm = 2 * d
    return v * d + m.enc_layers * (attn + ffn + 2 * norm) + m.dec_layers * (2 * attn + ffn + 3 * norm)


def test_every_system_has_a_row(run_all):
    pairs = list(run_all["config"].data.pairs)
    saved = json.loads((run_all["workdir"] / "results.json").read_text())
    assert list(saved["systems"]) == list(systems.SYSTEMS)
    for name, row in saved["systems"].items():
        assert set(pairs) <= set(row), name
        assert np.isclose(row["avg"], np.mean([row[p] for p in pairs])), name
        assert all(0.0 <= row[p] <= 100.0 for p in pairs)


def test_parameter_counts_follow_the_paper(run_all):
    config, rows = run_all["config"], run_all["results"]
    m, pairs = config.model, list(config.data.pairs)
    d, n_tgt = m.d_model, len({p.split("-")[1] for p in pairs})
    plain = plain_count(config)
    assert rows["multilingual"]["params"] == plain
    assert rows["method_te"]["params"] == rows["method_av"]["params"] == plain  # masks add no parameters
    assert rows["individual"]["params"] == len(pairs) * plain  # the sum of the bilingual models
    wide = systems.expansion_ffn_dim(config)
    assert wide == round(m.ffn_dim * 3000 / 2048)
    assert rows["expansion"]["params"] == plain + (m.enc_layers + m.dec_layers) * 2 * d * (wide - m.ffn_dim) \
        + (m.enc_layers + m.dec_layers) * (wide - m.ffn_dim)
    # +TS: every decoder layer's cross-attention q/k/v/out once per target language
    assert rows["ts"]["params"] == plain + m.dec_layers * (n_tgt - 1) * 4 * (d * d + d)
    # +Adapter: per pair and layer: layer norm (2d), down (d*a + a), up (a*d + d)
    a = config.systems.adapter_dim
    per_layer = 2 * d + d * a + a + a * d + d
    assert rows["adapter"]["params"] == plain + len(pairs) * (m.enc_layers + m.dec_layers) * per_layer


def test_scratch_systems_got_the_same_budget(run_all):
    workdir, config = run_all["workdir"], run_all["config"]
    total = config.train.steps + config.finetune.steps
    for name in ("ts", "adapter"):
        assert workflow.load_run(workdir / name).step == total
    for pair in config.data.pairs:
        assert workflow.load_run(workdir / "individual" / pair).step == total // len(config.data.pairs)
    assert workflow.load_run(workdir / "expansion_pretrain").step == config.train.steps
    assert workflow.load_run(workdir / "expansion").step == config.finetune.steps


def test_av_and_te_use_their_own_importance(run_all):
    workdir = run_all["workdir"]
    te, _, _ = load_masks(workdir / "masks_method_te.npz")
    av, _, _ = load_masks(workdir / "masks_method_av.npz")
    assert set(te) == set(av)
    assert any(not np.array_equal(te[k], av[k]) for k in te)  # different scores, different allocations
    with np.load(workdir / "importance_method_av.npz") as a, np.load(workdir / "importance_method_te.npz") as t:
        assert not np.allclose(a[a.files[-1]], t[t.files[-1]])
