"""Sharding across devices (jax_namnmt/parallel.py): several meshes train, fine-tune (through the
training loop, resuming on another mesh) and score importance exactly like one device, to float
rounding.

The multi-device checks run in ONE subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
(the flag must be set before jax is imported; this file is also that subprocess's script, see
``_worker``), which writes its numbers to a JSON file; the tests below compare them. Backend
optimizations are off in the subprocess (``--xla_backend_optimization_level=0``, for both the
reference and the meshes) to keep its compile time, on one CPU core, near a minute.

Tolerances: losses and gradient norms rtol 1e-5; parameters rtol 1e-5 with atol 1e-6. The one
exception is the bias of every attention key projection (``k/dense/bias``): its gradient is zero
in exact arithmetic (adding a constant to all of a query's logits does not change the softmax),
so its float gradient is rounding noise of order 1e-9 whose sign depends on the summation
order, and Adam (eps 1e-9) turns that sign into a step of about +-lr. Those leaves are checked
against the bound instead: |difference| <= 2 * lr * steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jax_namnmt.config import MESH_AXES, Config, ConfigError, ParallelConfig, load_config

REPO = Path(__file__).resolve().parents[1]
MESHES = ("data=8", "data=2,tensor=2,fsdp=2", "fsdp=4,data=2", "tensor=2")  # the last: data=4 implied
STEPS = 3
MASKED_MESH = "data=2,tensor=2,fsdp=2"
# seconds: a guard against a hung worker, not a timing check (under a minute on an idle
# 2-core machine; ten minutes and more under a concurrent CPU-bound job)
HANG = 1800
RTOL, ATOL = 1e-5, 1e-6
LR = 3e-3
NOISE_LEAVES = ("['k']['dense']['bias']",)  # zero gradient in exact arithmetic (see the docstring)


# ----------------------------------------------------------------------------- no devices needed


def test_mesh_spec_parsing_and_shapes():
    from jax_namnmt.parallel import mesh_shape

    assert MESH_AXES == ("data", "fsdp", "tensor")
    assert mesh_shape("", 8) == (8, 1, 1)  # default: every device on data
    assert mesh_shape("tensor=2", 8) == (4, 1, 2)  # data takes what the others leave
    assert mesh_shape("data=2,tensor=2,fsdp=2", 8) == (2, 2, 2)
    assert mesh_shape(" fsdp=4 , data=2 ", 8) == (2, 4, 1)
    for bad, needle in (("data=3", "there are 8"), ("tensor=3", "do not split"), ("model=2", "expected axis=size"),
                        ("data=2,data=4", "given twice"), ("data=x", "integer"), ("data=0", "at least 1"),
                        ("data", "expected axis=size")):
        with pytest.raises(ConfigError, match=needle):
            mesh_shape(bad, 8)


def test_parallel_config_validation_and_rules():
    config = load_config("tiny", ["parallel.mesh=data=2,tensor=2"])
    assert config.parallel.mesh == "data=2,tensor=2"
    rules = dict(config.parallel.axis_rules())
    assert rules["batch"] == ("data", "fsdp") and rules["heads"] == "tensor" and rules["embed"] == "fsdp"
    assert rules["act_embed"] is None
    assert Config.from_dict({}).parallel == ParallelConfig()  # configs written before the section load
    for override, needle in (("parallel.mesh=gpu=2", "parallel.mesh"),
                             ("parallel.rules=embed=fsdp,embed=tensor", "two rules"),
                             ("parallel.rules=embed=model", "bad rule"),
                             ("parallel.num_processes=-1", "num_processes"),
                             ("parallel.process_id=-2", "process_id"),
                             ("parallel.num_processes=2 parallel.process_id=2", "process_id")):
        with pytest.raises(ConfigError, match=needle):
            load_config("tiny", override.split())


def test_mesh_flag_on_the_doors():
    from jax_namnmt import cli

    p = cli.parser("test")
    args = p.parse_args(["--config", "tiny", "--mesh", "fsdp=2,tensor=2"])
    assert cli.config_from_args(args).parallel.mesh == "fsdp=2,tensor=2"
    assert cli.config_from_args(p.parse_args(["--config", "tiny"])).parallel.mesh == ""


def test_distributed_settings_from_config_and_environment(monkeypatch):
    from jax_namnmt.parallel import distributed_settings

    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert distributed_settings(ParallelConfig()) is None  # single process: initialize is not called
    pc = ParallelConfig(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)
    assert distributed_settings(pc) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "host0:999")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert distributed_settings(ParallelConfig()) == {"coordinator_address": "host0:999", "num_processes": 2,
                                                      "process_id": 1}
    monkeypatch.setenv("JAX_PROCESS_ID", "5")
    with pytest.raises(ConfigError, match="process_id"):
        distributed_settings(ParallelConfig())
    assert distributed_settings(ParallelConfig(coordinator_address="auto")) == {"num_processes": 2,
                                                                                 "process_id": 5}


def test_fit_spec_drops_axes_that_do_not_divide():
    from jax.sharding import PartitionSpec as P

    from jax_namnmt.parallel import fit_spec

    class FakeMesh:  # fit_spec reads only the axis sizes
        shape = {"data": 2, "fsdp": 4, "tensor": 2}

    assert fit_spec(P(("data", "fsdp"), None), (16, 5), FakeMesh) == P(("data", "fsdp"))
    assert fit_spec(P(("data", "fsdp"), None), (6, 5), FakeMesh) == P("data")  # 6 % 8 != 0, 6 % 2 == 0
    assert fit_spec(P("tensor", "fsdp"), (301, 32), FakeMesh) == P(None, "fsdp")  # odd vocabulary
    assert fit_spec(P("tensor"), (7,), FakeMesh) == P()


def test_one_device_params_are_plain_arrays_with_the_same_tree():
    """The annotations box nothing that is stored: init_params gives plain arrays, the tree the
    boxed abstract tree unboxes to, and every sharding on one device is replicated."""
    import flax.linen as nn
    import jax

    from jax_namnmt.model.transformer import boxed_abstract_params, init_params

    config = load_config("tiny").model
    params = jax.eval_shape(lambda: init_params(config, 0))  # (tests/test_model.py checks the values)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params))  # no boxes left
    boxed = boxed_abstract_params(config)
    assert any(isinstance(x, nn.Partitioned) for x in jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(
        x, nn.Partitioned)))
    unboxed = nn.unbox(boxed)
    assert jax.tree.structure(unboxed) == jax.tree.structure(params)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), unboxed) == jax.tree.map(lambda a: (a.shape, a.dtype), params)
    assert nn.get_partition_spec(boxed)["embed"]["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")


# ----------------------------------------------------------------------------- 8 devices (subprocess)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("sharding") / "results.json"
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, __file__, str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=HANG)
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(out.read_text())


def _compare(got: dict, want: dict, what: str) -> None:
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=RTOL, err_msg=f"{what}: losses")
    np.testing.assert_allclose(got["grad_norm"], want["grad_norm"], rtol=RTOL, err_msg=f"{what}: gradient norms")
    _compare_params(got["params"], want["params"], what)


def _compare_params(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys()
    for name in want:
        a, b = np.asarray(got[name], np.float32), np.asarray(want[name], np.float32)
        assert a.shape == b.shape, name
        if name.endswith(NOISE_LEAVES):
            assert np.max(np.abs(a - b)) <= 2 * LR * STEPS, f"{what}: {name}"
        else:
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=f"{what}: {name}")


@pytest.mark.slow
def test_worker_saw_eight_devices(results):
    assert results["devices"] == 8
    # and every mesh spans all eight of them
    for mesh in MESHES:
        assert int(np.prod(list(results["train"][mesh]["mesh_shape"].values()))) == 8, mesh


@pytest.mark.slow
@pytest.mark.parametrize("mesh", MESHES)
def test_pretraining_steps_on_a_mesh_equal_one_device(results, mesh):
    got = results["train"][mesh]
    assert got["mesh_shape"] == dict(zip(MESH_AXES, _shape(mesh)))
    _compare(got, results["train"]["reference"], mesh)
    # and not vacuous: the steps moved the parameters
    init, final = results["init_params"], results["train"]["reference"]["params"]
    assert any(not np.allclose(init[k], final[k]) for k in final)


def _shape(mesh: str) -> tuple[int, ...]:
    from jax_namnmt.parallel import mesh_shape

    return mesh_shape(mesh, 8)


@pytest.mark.slow
def test_state_is_really_sharded(results):
    """With data=2,fsdp=2,tensor=2 the kernels, the embedding and the Adam moments are split
    (fsdp: the model dimension, tensor: heads / FFN hidden / vocabulary) and the batch rows over
    data x fsdp; layer norms and counters are replicated."""
    specs = results["train"]["data=2,tensor=2,fsdp=2"]["specs"]
    shards = results["train"]["data=2,tensor=2,fsdp=2"]["shard_shapes"]
    enc = "['params']['encoder_layer_0']"
    assert specs["['params']['embed']['embedding']"] == ["tensor", "fsdp"]
    assert specs[f"{enc}['self_attn']['q']['dense']['kernel']"] == ["fsdp", "tensor"]
    assert specs[f"{enc}['self_attn']['q']['dense']['bias']"] == ["tensor"]
    assert specs[f"{enc}['self_attn']['out']['dense']['kernel']"] == ["tensor", "fsdp"]
    assert specs[f"{enc}['ffn']['fc1']['dense']['kernel']"] == ["fsdp", "tensor"]
    assert specs[f"{enc}['ffn']['fc2']['dense']['kernel']"] == ["tensor", "fsdp"]
    assert specs[f"{enc}['ffn_res']['norm']['scale']"] == []
    assert specs["['step']"] == []
    mu = [k for k in specs if k.startswith("['opt_state']") and k.endswith("['ffn']['fc1']['dense']['kernel']")]
    assert mu and all(specs[k] == ["fsdp", "tensor"] for k in mu)  # Adam's moments as their parameters
    d, ffn = results["model"]["d_model"], results["model"]["ffn_dim"]
    assert shards["['encoder_layer_0']['ffn']['fc1']['dense']['kernel']"] == [d // 2, ffn // 2]
    assert results["train"]["data=2,tensor=2,fsdp=2"]["batch_spec"] == [["data", "fsdp"]]


@pytest.mark.slow
def test_masked_finetuning_steps_on_a_mesh_equal_one_device(results):
    """Fine-tuning: every projection gated by its pair's mask (the masks replicated)."""
    _compare(results["masked"], results["masked_reference"], f"masked {MASKED_MESH}")
    assert not np.allclose(results["masked"]["loss"], results["train"]["reference"]["loss"])  # masks did act


