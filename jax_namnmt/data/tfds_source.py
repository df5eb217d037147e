"""Build the fairseq layout (``DIR/{split}.{src}-{tgt}.{lang}``) from TFDS translation datasets,
read without TensorFlow.

    python -m jax_namnmt.prepare --workdir DIR --pairs de-en,en-de,pt-en \\
        --from-tfds wmt14_translate/de-en,ted_hrlr_translate/pt_to_en [--tfds-data-dir D] [--tfds-download]

A dataset is a registered TFDS name (``name[/config][:version]``, looked up in ``--tfds-data-dir``,
else TFDS's default data directory) or the directory of a prepared dataset (the one holding its
``dataset_info.json``). It must be stored as **array_record**, TFDS's random-access format:
``tfds.data_source`` then decodes its records with numpy, and TensorFlow is never imported
(``tfds build NAME --file_format=array_record`` prepares one; ``--tfds-download`` has TFDS download
and prepare it so, with whatever the dataset's own builder needs). The records are read by a
``grain`` pipeline (``MapDataset.source(...).map(...)``, threads decoding ahead, order kept).

Two feature layouts hold translations: ``tfds.features.Translation`` (a text per language, fixed
languages: ``wmt14_translate/de-en``, ``ted_hrlr_translate/pt_to_en``) and
``TranslationVariableLanguages`` (each example lists its languages and their texts:
``ted_multi_translate``), either as the whole example or as one field of a ``FeaturesDict``. Each
pair of ``--pairs`` takes its sentences from the first dataset offering both of its languages, in
either direction (``en-de`` and ``de-en`` share ``wmt14_translate/de-en``); from a
variable-language dataset only the examples that have both.

Line breaks inside a sentence would break the line alignment of the text files: they become spaces,
and are counted in the report. Everything else (empty or over-long sentences, control characters,
unknown languages) is left to the corpus validation that ``prepare`` runs next, which names the
written file and line. Each file is written to a temporary name and renamed at the end, so an
interrupted import leaves no half-written corpus.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jax_namnmt.data.corpus import Pair, parse_pairs
from jax_namnmt.errors import ConfigError, DataError, atomic_write, writing

TFDS_SPLITS: dict[str, str] = {"train": "train", "valid": "validation", "test": "test"}
READ_THREADS = 8  # grain threads decoding records ahead of the writer


def _libraries():
    """``(tfds, grain)``, or a ConfigError that says what to install."""
    try:
        import grain
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ConfigError(
            f"--from-tfds needs tensorflow-datasets, array_record and grain ({e}): "
            "pip install -e '.[tfds]' (or: pip install tensorflow-datasets array_record grain)"
        ) from None
    return tfds, grain


@dataclass
class TranslationFeature:
    """Where the translations sit in an example: ``key`` (None: the example itself) and whether
    the languages vary per example; ``languages``: those the dataset declares (empty: any)."""

    key: str | None
    variable: bool
    languages: tuple[str, ...]

    def offers(self, pair: Pair) -> bool:
        return not self.languages or {pair.src, pair.tgt} <= set(self.languages)

    def texts(self, example) -> dict[str, str]:
        """``{language: text}`` of one decoded example."""
        record = example if self.key is None else example[self.key]
        if self.variable:
            return dict(zip(map(_text, record["language"]), map(_text, record["translation"])))
        return {lang: _text(record[lang]) for lang in self.languages}


@dataclass
class TfdsDataset:
    spec: str
    builder: object
    feature: TranslationFeature

    @property
    def label(self) -> str:
        languages = ", ".join(self.feature.languages) or "any languages, per example"
        return f"{self.spec} ({languages})"


@dataclass
class ImportReport:
    """Sentences written per output file, and those whose line breaks became spaces."""

    lines: dict[str, int] = field(default_factory=dict)
    joined_line_breaks: dict[str, int] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # pair -> dataset spec

    def summary(self) -> str:
        """One line per split: sentence pairs per pair, and the files where line breaks were joined."""
        rows = [f"TFDS: {', '.join(f'{pair} <- {spec}' for pair, spec in self.sources.items())}"]
        for split in dict.fromkeys(name.split(".")[0] for name in self.lines):
            counts = {name.split(".")[1]: n for name, n in self.lines.items() if name.startswith(f"{split}.")}
            joined = [f"{name}: {n}" for name, n in self.joined_line_breaks.items()
                      if n and name.startswith(f"{split}.")]
            rows.append(f"{split}: " + ", ".join(f"{pair} {n}" for pair, n in counts.items()) + " sentence pairs"
                        + (f"; sentences with line breaks joined: {', '.join(joined)}" if joined else ""))
        return "\n".join(rows)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _one_line(text: str) -> tuple[str, bool]:
    if "\n" not in text and "\r" not in text:
        return text, False
    return " ".join(text.replace("\r\n", "\n").replace("\r", "\n").split("\n")), True


def translation_feature(spec: str, features) -> TranslationFeature:
    """The translation feature of a dataset's features, or a DataError naming what it has."""
    tfds, _ = _libraries()
    kinds = (tfds.features.Translation, tfds.features.TranslationVariableLanguages)
    candidates = [(None, features)]
    if not isinstance(features, kinds) and isinstance(features, tfds.features.FeaturesDict):
        candidates = list(features.items())  # (Translation is a FeaturesDict too: checked first)
    for key, feature in candidates:
        if isinstance(feature, kinds):
            variable = isinstance(feature, tfds.features.TranslationVariableLanguages)
            return TranslationFeature(key, variable, tuple(feature.languages or ()))
    raise DataError(f"TFDS dataset {spec}: no translation feature (tfds.features.Translation or "
                    f"TranslationVariableLanguages) among its features: {features}")


