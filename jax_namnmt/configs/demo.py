"""The from-scratch demo (``pipeline --from-scratch``): Multi30k, 8 directions, every step of the
method including pre-training on 2 CPU cores in a few minutes, and ``--systems all`` (seven systems,
five of them pre-trained) within 30 minutes.

Sized for that budget (the train step is the bound: see benchmarks/README.md#cpu; timings in
docs/experiments.md): a 2+2-layer, d 256 Transformer with a 6000-piece vocabulary, pre-trained
for 80 steps with a short warm-up and a high peak learning rate: a smoke run of every step, far
from converged (the shipped model, trained by ``multi30k_shipped_gpu``, docs/model_card.md, is
the converged start); then masked fine-tuning (method_te) and, for a fair comparison, the same
number of plain steps with the same schedule (multilingual), each from the pre-trained model
with a fresh optimizer. No dropout: a few hundred steps see each sentence at most once, so
dropout only slows learning here (the other configs use the paper's 0.1). BLEU on the first
100 test_2016_flickr lines per direction.
"""

from jax_namnmt.config import Config, DataConfig, DecodeConfig, FinetuneConfig, MethodConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    vocab = 6000
    return Config(
        name="demo",
        model=ModelConfig(vocab_size=vocab, d_model=256, num_heads=4, ffn_dim=512, enc_layers=2, dec_layers=2,
                          dropout=0.0, max_positions=128),
        data=DataConfig(vocab_size=vocab, spm_max_sentences=60000, max_len=64, src_row_len=64, tgt_row_len=64),
        train=TrainConfig(steps=80, tokens_per_batch=4096, learning_rate=2e-3, warmup_steps=30,
                          warmup_init_lr=1e-5, eval_every=80, save_every=80, log_every=10, valid_max_lines=100),
        finetune=FinetuneConfig(steps=20, learning_rate=1e-3, warmup_steps=10, warmup_init_lr=1e-4),
        method=MethodConfig(importance="taylor", importance_max_lines=100, rho=0.9, k=0.7),
        decode=DecodeConfig(beam_size=4, length_penalty=0.6, max_len_a=1.0, max_len_b=5, batch_sentences=100,
                            test_max_lines=100),
    )
