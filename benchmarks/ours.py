"""Our side of the benchmarks (JAX): the device, parameters initialised under one jit, batches put
on the device, the timed loop of train steps (synced once, at its end) and the constant
learning-rate schedule. ``jax`` is imported inside the functions."""

from __future__ import annotations

import time

from .shapes import LEARNING_RATE


def constant_schedule():
    """Our ``schedule_args`` at a constant ``LEARNING_RATE`` (a warm-up from the rate to itself,
    longer than any benchmark runs), so our side trains at Marian's learning rate."""
    from jax_namnmt.training.step import schedule_args

    return schedule_args(LEARNING_RATE, 4000, LEARNING_RATE)


def jax_device_info() -> dict:
    import jax

    dev = jax.devices()[0]
    return {"jax_backend": jax.default_backend(), "device_name": getattr(dev, "device_kind", str(dev)),
            "device_count": jax.device_count()}


def init_params(config, seed: int):
    """``model.transformer.init_params`` under one jit (the eager init dispatches op by op: slower)."""
    import jax

    from jax_namnmt.model.transformer import init_params as init

    params = jax.jit(lambda: init(config, seed))()
    jax.block_until_ready(params)
    return params


def to_device(batches):
    import jax

    out = [jax.device_put(b) for b in batches]
    jax.block_until_ready(out)
    return out


def run_steps(train_step, state, batches, masks, key, sched):
    """Our train step over ``batches``, synced once at the end (never inside the loop):
    ``(state, last metrics, seconds)``."""
    import jax

    t0 = time.perf_counter()
    for b in batches:
        state, metrics = train_step(state, b, masks, key, sched)
    jax.block_until_ready((state, metrics))
    return state, metrics, time.perf_counter() - t0

