"""``prepare --from-tfds``: TFDS translation datasets (array_record) into the fairseq layout, without
TensorFlow. The datasets here are real TFDS datasets, built in a temporary data directory from
Multi30k lines by two small builders: one with a ``Translation`` feature (German/English, like
``wmt14_translate/de-en``), one with ``TranslationVariableLanguages`` inside a ``FeaturesDict``
(like ``ted_multi_translate``), where only some examples have French."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("grain")

from jax_namnmt.data.corpus import read_lines  # noqa: E402
from jax_namnmt.data.multiway import multi30k_dir  # noqa: E402
from jax_namnmt.data.tfds_source import build_from_tfds, open_dataset  # noqa: E402
from jax_namnmt.errors import DataError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LINES = {"train": 240, "validation": 30, "test": 20}
OFFSET = {"train": 0, "validation": 1000, "test": 2000}  # all from Multi30k's train file


def multi30k(lang: str, split: str) -> list[str]:
    lines = read_lines(multi30k_dir() / f"train.{lang}.gz")
    return lines[OFFSET[split]:OFFSET[split] + LINES[split]]


def has_french(i: int) -> bool:
    return i % 3 != 1


class NamnmtTinyBilingual(tfds.core.GeneratorBasedBuilder):
    """German/English pairs; training example 5's German holds a line break."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.Translation(languages=("de", "en")))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in LINES}

    def _generate_examples(self, split):
        for i, (de, en) in enumerate(zip(multi30k("de", split), multi30k("en", split))):
            yield i, {"de": de.replace(" ", "\n", 1) if (split, i) == ("train", 5) else de, "en": en}


