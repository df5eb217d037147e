"""The optimizer, the jit-compiled train and eval steps (pure functions of state and batch)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax

from jax_namnmt.config import ModelConfig
from jax_namnmt.model.transformer import Transformer
from jax_namnmt.training.loss import label_smoothed_nll


def inverse_sqrt_schedule(peak_lr: float, warmup_steps: int, warmup_init_lr: float = 1e-7) -> optax.Schedule:
    """fairseq ``inverse_sqrt``: linear warm-up to ``peak_lr``, then ``peak_lr * sqrt(warmup / step)``."""
    warmup_steps = max(1, warmup_steps)
    warmup = optax.linear_schedule(warmup_init_lr, peak_lr, warmup_steps)
    decay = lambda count: peak_lr * jnp.sqrt(warmup_steps / (count + warmup_steps))  # noqa: E731
    return optax.join_schedules([warmup, decay], [warmup_steps])


def make_optimizer(peak_lr, warmup_steps, warmup_init_lr, b1=0.9, b2=0.98, eps=1e-9, clip_norm=0.0):
    adam = optax.adam(inverse_sqrt_schedule(peak_lr, warmup_steps, warmup_init_lr), b1=b1, b2=b2, eps=eps)
    return optax.chain(optax.clip_by_global_norm(clip_norm), adam) if clip_norm > 0 else adam


def init_state(params, optimizer) -> dict:
    return {"params": params, "opt_state": optimizer.init(params), "step": jnp.array(0, jnp.int32)}


def make_train_step(config: ModelConfig, optimizer, label_smoothing: float):
    """``step(state, batch, masks, key) -> (state, metrics)``; the state buffers are donated.

    The dropout key is ``fold_in(key, step)``, so a resumed run draws the same dropout.
    """
    model = Transformer(config)

    @partial(jax.jit, donate_argnums=(0,))
    def train_step(state, batch, masks, key):
        dropout_key = jax.random.fold_in(key, state["step"])

        def loss_fn(params):
            logits = model.apply({"params": params}, batch, masks, deterministic=False,
                                 rngs={"dropout": dropout_key})
            loss, nll, ntokens = label_smoothed_nll(logits, batch["tgt_labels"], batch["tgt_segments"] > 0,
                                                    label_smoothing)
            ntokens = jnp.maximum(ntokens, 1.0)
            return loss / ntokens, (nll / ntokens, ntokens)

        (loss, (nll, ntokens)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {"loss": loss, "nll": nll, "tokens": ntokens, "grad_norm": optax.global_norm(grads)}
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    return train_step


def make_eval_step(config: ModelConfig, label_smoothing: float):
    """``eval(params, batch, masks) -> (loss_sum, nll_sum, tokens)``, no dropout."""
    model = Transformer(config)

    @jax.jit
    def eval_step(params, batch, masks):
        logits = model.apply({"params": params}, batch, masks, deterministic=True)
        return label_smoothed_nll(logits, batch["tgt_labels"], batch["tgt_segments"] > 0, label_smoothing)

    return eval_step
