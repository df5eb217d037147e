"""The shipped model trained on one GPU: the same model as ``multi30k_cpu`` (3+3 layers, d 256,
FFN 1024, 4 heads, the demo's 6000-piece vocabulary) with dropout 0.2, trained for about 29
epochs (docs/model_card.md).

    python -m jax_namnmt.train --config multi30k_shipped_gpu --workdir WORKDIR

WORKDIR is prepared with the demo's vocabulary (``runs/shipped``: ``prepare --config multi30k_cpu``).
The package is exported with ``--config multi30k_shipped`` (CPU batch sizes for what users run next).
Differences from ``multi30k_cpu``: 16384 target tokens a batch (279 batches an epoch on the 8
directions), up to 8000 updates (~29 epochs), dropout 0.2 (more epochs, more regularisation), checkpoints every 500
updates. The model stays float32 (``ModelConfig.dtype``) so the package's config decodes in
float32 on CPU. Fine-tuning and decoding settings are ``multi30k_cpu``'s: they are what
``pipeline`` uses on 2 CPU cores when it starts from the shipped model.
"""

import dataclasses

from jax_namnmt.config import Config, load_config


def get_config() -> Config:
    base = load_config("multi30k_shipped")
    return dataclasses.replace(
        base,
        name="multi30k_shipped_gpu",
        train=dataclasses.replace(base.train, steps=8000, tokens_per_batch=16384, learning_rate=1.5e-3,
                                  warmup_steps=800, eval_every=1000, save_every=500, log_every=100,
                                  valid_max_lines=200, keep_checkpoints=2),
    )
