"""The controlled reproduction's parts: allocation choices (normalisation, module set), the random-mask
control, the mask report, paired bootstrap, per-pair validation, and the protocol end to end."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
import sacrebleu

from jax_namnmt.errors import ConfigError
from jax_namnmt.method.allocation import (allocate, embedding_input_modules, general_neurons, mask_report,
                                          normalize_importance, random_masks)
from jax_namnmt.significance import bleu_from_stats, paired_bootstrap, sentence_stats

NAMES = [f"{stack}_layer_{i}/{block}/{proj}" for stack in ("encoder", "decoder") for i in range(2)
         for block in ("self_attn",) for proj in ("q", "k", "v", "out")] + ["encoder_layer_0/ffn/fc1",
                                                                             "decoder_layer_1/cross_attn/k"]
PAIRS = ["de-en", "en-de", "fr-en", "en-fr"]


def _theta(seed=0, neurons=40):
    rng = np.random.default_rng(seed)
    return {name: rng.gamma(2.0, 1.0, size=(len(PAIRS), neurons)) for name in NAMES}


def test_pair_mean_normalisation_makes_allocation_blind_to_a_pairs_scale():
    theta = _theta()
    scaled = {n: t * np.array([[0.01], [1.0], [7.0], [1.0]]) for n, t in theta.items()}  # an "easy" pair 0
    plain = allocate(theta, PAIRS, 0.7, 0.8, normalize="pair_mean")
    assert all(np.array_equal(plain[n], allocate(scaled, PAIRS, 0.7, 0.8, normalize="pair_mean")[n]) for n in NAMES)
    raw = allocate(scaled, PAIRS, 0.7, 0.8)  # without it the easy pair loses its specific neurons
    assert sum(raw[n][0].sum() for n in NAMES) < sum(plain[n][0].sum() for n in NAMES)
    norm = normalize_importance(theta[NAMES[0]], "pair_mean")
    np.testing.assert_allclose(norm.mean(axis=1), 1.0)
    assert np.array_equal(normalize_importance(np.zeros((2, 3)), "pair_mean"), np.zeros((2, 3)))
    with pytest.raises(ConfigError, match="normalize"):
        allocate(theta, PAIRS, 0.7, 0.8, normalize="zscore")


def test_no_embedding_inputs_leaves_the_first_self_attention_qkv_shared_and_nothing_else():
    theta = _theta(1)
    every = allocate(theta, PAIRS, 0.5, 0.9)
    original = allocate(theta, PAIRS, 0.5, 0.9, modules="no_embedding_inputs")
    shared = set(embedding_input_modules(NAMES))
    assert shared == {f"{s}_layer_0/self_attn/{p}" for s in ("encoder", "decoder") for p in "qkv"}
    for name in NAMES:
        if name in shared:
            assert original[name].all() and not every[name].all()
        else:
            assert np.array_equal(original[name], every[name])


def test_random_masks_keep_every_count_and_move_the_neurons():
    masks = allocate(_theta(2), PAIRS, 0.6, 0.7)
    control = random_masks(masks, seed=3)
    assert list(control) == list(masks)
    moved = 0
    for name, mask in masks.items():
        new = control[name]
        # the drawn shared set has the original's size; specific draws may add neurons every pair holds
        assert general_neurons(new).sum() >= general_neurons(mask).sum()
        np.testing.assert_array_equal(new.sum(axis=1), mask.sum(axis=1))  # per pair: general + its specific
        moved += int((new != mask).sum())
    assert moved > 0
    again = random_masks(masks, seed=3)
    assert all(np.array_equal(again[n], control[n]) for n in masks)


def test_mask_report_by_hand():
    masks = {"m": np.array([[True, True, False, False], [True, True, True, True]])}
    theta = {"m": np.array([[1.0, 1.0, 1.0, 1.0], [4.0, 3.0, 2.0, 1.0]])}
    report = mask_report(masks, theta, ["a-b", "b-a"])
    assert report["kept"]["m"] == {"a-b": 0.5, "b-a": 1.0}
    assert report["importance_removed"]["m"] == {"a-b": 0.5, "b-a": 0.0}
    assert report["per_pair"]["a-b"] == {"kept": 0.5, "importance_removed": 0.5}


def _corpus(seed, n=200, noise=0.3):
    rnd = random.Random(seed)
    words = "a the cat dog sat on mat ran fast slow big small red blue green".split()
    refs = [" ".join(rnd.choices(words, k=rnd.randint(1, 14))) for _ in range(n)]
    hyps = [" ".join(w if rnd.random() > noise else rnd.choice(words) for w in r.split()[: rnd.randint(1, 14)])
            for r in refs]
    return hyps, refs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bleu_from_sentence_statistics_is_sacrebleu(seed):
    hyps, refs = _corpus(seed)
    stats = sentence_stats(hyps, refs)
    assert bleu_from_stats(stats.sum(0)) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    for i in range(20):  # single sentences: zero n-gram matches exercise the smoothing
        want = sacrebleu.corpus_bleu(hyps[i:i + 1], [refs[i:i + 1]]).score
        assert bleu_from_stats(stats[i]) == pytest.approx(want, abs=1e-9)


def test_paired_bootstrap_sees_no_difference_between_equals_and_a_real_one():
    hyps, refs = _corpus(0, n=300)
    stats = sentence_stats(hyps, refs)
    same = paired_bootstrap([stats, stats], [stats, stats], samples=200)
    assert same["diff"] == 0.0 and same["p"] == 1.0
    better = sentence_stats([r if i % 3 else h for i, (h, r) in enumerate(zip(hyps, refs))], refs)
    result = paired_bootstrap([better], [stats], samples=200)
    assert result["diff"] > 0 and result["p"] < 0.05 and result["ci95"][0] > 0
    worse = paired_bootstrap([stats], [better], samples=200)
    assert worse["diff"] == pytest.approx(-result["diff"]) and worse["p"] < 0.05


def test_validation_per_pair_from_one_mixed_packing_equals_each_pair_alone(tiny_corpus):
    """Validation packs all pairs together and sums by each token's pair: a pair's ``nll_<pair>``
    is its NLL evaluated alone (its own packing), and the totals are the token-weighted sums."""
    from jax_namnmt import workflow
    from jax_namnmt.config import load_config
    from jax_namnmt.data.vocab import Vocab
    from jax_namnmt.model.transformer import init_params
    from jax_namnmt.training.loop import validation_batches, validation_loss
    from jax_namnmt.add_pair import only_pair

    from jax_namnmt import packaged
    config = load_config("tiny", ["model.vocab_size=6000", "data.vocab_size=6000"])
    vocab = Vocab.load(packaged.shipped_model_dir() / "spm.model")
    examples, _ = workflow.load_examples(config, tiny_corpus, vocab, "valid")
    params = init_params(config.model, 0)
    shape = (config.train.tokens_per_batch, config.data.src_row_len, config.data.tgt_row_len)
    mixed_batches = validation_batches(examples, "rows", shape)
    mixed = validation_loss(params, mixed_batches, None, config)
    assert {f"nll_{p}" for p in config.data.pairs} <= set(mixed)
    assert any(len(set(np.unique(b["tgt_pairs"][b["tgt_segments"] > 0]))) > 1 for b in mixed_batches)
    for pid, pair in enumerate(config.data.pairs[:3]):  # three pairs, each evaluated alone
        solo = validation_loss(params, validation_batches(only_pair(examples, pid), "rows", shape), None, config)
        assert set(solo) == {"loss", "nll", "ppl", f"nll_{pair}"} and solo[f"nll_{pair}"] == solo["nll"]
        assert mixed[f"nll_{pair}"] == pytest.approx(solo["nll"], rel=1e-5)
    tokens = np.bincount(examples.pair_ids, weights=[len(t) for t in examples.tgt])  # a label per target token
    per_pair = np.array([mixed[f"nll_{p}"] for p in config.data.pairs])
    assert mixed["nll"] == pytest.approx(float((per_pair * tokens).sum() / tokens.sum()), rel=1e-5)


def test_config_fields_are_checked():
    from jax_namnmt.config import load_config
    from jax_namnmt.reproduce import check_config
    with pytest.raises(ConfigError, match="method.importance_loss"):
        load_config("tiny", ["method.importance_loss=focal"])
    with pytest.raises(ConfigError, match="method.modules"):
        load_config("tiny", ["method.modules=some"])
    with pytest.raises(ConfigError, match="reproduce.rho_k"):
        check_config(load_config("tiny", ['reproduce.rho_k=["0.9-0.7"]']))
    with pytest.raises(ConfigError, match="reproduce.systems"):
        check_config(load_config("tiny", ['reproduce.systems=["multilingual","method_tee"]']))
    with pytest.raises(ConfigError, match="reproduce.corpus_splits"):
        check_config(load_config("tiny", ["reproduce.corpus_splits=train=train,valid=val"]))
    with pytest.raises(ConfigError, match="reproduce.corpus: '/no/such/corpus'"):
        check_config(load_config("tiny", ["reproduce.corpus=/no/such/corpus"]))
    with pytest.raises(ConfigError, match="de-xx-en"):
        check_config(load_config("tiny", ["reproduce.many_to_many_pairs=de-en,de-xx-en"]))


def test_a_corpus_of_ones_own(tmp_path):
    """reproduce.corpus: the setting's data come from the given multi-way corpus and its split names
    (valid cut in importance and valid parts), its pairs from reproduce.many_to_many_pairs; a missing
    split file is named."""
    import gzip

    from jax_namnmt import packaged, reproduce
    from jax_namnmt.config import load_config
    from jax_namnmt.data.corpus import read_lines
    from jax_namnmt.errors import DataError
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = {lang: [f"{lang} sentence {i} ." for i in range(30)] for lang in ("en", "de")}
    for split, (a, b) in {"tr": (0, 20), "dev": (20, 27), "tst": (27, 30)}.items():
        for lang in ("en", "de"):
            with gzip.open(corpus / f"{split}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in lines[lang][a:b]))
    config = reproduce.check_config(load_config("tiny", [
        f"reproduce.corpus={corpus}", "reproduce.corpus_splits=train=tr,valid=dev,test=tst",
        "reproduce.many_to_many_pairs=de-en,en-de", "reproduce.importance_lines=3"]))
    setting = reproduce.Setting("many_to_many", config, tmp_path / "w", packaged.shipped_model_dir(), {}, True)
    assert setting.pairs == ["de-en", "en-de"]
    setting.prepare()
    data = tmp_path / "w" / "data"
    assert read_lines(data / "train.de-en.de") == lines["de"][:20]
    assert read_lines(data / "importance.en-de.de") == lines["de"][20:23]
    assert read_lines(data / "valid.en-de.en") == lines["en"][23:27]
    assert read_lines(data / "test.de-en.en") == lines["en"][27:30]
    (corpus / "dev.de.gz").unlink()
    with pytest.raises(DataError, match="dev.de.gz"):
        setting.prepare()


@pytest.fixture(scope="module")
def tiny_start(tmp_path_factory):
    """A tiny model pre-trained a few steps on the embedded Multi30k with the shipped vocabulary."""
    from jax_namnmt import packaged, workflow
    from jax_namnmt.config import MANY_TO_MANY_8, load_config
    work = tmp_path_factory.mktemp("start")
    c = load_config("tiny", ["model.vocab_size=6000", "data.vocab_size=6000", "data.train_max_lines=100",
                             "train.steps=4", "train.valid_max_lines=8"])
    c = dataclasses.replace(c, data=dataclasses.replace(c.data, pairs=MANY_TO_MANY_8))
    workflow.prepare(c, work, True, vocab_from=packaged.shipped_model_dir() / "spm.model")
    return workflow.run_pretrain(c, work, work / "pretrain", quiet=True), c


@pytest.mark.slow
def test_reproduce_end_to_end(tiny_start, tmp_path, monkeypatch):
    """The whole protocol on a tiny model: k = 0 masks reproduce the multilingual run token for token,
    every fine-tune logs its step-0 validation, and the report is written from the runs."""
    from jax_namnmt import reproduce
    from jax_namnmt.config import ReproduceConfig
    start, c = tiny_start
    config = dataclasses.replace(
        c, finetune=dataclasses.replace(c.finetune, steps=2, eval_every=1),
        train=dataclasses.replace(c.train, valid_max_lines=0),
        # 6 lines x 3 directions in one batch: one beam-search program per model (masked, plain), not two
        decode=dataclasses.replace(c.decode, test_max_lines=6, batch_sentences=18),
        reproduce=ReproduceConfig(settings=("one_to_many",), seeds=(1,), systems=("multilingual", "method_te", "k0"),
                                  importance_lines=1000, converge_eval_every=1, converge_patience=1,
                                  converge_max_steps=2, rho_k=("0.5/0.7",), importance_losses=("cross_entropy",),
                                  normalizations=("pair_mean",), module_sets=("no_embedding_inputs",),
                                  bootstrap_samples=20, out_dir=str(tmp_path / "docs")))
    report = reproduce.Setting("one_to_many", reproduce.check_config(config), tmp_path / "w", start, {}, True).run()
    assert report["bleu"]["k0"] == report["bleu"]["multilingual"]
    runs = tmp_path / "w" / "runs"
    k0 = json.loads((tmp_path / "w" / "eval" / f"k0-{report['chosen']['tag']}-s1.json").read_text())
    ml = json.loads((tmp_path / "w" / "eval" / "multilingual-s1.json").read_text())
    assert all(k0[p]["hyps"] == ml[p]["hyps"] for p in ("en-de", "en-fr", "en-cs"))
    tag = report["chosen"]["tag"]
    assert tag == "cross_entropy-pair_mean-no_embedding_inputs-rho0.5-k0.7"
    first = json.loads((runs / f"method_te-{tag}-s1" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and first["phase"] == "finetune_valid"
    assert first["nll"] == pytest.approx(report["step0"][tag]["nll"], rel=1e-5)  # the grid's masked NLL
    assert report["step0_per_pair"]["method_te"][1]["en-de"] == pytest.approx(report["step0"][tag]["nll_en-de"],
                                                                              rel=1e-5)
    sig = report["significance"]["k0"]
    assert all(sig[p]["diff"] == pytest.approx(report["bleu"]["method_te"]["mean"][p]
                                               - report["bleu"]["multilingual"]["mean"][p], abs=1e-6)
               for p in ("en-de", "en-fr", "en-cs"))
    from jax_namnmt.reproduce_report import write_report
    full = {"command": "test", "environment": reproduce.environment(), "config": config.to_dict(),
            "settings": {"one_to_many": json.loads(json.dumps(report))}}
    paths = write_report(full, tmp_path / "docs")
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "one-to-many: method_te" in text and all(p.exists() for p in paths)


def test_a_resumed_convergence_stops_and_reports_where_the_first_did(tmp_path, monkeypatch):
    """The start model is trained on in rounds until its validation NLL stalls. Run again on the same
    work directory (resumed, or copied for another protocol), the rounds replay on the records and the
    report names the same steps and curve, with no training. The training is scripted here."""
    from jax_namnmt import reproduce, workflow
    from jax_namnmt.config import ReproduceConfig, load_config

    script = {0: 3.0, 50: 2.9, 100: 2.8, 150: 2.7901, 200: 2.7905, 250: 2.7899, 300: 2.5}  # stalls at 250
    trained = []

    def fake_finetune(config, workdir, source, out, masks, quiet):
        trained.append(config.finetune.steps)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").write_text("".join(
            json.dumps({"phase": "finetune_valid", "step": s, "nll": v}) + "\n"
            for s, v in script.items() if s <= config.finetune.steps))
        return out

    def fake_finished(run_dir, steps, patience=0):
        done = reproduce.valid_history(run_dir)
        return bool(done) and done[-1]["step"] >= steps

    monkeypatch.setattr(workflow, "run_finetune", fake_finetune)
    monkeypatch.setattr(workflow, "is_finished", fake_finished)
    config = load_config("tiny", [])
    config = dataclasses.replace(config, reproduce=ReproduceConfig(
        converge_eval_every=50, converge_patience=2, converge_min_delta=0.002, converge_max_steps=1000))
    reports = []
    for _ in range(2):
        report = {}
        reproduce.Setting("many_to_many", config, tmp_path / "w", tmp_path / "start", report, True).converge()
        reports.append(report["start"])
    assert trained == [50, 100, 150, 200, 250]  # the second pass trains nothing
    assert reports[0] == reports[1]
    assert reports[0]["steps"] == 250 and reports[0]["converged"]
    assert [s for s, _ in reports[0]["valid_nll"]] == [0, 50, 100, 150, 200, 250]
