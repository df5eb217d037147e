"""The controlled reproduction at CPU scale (``python -m jax_namnmt.reproduce --config configs/reproduce_cpu.py``).

Starts from the shipped model (its architecture, vocabulary and settings: ``multi30k_shipped``) and
runs both settings on 2 CPU cores in about 2.5 hours: fine-tuning 100 steps of 4096 target tokens
(peak 3e-4 after 10 warm-up steps, fresh Adam, dropout 0.2) for every system and seed; seeds 1-3
for multilingual and method_te, the first seed only for method_av and the random-mask control,
and no method_av in one-to-many (budget);
test on all 1000 lines of test_2016_flickr per direction. The GPU-scale protocol is
``configs/reproduce_gpu.py``. Results: ``docs/results.md``.
"""

import dataclasses

from jax_namnmt.config import ReproduceConfig, load_config


def get_config():
    base = load_config("multi30k_shipped")
    return dataclasses.replace(
        base, name="reproduce_cpu",
        train=dataclasses.replace(base.train, valid_max_lines=0),  # curves on the whole validation part
        finetune=dataclasses.replace(base.finetune, steps=100, eval_every=20),
        decode=dataclasses.replace(base.decode, test_max_lines=0, batch_sentences=128),
        reproduce=ReproduceConfig(
            settings=("many_to_many", "one_to_many"), seeds=(1, 2, 3),
            systems=("multilingual", "method_te", "method_av", "random"),
            one_seed_systems=("method_av", "random"), skip=("one_to_many:method_av",), importance_lines=500,
            converge_eval_every=50, converge_patience=2, converge_min_delta=0.002, converge_max_steps=300,
            rho_k=("0.9/0.7", "0.7/0.9"), importance_losses=("label_smoothed", "cross_entropy"),
            normalizations=("none", "pair_mean"), module_sets=("all", "no_embedding_inputs"),
            bootstrap_samples=1000, out_dir="docs"),
    )
