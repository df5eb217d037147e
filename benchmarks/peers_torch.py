"""The PyTorch peer: HuggingFace ``MarianMTModel`` built as the twin of our model, the same
sentences as padded, length-bucketed Marian batches, ``generate`` settings that force an output
length, and the torch device helpers. ``torch`` and ``transformers`` are benchmark-only
dependencies, imported inside the functions (``torch_available`` says whether they are there)."""

from __future__ import annotations

import importlib
import platform


def importable(*modules: str) -> bool:
    """Whether every one of ``modules`` imports (benchmark-only dependencies may be missing)."""
    try:
        for module in modules:
            importlib.import_module(module)
    except Exception:
        return False
    return True


def torch_available() -> bool:
    return importable("torch", "transformers")


def marian_buckets(ids, src, tgt, tokens_per_batch):
    """Same sentences, sorted by length, cut so padded target tokens <= tokens_per_batch."""
    order = sorted(ids, key=lambda i: (len(tgt[i]), len(src[i])), reverse=True)
    batches, cur, cur_max = [], [], 0
    for i in order:
        m = max(cur_max, len(tgt[i]))
        if cur and m * (len(cur) + 1) > tokens_per_batch:
            batches.append(cur)
            cur, m = [], len(tgt[i])
        cur.append(i)
        cur_max = m
    if cur:
        batches.append(cur)
    return batches


def marian_tensors(idx, src, tgt, pad, bos, device=None):
    import numpy as np
    import torch

    ls, lt = max(len(src[i]) for i in idx), max(len(tgt[i]) for i in idx)
    s = np.full((len(idx), ls), pad, np.int64)
    y = np.full((len(idx), lt), pad, np.int64)
    yin = np.full((len(idx), lt), pad, np.int64)
    for r, i in enumerate(idx):
        s[r, :len(src[i])] = src[i]
        y[r, :len(tgt[i])] = tgt[i]
        yin[r, 0] = bos
        yin[r, 1:len(tgt[i])] = tgt[i][:-1]
    s, y, yin = torch.from_numpy(s), torch.from_numpy(y), torch.from_numpy(yin)
    out = {"input_ids": s, "attention_mask": (s != pad).long(), "decoder_input_ids": yin,
           "decoder_attention_mask": (yin != pad).long() | (torch.arange(lt) == 0).long(), "labels": y}
    if device is not None:
        out = {k: t.to(device) for k, t in out.items()}
    return out


def marian_sources(indices, src, pad, device=None) -> dict:
    """Padded ``input_ids`` / ``attention_mask`` of sentences ``indices`` of ``src`` for
    ``generate`` (negative indices are a packed batch's dummy rows and are skipped)."""
    import numpy as np
    import torch

    idx = [int(i) for i in indices if i >= 0]
    s = np.full((len(idx), max(len(src[i]) for i in idx)), pad, np.int64)
    for r, i in enumerate(idx):
        s[r, :len(src[i])] = src[i]
    s = torch.from_numpy(s)
    if device is not None:
        s = s.to(device)
    return {"input_ids": s, "attention_mask": (s != pad).long()}


def forced_generate_kwargs(n: int, beam: int, pad: int, eos: int, bos: int) -> dict:
    """``generate`` settings that make Marian write exactly ``n`` tokens a sentence (EOS banned
    before the n-th, forced at it) with beam ``beam`` and length penalty 0.6, as our decoder does."""
    return dict(num_beams=beam, do_sample=False, length_penalty=0.6, early_stopping=False,
                min_new_tokens=n - 1, max_new_tokens=n, forced_eos_token_id=eos, eos_token_id=eos,
                pad_token_id=pad, decoder_start_token_id=bos, num_return_sequences=1)


def build_marian(config, pad, eos, bos, seed):
    import torch
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(seed)
    mc = MarianConfig(
        vocab_size=config.vocab_size, d_model=config.d_model,
        encoder_layers=config.enc_layers, decoder_layers=config.dec_layers,
        encoder_attention_heads=config.num_heads, decoder_attention_heads=config.num_heads,
        encoder_ffn_dim=config.ffn_dim, decoder_ffn_dim=config.ffn_dim,
        activation_function="relu", dropout=config.dropout, attention_dropout=config.attention_dropout,
        activation_dropout=config.activation_dropout, max_position_embeddings=config.max_positions,
        scale_embedding=True, share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
        pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=bos, forced_eos_token_id=eos,
    )
    try:
        model = MarianMTModel._from_config(mc, attn_implementation="sdpa")
    except Exception:
        model = MarianMTModel(mc)
    return model


def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_device_info(device) -> dict:
    import torch

    info = {"torch_device": str(device)}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        info["device_name"] = platform.processor() or platform.machine()
        info["torch_threads"] = torch.get_num_threads()
    return info

