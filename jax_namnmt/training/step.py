"""The optimizer, the jit-compiled train and eval steps (pure functions of state and batch)."""

from __future__ import annotations

import functools
from functools import partial

import jax
import jax.numpy as jnp
import optax

from jax_namnmt import parallel
from jax_namnmt.config import ModelConfig
from jax_namnmt.model.transformer import Transformer, init_boxed_params
from jax_namnmt.training.loss import default_loss_chunk, output_loss, output_loss_by_segment
from jax_namnmt.xla_options import training_compiler_options


def inverse_sqrt_lr(step, peak_lr, warmup_steps, warmup_init_lr):
    """fairseq ``inverse_sqrt`` for the update after ``step`` completed updates: linear warm-up
    ``warmup_init_lr + step * (peak_lr - warmup_init_lr) / warmup_steps`` (so the first update uses
    ``warmup_init_lr``), then ``peak_lr * sqrt(warmup_steps / step)``; no warm-up (0) decays from
    ``peak_lr``. Works on traced values."""
    step = jnp.asarray(step, jnp.float32)
    warmup = jnp.asarray(warmup_steps, jnp.float32)
    warm = warmup_init_lr + (peak_lr - warmup_init_lr) * step / jnp.maximum(warmup, 1.0)
    decay = peak_lr * jnp.sqrt(jnp.maximum(warmup, 1.0) / jnp.maximum(step, 1.0))
    return jnp.where(step < warmup, warm, decay)


def schedule_args(peak_lr: float, warmup_steps: int, warmup_init_lr: float) -> jnp.ndarray:
    """The learning-rate schedule as data, so pre-training and fine-tuning share one compiled step."""
    return jnp.array([peak_lr, warmup_steps, warmup_init_lr], jnp.float32)


def make_optimizer(b1=0.9, b2=0.98, eps=1e-9, clip_norm=0.0) -> optax.GradientTransformation:
    """Adam's direction (optax); the learning rate is applied by the step from ``schedule_args``."""
    adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
    return optax.chain(optax.clip_by_global_norm(clip_norm), adam) if clip_norm > 0 else adam


def batch_loss(model, params, batch, masks, label_smoothing, chunk, *, variables=None, mutable=False,
               num_pairs: int = 0, **apply_kwargs):
    """``(loss_sum, nll_sum, tokens)`` of a packed batch: the model's last hidden states and the
    tied output embedding through ``output_loss`` (never a ``[tokens, vocab]`` logits array kept
    for the backward pass). ``num_pairs`` > 0: each sum split by the target tokens' pairs
    (``[num_pairs]`` arrays, ``output_loss_by_segment``; for evaluation, not differentiated).
    ``variables`` (collections besides the params), ``mutable`` and ``apply_kwargs``
    (``deterministic``, ``rngs``) go to ``model.apply``; with ``mutable`` the result is
    ``(sums, state)``."""
    out = model.apply({"params": params, **(variables or {})}, batch, masks, return_hidden=True,
                      mutable=mutable, **apply_kwargs)
    hidden, state = out if mutable else (out, None)
    tokens = (hidden.reshape(-1, hidden.shape[-1]), params["embed"]["embedding"], batch["tgt_labels"].reshape(-1),
              (batch["tgt_segments"] > 0).reshape(-1))
    if num_pairs:
        sums = output_loss_by_segment(*tokens, batch["tgt_pairs"].reshape(-1), num_pairs, label_smoothing, chunk,
                                      model.config.logits_dtype)
    else:
        sums = output_loss(*tokens, label_smoothing, chunk, model.config.logits_dtype)
    return sums if state is None else (sums, state)


def loss_chunk_for(mesh) -> int:
    """Token chunk of the loss: the backend's default on one device; one chunk under a mesh of
    several devices (a scan over token chunks would not keep the batch's sharding)."""
    return 0 if mesh is not None and mesh.size > 1 else default_loss_chunk()


def init_state(params, optimizer) -> dict:
    """``bad_steps``: consecutive updates skipped for a non-finite loss or gradient (0 after a good one);
    ``skipped_steps``: all updates skipped so far. Both live on the device, so no step syncs the host."""
    return {"params": params, "opt_state": optimizer.init(params), "step": jnp.array(0, jnp.int32),
            "bad_steps": jnp.array(0, jnp.int32), "skipped_steps": jnp.array(0, jnp.int32)}


def abstract_state(config: ModelConfig, optimizer) -> dict:
    """The train state (:func:`init_state`) as a ShapeDtypeStruct tree, the parameters and the
    optimizer moments boxed with the parameters' logical axis names, the counters plain: what
    ``parallel.tree_shardings`` maps to the state's shardings (MaxText's ``get_abstract_state``)."""
    return jax.eval_shape(lambda: init_state(init_boxed_params(config), optimizer))


def state_shardings(config: ModelConfig, optimizer, mesh, rules):
    """Shardings of the train state on ``mesh``: the optimizer moments as their parameters,
    counters replicated."""
    return parallel.tree_shardings(abstract_state(config, optimizer), mesh, rules)


