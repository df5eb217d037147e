"""Adding a pair to a masked model (``method/extend.py``, ``add_pair``): the new pair's mask row by
hand, what it may train, the grown FFN units, and, through the real train step and the command's
workflow, that the old pairs' parameters, logits and translations stay the same bit for bit."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from jax_namnmt import add_pair, workflow
from jax_namnmt.config import load_config
from jax_namnmt.data.vocab import Vocab
from jax_namnmt.errors import CheckpointError, ConfigError, DataError
from jax_namnmt.method import extend
from jax_namnmt.method.masks import module_sizes, nest
from jax_namnmt.model.transformer import init_params
from jax_namnmt.training.step import init_state, make_optimizer, make_train_step, schedule_args

FC1, V, Q = "encoder_layer_0/ffn/fc1", "decoder_layer_0/cross_attn/v", "encoder_layer_0/self_attn/q"


def test_new_pair_row_by_hand():
    # two old pairs, six neurons: 0, 1 general; 2 and 4 pair 0's; 3 pair 1's; 5 nobody's (free)
    old = np.array([[1, 1, 1, 0, 1, 0],
                    [1, 1, 0, 1, 0, 0]], bool)
    theta = np.array([[5, 5, 4, 0, 1, 0],
                      [5, 5, 0, 4, 0, 0],
                      [0, 0, 3, 2, 1, 7]], float)  # the new pair last
    rows, counts = extend.new_pair_row({FC1: old, Q: old}, {FC1: theta, Q: theta}, k=0.7, grow=2)
    # general 0, 1 (though its importance there is 0); shared: 2 (3 >= 0.7 * 4) and 4 (1 >= 0.7 * 1),
    # not 3 (2 < 0.7 * 4); free: 5; grown: two new fc1 units, the new pair's alone
    np.testing.assert_array_equal(rows[Q][2], [1, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(rows[FC1][2], [1, 1, 1, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(rows[FC1][:2], np.concatenate([old, np.zeros((2, 2), bool)], axis=1))
    np.testing.assert_array_equal(rows[Q][:2], old)  # only fc1 grows
    assert counts[FC1] == {"general": 2, "shared": 2, "free": 1, "grown": 2}
    assert counts[Q]["grown"] == 0
    own = extend.own_neurons(rows, 2)
    np.testing.assert_array_equal(own[FC1], [0, 0, 0, 0, 0, 1, 1, 1])
    # k = 1: only neurons whose largest importance is the new pair's are shared
    rows1, _ = extend.new_pair_row({Q: old}, {Q: theta}, k=1.0)
    np.testing.assert_array_equal(rows1[Q][2], [1, 1, 0, 0, 1, 1])
    with pytest.raises(ConfigError, match="expected"):
        extend.new_pair_row({Q: old}, {Q: theta[:2]}, k=0.7)


def old_masks(config, pairs: int, seed: int = 0) -> dict:
    """Random masks of ``pairs`` old pairs with a few free neurons (in no row) in fc1, v and q."""
    rng = np.random.default_rng(seed)
    masks = {name: rng.random((pairs, n)) < 0.6 for name, n in module_sizes(config).items()}
    for name, m in masks.items():
        m[:, rng.random(m.shape[1]) < 0.5] = True  # general ones
        nobody = ~m.any(axis=0)
        m[np.arange(m.shape[1])[nobody] % pairs, nobody] = True  # every neuron is some pair's ...
    for name in (FC1, V, Q):
        masks[name][:, :3] = False  # ... but three free ones
    return masks


def test_trainable_tree_is_the_new_pairs_own_parameters(tiny_config):
    grown = dataclasses.replace(tiny_config, ffn_dim=tiny_config.ffn_dim + 4)
    old = old_masks(tiny_config, 3)
    theta = {n: np.random.default_rng(1).random((4, m.shape[1])) for n, m in old.items()}
    rows, _ = extend.new_pair_row(old, theta, k=0.7, grow=4)
    tree = extend.trainable_tree(jax.eval_shape(lambda: init_params(grown)), rows, 3)
    own = extend.own_neurons(rows, 3)
    assert own[FC1].sum() == 3 + 4 and own[V].sum() == 3 and own[Q].sum() == 3
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = [p.key for p in path]
        name = "/".join(keys[:3])
        expected = np.zeros(leaf.shape, bool)
        if keys[-2] == "dense" and name in own:
            if keys[-1] == "kernel":
                expected[:, own[name]] = True
            else:
                expected[own[name]] = True
        reads = {"fc2": "/".join(keys[:2] + ["fc1"]), "out": "/".join(keys[:2] + ["v"])}
        if keys[-1] == "kernel" and len(keys) > 2 and keys[2] in reads and reads[keys[2]] in own:
            expected[own[reads[keys[2]]], :] = True  # the next projection's rows that read its own features
        np.testing.assert_array_equal(leaf, expected, err_msg="/".join(keys))
    assert not tree["embed"]["embedding"].any()


def test_grow_params_keeps_every_old_value(tiny_config, make_params):
    params = jax.tree.map(np.asarray, make_params(tiny_config, seed=3))
    grown = extend.grow_params(params, 4, seed=0)
    wider = dataclasses.replace(tiny_config, ffn_dim=tiny_config.ffn_dim + 4)
    grown_shapes = jax.eval_shape(lambda: init_params(wider))
    assert jax.tree.map(lambda x: x.shape, grown) == jax.tree.map(lambda x: x.shape, grown_shapes)
    for (path, old), new in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(grown)):
        np.testing.assert_array_equal(new[tuple(slice(0, n) for n in old.shape)], old, err_msg=str(path))
    ffn = grown["decoder_layer_0"]["ffn"]
    assert not ffn["fc2"]["dense"]["kernel"][-4:].any() and not ffn["fc1"]["dense"]["bias"][-4:].any()
    assert np.abs(ffn["fc1"]["dense"]["kernel"][:, -4:]).min() > 0


def test_old_pairs_unchanged_bit_for_bit_through_training(tiny_config, make_params, pack, example, fns):
    """Four train steps on batches that mix the old pairs with the new one (the old pairs' gradients
    flow too): every frozen entry is the same bit for bit, the old pairs' logits too, the new pair's move."""
    grow = 4
    grown = dataclasses.replace(tiny_config, ffn_dim=tiny_config.ffn_dim + grow)
    params = jax.tree.map(np.asarray, make_params(tiny_config, seed=5))
    old = old_masks(tiny_config, 3, seed=2)
    theta = {n: np.random.default_rng(3).random((4, m.shape[1])) for n, m in old.items()}
    rows, _ = extend.new_pair_row(old, theta, k=0.7, grow=grow)
    start = extend.grow_params(params, grow, seed=0)
    trainable = extend.trainable_tree(start, rows, 3)
    masks = nest({n: m.astype(np.float32) for n, m in rows.items()})

    rng = np.random.default_rng(7)
    old_batch = pack([[example(rng, 5, 4, 0), example(rng, 4, 6, 1)], [example(rng, 6, 5, 2)],
                      [example(rng, 3, 3, 1), example(rng, 4, 4, 0)]], 16, 16)
    new_batch = pack([[example(rng, 5, 6, 3)], [example(rng, 7, 5, 3)], [example(rng, 4, 4, 3)]], 16, 16)
    before_old = fns.forward(start, old_batch, masks, config=grown)
    before_new = fns.forward(start, new_batch, masks, config=grown)
    # the grown, untrained model gives the old pairs the original model's logits (the grown units are 0 for them)
    original = fns.forward(params, old_batch, nest({n: m.astype(np.float32) for n, m in old.items()}),
                           config=tiny_config)
    np.testing.assert_allclose(before_old, original, rtol=1e-5, atol=1e-5)

    step = make_train_step(grown, 0.1)
    state = init_state(jax.tree.map(np.array, start), make_optimizer())
    sched = schedule_args(1e-2, 0, 1e-2)
    for i in range(4):
        batch = pack([[example(rng, 4, 5, 0), example(rng, 5, 4, 3)], [example(rng, 6, 6, 1)],
                      [example(rng, 3, 4, 2), example(rng, 5, 5, 3)]], 16, 16)
        state, metrics = step(state, batch, masks, jax.random.key(i), sched, trainable)
        assert float(metrics["skipped"]) == 0.0
    after = jax.device_get(state["params"])
    changed = 0
    for (path, t), a, b in zip(jax.tree_util.tree_flatten_with_path(trainable)[0], jax.tree.leaves(start),
                               jax.tree.leaves(after)):
        np.testing.assert_array_equal(b[~t], a[~t], err_msg=str(path))  # frozen: bit for bit
        changed += int((b[t] != a[t]).sum())
    assert changed > 0.5 * sum(int(t.sum()) for t in jax.tree.leaves(trainable))  # (some ReLUs stay shut)
    np.testing.assert_array_equal(fns.forward(after, old_batch, masks, config=grown), before_old)
    assert np.abs(fns.forward(after, new_batch, masks, config=grown) - before_new).max() > 1e-3


# ----------------------------------------------------------------------------- the command's workflow


def test_refusals(tiny_config):
    config = load_config("tiny")
    pairs = list(config.data.pairs)
    masks = {n: np.ones((len(pairs), f), bool) for n, f in module_sizes(config.model).items()}
    run = workflow.Run(directory=workflow.Path("RUN"), config=config, vocab=None, params=None, masks=masks, step=0)
    with pytest.raises(CheckpointError, match="no masks.npz"):
        add_pair.check_source(dataclasses.replace(run, masks=None), "de-fr")
    adapter = config.with_sections(model={"adapter_pairs": len(pairs)})
    with pytest.raises(ConfigError, match=r"\+Adapter model"):
        add_pair.check_source(dataclasses.replace(run, config=adapter), "de-fr")
    with pytest.raises(ConfigError, match="already one of"):
        add_pair.check_source(run, "en-fr")
    with pytest.raises(DataError, match=r"cs is not one of the model's languages \(de, en, fr\)"):
        add_pair.check_source(run, "de-cs")
    with pytest.raises(DataError, match="same"):
        add_pair.check_source(run, "de-de")


@pytest.mark.slow
def test_add_pair_workflow(tmp_path):
    """A masked tiny run (masks with no free neuron, 2 masked steps from the initial parameters), then
    ``run_add_pair`` de-fr with 4 grown units for 3 steps: the old pairs' parameters are the source's
    bit for bit wherever they read them, their translations are the same, the new run translates
    de-fr under its own mask row, and running the command again changes nothing."""
    from jax_namnmt.data.multiway import MULTI30K_SPLITS, build_from_multiway, multi30k_dir
    from jax_namnmt.method.allocation import allocate, save_masks
    from jax_namnmt.method.masks import to_model_masks
    from jax_namnmt.training.loop import Schedule, train, write_run_files

    base = load_config("tiny")
    data = build_from_multiway(multi30k_dir(), tmp_path / "data", list(base.data.pairs) + ["de-fr"], MULTI30K_SPLITS,
                               max_lines={"train": 100, "valid": 8, "test": 4})
    config = load_config("tiny", [f"data.data_dir={data}", "train.valid_max_lines=4"])
    work = tmp_path / "work"
    workflow.prepare(config, work, quiet=True)
    vocab = Vocab.load(work / "spm.model")
    pairs = list(config.data.pairs)
    rng = np.random.default_rng(0)
    theta = {n: rng.random((len(pairs), f)) for n, f in module_sizes(config.model).items()}
    masks = allocate(theta, pairs, 0.5, 0.7)
    source = work / "method"
    write_run_files(source, config, vocab.path, {"kind": "finetune"})
    save_masks(source / "masks.npz", masks, pairs, {})
    train_ex, _ = workflow.load_examples(config, data, vocab, "train")
    train(source, config, Schedule(2, 1e-2, 0, 1e-2), train_ex, None, init_params(config.model),
          to_model_masks(masks), phase="finetune", quiet=True)

    adding = config.with_sections(finetune={"steps": 3, "learning_rate": 1e-2, "warmup_steps": 0})
    with pytest.raises(ConfigError, match="nothing to train"):  # every neuron is an old pair's, no growth
        add_pair.run_add_pair(adding, work, source, tmp_path / "none", "de-fr", grow=0, quiet=True)
    out = add_pair.run_add_pair(adding, work, source, tmp_path / "added", "de-fr", grow=4, quiet=True)

    old, new = workflow.load_run(source), workflow.load_run(out)
    assert new.pairs == pairs + ["de-fr"] and new.config.model.ffn_dim == config.model.ffn_dim + 4
    for name, m in new.masks.items():
        np.testing.assert_array_equal(m[:len(pairs), :old.masks[name].shape[1]], old.masks[name])
    trainable = extend.trainable_tree(new.params, new.masks, len(pairs))
    for (path, a), b, t in zip(jax.tree_util.tree_flatten_with_path(old.params)[0], jax.tree.leaves(new.params),
                               jax.tree.leaves(trainable)):
        b, t = np.asarray(b), np.asarray(t)
        block = tuple(slice(0, n) for n in np.shape(a))
        np.testing.assert_array_equal(b[block][~t[block]], np.asarray(a)[~t[block]], err_msg=str(path))
    fc1 = "encoder_layer_0/ffn/fc1"
    assert not np.array_equal(np.asarray(new.params["encoder_layer_0"]["ffn"]["fc1"]["dense"]["kernel"])[:, -4:],
                              extend.grow_params(jax.device_get(old.params), 4, seed=config.train.seed)[
                                  "encoder_layer_0"]["ffn"]["fc1"]["dense"]["kernel"][:, -4:]), "de-fr did not train"
    assert new.masks[fc1][-1, -4:].all() and not new.masks[fc1][:-1, -4:].any()
    lines = (data / "test.de-en.de").read_text(encoding="utf-8").splitlines()
    assert workflow.translate_lines(new, lines, "de", "en") == workflow.translate_lines(old, lines, "de", "en")
    # running the finished command again changes nothing
    again = add_pair.run_add_pair(adding, work, source, out, "de-fr", grow=4, quiet=True)
    assert jax.tree.all(jax.tree.map(lambda x, y: np.array_equal(x, y), workflow.load_run(again).params, new.params))
