"""The model shipped in ``jax_namnmt/resources/model`` loads with the current code (a change of model
structure cannot silently orphan it) and translates at the BLEU its model card states."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jax_namnmt import packaged, workflow
from jax_namnmt.data.multiway import MULTI30K_SPLITS, build_from_multiway, multi30k_dir

SHIPPED = packaged.shipped_model_dir()
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shipped():
    return workflow.load_run(SHIPPED)


def test_shipped_model_is_small_and_has_a_card(shipped):
    assert packaged.package_size(SHIPPED) <= 20_000_000
    card = packaged.read_package_info(SHIPPED)["card"]
    assert set(card["val50_bleu"]) == set(shipped.pairs) == set(card["test_bleu"])
    assert card["test_bleu_avg"] > 0 and card["steps"] == shipped.step


def test_shipped_model_matches_its_card_on_val(shipped, tmp_path):
    card = packaged.read_package_info(SHIPPED)["card"]
    data = build_from_multiway(multi30k_dir(), tmp_path / "data", shipped.pairs, MULTI30K_SPLITS,
                               max_lines={"train": 1, "valid": 50, "test": 1})
    # all 400 sentences in one batch: one beam-search program (the package's 100 a batch take one
    # a source width, a multiple of 8, ~10 s of compiling each on 2 cores) and the same translations
    # (a sentence's translation does not depend on its batch: tests/test_decoding.py)
    decode = dataclasses.replace(shipped.config.decode, batch_sentences=len(shipped.pairs) * 50)
    one_batch = dataclasses.replace(shipped, config=dataclasses.replace(shipped.config, decode=decode))
    scores = workflow.evaluate_run(one_batch, data, "valid", 50, quiet=True)
    for pair in shipped.pairs:
        assert abs(scores[pair]["bleu"] - card["val50_bleu"][pair]) <= 1.0, (pair, scores[pair]["bleu"])


@pytest.mark.slow
def test_translate_without_checkpoint_uses_the_shipped_model(tmp_path):
    # twice, with the persistent compilation cache in tmp_path: the second run's programs come
    # from the cache and translate the same
    cache = tmp_path / "xla"
    outputs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "jax_namnmt.translate", "--src", "de", "--tgt", "en"],
                              input="Zwei Hunde spielen im Schnee.\n\nEin Mann fährt Fahrrad.\n",
                              capture_output=True, text=True, timeout=300, cwd=REPO,
                              env=dict(os.environ, JAX_NAMNMT_XLA_CACHE=str(cache)))
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout)
        assert any(cache.iterdir())  # the decoder's compiled program was written
    assert outputs[1] == outputs[0]
    lines = outputs[0].split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""  # one line per input line, in order
    assert "dog" in lines[0].lower()