@functools.lru_cache(maxsize=None)
def make_train_step(config: ModelConfig, label_smoothing: float, b1=0.9, b2=0.98, eps=1e-9, clip_norm=0.0,
                    mesh=None, rules=None):
    """``step(state, batch, masks, key, schedule) -> (state, metrics)``; state buffers are donated.

    With a ``mesh`` (and logical axis ``rules``, see ``jax_namnmt/parallel.py``) the step is
    compiled for the mesh: the new state comes back on ``step.state_shardings`` (put the state
    there first, ``parallel.put``), the metrics replicated, and the model's activations are
    constrained by the rules (batch rows split over data x fsdp, heads/FFN over tensor). Without
    one (or with a one-device mesh, where the program is the same) it is the plain jit.

    Cached per (model shape, loss, optimizer), so every phase of a run reuses one compilation
    (per mask-ness). The dropout key is ``fold_in(key, step)``: a resumed run draws the same dropout.

    A step whose loss or gradient norm is not finite is skipped inside the step: params and
    optimizer state come back unchanged (selected, bit for bit), the step counter still advances
    (the data position and the dropout key move on), ``bad_steps`` counts it and the metrics carry
    ``skipped`` = 1.0; the loop decides when too many consecutive skips mean divergence.

    ``trainable`` (optional, a boolean tree shaped like the params): only its True entries are
    updated; the others get a zero gradient (so neither the norm nor Adam's moments see them) and
    come back bit for bit (``add_pair``: the parameters the old pairs read stay frozen).
    """
    model = Transformer(config)
    optimizer = make_optimizer(b1, b2, eps, clip_norm)
    chunk = loss_chunk_for(mesh)
    shardings = None
    jit_kwargs = {"compiler_options": training_compiler_options()}
    if mesh is not None:
        shardings = state_shardings(config, optimizer, mesh, rules)
        jit_kwargs["out_shardings"] = (shardings, parallel.replicated(mesh))

    @partial(jax.jit, donate_argnums=(0,), **jit_kwargs)
    def train_step(state, batch, masks, key, schedule, trainable=None):
        with parallel.activate(mesh, rules):
            return _train_step(state, batch, masks, key, schedule, trainable)

    def _train_step(state, batch, masks, key, schedule, trainable):
        dropout_key = jax.random.fold_in(key, state["step"])

        def loss_fn(params):
            loss, nll, ntokens = batch_loss(model, params, batch, masks, label_smoothing, chunk,
                                            deterministic=False, rngs={"dropout": dropout_key})
            ntokens = jnp.maximum(ntokens, 1.0)
            return loss / ntokens, (nll / ntokens, ntokens)

        (loss, (nll, ntokens)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        if trainable is not None:
            grads = jax.tree.map(lambda g, t: jnp.where(t, g, 0.0), grads, trainable)
        direction, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        lr = inverse_sqrt_lr(state["step"], schedule[0], schedule[1], schedule[2])
        params = jax.tree.map(lambda p, d: p - lr * d, state["params"], direction)
        if trainable is not None:
            params = jax.tree.map(jnp.where, trainable, params, state["params"])
        grad_norm = optax.tree.norm(grads)
        bad = jnp.logical_not(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
        keep = lambda new, old: jnp.where(bad, old, new)  # noqa: E731
        params = jax.tree.map(keep, params, state["params"])
        opt_state = jax.tree.map(keep, opt_state, state["opt_state"])
        bad_i = bad.astype(jnp.int32)
        metrics = {"loss": loss, "nll": nll, "tokens": ntokens, "grad_norm": grad_norm, "lr": lr,
                   "skipped": bad.astype(jnp.float32)}
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1,
                "bad_steps": (state["bad_steps"] + 1) * bad_i,
                "skipped_steps": state["skipped_steps"] + bad_i}, metrics

    train_step.state_shardings = shardings
    train_step.mesh, train_step.rules = mesh, rules
    return train_step


@functools.lru_cache(maxsize=None)
def make_eval_step(config: ModelConfig, label_smoothing: float, num_pairs: int, mesh=None, rules=None):
    """``eval(params, batch, masks) -> (loss_sums, nll_sums, tokens)``, each ``[num_pairs]`` (summed
    over each pair's target tokens, so one batch mixing the pairs gives every pair's figures), no
    dropout; ``mesh`` and ``rules`` as for ``make_train_step`` (the sums come back replicated)."""
    model = Transformer(config)
    jit_kwargs = {"compiler_options": training_compiler_options()}
    if mesh is not None:
        jit_kwargs["out_shardings"] = parallel.replicated(mesh)
    chunk = loss_chunk_for(mesh)

    @partial(jax.jit, **jit_kwargs)
    def eval_step(params, batch, masks):
        with parallel.activate(mesh, rules):
            return batch_loss(model, params, batch, masks, label_smoothing, chunk, num_pairs=num_pairs,
                              deterministic=True)

    return eval_step
