"""A joint SentencePiece vocabulary with one ``<2xx>`` target-language tag per language."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from jax_namnmt.errors import DataError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_TAG_RE = re.compile(r"^<2(.+)>$")
_TAG_IN_TEXT_RE = re.compile(r"<2([^<>\s]+)>")


def tag(lang: str) -> str:
    """The target-language tag prepended to every source sentence: ``tag("de") == "<2de>"``."""
    return f"<2{lang}>"


def train_vocab(
    texts: Iterable[str],
    langs: Sequence[str],
    model_prefix: str | Path,
    vocab_size: int,
    model_type: str = "unigram",
    max_sentences: int = 200_000,
    seed: int = 0,
    num_threads: int = 1,
) -> Path:
    """Train a joint SentencePiece model on ``texts``; returns the ``.model`` path.

    Every language of ``langs`` gets its tag ``<2xx>`` as a user-defined symbol, and the
    special ids are ``pad=0 unk=1 bos=2 eos=3``. When there are more than ``max_sentences``
    texts, a sample drawn with ``seed`` is used. With one thread (the default) training is
    deterministic; more threads are faster but give a slightly different model each run.
    """
    sentences = [text for text in texts if text.strip()]
    if not sentences:
        raise DataError(f"no text to train the vocabulary {model_prefix}.model on")
    if len(sentences) > max_sentences:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(sentences), size=max_sentences, replace=False))
        sentences = [sentences[i] for i in keep]
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_prefix=str(model_prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            user_defined_symbols=[tag(lang) for lang in dict.fromkeys(langs)],
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise DataError(
            f"SentencePiece could not train {model_prefix}.model: {e}; for a small corpus "
            "lower the vocabulary size"
        ) from None
    return model_prefix.with_name(model_prefix.name + ".model")


class Vocab:
    """A loaded SentencePiece model with the project's special ids and language tags."""

    def __init__(self, processor: spm.SentencePieceProcessor, path: Path):
        self._sp = processor
        self.path = path
        specials = (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id())
        if specials != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise DataError(
                f"{path}: special ids pad/unk/bos/eos are {specials}, expected "
                f"{(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}; train the vocabulary with train_vocab"
            )
        self._tags: dict[str, int] = {}
        for i in range(processor.get_piece_size()):
            match = _TAG_RE.match(processor.id_to_piece(i))
            if match:
                self._tags[match.group(1)] = i
        self._skip = {PAD_ID, BOS_ID}

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Load a ``.model`` file written by :func:`train_vocab`."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: vocabulary model not found; train one or check the path")
        processor = spm.SentencePieceProcessor()
        try:
            processor.load(str(path))
        except (OSError, RuntimeError) as e:
            raise DataError(f"{path}: not a SentencePiece model ({e}); retrain it") from None
        return cls(processor, path)

    @property
    def size(self) -> int:
        """Number of ids (the embedding table size)."""
        return self._sp.get_piece_size()

    @property
    def langs(self) -> list[str]:
        """The languages whose ``<2xx>`` tag is in the model, sorted."""
        return sorted(self._tags)

    def tag_id(self, lang: str) -> int:
        """The id of ``<2lang>``; a DataError when the model has no such tag."""
        try:
            return self._tags[lang]
        except KeyError:
            raise DataError(
                f"unknown language code '{lang}': the vocabulary at {self.path} has tags for: "
                f"{' '.join(self.langs)}; retrain the vocabulary with this language"
            ) from None

    def literal_tags(self, text: str) -> str:
        """``text`` with every ``<2xx>`` tag of this vocabulary written as ``< 2xx>``: SentencePiece
        matches user-defined symbols anywhere in a text, so a tag typed inside a sentence would
        otherwise become the control token that picks the target language."""
        if "<2" not in text:
            return text
        return _TAG_IN_TEXT_RE.sub(lambda m: "< " + m.group(0)[1:] if m.group(1) in self._tags else m.group(0),
                                   text)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without BOS/EOS (language tags in it are text, see ``literal_tags``)."""
        return self._sp.encode(self.literal_tags(text), out_type=int)

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        """Token ids of every text (multi-threaded), without BOS/EOS."""
        return self._sp.encode([self.literal_tags(t) for t in texts], out_type=int, num_threads=num_threads)

    def _clean(self, ids: Iterable[int]) -> list[int]:
        kept = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i not in self._skip:
                kept.append(i)
        return kept

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` up to the first EOS, ignoring PAD and BOS."""
        return self._sp.decode(self._clean(ids))

    def decode_batch(self, batch: Iterable[Iterable[int]], num_threads: int = -1) -> list[str]:
        """:meth:`decode` for each row of ``batch`` (a list of id lists or a 2-D array)."""
        rows = [self._clean(ids) for ids in batch]
        return self._sp.decode(rows, num_threads=num_threads) if rows else []

    def __repr__(self) -> str:
        return f"Vocab({str(self.path)!r}, size={self.size}, langs={self.langs})"