def open_dataset(spec: str, data_dir: str | Path | None = None, download: bool = False) -> TfdsDataset:
    """The prepared TFDS dataset ``spec`` (a registered name or a dataset directory), checked to
    be array_record with a translation feature."""
    tfds, _ = _libraries()
    if Path(spec).is_dir():
        try:
            builder = tfds.builder_from_directory(spec)
        except Exception as e:  # noqa: BLE001 (TFDS raises several kinds; all mean the same here)
            raise DataError(f"{spec}: not a prepared TFDS dataset directory (the folder holding "
                            f"dataset_info.json and the record files): {e}") from None
    else:
        try:  # TFDS imports its older builders lazily: wmt*_translate and friends register on this import
            import tensorflow_datasets.translate  # noqa: F401
        except Exception:  # noqa: BLE001 (a builder module needing what is not installed: names still resolve
            pass  # from prepared dataset directories)
        try:
            builder = tfds.builder(spec, data_dir=None if data_dir is None else str(data_dir))
        except Exception as e:  # noqa: BLE001
            where = data_dir or "TFDS's default data directory"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"TFDS dataset {spec!r} not found (looked in {where}): {first}") from None
        if download:
            builder.download_and_prepare(file_format="array_record")
        elif not builder.is_prepared():
            raise DataError(f"TFDS dataset {spec!r} is not prepared in {builder.data_dir}: add --tfds-download "
                            "to download and prepare it, or point --tfds-data-dir at its data directory")
    file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
    if str(file_format) != "array_record":
        raise DataError(
            f"TFDS dataset {spec} is stored as {file_format} ({builder.data_dir}); reading without "
            f"TensorFlow needs array_record: prepare it with `tfds build {builder.info.full_name.split('/')[0]} "
            "--file_format=array_record`, or --tfds-download into another --tfds-data-dir")
    return TfdsDataset(spec, builder, translation_feature(spec, builder.info.features))


def assign_pairs(pairs: Sequence[Pair], datasets: Sequence[TfdsDataset]) -> dict[str, TfdsDataset]:
    """Each pair's dataset: the first offering both of its languages."""
    chosen = {}
    for pair in pairs:
        match = next((d for d in datasets if d.feature.offers(pair)), None)
        if match is None:
            offered = "; ".join(d.label for d in datasets)
            raise DataError(f"pair {pair.name}: no --from-tfds dataset has both {pair.src!r} and {pair.tgt!r} "
                            f"(datasets: {offered}); add one that does or drop the pair")
        chosen[pair.name] = match
    return chosen