@pytest.mark.slow
def test_training_loop_on_a_mesh_resumed_on_another_mesh(results):
    """training.loop.train on fsdp=4,data=2 for 2 steps (checkpoint), then the same run on
    data=2,tensor=2,fsdp=2 resumes (the checkpoint restored onto the new shardings) to step 3,
    with validation on the mesh: the parameters equal 3 steps on one device."""
    loop = results["loop"]
    assert loop["first_leg_step"] == 2 and loop["final_step"] == STEPS
    _compare_params(loop["params"], results["train"]["reference"]["params"], "loop")
    assert np.isfinite(loop["valid_loss"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["taylor"])
def test_importance_on_a_mesh_equals_one_device(results, method):
    got, want = results["importance"]["mesh"], results["importance"]["reference"]
    assert got.keys() == want.keys() and len(want) > 0
    for name in want:
        a, b = np.asarray(got[name]), np.asarray(want[name])
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-6 * np.max(np.abs(b)), err_msg=name)


# ----------------------------------------------------------------------------- the worker


def _examples(rng, n: int, num_pairs: int, vocab: int, max_len: int):
    from jax_namnmt.data.batching import Examples

    src, tgt = [], []
    for _ in range(n):
        ls, lt = rng.integers(3, max_len // 2, 2)
        src.append(np.concatenate([rng.integers(4, vocab, ls), [3]]).astype(np.int32))
        tgt.append(np.concatenate([rng.integers(4, vocab, lt), [3]]).astype(np.int32))
    return Examples(src, tgt, rng.integers(0, num_pairs, n).astype(np.int32), [("synthetic", i + 1) for i in range(n)])


def _worker(out: Path) -> None:
    import jax

    from jax_namnmt import parallel
    from jax_namnmt.data.batching import PackedBatcher
    from jax_namnmt.method.importance import compute_importance
    from jax_namnmt.model.transformer import init_params
    from jax_namnmt.training.loop import Schedule, train
    from jax_namnmt.training.step import init_state, make_optimizer, make_train_step, schedule_args

    t0 = time.perf_counter()
    rows, row_len, vocab, pairs = 8, 16, 64, ("de-en", "en-de", "fr-en")
    base = load_config("tiny")
    config = dataclasses.replace(
        base,
        model=dataclasses.replace(base.model, vocab_size=vocab, d_model=16, ffn_dim=32, max_positions=row_len),
        data=dataclasses.replace(base.data, vocab_size=vocab, pairs=pairs, max_len=row_len, src_row_len=row_len,
                                 tgt_row_len=row_len),
        train=dataclasses.replace(base.train, steps=STEPS, tokens_per_batch=rows * row_len, learning_rate=LR,
                                  warmup_steps=2, warmup_init_lr=1e-4, save_every=2, eval_every=100, log_every=1),
    ).validate()
    mc, tc = config.model, config.train
    rng = np.random.default_rng(0)
    examples = _examples(rng, 80, len(pairs), vocab, row_len)
    valid = _examples(rng, 12, len(pairs), vocab, row_len)
    stream = PackedBatcher(examples, rows, row_len, row_len, seed=tc.seed).iterate(0, 0)  # the loop's batches
    batches = [next(stream)[2] for _ in range(STEPS)]
    params = jax.device_get(init_params(mc, tc.seed))
    masks = _random_masks(mc, len(pairs))
    optimizer = make_optimizer(tc.adam_b1, tc.adam_b2, tc.adam_eps, tc.clip_norm)
    sched = schedule_args(LR, 2, 1e-4)
    key = jax.random.key(tc.seed)
    flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(x).tolist()  # noqa: E731
                         for p, x in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}
    result = {"devices": len(jax.devices()), "init_params": flat(params),
              "model": {"d_model": mc.d_model, "ffn_dim": mc.ffn_dim}, "train": {}, "seconds": {}}

    def steps(mesh_spec, use_masks):
        step_args = (mc, tc.label_smoothing, tc.adam_b1, tc.adam_b2, tc.adam_eps, tc.clip_norm)
        m = masks if use_masks else None
        if mesh_spec is None:  # one device: the plain program
            step = make_train_step(*step_args)
            state = jax.device_put(init_state(params, optimizer), jax.devices()[0])
            step_sched, step_key = sched, key
        else:  # placed as training.loop places them, so that the loop below reuses these compilations
            mesh, rules = parallel.mesh_from_config(ParallelConfig(mesh=mesh_spec))
            step = make_train_step(*step_args, mesh, rules)
            state = parallel.put(init_state(params, optimizer), step.state_shardings)
            step_sched, step_key = parallel.put((sched, key), parallel.replicated(mesh))
            if m is not None:
                m = parallel.put(m, parallel.replicated(mesh))
        losses, norms = [], []
        for batch in batches:
            if mesh_spec is not None:
                batch = parallel.shard_batch(batch, mesh, rules)
            state, metrics = step(state, batch, m, step_key, step_sched)
            losses.append(float(metrics["loss"]))
            norms.append(float(metrics["grad_norm"]))
        entry = {"loss": losses, "grad_norm": norms, "params": flat(state["params"])}
        if mesh_spec is not None:
            entry["mesh_shape"] = dict(mesh.shape)
            leaves = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}
            as_json = lambda spec: [list(s) if isinstance(s, tuple) else s for s in spec]  # noqa: E731
            entry["specs"] = {name: as_json(x.sharding.spec) for name, x in leaves.items()}
            entry["shard_shapes"] = {name[len("['params']"):]: list(x.addressable_shards[0].data.shape)
                                     for name, x in leaves.items() if name.startswith("['params']")}
            entry["batch_spec"] = as_json(batch["src_tokens"].sharding.spec)
        return entry

    for spec in (None,) + MESHES:
        t = time.perf_counter()
        result["train"]["reference" if spec is None else spec] = steps(spec, False)
        result["seconds"][f"train {spec}"] = time.perf_counter() - t
    t = time.perf_counter()
    result["masked_reference"] = steps(None, True)
    result["masked"] = steps(MASKED_MESH, True)
    result["seconds"]["masked"] = time.perf_counter() - t

    # pre-training through the loop: 2 steps on one mesh, resumed on another to step 3
    t = time.perf_counter()
    run_dir = out.parent / "loop_run"
    leg1 = dataclasses.replace(config, parallel=ParallelConfig(mesh="fsdp=4,data=2"))
    train(run_dir, leg1, Schedule(2, LR, 2, 1e-4), examples, None, params, None, phase="pretrain", quiet=True)
    from jax_namnmt.training.checkpoint import Checkpointer

    with Checkpointer(run_dir) as ckpt:
        first = ckpt.latest_step()
    leg2 = dataclasses.replace(config, parallel=ParallelConfig(mesh="data=2,tensor=2,fsdp=2"))
    final = train(run_dir, leg2, Schedule(STEPS, LR, 2, 1e-4), examples, valid, params, None, phase="pretrain",
                  quiet=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    valid_loss = [r for r in records if r.get("phase") == "pretrain_valid"]
    result["loop"] = {"first_leg_step": first, "final_step": max(r["step"] for r in records),
                      "params": flat(final), "valid_loss": valid_loss[-1]["loss"] if valid_loss else float("nan")}
    result["seconds"]["loop"] = time.perf_counter() - t

    # importance (Taylor) of the trained parameters on the validation examples
    t = time.perf_counter()
    trained = jax.tree.map(np.asarray, jax.device_get(final))
    ibatches = list(PackedBatcher(valid, rows, row_len, row_len, seed=0, shuffle=False).epoch(0))
    kwargs = dict(config=mc, num_pairs=len(pairs), method="taylor", label_smoothing=tc.label_smoothing)
    reference = compute_importance(trained, ibatches, None, **kwargs)
    on_mesh = compute_importance(trained, ibatches, None, mesh="data=2,tensor=2,fsdp=2", **kwargs)
    result["importance"] = {"reference": {k: v.tolist() for k, v in reference.items()},
                            "mesh": {k: v.tolist() for k, v in on_mesh.items()}}
    result["seconds"]["importance"] = time.perf_counter() - t
    result["seconds"]["total"] = time.perf_counter() - t0
    out.write_text(json.dumps(result))
    print(json.dumps(result["seconds"], indent=1))


def _random_masks(config, num_pairs: int) -> dict:
    from jax_namnmt.method.masks import module_sizes, nest

    rng = np.random.default_rng(1)
    return nest({name: (rng.random((num_pairs, n)) < 0.7).astype(np.float32)
                 for name, n in module_sizes(config).items()})


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
