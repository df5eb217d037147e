"""The CTranslate2 peer: the ``peers_torch.build_marian`` model (its very weights) converted with
CTranslate2's own Marian loader. ``ctranslate2`` is a benchmark-only dependency."""

from __future__ import annotations

from .peers_torch import importable


def ctranslate2_available() -> bool:
    return importable("ctranslate2", "torch", "transformers")  # the model is converted from the Marian one


def ctranslate2_from_marian(model, vocab_size: int, out_dir) -> list[str]:
    """Converts the ``build_marian`` model (its very weights) with CTranslate2's own
    ``MarianMTLoader`` into ``out_dir``; returns the token of each id (``t<id>``; our special
    ids as ``<blank>`` (padding), ``<unk>``, ``<s>``, ``</s>``). The loader follows Marian's
    conversion: the decoder starts from a zero embedding and the vocabulary's last entry
    (Marian's ``<pad>``) is dropped, so the CTranslate2 model has ``vocab_size - 1`` words (id
    ``vocab_size - 1``, if a source holds it, reads as ``<unk>``)."""
    from ctranslate2.converters.transformers import MarianMTLoader

    from jax_namnmt.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID

    names = {PAD_ID: "<blank>", UNK_ID: "<unk>", BOS_ID: "<s>", EOS_ID: "</s>", vocab_size - 1: "<pad>"}
    tokens = [names.get(i, f"t{i}") for i in range(vocab_size)]

    class Vocabulary:  # what the loader asks of a tokenizer
        eos_token, unk_token, bos_token = "</s>", "<unk>", "<s>"

        @staticmethod
        def get_vocab():
            return {t: i for i, t in enumerate(tokens)}

    spec = MarianMTLoader()(model, Vocabulary())
    spec.validate()
    spec.optimize(quantization=None)
    spec.save(str(out_dir))
    return tokens

