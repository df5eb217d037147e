"""Multi-host training (jax_namnmt/parallel.py) with two real processes on 127.0.0.1.

Two processes (this file is their script, see ``_worker``) meet through
``jax.distributed.initialize``: process 0 is configured through ``ParallelConfig``
(``coordinator_address``, ``num_processes``, ``process_id``), process 1 through the environment
(``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), both via
``parallel.initialize_distributed``. Cross-process collectives on CPU use gloo (jax 0.10's
default ``jax_cpu_collectives_implementation``). Each process has one CPU device; the mesh
``data=2`` spans both (and so does ``fsdp=2``, where the parameters and Adam moments are split
between the processes), and each process feeds only its half of every global batch
(``parallel.process_rows`` + ``jax.make_array_from_process_local_data``). After 3 train steps
both processes hold the parameters and losses of one process training on the whole batch (process
0 also runs that reference, on its own device only), to rtol 1e-5 (atol 1e-6; the attention key
biases, whose gradient is zero in exact arithmetic and rounding noise in floats, within
2 * lr * steps: see tests/test_sharding.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # two processes each

REPO = Path(__file__).resolve().parents[1]
STEPS = 3
LOOP_STEPS = 4  # the loop test: checkpoints at 2 and 4
MESHES = ("data=2", "fsdp=2")  # data-parallel over the two processes; parameters sharded across them
LR = 3e-3
RTOL, ATOL = 1e-5, 1e-6
NOISE_LEAVES = ("['k']['dense']['bias']",)
# seconds: a guard against hung processes, not a timing check (loaded machines are slow)
HANG = 1200


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Three processes at once: processes 0 and 1 of a two-process job (the train steps on each
    mesh, ``_worker``, then the training loop on mesh data=2 writing ONE run directory,
    ``_loop_worker``: one start, one ``jax.distributed.initialize`` and one compile of the
    step for both checks), and the training loop in one process on one device (the loop's
    reference). Process 0 is configured through ``ParallelConfig``, process 1 through the
    environment. The tests below check what they wrote."""
    tmp = tmp_path_factory.mktemp("distributed")
    port = _free_port()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    base_env.update({"PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
                     "XLA_FLAGS": "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"})
    run_dir, ref_dir = tmp / "run", tmp / "ref"
    commands, envs = [], []
    for pid in (0, 1):
        env = dict(base_env)
        if pid == 1:  # the environment route
            env.update({"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
                        "JAX_PROCESS_ID": "1"})
        commands.append([sys.executable, __file__, "both", str(tmp / f"p{pid}.json"), str(run_dir),
                         str(tmp / f"loop_p{pid}.json")] + ([str(port)] if pid == 0 else []))
        envs.append(env)
    commands.append([sys.executable, __file__, "loop", str(ref_dir), str(tmp / "ref.json")])  # one process
    envs.append(dict(base_env))
    procs = [subprocess.Popen(c, cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c, e in zip(commands, envs)]
    try:
        outputs = [proc.communicate(timeout=HANG)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"tmp": tmp, "run_dir": run_dir, "ref_dir": ref_dir,
            "codes": [proc.returncode for proc in procs], "outputs": outputs}


def _succeeded(runs: dict, which) -> None:
    for i in which:
        name = ("process 0", "process 1", "the one-process loop")[i]
        assert runs["codes"][i] == 0, f"{name} failed:\n{runs['outputs'][i][-6000:]}"


def test_two_processes_train_like_one(runs):
    _succeeded(runs, (0, 1))
    got = [json.loads((runs["tmp"] / f"p{pid}.json").read_text()) for pid in (0, 1)]
    ref = got[0]["reference"]
    for pid, result in enumerate(got):
        assert result["process_index"] == pid and result["process_count"] == 2
        assert result["global_devices"] == 2 and result["local_devices"] == 1
        for spec in MESHES:
            mine, what = result["meshes"][spec], f"process {pid}, mesh {spec}"
            assert mine["rows"] == ([0, 4] if pid == 0 else [4, 8]), what  # its half of the 8 rows
            np.testing.assert_allclose(mine["loss"], ref["loss"], rtol=RTOL, err_msg=f"{what}: losses")
            np.testing.assert_allclose(mine["grad_norm"], ref["grad_norm"], rtol=RTOL, err_msg=what)
            assert mine["global_batch_equal"], f"{what}: local-data and global-data batches differ"
            assert (mine["sharded_leaves"] > 0) == (spec == "fsdp=2"), what
            for name, want in ref["params"].items():
                a, b = np.asarray(mine["params"][name], np.float32), np.asarray(want, np.float32)
                if name.endswith(NOISE_LEAVES):
                    assert np.max(np.abs(a - b)) <= 2 * LR * STEPS, f"{what}: {name}"
                else:
                    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=f"{what}: {name}")
    # not vacuous: the parameters moved
    assert any(not np.allclose(ref["params"][k], got[0]["init"][k]) for k in ref["params"])


