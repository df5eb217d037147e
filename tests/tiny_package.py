"""A tiny random model as a package (the shipped model's vocabulary, the tiny config's shapes): what
the translate tests load, in seconds, like a user's package."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from conftest import noisy_params

from jax_namnmt import packaged
from jax_namnmt.config import load_config
from jax_namnmt.data.vocab import Vocab

LIMIT = 30  # source tokens the tiny package takes: data.max_len (32) less the tag and EOS


def make_tiny_package(out: Path, beam: int = 1, batch: int = 2) -> Path:
    """Write the package to ``out`` (beam ``beam``, batches of ``batch`` sentences (few programs to
    compile: rows 1 and 2), ``data.max_len`` 32: sources are at most 32 wide, one program width)."""
    vocab_path = packaged.shipped_model_dir() / "spm.model"
    size = Vocab.load(vocab_path).size
    config = load_config("tiny")
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, vocab_size=size),
        data=dataclasses.replace(config.data, vocab_size=size, pairs=("de-en", "en-de", "fr-en", "en-fr")),
        decode=dataclasses.replace(config.decode, beam_size=beam, batch_sentences=batch))
    params = noisy_params(config.model, seed=3)
    return packaged.save_package(out, params, config.to_dict(), vocab_path, "float32", {"step": 0})
