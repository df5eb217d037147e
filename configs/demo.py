"""The embedded demo: Multi30k, 8 directions, every step of the method on 2 CPU cores in ~10 minutes.

Sized for the budget: a 3+3-layer, d 256 Transformer (vocab 8000) pre-trained for a few
hundred small steps with a short warm-up and a high peak learning rate, then 40 steps of masked
fine-tuning (method_te) and 40 steps of plain training (multilingual, the equal-steps baseline),
each from the same pre-trained model with a fresh optimizer and the same schedule.
"""

from jax_namnmt.config import Config, DataConfig, DecodeConfig, FinetuneConfig, MethodConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    vocab = 8000
    return Config(
        name="demo",
        model=ModelConfig(vocab_size=vocab, d_model=256, num_heads=4, ffn_dim=1024, enc_layers=3, dec_layers=3,
                          dropout=0.1, max_positions=128),
        data=DataConfig(vocab_size=vocab, spm_max_sentences=60000, max_len=64, src_row_len=64, tgt_row_len=64),
        train=TrainConfig(steps=230, tokens_per_batch=2048, learning_rate=2e-3, warmup_steps=40,
                          warmup_init_lr=1e-5, eval_every=115, save_every=115, log_every=10, valid_max_lines=100),
        finetune=FinetuneConfig(steps=40, learning_rate=1e-3, warmup_steps=20, warmup_init_lr=1e-4),
        method=MethodConfig(importance="taylor", importance_max_lines=100, rho=0.9, k=0.7),
        decode=DecodeConfig(beam_size=4, length_penalty=0.6, batch_sentences=100, test_max_lines=200),
    )
