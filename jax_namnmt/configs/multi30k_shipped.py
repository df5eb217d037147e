"""The config stored in the shipped model's package (``jax_namnmt/resources/model``): the model
``multi30k_shipped_gpu`` trained (``multi30k_cpu``'s model with dropout 0.2), with the CPU
settings of ``multi30k_cpu`` for everything after pre-training (4096-token batches, 40 masked
fine-tuning steps, importance on 100 validation lines, decoding), which ``pipeline`` uses when
it starts from the shipped model on a laptop.
"""

import dataclasses

from jax_namnmt.config import Config, load_config


def get_config() -> Config:
    base = load_config("multi30k_cpu")
    return dataclasses.replace(base, name="multi30k_shipped", model=dataclasses.replace(base.model, dropout=0.2))