def test_two_processes_run_the_training_loop(runs):
    """The training loop itself across two processes (mesh data=2) writing ONE run directory, as
    hosts sharing a file system do: one metrics file with each record once, one TensorBoard file,
    checkpoints with verified manifests, and the parameters of a one-process run of the loop."""
    from jax_namnmt.training.checkpoint import Checkpointer, verify_manifest

    _succeeded(runs, (0, 1, 2))
    got = [json.loads((runs["tmp"] / f"loop_p{pid}.json").read_text()) for pid in (0, 1)]
    ref = json.loads((runs["tmp"] / "ref.json").read_text())
    run_dir, ref_dir = runs["run_dir"], runs["ref_dir"]
    assert [g["process_count"] for g in got] == [2, 2] and ref["process_count"] == 1
    for result in got:
        for name, want in ref["params"].items():
            a, b = np.asarray(result["params"][name], np.float32), np.asarray(want, np.float32)
            if name.endswith(NOISE_LEAVES):
                assert np.max(np.abs(a - b)) <= 2 * LR * LOOP_STEPS, name
            else:
                np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=name)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["phase"] == "train"] == list(range(1, LOOP_STEPS + 1))
    ref_records = [json.loads(line) for line in (ref_dir / "metrics.jsonl").read_text().splitlines()]
    losses = lambda recs: [r["loss"] for r in recs if "loss" in r]  # noqa: E731 (not the <phase>_pairs records)
    np.testing.assert_allclose(losses(records), losses(ref_records), rtol=RTOL)
    assert len(list((run_dir / "tb").rglob("events*"))) == 1
    with Checkpointer(run_dir) as ckpt:
        assert ckpt.all_steps() == [2, LOOP_STEPS]
        for step in ckpt.all_steps():
            assert verify_manifest(ckpt.directory / str(step))
        assert ckpt.latest_intact_step() == LOOP_STEPS


# ----------------------------------------------------------------------------- the worker


def _random_examples(row_len: int, vocab: int, num_pairs: int, n: int = 60):
    """The workers' corpus: ``n`` random sentence pairs (EOS-terminated), seeded, so every process
    and the one-process reference see the same data."""
    from jax_namnmt.data.batching import Examples

    rng = np.random.default_rng(0)
    src, tgt = [], []
    for _ in range(n):
        ls, lt = rng.integers(3, row_len // 2, 2)
        src.append(np.concatenate([rng.integers(4, vocab, ls), [3]]).astype(np.int32))
        tgt.append(np.concatenate([rng.integers(4, vocab, lt), [3]]).astype(np.int32))
    return Examples(src, tgt, rng.integers(0, num_pairs, n).astype(np.int32), [("x", i) for i in range(n)])


def _worker(out: Path, port: int | None) -> None:
    import dataclasses

    from jax_namnmt import parallel
    from jax_namnmt.config import ParallelConfig, load_config

    # before anything touches the devices
    pc = ParallelConfig(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=0) if port else \
        ParallelConfig()
    assert parallel.initialize_distributed(pc)

    import jax

    from jax_namnmt.data.batching import PackedBatcher
    from jax_namnmt.model.transformer import init_params
    from jax_namnmt.training.step import init_state, make_optimizer, make_train_step, schedule_args

    rows, row_len, vocab, num_pairs = 8, 16, 64, 3
    base = load_config("tiny")
    mc = dataclasses.replace(base.model, vocab_size=vocab, d_model=16, ffn_dim=32, max_positions=row_len)
    tc = base.train
    examples = _random_examples(row_len, vocab, num_pairs)
    stream = PackedBatcher(examples, rows, row_len, row_len, seed=tc.seed).iterate(0, 0)
    batches = [next(stream)[2] for _ in range(STEPS)]
    params = jax.device_get(init_params(mc, tc.seed))
    optimizer = make_optimizer(tc.adam_b1, tc.adam_b2, tc.adam_eps, tc.clip_norm)
    sched = schedule_args(LR, 2, 1e-4)
    key = jax.random.key(tc.seed)
    step_args = (mc, tc.label_smoothing, tc.adam_b1, tc.adam_b2, tc.adam_eps, tc.clip_norm)
    flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(x).tolist()  # noqa: E731
                         for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}

    from jax.experimental import multihost_utils

    result = {"process_index": jax.process_index(), "process_count": jax.process_count(),
              "global_devices": len(jax.devices()), "local_devices": len(jax.local_devices()), "meshes": {}}
    for spec in MESHES:
        mesh, rules = parallel.make_mesh(spec), ParallelConfig().axis_rules()
        step = make_train_step(*step_args, mesh, rules)
        state = parallel.put(init_state(params, optimizer), step.state_shardings)
        step_sched, step_key = parallel.put((sched, key), parallel.replicated(mesh))
        mine = parallel.process_rows(mesh, rules, rows)
        losses, norms, same = [], [], True
        for batch in batches:
            local = {k: v[mine] for k, v in batch.items()}  # all this process loads
            sharded = parallel.shard_batch_local(local, mesh, rules, rows)
            from_global = parallel.shard_batch(batch, mesh, rules)  # the loop's route: slices of the global batch
            same &= all(np.array_equal(np.asarray(sharded[k].addressable_data(0)),
                                       np.asarray(from_global[k].addressable_data(0))) for k in batch)
            state, metrics = step(state, sharded, None, step_key, step_sched)
            losses.append(float(metrics["loss"]))
            norms.append(float(metrics["grad_norm"]))
        sharded_leaves = sum(not x.is_fully_replicated for x in jax.tree.leaves(state["params"]))
        # data=2: every process holds all parameters; fsdp=2: each holds half of most, gathered here
        final = multihost_utils.process_allgather(state["params"], tiled=True)
        result["meshes"][spec] = {"rows": [mine.start, mine.stop], "loss": losses, "grad_norm": norms,
                                  "params": flat(final), "global_batch_equal": bool(same),
                                  "sharded_leaves": int(sharded_leaves)}
    if jax.process_index() == 0:  # the one-process reference, on this process's device only
        ref_step = make_train_step(*step_args)
        ref_state = jax.device_put(init_state(params, optimizer), jax.local_devices()[0])
        ref_key = jax.device_put(key, jax.local_devices()[0])
        ref_losses, ref_norms = [], []
        for batch in batches:
            ref_state, metrics = ref_step(ref_state, batch, None, ref_key, sched)
            ref_losses.append(float(metrics["loss"]))
            ref_norms.append(float(metrics["grad_norm"]))
        result["reference"] = {"loss": ref_losses, "grad_norm": ref_norms,
                               "params": flat(jax.device_get(ref_state["params"]))}
        result["init"] = flat(params)
    out.write_text(json.dumps(result))


