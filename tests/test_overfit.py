"""The whole chain can learn: a tiny Transformer trained (the real jitted train step: label
smoothing, Adam, the inverse-sqrt schedule) on four short sentence pairs of Multi30k, two in each
direction (de-en, en-de, the target language's tag leading the source), memorises them; greedy
and beam translation (``translate_ids`` and the SentencePiece round trip) then reproduce the
references exactly, so sacreBLEU gives 100. A few seconds of training on CPU."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import pack_rows

from jax_namnmt.config import DecodeConfig, ModelConfig
from jax_namnmt.data.corpus import read_lines
from jax_namnmt.data.multiway import multi30k_dir
from jax_namnmt.data.vocab import EOS_ID, Vocab, train_vocab
from jax_namnmt.decoding import translate_ids
from jax_namnmt.metrics import score_corpus
from jax_namnmt.model.transformer import init_params
from jax_namnmt.training.step import init_state, make_optimizer, make_train_step, schedule_args

LANGS = ["de", "en"]
STEPS = 400  # the references are reproduced after ~150 (nll ~0.2); the rest is margin
ROW_LEN = 32


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    val = {lang: read_lines(multi30k_dir() / f"val.{lang}.gz")[:200] for lang in LANGS}
    vocab = Vocab.load(train_vocab([line for lang in LANGS for line in val[lang]], LANGS,
                                   tmp_path_factory.mktemp("overfit") / "spm", vocab_size=200))
    short = [i for i in range(200) if len(val["en"][i].split()) <= 7][:4]
    directions = [("de", "en"), ("de", "en"), ("en", "de"), ("en", "de")]
    sources, targets, references = [], [], []
    for (src, tgt), i in zip(directions, short):
        sources.append(np.asarray([vocab.tag_id(tgt)] + vocab.encode(val[src][i]) + [EOS_ID], np.int32))
        targets.append(np.asarray(vocab.encode(val[tgt][i]) + [EOS_ID], np.int32))
        references.append(val[tgt][i])
    assert all(len(s) <= ROW_LEN and len(t) <= ROW_LEN for s, t in zip(sources, targets))

    config = ModelConfig(vocab_size=vocab.size, d_model=32, num_heads=2, ffn_dim=64, enc_layers=1, dec_layers=1,
                         dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, max_positions=64,
                         dtype="float32")
    batch = pack_rows([[(s, t, 0)] for s, t in zip(sources, targets)], ROW_LEN, ROW_LEN)  # one pair a row
    step = make_train_step(config, 0.1)
    state = init_state(jax.device_get(init_params(config, 0)), make_optimizer())
    schedule, key = schedule_args(3e-3, 20, 1e-4), jax.random.key(0)
    for _ in range(STEPS):
        state, metrics = step(state, batch, None, key, schedule)
    return config, state["params"], vocab, sources, references, jax.device_get(metrics)


def test_training_memorises_the_pairs(memorised):
    *_, metrics = memorised
    assert float(metrics["skipped"]) == 0.0
    assert float(metrics["nll"]) < 0.2, metrics  # per target token: (nearly) every token is certain


@pytest.mark.parametrize("beam, alpha", [(1, 0.0), (2, 0.6)], ids=["greedy", "beam2"])
def test_translation_reproduces_the_references(memorised, beam, alpha):
    config, params, vocab, sources, references, _ = memorised
    decode = DecodeConfig(beam_size=beam, length_penalty=alpha, max_len_a=1.5, max_len_b=5, batch_sentences=4)
    hypotheses = vocab.decode_batch(translate_ids(params, config, None, sources, np.zeros(len(sources), np.int32),
                                                  decode))
    assert hypotheses == references
    assert score_corpus(hypotheses, references)["bleu"] == pytest.approx(100.0)
