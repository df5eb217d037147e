"""A tiny config for tests: a few hundred lines per pair, every step of the method in seconds on CPU."""

from jax_namnmt.config import Config, DataConfig, DecodeConfig, FinetuneConfig, MethodConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    vocab = 300
    return Config(
        name="tiny",
        model=ModelConfig(vocab_size=vocab, d_model=32, num_heads=2, ffn_dim=64, enc_layers=1, dec_layers=1,
                          dropout=0.1, max_positions=64),
        data=DataConfig(vocab_size=vocab, pairs=("de-en", "en-de", "fr-en", "en-fr"), max_len=32,
                        src_row_len=32, tgt_row_len=32, spm_max_sentences=20000),
        train=TrainConfig(steps=30, tokens_per_batch=512, learning_rate=3e-3, warmup_steps=5, warmup_init_lr=1e-4,
                          eval_every=10, save_every=10, log_every=5, valid_max_lines=16, keep_checkpoints=2),
        finetune=FinetuneConfig(steps=6, learning_rate=1e-3, warmup_steps=1, warmup_init_lr=1e-3),
        method=MethodConfig(importance="taylor", importance_max_lines=16, importance_tokens_per_batch=512,
                            rho=0.9, k=0.7),
        decode=DecodeConfig(beam_size=2, length_penalty=0.6, max_len_a=1.0, max_len_b=5, batch_sentences=16,
                            test_max_lines=8),
    )
