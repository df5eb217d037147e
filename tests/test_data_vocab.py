"""The joint SentencePiece vocabulary (vocab.py), trained tiny on embedded Multi30k lines."""

import numpy as np
import pytest

from jax_namnmt.data.corpus import read_lines
from jax_namnmt.data.multiway import multi30k_dir
from jax_namnmt.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Vocab, tag, train_vocab
from jax_namnmt.errors import DataError

LANGS = ["en", "de", "fr", "cs"]


def multi30k_lines(n: int) -> list[str]:
    return [line for lang in LANGS for line in read_lines(multi30k_dir() / f"val.{lang}.gz")[:n]]


@pytest.fixture(scope="session")
def vocab(tmp_path_factory) -> Vocab:
    prefix = tmp_path_factory.mktemp("vocab") / "spm"
    return Vocab.load(train_vocab(multi30k_lines(100), LANGS, prefix, vocab_size=200))


def pieces(v: Vocab) -> list[str]:
    return [v._sp.id_to_piece(i) for i in range(v.size)]


def test_special_ids_tags_and_size(vocab):
    assert vocab.size == 200
    assert [vocab._sp.id_to_piece(i) for i in (PAD_ID, UNK_ID, BOS_ID, EOS_ID)] == [
        "<pad>", "<unk>", "<s>", "</s>"
    ]
    assert vocab.langs == sorted(LANGS)
    assert {vocab._sp.id_to_piece(vocab.tag_id(lang)) for lang in LANGS} == {tag(l) for l in LANGS}
    assert tag("de") == "<2de>"
    assert vocab.path.name == "spm.model"


def test_unknown_language_code_names_vocab_and_known_tags(vocab):
    with pytest.raises(DataError, match=r"unknown language code 'it'.*spm\.model.*cs de en fr"):
        vocab.tag_id("it")


def test_encode_decode_round_trip(vocab):
    text = "Ein Mann fährt auf einem Fahrrad."
    ids = vocab.encode(text)
    assert all(4 <= i < vocab.size for i in ids)
    assert vocab.decode(ids) == text
    assert vocab.encode_batch([text, "A dog."]) == [ids, vocab.encode("A dog.")]


def test_a_tag_inside_the_text_is_text(vocab):
    """A user can type "<2fr>" in a sentence: it must not become the control token that picks the
    target language (SentencePiece matches user-defined symbols anywhere in a text)."""
    tag_ids = {vocab.tag_id(lang) for lang in LANGS}
    assert vocab._sp.encode("Er schrieb <2fr> an die Wand.", out_type=int).count(vocab.tag_id("fr")) == 1  # raw spm
    for text in ("Er schrieb <2fr> an die Wand.", "<2de>Hallo", "a<2en>b <2cs>"):
        ids = vocab.encode(text)
        assert not tag_ids & set(ids), text
        assert vocab.encode_batch([text]) == [ids]
        # kept as text ("<" and ">" are unknown to this small vocabulary, so they decode as unk)
        assert [code in vocab.decode(ids) for code in ("2fr", "2de", "2en", "2cs") if code in text] == \
            [True] * sum(code in text for code in ("2fr", "2de", "2en", "2cs"))
    assert vocab.literal_tags("x <2it> y <2fr>") == "x <2it> y < 2fr>"  # only this vocabulary's tags


def test_decode_stops_at_eos_and_skips_pad_and_bos(vocab):
    ids = vocab.encode("Zwei Hunde")
    assert vocab.decode([BOS_ID, *ids, EOS_ID, *vocab.encode("spielen"), PAD_ID]) == "Zwei Hunde"
    rows = np.zeros((2, 12), np.int32)
    rows[0, : len(ids)] = ids
    rows[1, :3] = [BOS_ID, EOS_ID, ids[0]]
    assert vocab.decode_batch(rows) == ["Zwei Hunde", ""]
    assert vocab.decode_batch([]) == []


def test_training_is_deterministic_and_samples_with_seed(tmp_path, vocab):
    lines = multi30k_lines(100)
    same = Vocab.load(train_vocab(lines, LANGS, tmp_path / "again", vocab_size=200))
    assert pieces(same) == pieces(vocab)
    a = Vocab.load(train_vocab(lines, LANGS, tmp_path / "a", 150, max_sentences=150, seed=1))
    b = Vocab.load(train_vocab(lines, LANGS, tmp_path / "b", 150, max_sentences=150, seed=1))
    c = Vocab.load(train_vocab(lines, LANGS, tmp_path / "c", 150, max_sentences=150, seed=2))
    assert pieces(a) == pieces(b) != pieces(c)


def test_bad_vocabulary_inputs(tmp_path):
    with pytest.raises(DataError, match=r"missing\.model: vocabulary model not found"):
        Vocab.load(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(DataError, match=r"junk\.model: not a SentencePiece model"):
        Vocab.load(tmp_path / "junk.model")
    with pytest.raises(DataError, match=r"lower the vocabulary size"):
        train_vocab(["a b c", "b c d"], ["en"], tmp_path / "tiny", vocab_size=5000)
