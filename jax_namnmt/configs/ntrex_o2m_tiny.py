"""One-to-many at NTREX-128 scale: English to all 127 other NTREX-128 languages (127 pairs), a tiny
model, every step of the method on 2 CPU cores in well under an hour. It shows the machinery at the
number of pairs users of multilingual models have (the paper has 8 and 12), not translation
quality: 300 steps of a 1+1-layer d-64 model over 127 languages is far from converged.

    bash scripts/ntrex_o2m_scale.sh runs/ntrex_o2m            # every phase, wall time and peak memory

Data: NTREX-128 (``prepare --from-ntrex ../shared/data/ntrex128``), split by document 80/10/10
(1,439 / 178 / 182 lines a language). NTREX codes with a script or region are written with ``_``
(``aze_Latn``, ``eng_GB``; a pair's ``-`` separates its languages). The vocabulary must hold every
character of the 128 languages (SentencePiece's character coverage 1.0: about 7,000 characters,
CJK included) besides the 127 ``<2xx>`` tags, so it is 12,000 pieces however small the model.
Measured phases: ``docs/scaling.md``.
"""

from jax_namnmt.config import Config, DataConfig, DecodeConfig, FinetuneConfig, MethodConfig, ModelConfig, TrainConfig

# The 127 target languages of NTREX-128 (``data.multiway.ntrex_languages`` of the full folder; a
# test checks the two agree where the corpus is present).
TARGETS = (
    "afr amh arb aze_Latn bak bel bem ben bod bos bul cat ces ckb_Arab cym dan deu div dzo ell eng_GB "
    "eng_IN eng_US est eus ewe fao fas fij fil fin fra fra_CA fuc gle glg guj hau heb hin hmn hrv hun "
    "hye ibo ind isl ita jpn kan kat kaz khm kin kir kmr kor lao lav lit ltz mal mar mey mkd mlg mlt "
    "mon mri msa mya nde nep nld nno nob nso nya orm pan pol por por_BR prs pus ron rus shi sin slk "
    "slv smo sna_Latn snd_Arab som spa spa_MX sqi srp_Cyrl srp_Latn ssw swa swe tah tam tat tel "
    "tgk_Cyrl tha tir ton tsn tuk tur uig ukr urd uzb ven vie wol xho yor yue zho_CN zho_TW zul"
).split()
PAIRS = tuple(f"en-{lang}" for lang in TARGETS)


def get_config() -> Config:
    vocab = 12000
    return Config(
        name="ntrex_o2m_tiny",
        model=ModelConfig(vocab_size=vocab, d_model=64, num_heads=2, ffn_dim=256, enc_layers=1, dec_layers=1,
                          dropout=0.0, max_positions=256),
        data=DataConfig(vocab_size=vocab, pairs=PAIRS, spm_max_sentences=60000, max_len=96,
                        src_row_len=96, tgt_row_len=96),
        train=TrainConfig(steps=300, tokens_per_batch=4096, learning_rate=2e-3, warmup_steps=50,
                          warmup_init_lr=1e-5, eval_every=300, save_every=100, log_every=25, valid_max_lines=4),
        finetune=FinetuneConfig(steps=50, learning_rate=1e-3, warmup_steps=10, warmup_init_lr=1e-4, eval_every=50),
        method=MethodConfig(importance="taylor", importance_max_lines=16, importance_tokens_per_batch=4096,
                            rho=0.9, k=0.7),
        decode=DecodeConfig(beam_size=2, length_penalty=0.6, max_len_a=1.2, max_len_b=5, batch_sentences=128,
                            test_max_lines=2, zero_shot="none"),
    )
