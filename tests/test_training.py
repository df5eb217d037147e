"""Integration tests of the training loop on the tiny config: exact resume, masked fine-tuning,
validation loss, metrics files.

Everything runs in this process on one small prepared work directory (a few hundred lines per
pair cut from the embedded Multi30k), so the jit-compiled steps are shared between tests.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jax_namnmt import workflow
from jax_namnmt.config import load_config
from jax_namnmt.method.allocation import load_masks, save_masks
from jax_namnmt.method.masks import module_sizes
from jax_namnmt.model.transformer import init_params
from jax_namnmt.training.checkpoint import Checkpointer
from jax_namnmt.training.step import init_state, make_optimizer

STEPS = 12  # the uninterrupted run; the interrupted one stops at STEPS // 2 first
RUN_OVERRIDES = [
    "data.train_max_lines=40",  # ~6 batches per epoch: the runs cross epoch boundaries
    "train.eval_every=4",
    "train.log_every=4",
    "train.save_every=100",  # no intermediate checkpoint: a leg saves at its end only
]


def _leaves(tree) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def _records(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _tb_tags(path: Path) -> set[str]:
    """The scalar tags of a TensorBoard event file (TFRecord framing, parsed by hand)."""
    from tensorboardX.proto import event_pb2

    tags = set()
    data = path.read_bytes()
    offset = 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        record = data[offset + 12: offset + 12 + length]
        offset += 12 + length + 4
        event = event_pb2.Event.FromString(record)
        tags.update(value.tag for value in event.summary.value)
    return tags


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_corpus) -> tuple[Path, object]:
    """A prepared tiny work directory and its config (data.data_dir points at the tiny corpus)."""
    root = tmp_path_factory.mktemp("training")
    config = load_config("tiny", [f"data.data_dir={tiny_corpus}"] + RUN_OVERRIDES)
    workflow.prepare(config, root, quiet=True)
    return root, config


@pytest.fixture(scope="module")
def full_run(workdir) -> Path:
    """STEPS updates in one call."""
    root, config = workdir
    return workflow.run_pretrain(config.override([f"train.steps={STEPS}"]).validate(), root, root / "full",
                                 quiet=True)


def test_resumed_run_equals_uninterrupted_run(workdir, full_run):
    root, config = workdir
    out = root / "resumed"
    half = config.override([f"train.steps={STEPS // 2}"]).validate()
    workflow.run_pretrain(half, root, out, quiet=True)
    assert Checkpointer(out).latest_step() == STEPS // 2
    halfway = workflow.load_run(out)
    assert halfway.step == STEPS // 2

    # the same command with more steps resumes from the checkpoint of the first leg
    workflow.run_pretrain(config.override([f"train.steps={STEPS}"]).validate(), root, out, quiet=True)
    resumed, uninterrupted = workflow.load_run(out), workflow.load_run(full_run)
    assert resumed.step == uninterrupted.step == STEPS

    got, want = _leaves(resumed.params), _leaves(uninterrupted.params)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # and the check is not vacuous: the second leg did change the parameters
    mid = _leaves(halfway.params)
    assert any(not np.array_equal(mid[name], want[name]) for name in want)

    # the whole training state (optimizer moments, step) and the data position resumed too
    tc = config.train
    target = init_state(init_params(config.model), make_optimizer(tc.adam_b1, tc.adam_b2, tc.adam_eps,
                                                                  tc.clip_norm))
    with Checkpointer(out) as ckpt_a, Checkpointer(full_run) as ckpt_b:
        state_a, meta_a = ckpt_a.restore(target)
        state_b, meta_b = ckpt_b.restore(target)
    assert meta_a["data"] == meta_b["data"]
    flat_a, flat_b = _leaves(state_a), _leaves(state_b)
    assert flat_a.keys() == flat_b.keys()
    for name in flat_b:
        np.testing.assert_array_equal(flat_a[name], flat_b[name], err_msg=name)

    # the resumed run's metrics continue the same file, each step logged once
    steps = [r["step"] for r in _records(out) if r["phase"] == "pretrain"]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS
    # and so do the pair counts: the last record counts every example since step 0, as the uninterrupted run's
    def last_shares(run):
        record = [r for r in _records(run) if r["phase"] == "pretrain_pairs"][-1]
        return {k: v for k, v in record.items() if k != "time"}

    assert last_shares(out) == last_shares(full_run)
    assert sum(meta_b["data"]["pair_examples"].values()) == last_shares(full_run)["examples"] > 0


def test_validation_loss_decreases(full_run):
    valid = [r for r in _records(full_run) if r["phase"] == "pretrain_valid"]
    assert [r["step"] for r in valid] == list(range(4, STEPS + 1, 4))
    losses = [r["loss"] for r in valid]
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0], losses
    train = [r for r in _records(full_run) if r["phase"] == "pretrain"]
    assert train and all({"loss", "nll", "lr", "grad_norm", "tokens_per_s"} <= r.keys() for r in train)


def test_metrics_jsonl_and_tensorboard_events(full_run):
    assert (full_run / "metrics.jsonl").stat().st_size > 0
    events = sorted((full_run / "tb").rglob("events*"))
    assert events, f"no TensorBoard event file under {full_run / 'tb'}"
    tags = set().union(*(_tb_tags(path) for path in events))
    assert {"pretrain/loss", "pretrain_valid/loss"} <= tags, tags


def test_finetune_leaves_unallocated_neurons_unchanged(workdir, full_run):
    root, config = workdir
    pairs = list(config.data.pairs)
    sizes = module_sizes(config.model)
    masks = {name: np.ones((len(pairs), width), bool) for name, width in sizes.items()}
    # neuron 5 of the encoder's fc1 and neuron 3 of the decoder's cross-attention query belong to no pair
    masks["encoder_layer_0/ffn/fc1"][:, 5] = False
    masks["decoder_layer_0/cross_attn/q"][:, 3] = False
    # neuron 7 of fc1 is lacked by pair 0 only: the other pairs still train it
    masks["encoder_layer_0/ffn/fc1"][0, 7] = False
    mask_file = root / "hand_masks.npz"
    save_masks(mask_file, masks, pairs, {"by": "hand"})

    out = workflow.run_finetune(config, root, full_run, root / "masked", mask_file, quiet=True)
    assert Checkpointer(out).latest_step() == config.finetune.steps
    saved, saved_pairs, _ = load_masks(out / "masks.npz")
    assert saved_pairs == pairs
    for name in masks:
        np.testing.assert_array_equal(saved[name], masks[name])

    before, after = workflow.load_run(full_run).params, workflow.load_run(out).params
    fc1 = ("encoder_layer_0", "ffn", "fc1", "dense")
    q = ("decoder_layer_0", "cross_attn", "q", "dense")

    def get(params, path, leaf):
        node = params
        for key in path + (leaf,):
            node = node[key]
        return np.asarray(node)

    for path, unused in ((fc1, 5), (q, 3)):
        k0, k1 = get(before, path, "kernel"), get(after, path, "kernel")
        b0, b1 = get(before, path, "bias"), get(after, path, "bias")
        np.testing.assert_array_equal(k1[:, unused], k0[:, unused], err_msg="/".join(path))
        np.testing.assert_array_equal(b1[unused], b0[unused], err_msg="/".join(path))
        others = [j for j in range(k0.shape[1]) if j != unused]
        changed = [j for j in others if not np.array_equal(k1[:, j], k0[:, j])]
        if path == q:  # a linear projection: every used neuron gets a gradient
            assert changed == others
        else:  # fc1 feeds a ReLU: allow a dead neuron or two
            assert len(changed) >= len(others) - 2
            assert 7 in changed
    # parameters outside the masked projections were trained as usual
    assert not np.array_equal(get(before, ("embed",), "embedding"), get(after, ("embed",), "embedding"))


def test_a_run_resumes_in_the_layout_of_its_checkpoint(workdir):
    """A run trained in packed rows (as every run before ``data.layout`` existed) and resumed with
    the default layout (compact on one CPU device) goes on in rows: its data position counts rows
    batches, so it equals an uninterrupted rows run."""
    root, config = workdir
    rows = config.override(["data.layout=rows"])
    full = workflow.run_pretrain(rows.override([f"train.steps={STEPS}"]).validate(), root, root / "rows_full",
                                 quiet=True)
    out = root / "rows_resumed"
    workflow.run_pretrain(rows.override([f"train.steps={STEPS // 2}"]).validate(), root, out, quiet=True)
    assert config.data.layout == "auto"
    workflow.run_pretrain(config.override([f"train.steps={STEPS}"]).validate(), root, out, quiet=True)
    got, want = _leaves(workflow.load_run(out).params), _leaves(workflow.load_run(full).params)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    tc = config.train
    target = init_state(init_params(config.model), make_optimizer(tc.adam_b1, tc.adam_b2, tc.adam_eps,
                                                                  tc.clip_norm))
    with Checkpointer(out) as ckpt:
        assert ckpt.restore(target)[1]["data"]["layout"] == "rows"


def _synthetic_examples(config, n: int = 48, seed: int = 0):
    """``n`` random examples of the config's pairs (ids of its vocabulary, EOS-terminated)."""
    from jax_namnmt.data.batching import Examples

    rng = np.random.default_rng(seed)
    src, tgt = [], []
    for _ in range(n):
        ls, lt = rng.integers(3, config.data.max_len // 2, 2)
        src.append(np.concatenate([rng.integers(4, config.model.vocab_size, ls), [3]]).astype(np.int32))
        tgt.append(np.concatenate([rng.integers(4, config.model.vocab_size, lt), [3]]).astype(np.int32))
    pairs = rng.integers(0, len(config.data.pairs), n).astype(np.int32)
    return Examples(src, tgt, pairs, [("synthetic", i + 1) for i in range(n)])


def test_one_device_mesh_runs_the_program_without_a_mesh_bit_for_bit(tmp_path):
    """``parallel.mesh = ""`` on one device (the default): the loop's 3 steps give, bit for bit, the
    parameters of the train step compiled without a mesh stepping over the same batches; and the
    step compiled for the one-device mesh itself gives them too ("on one device the program is the
    one without a mesh", training/loop.py and training/step.py)."""
    from jax_namnmt import parallel
    from jax_namnmt.data.batching import make_batcher
    from jax_namnmt.training.loop import Schedule, train
    from jax_namnmt.training.step import make_train_step, schedule_args

    if len(jax.devices()) != 1:
        pytest.skip("needs exactly one device")
    config = load_config("tiny", ["data.layout=rows", "parallel.mesh=", "train.save_every=100"])
    assert config.parallel.mesh == ""
    mc, tc = config.model, config.train
    examples = _synthetic_examples(config)
    schedule = Schedule(3, tc.learning_rate, tc.warmup_steps, tc.warmup_init_lr)
    params = jax.tree.map(np.asarray, jax.device_get(init_params(mc, tc.seed)))
    copy = lambda tree: jax.tree.map(np.array, tree)  # noqa: E731  (the steps donate their inputs)
    looped = _leaves(jax.device_get(train(tmp_path / "run", config, schedule, examples, None, copy(params),
                                          phase="pretrain", quiet=True)))

    mesh, rules = parallel.mesh_from_config(config.parallel)
    assert mesh.size == 1
    optimizer = make_optimizer(tc.adam_b1, tc.adam_b2, tc.adam_eps, tc.clip_norm)
    sched = schedule_args(schedule.learning_rate, schedule.warmup_steps, schedule.warmup_init_lr)
    key = jax.random.key(tc.seed)
    batcher = make_batcher(examples, "rows", tc.tokens_per_batch, config.data.src_row_len, config.data.tgt_row_len,
                           seed=tc.seed)
    stream = batcher.iterate(0, 0)
    batches = [next(stream)[2] for _ in range(schedule.steps)]

    def run(step_mesh, step_rules):
        step = make_train_step(mc, tc.label_smoothing, tc.adam_b1, tc.adam_b2, tc.adam_eps, tc.clip_norm,
                               step_mesh, step_rules)
        state = init_state(copy(params), optimizer)
        if step_mesh is None:
            state, step_sched, step_key = jax.device_put(state, jax.local_devices()[0]), sched, key
        else:
            state = parallel.put(state, step.state_shardings)
            step_sched, step_key = parallel.put((sched, key), parallel.replicated(step_mesh))
        for batch in batches:
            if step_mesh is not None:
                batch = parallel.shard_batch(batch, step_mesh, step_rules)
            state, _ = step(state, batch, None, step_key, step_sched)
        return _leaves(jax.device_get(state["params"]))

    plain = run(None, None)
    on_mesh = run(mesh, rules)
    assert looped.keys() == plain.keys() == on_mesh.keys()
    for name in plain:
        assert looped[name].tobytes() == plain[name].tobytes(), f"the loop on one device: {name}"
        assert on_mesh[name].tobytes() == plain[name].tobytes(), f"the step on a one-device mesh: {name}"
    start = _leaves(params)
    assert any(start[name].tobytes() != plain[name].tobytes() for name in plain)  # the steps moved them


def test_average_of_the_last_checkpoints(workdir, monkeypatch):
    """``average`` writes a run whose parameters are the mean of the chosen checkpoints', with the
    run's config, vocabulary and masks; steps the run does not hold are refused, naming those it holds."""
    from jax_namnmt.average import average_run, main as average_main
    from jax_namnmt.errors import CheckpointError

    root, config = workdir
    run = workflow.run_pretrain(config.override(["train.steps=4", "train.save_every=2"]).validate(), root,
                                root / "two_saves", quiet=True)
    sizes = module_sizes(config.model)
    pairs = list(config.data.pairs)
    save_masks(run / "masks.npz", {m: np.random.default_rng(0).random((len(pairs), n)) < 0.9
                                   for m, n in sizes.items()}, pairs, {})
    with Checkpointer(run) as ckpt:
        assert ckpt.all_steps() == [2, 4]
        kept = [_leaves(ckpt.restore_params(step)[0]) for step in (2, 4)]
    out = average_run(run, root / "averaged", last=2)
    averaged = workflow.load_run(out)
    assert averaged.step == 4 and averaged.config.model == config.model
    got = _leaves(averaged.params)
    assert got.keys() == kept[0].keys()
    for name in got:
        np.testing.assert_allclose(got[name], (kept[0][name].astype(np.float64) + kept[1][name]) / 2,
                                   rtol=1e-6, atol=1e-7, err_msg=name)
    assert any(not np.array_equal(kept[0][name], kept[1][name]) for name in got)  # two different checkpoints
    masks, copied = load_masks(run / "masks.npz")[0], load_masks(out / "masks.npz")[0]  # a masked run stays masked
    assert averaged.masks is not None and masks.keys() == copied.keys()
    assert all(np.array_equal(masks[m], copied[m]) for m in masks)

    monkeypatch.setattr(sys, "argv", ["average", "--checkpoint", str(run), "--out", str(root / "by_steps"),
                                      "--steps", "2,4"])
    assert average_main() == 0  # the door: the same average
    assert all(np.array_equal(v, got[k]) for k, v in _leaves(workflow.load_run(root / "by_steps").params).items())
    one = workflow.load_run(average_run(run, root / "only_step_2", steps=[2]))  # one step: that checkpoint
    assert all(np.array_equal(v, kept[0][k]) for k, v in _leaves(one.params).items())
    with pytest.raises(CheckpointError, match=r"step\(s\) \[3\].*holds steps \[2, 4\]"):
        average_run(run, root / "bad", steps=[2, 3])
    with pytest.raises(CheckpointError, match=r"--last 3: .* holds 2 checkpoint"):
        average_run(run, root / "bad", last=3)
    with pytest.raises(CheckpointError, match="holds checkpoints already"):
        average_run(run, out, last=2)
