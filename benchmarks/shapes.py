"""What a benchmark measures: the model shape its flags give (``model_config``), the matmul FLOPs
of a training pass over given sentences, the peak they are compared against, and the learning
rate both sides of a training comparison use."""

from __future__ import annotations

H100_BF16_DENSE_PEAK = 989e12  # H100/H200 SXM dense bf16 tensor-core peak, FLOP/s
LEARNING_RATE = 5e-4  # both sides of a training comparison: our Adam and Marian's AdamW


def model_config(args):
    from jax_namnmt.config import ModelConfig

    kernels = {"attention_kernel": args.attention_kernel, "logits_dtype": args.logits_dtype}
    if args.quick:  # (float32: the cuDNN kernel's bfloat16 check is skipped; CPUs use the einsums anyway)
        return ModelConfig(vocab_size=256, d_model=32, num_heads=2, ffn_dim=64, enc_layers=1, dec_layers=1,
                           max_positions=128, dtype="float32", **kernels)
    return ModelConfig(vocab_size=args.vocab, d_model=args.d_model, num_heads=args.heads, ffn_dim=args.ffn,
                       enc_layers=args.layers, dec_layers=args.layers, dropout=args.dropout,
                       max_positions=max(256, 2 * args.max_len + 8), dtype=args.dtype, **kernels).validate()


def train_matmul_flops(src_lens, tgt_lens, config, backward: bool = True) -> float:
    """Model matmul FLOPs of one pass over these sentences, padding excluded (see the formula in
    ``train_throughput.py``'s docstring); ``backward``: forward + backward (x3), else forward only."""
    d, f, v = config.d_model, config.ffn_dim, config.vocab_size
    le, ld = config.enc_layers, config.dec_layers
    fwd = 0.0
    for ls, lt in zip(src_lens, tgt_lens):
        ls, lt = int(ls), int(lt)
        fwd += ls * le * 2 * (4 * d * d + 2 * d * f)  # encoder q,k,v,out + fc1,fc2
        fwd += ls * ld * 2 * (2 * d * d)  # cross-attention k,v projections read source tokens
        fwd += lt * ld * 2 * (4 * d * d + 2 * d * d + 2 * d * f)  # self q,k,v,out + cross q,out + FFN
        fwd += lt * 2 * d * v  # output projection (tied embedding)
        fwd += le * 4 * d * ls * ls  # encoder scores QK^T + context AV: 2 x 2*d per (query, key)
        fwd += ld * 4 * d * (lt * (lt + 1) // 2)  # causal decoder self-attention: t keys at step t
        fwd += ld * 4 * d * lt * ls  # cross-attention
    return fwd * (3 if backward else 1)

