"""The embedded demo: Multi30k, 8 directions, every step of the method on 2 CPU cores in ~10 minutes."""

from jax_namnmt.config import Config, DataConfig, DecodeConfig, FinetuneConfig, MethodConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    vocab = 8000
    return Config(
        name="demo",
        model=ModelConfig(vocab_size=vocab, d_model=256, num_heads=4, ffn_dim=1024, enc_layers=3, dec_layers=3,
                          dropout=0.1, max_positions=128),
        data=DataConfig(vocab_size=vocab, max_len=64, src_row_len=64, tgt_row_len=64),
        train=TrainConfig(steps=120, tokens_per_batch=4096, learning_rate=2e-3, warmup_steps=40, eval_every=60,
                          save_every=60, log_every=10, valid_max_lines=100),
        finetune=FinetuneConfig(steps=20, learning_rate=5e-4, warmup_steps=1, warmup_init_lr=5e-4),
        method=MethodConfig(importance="taylor", importance_max_lines=100, rho=0.9, k=0.7),
        decode=DecodeConfig(beam_size=4, length_penalty=0.6, batch_sentences=200, test_max_lines=200),
    )
