"""Sharding across devices and hosts: a named device mesh and logical axis rules.

The mesh has the axes ``data``, ``fsdp`` and ``tensor`` (``ParallelConfig.mesh``, e.g.
``"data=2,tensor=2"``; default: every device on ``data``). The model annotates its kernels
(``nn.with_logical_partitioning``) and activations (:func:`constrain`) with logical axis names
(``batch``, ``embed``, ``heads``, ``mlp``, ``vocab``, ...), and ``ParallelConfig.rules`` maps
them to mesh axes, as in MaxText and Flax's lm1b example. With the default rules:

- batch rows (inputs and activations) are split over ``data`` x ``fsdp``;
- ``fsdp`` shards the model dimension of every kernel, bias and the embedding (and so the
  optimizer moments): ZeRO-3 style, XLA gathers a kernel where it is used;
- ``tensor`` shards attention heads (q/k/v outputs, the out projection's input), the FFN hidden
  dimension and the vocabulary (embedding rows, logits): Megatron style.

A dimension a mesh axis does not divide stays unsharded over that axis (never an error), so any
mesh runs any model. The stored parameters are plain arrays (the boxes are unboxed at init):
the parameter tree of every model is exactly that of an unsharded run, and shardings are
computed from the logical names of the boxed abstract tree (:func:`tree_shardings` of the
``jax.eval_shape`` of the caller's init function).

This module knows meshes and sharding rules only: it imports neither the model nor the trainer,
and holds no default mesh. The mesh comes from the config (:func:`mesh_from_config` of
``Config.parallel``) and is handed down by the callers (``training.loop``, ``workflow``); code
handed no mesh runs on one device.

Multi-host: :func:`initialize_distributed` calls ``jax.distributed.initialize`` once, before
anything touches the devices, when a coordinator is configured (``ParallelConfig`` or
``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``). Every process then
runs the same program on the global mesh; :func:`put` and :func:`shard_batch` build global
arrays from host data (each process transfers only the shards of its own devices).
The training loop writes from process 0 only (run files, metrics, TensorBoard, progress,
checkpoint manifests and renames, followed by a barrier), while every process calls orbax's save
(which writes each process's shards). Tested on CPU with two processes, at the level of the train
step and of the whole loop writing one shared run directory (tests/test_distributed.py).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jax_namnmt.config import MESH_AXES, ParallelConfig
from jax_namnmt.errors import ConfigError

Rules = tuple  # ((logical name, mesh axis | (mesh axes) | None), ...)

# ----------------------------------------------------------------------------- processes


_DISTRIBUTED: dict | None = None  # the settings jax.distributed.initialize was called with


def distributed_settings(pc: ParallelConfig) -> dict | None:
    """``jax.distributed.initialize`` arguments from the config and the environment, or None
    (single process: no coordinator configured)."""
    address = pc.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    num = pc.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0)
    pid = pc.process_id if pc.process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", "-1") or -1)
    if not address:
        if num > 1:
            raise ConfigError(f"parallel.num_processes = {num}: multi-host needs parallel.coordinator_address "
                              "(host:port of process 0, or auto) or JAX_COORDINATOR_ADDRESS")
        return None
    if address == "auto":  # jax's cluster detection (SLURM, Open MPI, Kubernetes, TPU pods)
        return {k: v for k, v in (("num_processes", num or None), ("process_id", pid if pid >= 0 else None))
                if v is not None}
    if num < 1 or pid < 0 or pid >= num:
        raise ConfigError(f"parallel.coordinator_address = {address!r}: needs parallel.num_processes and "
                          f"parallel.process_id in [0, num_processes) (or JAX_NUM_PROCESSES / JAX_PROCESS_ID); "
                          f"got {num} and {pid}")
    return {"coordinator_address": address, "num_processes": num, "process_id": pid}


def initialize_distributed(pc: ParallelConfig) -> bool:
    """``jax.distributed.initialize`` once, when a coordinator is configured; call it before
    anything touches the devices (``cli.config_from_args`` does). Returns whether it ran
    (now or before)."""
    global _DISTRIBUTED
    settings = distributed_settings(pc)
    if settings is None:
        return _DISTRIBUTED is not None
    if _DISTRIBUTED is not None:
        if settings != _DISTRIBUTED:
            raise ConfigError(f"jax.distributed was initialized with {_DISTRIBUTED}, not {settings}")
        return True
    jax.distributed.initialize(**settings)
    _DISTRIBUTED = settings
    return True


# ----------------------------------------------------------------------------- the mesh


def mesh_shape(pc: ParallelConfig | str, num_devices: int) -> tuple[int, ...]:
    """Sizes of ``MESH_AXES`` for ``num_devices`` devices: axes left out are 1, ``data`` takes
    the devices the others leave."""
    if isinstance(pc, str):
        pc = ParallelConfig(mesh=pc)
    axes = pc.mesh_axes()
    others = math.prod(v for k, v in axes.items() if k != "data")
    if "data" not in axes:
        if num_devices % others:
            raise ConfigError(f"parallel.mesh = {pc.mesh!r}: {num_devices} devices do not split into "
                              f"{others} (fsdp x tensor) times a data axis (--mesh or --set parallel.mesh=)")
        axes["data"] = num_devices // others
    shape = tuple(axes.get(name, 1) for name in MESH_AXES)
    if math.prod(shape) != num_devices:
        raise ConfigError(f"parallel.mesh = {pc.mesh!r}: {' x '.join(map(str, shape))} = {math.prod(shape)} "
                          f"devices, but there are {num_devices}; give sizes whose product is the device count, "
                          "or leave data out (--mesh or --set parallel.mesh=)")
    return shape


def make_mesh(pc: ParallelConfig | str = "", devices=None) -> Mesh:
    """The ``(data, fsdp, tensor)`` mesh over ``devices`` (default: all devices of all processes),
    ``tensor`` innermost (neighbouring devices). Axes are of the Auto type (GSPMD propagation)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(pc, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def mesh_from_config(pc: ParallelConfig) -> tuple[Mesh, Rules]:
    """The mesh and the axis rules of a config (the one place a run's mesh comes from)."""
    return make_mesh(pc), pc.axis_rules()


def describe(mesh: Mesh) -> str:
    return ",".join(f"{k}={v}" for k, v in mesh.shape.items())


# ----------------------------------------------------------------------------- logical names


def logical_spec(names, rules: Rules) -> PartitionSpec:
    """Logical axis names -> a PartitionSpec of mesh axes (unknown names: unsharded)."""
    return nn.logical_to_mesh_axes(tuple(names), rules)


def fit_spec(spec: PartitionSpec, shape, mesh: Mesh) -> PartitionSpec:
    """``spec`` with every mesh axis that does not divide its dimension dropped (trailing axes
    of a tuple first), and size-1 axes dropped: a valid, even sharding of ``shape``."""
    out = []
    for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = [] if entry is None else [entry] if isinstance(entry, str) else list(entry)
        axes = [a for a in axes if mesh.shape[a] > 1]
        while axes and dim % math.prod(mesh.shape[a] for a in axes):
            axes.pop()
        out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    while out and out[-1] is None:
        out.pop()
    return PartitionSpec(*out)


def named_sharding(names, shape, mesh: Mesh, rules: Rules) -> NamedSharding:
    return NamedSharding(mesh, fit_spec(logical_spec(names, rules), shape, mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("jax_namnmt_mesh", default=None)


@contextlib.contextmanager
def activate(mesh: Mesh | None, rules: Rules | None):
    """Make :func:`constrain` constrain activations to ``mesh`` under ``rules`` while tracing;
    ``mesh=None`` (or a one-device mesh) leaves the traced program exactly as without it."""
    token = _ACTIVE.set(None if mesh is None or mesh.size == 1 else (mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x, names):
    """``with_sharding_constraint`` of an activation by logical axis names, under the active mesh
    and rules (:func:`activate`); the identity outside one."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, named_sharding(names, x.shape, mesh, rules))


# ----------------------------------------------------------------------------- shardings of trees


def _is_box(x) -> bool:
    return isinstance(x, nn.Partitioned)


def tree_shardings(abstract_boxed, mesh: Mesh, rules: Rules):
    """A NamedSharding for every leaf of a (possibly boxed) abstract tree: boxed leaves by their
    logical names (``nn.get_partition_spec``), everything else replicated. The result has the
    structure of the unboxed tree.

    The caller makes the tree: ``jax.eval_shape`` of its own init function, with the boxes of
    ``nn.with_logical_partitioning`` left in (as big_vision's ``sharding.infer_sharding`` and
    MaxText's ``get_abstract_state(..., init_state_fn)``): ``model.transformer.boxed_abstract_params``
    for the parameters, ``training.step.abstract_state`` for the train state (optimizer moments
    boxed as their parameters, counters plain)."""
    specs = nn.get_partition_spec(abstract_boxed)  # logical PartitionSpecs; PartitionSpec() for plain leaves
    plain = nn.unbox(abstract_boxed)
    return jax.tree.map(lambda spec, leaf: named_sharding(tuple(spec), leaf.shape, mesh, rules), specs, plain,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def put(tree, shardings):
    """Place a tree of host (or single-device) arrays, the same on every process, on
    ``shardings`` (a tree or one sharding); each process transfers only its devices' shards."""
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)

    def one(x, sharding):
        if sharding.is_fully_addressable:
            return jax.device_put(x, sharding)
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = np.asarray(jax.random.key_data(x))
            impl = jax.random.key_impl(x)
            raw = jax.make_array_from_callback(data.shape, NamedSharding(sharding.mesh, PartitionSpec()),
                                               lambda idx: data[idx])
            return jax.random.wrap_key_data(raw, impl=impl)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(one, tree, shardings)


def batch_sharding(mesh: Mesh, rules: Rules, shape) -> NamedSharding:
    """Rows of a ``[rows, length]`` batch array over the axes of the logical ``batch`` axis."""
    return named_sharding(("batch",) + ("length",) * (len(shape) - 1), shape, mesh, rules)


def batch_shards(mesh: Mesh, rules: Rules) -> int:
    """Into how many row blocks the ``batch`` rule splits a batch."""
    spec = logical_spec(("batch",), rules)
    entry = spec[0] if len(spec) else None
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    return math.prod(mesh.shape[a] for a in axes)


def pad_rows(batch: Mapping[str, Any], multiple: int) -> dict:
    """Append all-padding rows (zeros: segment 0) up to a multiple of ``multiple`` rows; padding
    rows have weight 0 in the loss and in importance sums, so results do not change."""
    rows = len(next(iter(batch.values())))
    extra = -rows % multiple
    if not extra:
        return dict(batch)
    return {k: np.concatenate([np.asarray(v), np.zeros((extra,) + np.shape(v)[1:], np.asarray(v).dtype)])
            for k, v in batch.items()}


def shard_batch(batch: Mapping[str, Any], mesh: Mesh, rules: Rules) -> dict:
    """The global batch (the same on every process) as global arrays, rows split per the rules
    (padded with empty rows to a multiple of the data-parallel size)."""
    batch = pad_rows(batch, batch_shards(mesh, rules))
    return {k: put(v, batch_sharding(mesh, rules, np.shape(v))) for k, v in batch.items()}


def process_rows(mesh: Mesh, rules: Rules, global_rows: int) -> slice:
    """The rows of a ``[global_rows, ...]`` batch that this process's devices hold (what
    :func:`shard_batch_local` expects), e.g. ``slice(0, 8)`` for process 0 of two with 16 rows."""
    sharding = batch_sharding(mesh, rules, (global_rows, 1))
    held = set()
    for idx in sharding.addressable_devices_indices_map((global_rows, 1)).values():
        held.update(range(*idx[0].indices(global_rows)))
    lo, hi = min(held), max(held) + 1
    if len(held) != hi - lo:
        raise ValueError(f"this process's devices hold rows that are not contiguous on mesh {describe(mesh)}; "
                         "feed the global batch with shard_batch instead")
    return slice(lo, hi)


def shard_batch_local(local_batch: Mapping[str, Any], mesh: Mesh, rules: Rules, global_rows: int) -> dict:
    """Global batch arrays from this process's rows only (``process_rows``), via
    ``jax.make_array_from_process_local_data``: the multi-host input pipeline where each host
    loads its own part of the global batch."""
    out = {}
    for k, v in local_batch.items():
        v = np.asarray(v)
        shape = (global_rows,) + v.shape[1:]
        out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, rules, shape), v, shape)
    return out
