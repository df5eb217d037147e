"""The shipped model's recipe for a machine without a GPU: the Multi30k multilingual baseline
(8 directions) on 2 CPU cores.

The shipped model (``jax_namnmt/resources/model``) is this model trained on one GPU by
``multi30k_shipped_gpu`` (dropout 0.2, about 29 epochs; see docs/model_card.md); an earlier
shipped model was 800 steps of this config on a 2-core VM (14.3 average test BLEU). 3+3 layers, d 256, FFN 1024, 4 heads, the demo's 6000-piece vocabulary (same corpus, same
SentencePiece settings, so the same pieces), dropout 0.1, label smoothing 0.1, 4096 target
tokens per batch, inverse-sqrt schedule with a short warm-up and a high peak (small model, few
epochs). Fine-tuning (40 steps, fresh optimizer, peak 3e-4) and decoding settings are what
``pipeline`` uses when it starts from the shipped model (its package's config,
``multi30k_shipped``, keeps them: they fit the 10-minute budget on 2 cores).
"""

from jax_namnmt.config import Config, DataConfig, DecodeConfig, FinetuneConfig, MethodConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    vocab = 6000
    return Config(
        name="multi30k_cpu",
        model=ModelConfig(vocab_size=vocab, d_model=256, num_heads=4, ffn_dim=1024, enc_layers=3, dec_layers=3,
                          dropout=0.1, max_positions=128),
        data=DataConfig(vocab_size=vocab, spm_max_sentences=60000, max_len=64, src_row_len=64, tgt_row_len=64),
        train=TrainConfig(steps=2600, tokens_per_batch=4096, learning_rate=1.5e-3, warmup_steps=400,
                          warmup_init_lr=1e-6, eval_every=200, save_every=200, log_every=20, valid_max_lines=200,
                          keep_checkpoints=3),
        finetune=FinetuneConfig(steps=40, learning_rate=3e-4, warmup_steps=10, warmup_init_lr=1e-5),
        method=MethodConfig(importance="taylor", importance_max_lines=100, rho=0.9, k=0.7),
        decode=DecodeConfig(beam_size=4, length_penalty=0.6, max_len_a=1.2, max_len_b=10, batch_sentences=100,
                            test_max_lines=100),
    )