class NamnmtTinyMultiway(tfds.core.GeneratorBasedBuilder):
    """English and German in every example, French in two of three."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        translations = tfds.features.TranslationVariableLanguages(languages=["de", "en", "fr"])
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"talk": tfds.features.Text(), "translations": translations}))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in LINES}

    def _generate_examples(self, split):
        for i, texts in enumerate(zip(*(multi30k(lang, split) for lang in ("de", "en", "fr")))):
            keep = ("de", "en", "fr") if has_french(i) else ("de", "en")
            yield i, {"talk": f"talk {i}", "translations": {lang: t for lang, t in zip(("de", "en", "fr"), texts)
                                                            if lang in keep}}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tfds")
    for builder in (NamnmtTinyBilingual, NamnmtTinyMultiway):
        builder(data_dir=str(root), file_format="array_record").download_and_prepare()
    return root


def pairs_of(path: Path) -> list[tuple[str, str]]:
    """The (source line, target line) pairs of one written pair, e.g. ``train.fr-en``."""
    src, tgt = path.name.split(".")[1].split("-")
    return list(zip(read_lines(path.parent / f"{path.name}.{src}"), read_lines(path.parent / f"{path.name}.{tgt}")))


@pytest.mark.slow
def test_prepare_from_tfds_in_a_fresh_process(data_dir, tmp_path):
    """By registered name (from --tfds-data-dir; the builder's code is not in that process) and by
    dataset directory: every pair's files, aligned sentence by sentence, French pairs only from the
    examples that have French, the line break joined and counted, and the vocabulary built."""
    work = tmp_path / "work"
    multiway_dir = data_dir / "namnmt_tiny_multiway" / "1.0.0"
    proc = subprocess.run(
        [sys.executable, "-m", "jax_namnmt.prepare", "--config", "tiny", "--workdir", str(work), "--quiet",
         "--from-tfds", f"namnmt_tiny_bilingual,{multiway_dir}", "--tfds-data-dir", str(data_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = work / "data"
    german = {s: multi30k("de", s) for s in LINES}
    english = {s: multi30k("en", s) for s in LINES}
    french = {s: multi30k("fr", s) for s in LINES}
    for ours, split in (("train", "train"), ("valid", "validation"), ("test", "test")):
        de_en = set(pairs_of(out / f"{ours}.de-en"))
        want = set(zip(german[split], english[split]))
        if split == "train":  # the line break in example 5 became a space again
            assert german[split][5] in {de for de, _ in de_en}
        assert de_en == want and len(pairs_of(out / f"{ours}.de-en")) == LINES[split]
        assert set(pairs_of(out / f"{ours}.en-de")) == {(en, de) for de, en in want}
        fr_en = pairs_of(out / f"{ours}.fr-en")
        assert set(fr_en) == {(french[split][i], english[split][i]) for i in range(LINES[split]) if has_french(i)}
        assert len(fr_en) == sum(map(has_french, range(LINES[split])))
    assert "train: de-en 240, en-de 240, fr-en 160, en-fr 160 sentence pairs; sentences with line breaks joined: " \
           "train.de-en.de: 1, train.en-de.de: 1" in proc.stdout
    assert "de-en <- namnmt_tiny_bilingual" in proc.stdout and f"fr-en <- {multiway_dir}" in proc.stdout
    assert (work / "spm.model").is_file() and "vocabulary:" in proc.stdout


def test_dataset_errors_name_the_dataset_and_what_is_missing(data_dir, tmp_path):
    with pytest.raises(DataError, match=r"pair cs-en: no --from-tfds dataset has both 'cs' and 'en' "
                                        r"\(datasets: namnmt_tiny_bilingual \(de, en\)"):
        build_from_tfds("namnmt_tiny_bilingual", tmp_path, "de-en,cs-en", data_dir=data_dir, quiet=True)
    with pytest.raises(DataError, match=r"namnmt_tiny_bilingual: no split 'dev' \(its splits: .*validation"):
        build_from_tfds("namnmt_tiny_bilingual", tmp_path / "x", "de-en", {"valid": "dev"}, data_dir=data_dir,
                        quiet=True)
    assert not list((tmp_path / "x").iterdir())  # nothing half-written
    with pytest.raises(DataError, match=f"{tmp_path}: not a prepared TFDS dataset directory"):
        open_dataset(str(tmp_path))
    with pytest.raises(DataError, match="TFDS dataset 'no_such_dataset_xyz' not found"):
        open_dataset("no_such_dataset_xyz", data_dir)
    # a TFDS catalogue dataset (its builder registered, nothing downloaded here): named as unprepared
    with pytest.raises(DataError, match="'wmt14_translate/de-en' is not prepared in .*add --tfds-download"):
        open_dataset("wmt14_translate/de-en", tmp_path / "empty")


def test_slices_and_download(data_dir, tmp_path):
    """TFDS split slices pick the lines; a registered dataset not yet prepared is refused unless
    download is asked for, which prepares it (here from the builder's own generator) as array_record."""
    report = build_from_tfds("namnmt_tiny_bilingual", tmp_path / "a", "de-en", {"train": "train[:10]",
                             "valid": "validation[:3]"}, data_dir=data_dir, quiet=True)
    assert report.lines == {"train.de-en.de": 10, "train.de-en.en": 10, "valid.de-en.de": 3, "valid.de-en.en": 3}
    fresh = tmp_path / "fresh_tfds"
    with pytest.raises(DataError, match="is not prepared in .*add --tfds-download"):
        open_dataset("namnmt_tiny_bilingual", fresh)
    dataset = open_dataset("namnmt_tiny_bilingual", fresh, download=True)
    assert dataset.feature.languages == ("de", "en") and len(dataset.builder.as_data_source(split="test")) == 20


@pytest.mark.slow
def test_cli_takes_one_corpus_source(data_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "jax_namnmt.prepare", "--config", "tiny", "--workdir", str(tmp_path / "w"),
         "--from-tfds", "namnmt_tiny_bilingual", "--from-ntrex", str(tmp_path), "--quiet"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "error: --from-ntrex and --from-tfds: give one corpus source" in proc.stderr
    assert not (tmp_path / "w").exists()