def _loop_worker(run_dir: Path, out: Path, two_processes: bool) -> None:
    """``loop.train`` on mesh data=2 over the two processes of the job ``_worker`` initialized
    (``two_processes``), or on one device."""
    import dataclasses

    from jax_namnmt.config import load_config

    import jax
    from jax.experimental import multihost_utils

    from jax_namnmt.model.transformer import init_params
    from jax_namnmt.training import loop

    row_len, vocab, num_pairs = 16, 64, 3
    base = load_config("tiny")
    config = dataclasses.replace(
        base,
        model=dataclasses.replace(base.model, vocab_size=vocab, d_model=16, ffn_dim=32, max_positions=row_len),
        # rows on both sides: a one-process run would otherwise take the compact layout (one device)
        data=dataclasses.replace(base.data, src_row_len=row_len, tgt_row_len=row_len, layout="rows"),
        train=dataclasses.replace(base.train, steps=LOOP_STEPS, tokens_per_batch=8 * row_len, learning_rate=LR,
                                  warmup_steps=2, warmup_init_lr=1e-4, save_every=2, log_every=1, eval_every=1000,
                                  keep_checkpoints=5),
        parallel=dataclasses.replace(base.parallel, mesh="data=2" if two_processes else ""))
    examples = _random_examples(row_len, vocab, num_pairs)
    params = jax.device_get(init_params(config.model, config.train.seed))
    final = loop.train(run_dir, config, loop.pretrain_schedule(config), examples, None, params, quiet=True)
    if jax.process_count() > 1:
        final = multihost_utils.process_allgather(final, tiled=True)
    flat = {jax.tree_util.keystr(p): np.asarray(x).tolist()
            for p, x in jax.tree_util.tree_flatten_with_path(jax.device_get(final))[0]}
    out.write_text(json.dumps({"process_count": jax.process_count(), "params": flat}))


if __name__ == "__main__":
    if sys.argv[1] == "loop":  # loop RUN_DIR OUT: the loop in one process, on one device
        _loop_worker(Path(sys.argv[2]), Path(sys.argv[3]), two_processes=False)
    else:  # both OUT RUN_DIR LOOP_OUT [PORT]: one process of the two-process job (PORT: process 0)
        _worker(Path(sys.argv[2]), int(sys.argv[5]) if len(sys.argv) > 5 else None)
        _loop_worker(Path(sys.argv[3]), Path(sys.argv[4]), two_processes=True)
        import jax

        jax.distributed.shutdown()
