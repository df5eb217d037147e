"""Neuron importance per language pair, from gradients with respect to activations.

Taylor expansion (TE): ``Theta_m(i) = 1/T_m sum_t |dL/dh_i(t) * h_i(t)|``;
absolute value (AV): ``Theta_m(i) = 1/T_m sum_t |h_i(t)|``, over the non-padding tokens of
pair m. ``dL/dh`` is ``jax.grad`` of the summed training loss with respect to Flax
``perturb`` variables added to every masked projection output, so the parameters are never
differentiated. The loss is a sum over tokens, so the gradient at a token is that token's
example's own gradient, and all pairs are scored in ONE pass over mixed (packed) batches by
a segment sum over each token's pair id.

Under a device mesh (``mesh=``: a ``jax.sharding.Mesh``, a ``ParallelConfig`` or a mesh string
such as ``"data=2,tensor=2"``) the parameters are sharded by the logical axis rules and batch
rows split over ``data`` x ``fsdp`` (``jax_namnmt/parallel.py``); the per-pair sums come back
replicated, so the result equals one device's (up to float summation order).
"""

from __future__ import annotations

import functools
from typing import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jax_namnmt import parallel
from jax_namnmt.config import ModelConfig, ParallelConfig
from jax_namnmt.method.masks import module_sizes, parse_name
from jax_namnmt.model.transformer import Transformer, boxed_abstract_params
from jax_namnmt.training.step import batch_loss, loss_chunk_for
from jax_namnmt.xla_options import training_compiler_options

METHODS = ("taylor", "absolute")


def reads_source_tokens(name: str) -> bool:
    """Which tokens a module's activations live on: encoder modules and the cross-attention
    keys/values read source positions; everything else in the decoder reads target positions."""
    part = parse_name(name)
    return part.stack == "encoder" or (part.sublayer == "cross_attn" and part.projection in ("k", "v"))


def _collect(tree, path=()):
    """Leaves of a Flax collection keyed by module path, for the variable named 'h'."""
    out = {}
    for key, value in tree.items():
        if key == "h":
            out[path] = value[0] if isinstance(value, tuple) else value
        else:
            out.update(_collect(value, path + (key,)))
    return out


def _perturbation_tree(shapes_by_path):
    tree: dict = {}
    for path, shape in shapes_by_path.items():
        node = tree
        for key in path:
            node = node.setdefault(key, {})
        node["h"] = jnp.zeros(shape.shape, shape.dtype)
    return tree


def batch_importance(params, batch, masks, *, config: ModelConfig, num_pairs: int, method: str,
                     label_smoothing: float = 0.1, mesh=None, rules=None):
    """Per-pair sums of the importance score over one batch, and token counts.

    Returns ``(sums: {module name: [num_pairs, F]}, src_tokens: [num_pairs], tgt_tokens: [num_pairs])``.
    ``mesh``/``rules``: compiled for a device mesh (inputs placed by the caller), results replicated.
    """
    if mesh is None or mesh.size == 1:
        return _one_device_batch_importance()(params, batch, masks, config=config, num_pairs=num_pairs,
                                              method=method, label_smoothing=label_smoothing)
    return _sharded_batch_importance(mesh, rules)(params, batch, masks, config=config, num_pairs=num_pairs,
                                                  method=method, label_smoothing=label_smoothing,
                                                  loss_chunk=loss_chunk_for(mesh))


_STATIC = ("config", "num_pairs", "method", "label_smoothing", "loss_chunk")


@functools.lru_cache(maxsize=None)
def _sharded_batch_importance(mesh, rules):
    def run(params, batch, masks, **static):
        with parallel.activate(mesh, rules):
            return _importance_sums(params, batch, masks, **static)

    return jax.jit(run, static_argnames=_STATIC, out_shardings=parallel.replicated(mesh),
                   compiler_options=training_compiler_options())


