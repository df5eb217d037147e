"""Import a Marian directory written by ``export_marian`` (and perhaps fine-tuned and re-saved with
``transformers``) back as a package that ``translate``, ``evaluate`` and ``pipeline --pretrained`` read.

    python -m jax_namnmt.import_marian --marian DIR --out PACKAGE [--dtype float32|bfloat16]

The inverse of the export's mapping (``jax_namnmt/marian.py``): the parameters come back within
float32 rounding of the exported ones (bit for bit from a bfloat16 package). Other Marian models
(e.g. Helsinki-NLP's) are refused: their position tables, layer-norm epsilon, decoder start and
separate vocabularies are not what ``ModelConfig`` describes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from jax_namnmt import cli, packaged
from jax_namnmt.config import Config
from jax_namnmt.errors import CheckpointError, reading
from jax_namnmt.export_marian import FORMAT, WEIGHTS, safetensors_numpy, spm_pieces
from jax_namnmt.marian import CONFIG_KEY, LN_SCALE, from_marian_state, pad_ffn, vocab_tokens
from jax_namnmt.method.masks import nest


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: not a Marian directory written by export_marian")
    with reading(path, "Marian file"):
        return json.loads(path.read_text(encoding="utf-8"))


def read_marian(directory: Path) -> tuple[dict, Config, Path]:
    """``(flat float32 parameters, our Config, SentencePiece model path)`` of a Marian directory."""
    directory = Path(directory)
    hf = _read_json(directory / "config.json")
    where = directory / "config.json"
    if hf.get("model_type") != "marian":
        raise CheckpointError(f"{where}: model_type is {hf.get('model_type')!r}, not 'marian'")
    ours = hf.get(CONFIG_KEY)
    if not isinstance(ours, dict) or ours.get("format") != FORMAT:
        raise CheckpointError(f"{where} has no '{CONFIG_KEY}' entry of format {FORMAT}: only directories written by "
                              "`python -m jax_namnmt.export_marian` can be imported (other Marian models use "
                              "positions, a layer-norm epsilon and a decoder start that ModelConfig cannot express)")
    if not math.isclose(float(ours.get("ln_scale", 0)), LN_SCALE, rel_tol=1e-12):
        raise CheckpointError(f"{where}: {CONFIG_KEY}.ln_scale = {ours.get('ln_scale')!r}, expected {LN_SCALE!r}")
    config = Config.from_dict(ours["config"], where=f"{where}: {CONFIG_KEY}.config").validate()
    model = config.model
    fields = (("d_model", model.d_model), ("encoder_layers", model.enc_layers), ("decoder_layers", model.dec_layers),
              ("encoder_attention_heads", model.num_heads), ("decoder_attention_heads", model.num_heads),
              ("vocab_size", model.vocab_size + 1))
    for name, want in fields:
        if hf.get(name) != want:
            raise CheckpointError(f"{where}: {name} = {hf.get(name)!r} but {CONFIG_KEY}.config's model needs {want}")
    widths = [hf.get("encoder_ffn_dim"), hf.get("decoder_ffn_dim")]
    if not all(isinstance(w, int) and w >= 1 for w in widths):
        raise CheckpointError(f"{where}: encoder_ffn_dim / decoder_ffn_dim = {widths}: not widths")
    if max(widths) != model.ffn_dim:  # model.ffn_dim is one width: the narrower stack gets zero units
        config = config.with_sections(model={"ffn_dim": max(widths)})
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing (only safetensors weights are read; save with "
                              "save_pretrained(..., safe_serialization=True))")
    with reading(weights, "Marian weights"):
        state = safetensors_numpy().load_file(str(weights))
    flat = from_marian_state(state, config.model, int(ours.get("bos_id", 2)), str(weights))
    flat, _ = pad_ffn(flat, to={"encoder": config.model.ffn_dim, "decoder": config.model.ffn_dim})
    spm = _check_tokenizer(directory)
    return flat, config, spm


def _check_tokenizer(directory: Path) -> Path:
    """The SentencePiece model, after checking that ``source.spm`` and ``target.spm`` are one joint
    model and that ``vocab.json`` names its ids as the export does."""
    source, target = directory / "source.spm", directory / "target.spm"
    for path in (source, target):
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: not a Marian directory written by export_marian")
    if source.read_bytes() != target.read_bytes():
        raise CheckpointError(f"{source} and {target} differ: our model has one joint vocabulary")
    with reading(source, "SentencePiece model"):
        want = vocab_tokens(spm_pieces(source))
    vocab = _read_json(directory / "vocab.json")
    got = {i: t for t, i in vocab.items()}
    for i, token in enumerate(want):
        if got.get(i) != token:
            raise CheckpointError(f"{directory / 'vocab.json'}: id {i} is {got.get(i)!r}, but source.spm gives "
                                  f"{token!r}: the vocabulary does not belong to this SentencePiece model")
    if len(vocab) != len(want):
        raise CheckpointError(f"{directory / 'vocab.json'} has {len(vocab)} entries, expected {len(want)}")
    return source


def import_marian(directory: Path, out: Path, dtype: str = "float32") -> Path:
    """Write the Marian directory's model as a package at ``out``."""
    flat, config, spm = read_marian(Path(directory))
    info = {"from": str(Path(directory).resolve()), "imported": "marian"}
    baked = _read_json(Path(directory) / "config.json")[CONFIG_KEY].get("baked")
    if baked:  # a plain package now (the baked widths zero-padded): not "baked", which names a baked package
        info["baked_export"] = baked
    return packaged.save_package(Path(out), nest(flat), config.to_dict(), spm, dtype, info)


def main() -> int:
    p = cli.parser("Import a Marian directory written by export_marian as a package", config=False)
    p.add_argument("--marian", required=True, help="the Marian directory")
    p.add_argument("--out", required=True, help="the package directory (replaced if it exists)")
    p.add_argument("--dtype", default="float32", choices=packaged.STORED_DTYPES,
                   help="stored parameter type (float32: the exported values within float32 rounding)")
    args = p.parse_args()
    out = import_marian(Path(args.marian), Path(args.out), args.dtype)
    print(f"package: {out} ({packaged.package_size(out) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    cli.run(main)
