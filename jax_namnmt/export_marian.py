"""Export a run or package as a HuggingFace ``MarianMTModel`` directory that ``transformers``
(``MarianMTModel``, ``MarianTokenizer``/``AutoTokenizer``) and CTranslate2's
``ct2-transformers-converter`` load unchanged (the mapping: ``jax_namnmt/marian.py``).

    python -m jax_namnmt.export_marian --checkpoint RUN --out DIR

Writes ``config.json`` (with our config under ``"jax_namnmt"``), ``generation_config.json`` (our
beam, length penalty and stopping rule), ``model.safetensors`` (float32), ``source.spm`` and
``target.spm`` (our joint SentencePiece model), ``vocab.json``, ``tokenizer_config.json`` and
``special_tokens_map.json``. A source is ``>>xx<< text`` (our ``<2xx>`` tag is Marian's language
code ``>>xx<<``). Needs ``safetensors`` (``pip install -e '.[marian]'``), not torch.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from jax_namnmt import cli, packaged
from jax_namnmt.config import Config, ModelConfig
from jax_namnmt.data.vocab import BOS_ID, EOS_ID, UNK_ID
from jax_namnmt.decoding import max_output_len
from jax_namnmt.errors import CheckpointError, UserError, WRITE_HINT, WriteError, reason
from jax_namnmt.marian import (CONFIG_KEY, LN_SCALE, START_NAME, hf_config, to_marian_state, vocab_tokens)
from jax_namnmt.method.masks import flatten

FORMAT = 1
WEIGHTS = "model.safetensors"


def safetensors_numpy():
    """``safetensors.numpy``, or a UserError saying how to install it (an optional extra)."""
    try:
        import safetensors.numpy
    except ImportError:
        raise UserError("the Marian export and import need safetensors: pip install -e '.[marian]' "
                        "(or pip install safetensors)") from None
    return safetensors.numpy


def spm_pieces(path: Path) -> list[str]:
    """The piece of every id of a SentencePiece model."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def position_rows(config: Config) -> int:
    """Rows of the exported position tables: the model's ``max_positions``, and enough for the
    longest source ``data.max_len`` and its output limit."""
    return max(config.model.max_positions, config.data.max_len,
               max_output_len(config.data.max_len, config.decode, 1024) + 1)


def generation_config(config: Config, positions: int) -> dict:
    """``generation_config.json``: our decoding settings as ``generate``'s defaults. Our limit is per
    sentence (``max_len_a * source + max_len_b``); HF's ``max_length`` is one number per call, here
    what the position tables allow (pass ``max_new_tokens``: ``marian.hf_generate_kwargs``)."""
    start = config.model.vocab_size
    return {"num_beams": config.decode.beam_size, "length_penalty": config.decode.length_penalty,
            "early_stopping": True, "min_new_tokens": config.decode.min_len, "max_length": positions,
            "decoder_start_token_id": start, "pad_token_id": start, "eos_token_id": EOS_ID,
            "forced_eos_token_id": EOS_ID, "do_sample": False}


def load_model(directory: Path) -> tuple[dict, Config, Path, dict, dict | None]:
    """``(parameters, config, SentencePiece model, details, baked widths or None)`` of a run
    directory, a package or a baked package (``python -m jax_namnmt.bake export``); the config's
    model is a plain ``ModelConfig``."""
    directory = Path(directory)
    if packaged.is_package(directory) and "baked" in packaged.read_package_info(directory):
        from jax_namnmt.bake import load_baked

        baked = load_baked(directory)
        plain = ModelConfig(**{f.name: getattr(baked.config.model, f.name) for f in dataclasses.fields(ModelConfig)})
        config = dataclasses.replace(baked.config, model=plain)
        return baked.params, config, baked.vocab.path, {"baked": baked.info}, dict(baked.config.model.widths)
    from jax_namnmt.workflow import load_run

    run = load_run(directory)
    if run.masks is not None:
        raise CheckpointError(f"{directory} is a masked run: MarianMTModel has no per-pair masks; export the plain "
                              "model it was fine-tuned from, or one pair's model baked (python -m jax_namnmt.bake "
                              "export) and export that")
    return run.params, run.config, run.vocab.path, {"step": run.step}, None


def export_marian(run_dir: Path, out: Path) -> Path:
    """Write the model of ``run_dir`` (a run directory, a package or a baked package) as a Marian
    directory at ``out`` (written under a temporary name and moved into place when complete). A
    baked model's smaller widths are zero-padded to Marian's one shape (``marian.pad_attention``,
    ``marian.pad_ffn``): the same function, not a smaller file."""
    params, config, spm, details, baked_widths = load_model(Path(run_dir))
    positions = position_rows(config)
    tokens = vocab_tokens(spm_pieces(spm))
    state, widths = to_marian_state(flatten(params), config.model, BOS_ID, positions, baked_widths)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, ffn_dim=max(widths.values())))
    hf = hf_config(config.model, widths, positions, {"eos": EOS_ID})
    hf[CONFIG_KEY] = {"format": FORMAT, "config": config.to_dict(), "ln_scale": LN_SCALE, "bos_id": BOS_ID,
                      "start_id": config.model.vocab_size, **details}
    tokenizer = {"tokenizer_class": "MarianTokenizer", "source_lang": None, "target_lang": None,
                 "separate_vocabs": False, "model_max_length": config.data.max_len,
                 "unk_token": tokens[UNK_ID], "eos_token": tokens[EOS_ID], "pad_token": START_NAME}
    special = {"unk_token": tokens[UNK_ID], "eos_token": tokens[EOS_ID], "pad_token": START_NAME}
    st = safetensors_numpy()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    current = tmp
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        current = tmp / WEIGHTS
        st.save_file(state, str(current), metadata={"format": "pt"})
        current.chmod(0o644)  # safetensors writes it owner-only; the other files are world-readable
        for name, data in (("config.json", hf), ("generation_config.json", generation_config(config, positions)),
                           ("vocab.json", {t: i for i, t in enumerate(tokens)}),
                           ("tokenizer_config.json", tokenizer), ("special_tokens_map.json", special)):
            current = tmp / name
            current.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        for name in ("source.spm", "target.spm"):
            current = tmp / name
            shutil.copyfile(spm, current)
        current = out
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WriteError(f"cannot write the Marian directory {out}: writing {current} failed: {reason(e)}; "
                         f"{WRITE_HINT}") from e
    return out


def directory_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).iterdir() if p.is_file())


def main() -> int:
    p = cli.parser("Export a run or package as a HuggingFace MarianMTModel directory", config=False)
    p.add_argument("--checkpoint", required=True,
                   help="a run directory or package of a plain (unmasked) model, or a baked package")
    p.add_argument("--out", required=True, help="the Marian directory (replaced if it exists)")
    args = p.parse_args()
    out = export_marian(Path(args.checkpoint), Path(args.out))
    print(f"marian: {out} ({directory_size(out) / 1e6:.1f} MB); sources are '>>xx<< text' (our <2xx> tag)")
    return 0


if __name__ == "__main__":
    cli.run(main)
