"""Multi30k, 8 directions, a converged baseline on one GPU (transformer-small-ish, ~15 minutes on an H100)."""

from jax_namnmt.config import Config, DataConfig, DecodeConfig, FinetuneConfig, MethodConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    vocab = 8000
    return Config(
        name="multi30k_gpu",
        model=ModelConfig(vocab_size=vocab, d_model=512, num_heads=8, ffn_dim=2048, enc_layers=6, dec_layers=6,
                          dropout=0.3, max_positions=256, dtype="bfloat16"),
        data=DataConfig(vocab_size=vocab, max_len=128, src_row_len=128, tgt_row_len=128),
        train=TrainConfig(steps=20000, tokens_per_batch=16384, learning_rate=7e-4, warmup_steps=4000,
                          eval_every=1000, save_every=1000, log_every=100),
        finetune=FinetuneConfig(steps=5000, learning_rate=1e-4, warmup_steps=1000),
        method=MethodConfig(importance="taylor", rho=0.9, k=0.7),
        decode=DecodeConfig(beam_size=4, length_penalty=0.6, batch_sentences=512),
    )
