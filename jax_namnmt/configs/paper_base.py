"""The paper's setting (Xie et al. 2021, IWSLT-17 many-to-many): fairseq transformer base, 40k joint
vocabulary, 4000 warm-up steps, rho 0.9, k 0.7; fine-tuning at lr 1e-4 with 4000 warm-up steps from 1e-7.

Bring the corpus in the fairseq layout: --data DIR --pairs it-en,en-it,ro-en,en-ro,nl-en,en-nl,it-ro,ro-it
"""

from jax_namnmt.config import Config, DataConfig, DecodeConfig, FinetuneConfig, MethodConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    vocab = 40000
    return Config(
        name="paper_base",
        model=ModelConfig(vocab_size=vocab, d_model=512, num_heads=8, ffn_dim=2048, enc_layers=6, dec_layers=6,
                          dropout=0.1, max_positions=256, dtype="bfloat16"),
        data=DataConfig(pairs=("it-en", "en-it", "ro-en", "en-ro", "nl-en", "en-nl", "it-ro", "ro-it"),
                        vocab_size=vocab, max_len=128, src_row_len=128, tgt_row_len=128),
        train=TrainConfig(steps=100000, tokens_per_batch=16384, learning_rate=5e-4, warmup_steps=4000,
                          eval_every=2000, save_every=2000, log_every=100),
        finetune=FinetuneConfig(steps=20000, learning_rate=1e-4, warmup_steps=4000, warmup_init_lr=1e-7),
        method=MethodConfig(importance="taylor", rho=0.9, k=0.7, variant="pair"),
        decode=DecodeConfig(beam_size=4, length_penalty=0.6, batch_sentences=256),
    )
