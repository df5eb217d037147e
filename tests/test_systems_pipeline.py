"""``pipeline --systems all`` on the tiny config: every system of the paper's Table 1 is trained and
evaluated by the same code, with the paper's parameter accounting; then the paper's analyses
(``jax_namnmt.analyze``) over that work directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import sacrebleu_scores

from jax_namnmt import analyze, systems, workflow
from jax_namnmt.analysis.erasure import erase_general, erase_specific
from jax_namnmt.analysis.scores import lscore
from jax_namnmt.config import load_config
from jax_namnmt.method.allocation import load_masks
from jax_namnmt.pipeline import Pipeline

pytestmark = pytest.mark.slow  # every system of the paper end to end (the whole pipeline)
# test lines per pair, for the pipeline and the analyses alike: the analyses' batches then have the
# shapes of the pipeline's, so they run the beam-search programs it compiled (fewer lines there
# would compile two more, ~2.5 s each on 2 cores, for less decoding than that saves)
SAME_LINES = 4


@pytest.fixture(scope="module")
def run_all(tmp_path_factory, tiny_corpus):
    root = tmp_path_factory.mktemp("systems")
    data = tiny_corpus
    # rows layout: fixed batch shapes, so the four individual models share one compiled step (the
    # compact layout's shapes follow each corpus: four more compiles, ~30 s of this module)
    config = load_config("tiny", [f"data.data_dir={data}", "train.steps=4", "finetune.steps=2",
                                  f"decode.test_max_lines={SAME_LINES}", "systems.adapter_dim=8",
                                  "data.layout=rows"])
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
        assert all(isinstance(row[p], float) for p in pairs), name
        assert row["params"] == run_all["results"][name]["params"] > 0, name


@pytest.mark.parametrize("system", ["multilingual", "method_te"])
def test_row_is_a_direct_evaluate_of_its_checkpoint(run_all, system):
    """A row's numbers are those of evaluating its checkpoint again (the same test lines, the same
    beam search), and those are sacreBLEU's own for the translations against the corpus's references."""
    config, workdir = run_all["config"], run_all["workdir"]
    row = json.loads((workdir / "results.json").read_text())["systems"][system]
    assert Path(row["checkpoint"]) == (workdir / system).resolve()
    dc = config.decode
    data_dir = workflow.data_dir_for(config, workdir)
    scores = workflow.evaluate_run(workflow.load_run(workdir / system), data_dir, dc.test_split, dc.test_max_lines,
                                   quiet=True)
    for pair in config.data.pairs:
        assert scores[pair]["bleu"] == pytest.approx(row[pair], abs=1e-9), pair
        hyps = scores["hypotheses"][pair]
        assert len(hyps) == dc.test_max_lines, pair
        bleu, chrf = sacrebleu_scores(hyps, data_dir, dc.test_split, pair, dc.test_max_lines)
        assert scores[pair]["bleu"] == pytest.approx(bleu, abs=1e-9), pair
        assert scores[pair]["chrf"] == pytest.approx(chrf, abs=1e-9), pair
    assert row["chrf_avg"] == pytest.approx(np.mean([scores[p]["chrf"] for p in config.data.pairs]), abs=1e-9)


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


# ----------------------------------------------------------------------------- analyses over this work directory


def _png(path) -> bool:
    return Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analyze_importance_and_scores(run_all):
    workdir = run_all["workdir"]
    report = analyze.importance(analyze_args(workdir, "importance", show_pairs="de-en,fr-en"))
    theta, pairs = workflow.load_importance(workdir / "importance_method_te.npz")
    assert report["module"] == "decoder_layer_0/ffn/fc1" and report["pairs"] == ["de-en", "fr-en"]
    np.testing.assert_allclose(report["importance"], theta[report["module"]][[pairs.index("de-en"),
                                                                           pairs.index("fr-en")]], rtol=1e-6)
    assert _png(report["figure"])
    scores = analyze.scores_command(analyze_args(workdir, "scores"))
    masks, pairs, _ = load_masks(workdir / "masks_method_te.npz")
    layers, table = lscore(masks)
    assert scores["lscore"]["layers"] == layers and _png(scores["figure"])
    assert json.loads((workdir / "analysis" / "scores.json").read_text())["pairs"] == pairs


def test_analyze_erasure(run_all):
    workdir = run_all["workdir"]
    report = analyze.erasure_command(analyze_args(workdir, "erasure", max_lines=SAME_LINES))
    pairs = list(run_all["config"].data.pairs)
    run = workflow.load_run(workdir / "method_te")
    assert list(report["bleu"]) == ["none", "general 20%"] + [f"{p} specific 50%" for p in pairs]
    assert report["erased_neurons"]["general 20%"] == erase_general(run.masks, 0.2, 0)[1] > 0
    assert report["erased_neurons"][f"{pairs[1]} specific 50%"] == erase_specific(run.masks, 1, 0.5, 0)[1]
    for name, drop in report["drop"].items():
        assert drop["avg"] == pytest.approx(report["bleu"]["none"]["avg"] - report["bleu"][name]["avg"])
    assert _png(report["figure"])


def test_analyze_sweep_keeps_finished_points(run_all, monkeypatch):
    workdir = run_all["workdir"]
    record = analyze.sweep(analyze_args(workdir, "sweep", param="k", values="0,1", max_lines=SAME_LINES))
    assert sorted(record["points"]) == ["0", "1"]
    assert set(record["baseline"]) == set(run_all["config"].data.pairs) | {"avg"}
    every, _, _ = load_masks(workdir / "analysis" / "sweep_k" / "masks_k0.npz")
    assert all(m.all() for m in every.values())  # k = 0: every neuron to every pair
    only, _, _ = load_masks(workdir / "analysis" / "sweep_k" / "masks_k1.npz")
    assert not all(m.all() for m in only.values())
    assert workflow.is_finished(workdir / "analysis" / "sweep_k" / "k1", run_all["config"].finetune.steps)
    assert _png(record["figure"])
    trained = []
    real = workflow.run_finetune
    monkeypatch.setattr(workflow, "run_finetune", lambda *a, **k: trained.append(a[3].name) or real(*a, **k))
    again = analyze.sweep(analyze_args(workdir, "sweep", param="k", values="0,0.5,1", max_lines=SAME_LINES))
    assert trained == ["k0.5"] and sorted(again["points"], key=float) == ["0", "0.5", "1"]
    assert again["points"]["0"] == record["points"]["0"]


def analyze_args(workdir, command, **fields):
    """The parsed command line ``analyze COMMAND --workdir W --quiet --field value ...``."""
    argv = [command, "--workdir", str(workdir), "--quiet"]
    for key, value in fields.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return analyze.parse_args(argv)


def test_analyze_gradients(run_all):
    workdir = run_all["workdir"]
    report = analyze.gradients_command(analyze_args(workdir, "gradients", lines=10))
    pairs = list(run_all["config"].data.pairs)
    assert report["start"] == str(workdir / "pretrain") and report["pairs"] == pairs
    groups = report["groups"]
    assert groups["all"]["size"] == groups["general"]["size"] + groups["specific"]["size"] + groups["other"]["size"]
    for group in groups.values():
        assert len(group["self"]) == len(pairs) and all(-1 <= v <= 1 for v in group["self"])
        cross = group["cross"]
        assert all(cross[p][p] is None for p in range(len(pairs)))  # the diagonal is a pair's own: left out
        assert all(cross[p][q] == cross[q][p] for p in range(len(pairs)) for q in range(len(pairs)))
    assert _png(report["figure"])
    assert json.loads((workdir / "analysis" / "gradients.json").read_text())["summary"] == report["summary"]
    # a start model trained elsewhere, whose config names no data: the lines are the pipeline's
    start, work = workdir.parent / "elsewhere", workdir.parent / "work_from_elsewhere"
    shutil.copytree(workdir / "pretrain", start)
    config = json.loads((start / "config.json").read_text())
    config["data"]["data_dir"] = ""
    (start / "config.json").write_text(json.dumps(config))
    shutil.copytree(workdir / "method_te", work / "method_te")
    shutil.copy(workdir / "masks_method_te.npz", work / "masks_method_te.npz")
    (work / "method_te" / "run.json").write_text(json.dumps({**json.loads((workdir / "method_te" / "run.json").read_text()),
                                                              "from": str(start)}))
    again = analyze.gradients_command(analyze_args(work, "gradients", lines=10))
    assert again["start"] == str(start) and again["summary"] == report["summary"]