def _importance_sums(params, batch, masks, *, config: ModelConfig, num_pairs: int, method: str,
                     label_smoothing: float = 0.1, loss_chunk: int | None = None):
    model = Transformer(config)

    def run(perturbations):
        variables = {} if perturbations is None else {"perturbations": perturbations}
        (loss, _, _), state = batch_loss(model, params, batch, masks, label_smoothing, loss_chunk, variables=variables,
                                         deterministic=True, mutable=["intermediates"])
        return loss, _collect(state["intermediates"])

    if method == "taylor":
        shapes = jax.eval_shape(lambda: run(None)[1])
        grads, activations = jax.grad(run, has_aux=True)(_perturbation_tree(shapes))
        grads = _collect(grads)
        scores = {p: jnp.abs(grads[p].astype(jnp.float32) * h.astype(jnp.float32)) for p, h in activations.items()}
    elif method == "absolute":
        _, activations = run(None)
        scores = {p: jnp.abs(h.astype(jnp.float32)) for p, h in activations.items()}
    else:
        raise ValueError(f"importance method must be one of {METHODS}, got {method!r}")

    def per_pair(score, side):
        pairs = batch[f"{side}_pairs"].reshape(-1)
        valid = (batch[f"{side}_segments"] > 0).reshape(-1, 1).astype(jnp.float32)
        return jax.ops.segment_sum(score.reshape(-1, score.shape[-1]) * valid, pairs, num_segments=num_pairs)

    sums = {}
    for path, score in scores.items():
        name = "/".join(path)  # the mask name is the projection's parameter path
        sums[name] = per_pair(score, "src" if reads_source_tokens(name) else "tgt")
    counts = {
        side: jax.ops.segment_sum((batch[f"{side}_segments"] > 0).reshape(-1).astype(jnp.float32),
                                  batch[f"{side}_pairs"].reshape(-1), num_segments=num_pairs)
        for side in ("src", "tgt")
    }
    return sums, counts["src"], counts["tgt"]


@functools.lru_cache(maxsize=None)
def _one_device_batch_importance():
    """The one-device jit, made at first use: its compiler options depend on the backend."""
    return jax.jit(_importance_sums, static_argnames=_STATIC, compiler_options=training_compiler_options())


def compute_importance(params, batches: Iterable[Mapping[str, np.ndarray]], masks, *, config: ModelConfig,
                       num_pairs: int, method: str = "taylor", label_smoothing: float = 0.1,
                       progress=None, mesh=None, rules=None) -> dict[str, np.ndarray]:
    """Theta[m, i] for every module: the mean score over pair m's non-padding tokens.

    ``mesh``: a Mesh (with logical axis ``rules``; default: ``ParallelConfig()``'s rules), a
    ``ParallelConfig`` or a mesh string to shard the scoring over; None: one device (there is no
    default mesh: the doors pass their config's, ``parallel.mesh_from_config`` of ``--mesh`` /
    ``parallel.mesh``, as ``workflow.run_importance`` does). A one-device mesh scores on one
    device, unsharded."""
    mesh, rules = _resolve_mesh(mesh, rules)
    if mesh is not None:
        params = parallel.put(params, parallel.tree_shardings(boxed_abstract_params(config), mesh, rules))
        if masks is not None:
            masks = parallel.put(jax.tree.map(np.asarray, masks), parallel.replicated(mesh))
    totals = None
    src_tokens = np.zeros(num_pairs)
    tgt_tokens = np.zeros(num_pairs)
    for batch in batches:
        if mesh is not None:
            batch = parallel.shard_batch(batch, mesh, rules)
        sums, src, tgt = batch_importance(params, batch, masks, config=config, num_pairs=num_pairs,
                                          method=method, label_smoothing=label_smoothing, mesh=mesh, rules=rules)
        sums = jax.device_get(sums)
        totals = sums if totals is None else {k: totals[k] + v for k, v in sums.items()}
        src_tokens += np.asarray(src)
        tgt_tokens += np.asarray(tgt)
        if progress is not None:
            progress.update(1)
    if totals is None:
        raise ValueError("importance: no batches to score")
    theta = {}
    for name in module_sizes(config):
        tokens = src_tokens if reads_source_tokens(name) else tgt_tokens
        theta[name] = (np.asarray(totals[name], np.float64) / np.maximum(tokens, 1)[:, None]).astype(np.float32)
    return theta


def _resolve_mesh(mesh, rules):
    """(mesh, rules) for ``compute_importance``'s arguments; (None, None) for one device."""
    if isinstance(mesh, (str, ParallelConfig)):
        pc = ParallelConfig(mesh=mesh) if isinstance(mesh, str) else mesh
        mesh, rules = parallel.mesh_from_config(pc)
    elif rules is None:
        rules = ParallelConfig().axis_rules()
    if mesh is None or mesh.size == 1:
        return None, None
    return mesh, rules