def _split_source(dataset: TfdsDataset, split: str):
    try:
        return dataset.builder.as_data_source(split=split)
    except Exception as e:  # noqa: BLE001 (unknown split names and bad slices raise various errors)
        known = ", ".join(dataset.builder.info.splits.keys()) or "none"
        raise DataError(f"TFDS dataset {dataset.spec}: no split {split!r} (its splits: {known}; slices such as "
                        f"'train[:95%]' work too); set --tfds-splits: {e}") from None


class _Writer:
    """The output files of one split, each an ``atomic_write``: renamed into place when the
    writer's ``with`` block ends without an error, removed (the previous files kept) otherwise."""

    def __init__(self, out_dir: Path):
        self.out_dir, self.files, self.counts, self.joined = out_dir, {}, {}, {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "_Writer":
        return self

    def __exit__(self, *exc) -> bool:
        return self._stack.__exit__(*exc)

    def add(self, name: str, text: str) -> None:
        path = self.out_dir / name
        if name not in self.files:
            self.files[name] = self._stack.enter_context(
                atomic_write(path, "w", f"corpus file {path}", encoding="utf-8", newline="\n"))
            self.counts[name], self.joined[name] = 0, 0
        line, joined = _one_line(text)
        with writing(path, "corpus file"):  # names this file (the others' atomic_write only remove theirs)
            self.files[name].write(line + "\n")
        self.counts[name] += 1
        self.joined[name] += joined


def _write_split(out_split: str, in_split: str, pairs: Sequence[Pair], chosen: Mapping[str, TfdsDataset],
                 out_dir: Path, report: ImportReport, quiet: bool) -> None:
    from tqdm import tqdm

    _, grain = _libraries()
    with _Writer(out_dir) as writer:
        for dataset in {id(d): d for d in chosen.values()}.values():  # each dataset read once a split
            served = [p for p in pairs if chosen[p.name] is dataset]
            source = _split_source(dataset, in_split)
            records = (grain.MapDataset.source(source).map(dataset.feature.texts)
                       .to_iter_dataset(grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=256)))
            for texts in tqdm(records, total=len(source), desc=f"{dataset.spec} {in_split}", disable=quiet,
                              unit=" examples"):
                for pair in served:
                    if pair.src in texts and pair.tgt in texts:
                        for lang in (pair.src, pair.tgt):
                            writer.add(f"{out_split}.{pair.name}.{lang}", texts[lang])
            for pair in served:
                if f"{out_split}.{pair.name}.{pair.src}" not in writer.files:
                    raise DataError(f"TFDS dataset {dataset.spec}, split {in_split!r}: no example has both "
                                    f"{pair.src!r} and {pair.tgt!r}, so pair {pair.name} gets no {out_split} data")
    report.lines.update(writer.counts)
    report.joined_line_breaks.update(writer.joined)


def build_from_tfds(
    specs: str | Sequence[str],
    out_dir: str | Path,
    pairs: str | Sequence[str] | Sequence[Pair],
    splits: Mapping[str, str] = TFDS_SPLITS,
    data_dir: str | Path | None = None,
    download: bool = False,
    quiet: bool = False,
) -> ImportReport:
    """Write the fairseq layout for ``pairs`` from the TFDS datasets ``specs`` (comma-separated or
    a list). ``splits`` maps each output split to a TFDS split (slices allowed: ``train[:1000]``)."""
    if isinstance(specs, str):
        specs = [s.strip() for s in specs.split(",") if s.strip()]
    if not specs:
        raise ConfigError("--from-tfds: name at least one dataset")
    pairs = parse_pairs(pairs)
    datasets = [open_dataset(spec, data_dir, download) for spec in specs]
    chosen = assign_pairs(pairs, datasets)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ImportReport(sources={name: d.spec for name, d in chosen.items()})
    for out_split, in_split in splits.items():
        _write_split(out_split, in_split, pairs, chosen, out_dir, report, quiet)
    return report
