"""The controlled reproduction at GPU scale: ``python -m jax_namnmt.reproduce --config configs/reproduce_gpu.py``.

The CPU protocol (``configs/reproduce_cpu.py``) with the fine-tuning of the H200 pipeline run
(2000 steps of 16384 target tokens, importance on the whole importance part), every system with
3 seeds and the k = 0 control, decoding in batches of 500. Sized for one GPU session of about
15 minutes (the shipped model trains at ~50 steps/s of 16k tokens on an H200).
"""

import dataclasses

from jax_namnmt.config import load_config


def get_config():
    base = load_config("reproduce_cpu")
    return dataclasses.replace(
        base, name="reproduce_gpu",
        train=dataclasses.replace(base.train, tokens_per_batch=16384),
        finetune=dataclasses.replace(base.finetune, steps=2000, eval_every=200),
        decode=dataclasses.replace(base.decode, batch_sentences=500),
        reproduce=dataclasses.replace(
            base.reproduce, systems=("multilingual", "method_te", "method_av", "random", "k0"),
            one_seed_systems=("k0",), converge_eval_every=500, converge_max_steps=4000),
    )
