"""Shared fixtures for the model, importance, decoding and loss tests: a tiny float32 model,
random neuron masks and a packer for the packed-row batch layout of ``data/batching.py``; and
``tiny_corpus``, the tiny Multi30k corpus the workflow, pipeline and command-line tests train on."""

from __future__ import annotations

import os

# The suite compiles hundreds of small programs. The package's allocator setting (one arena, for
# decoding speed: jax_namnmt/malloc.py) makes XLA's compile threads share that arena: the whole
# suite took 18 min 23 s with it and 14 min 11 s without (2-core VM, 2026-12-06, one run each, in
# a row). Set before the package is imported; tests/test_malloc.py checks the setting itself in
# processes of its own. An explicit JAX_NAMNMT_MALLOC wins.
os.environ.setdefault("JAX_NAMNMT_MALLOC", "system")

import contextlib
import resource
import signal
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import flax.linen as nn
import jax
import numpy as np
import pytest

from jax_namnmt.config import ModelConfig
from jax_namnmt.data.vocab import BOS_ID
from jax_namnmt.method.masks import module_sizes, nest
from jax_namnmt.model.low_precision import dequantize, low_precision_products
from jax_namnmt.model.transformer import Transformer, init_params
from jax_namnmt.training.loss import label_smoothed_nll

TINY = ModelConfig(vocab_size=50, d_model=16, num_heads=2, ffn_dim=32, enc_layers=1, dec_layers=1,
                   dropout=0.1, attention_dropout=0.0, activation_dropout=0.0, pre_norm=False,
                   max_positions=64, dtype="float32")
NUM_PAIRS = 3


def pack_rows(rows, src_len: int, tgt_len: int) -> dict[str, np.ndarray]:
    """Pack ``rows`` (a list of rows, each a list of ``(src ids, tgt ids, pair id)``) into the
    layout of ``PackedBatches``: segments 1..n per row (0 = padding), positions restarting
    per example, the pair id on every token, ``tgt_inputs = [BOS] + tgt[:-1]``."""
    out = {k: np.zeros((len(rows), n), np.int32) for k, n in (
        ("src_tokens", src_len), ("src_segments", src_len), ("src_positions", src_len), ("src_pairs", src_len),
        ("tgt_inputs", tgt_len), ("tgt_labels", tgt_len), ("tgt_segments", tgt_len),
        ("tgt_positions", tgt_len), ("tgt_pairs", tgt_len))}
    for r, row in enumerate(rows):
        s_at = t_at = 0
        for seg, (src, tgt, pair) in enumerate(row, start=1):
            src, tgt = np.asarray(src, np.int32), np.asarray(tgt, np.int32)
            s, t = slice(s_at, s_at + len(src)), slice(t_at, t_at + len(tgt))
            assert s.stop <= src_len and t.stop <= tgt_len, "example does not fit the row"
            out["src_tokens"][r, s] = src
            out["src_segments"][r, s] = seg
            out["src_positions"][r, s] = np.arange(len(src))
            out["src_pairs"][r, s] = pair
            out["tgt_labels"][r, t] = tgt
            out["tgt_inputs"][r, t] = np.concatenate([[BOS_ID], tgt[:-1]])
            out["tgt_segments"][r, t] = seg
            out["tgt_positions"][r, t] = np.arange(len(tgt))
            out["tgt_pairs"][r, t] = pair
            s_at, t_at = s.stop, t.stop
    return out


def random_example(rng, src_len: int, tgt_len: int, pair: int, vocab: int = TINY.vocab_size):
    """Ordinary token ids (>= 4, no specials except the final EOS=3 on the target)."""
    src = rng.integers(4, vocab, src_len)
    tgt = np.concatenate([rng.integers(4, vocab, tgt_len - 1), [3]])
    return src, tgt, pair


def mixed_batch(pack, example, seed: int = 0, length: int = 16) -> dict[str, np.ndarray]:
    """Three rows of ``length``: row 0 packs pairs 0, 1, 2; row 1 packs pairs 2, 0; row 2 pair 1."""
    rng = np.random.default_rng(seed)
    rows = [
        [example(rng, 4, 3, 0), example(rng, 3, 5, 1), example(rng, 5, 4, 2)],
        [example(rng, 6, 4, 2), example(rng, 2, 3, 0)],
        [example(rng, 7, 6, 1)],
    ]
    return pack(rows, length, length)


def random_masks(config: ModelConfig, num_pairs: int, seed: int, keep: float = 0.7) -> dict:
    """Random 0/1 float32 masks, nested like the model expects, different for every pair."""
    rng = np.random.default_rng(seed)
    return nest({name: (rng.random((num_pairs, n)) < keep).astype(np.float32)
                 for name, n in module_sizes(config).items()})


def noisy_params(config: ModelConfig, seed: int = 0, scale: float = 0.1):
    """Random parameters with the model's tree (from ``jax.eval_shape`` of ``init_params``, so
    nothing is compiled): kernels and the embedding at their init scale, biases and layer-norm
    parameters away from their special init values (zeros / ones)."""
    shapes = jax.eval_shape(lambda: init_params(config, 0))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = path[-1].key
        noise = rng.standard_normal(s.shape)
        if name == "kernel":
            value = noise / np.sqrt(s.shape[0])
        elif name == "embedding":
            value = noise * config.d_model**-0.5
        elif name == "scale":
            value = 1.0 + scale * noise
        else:  # biases
            value = scale * noise
        return value.astype(s.dtype)  # float32, like the model's parameters

    return jax.tree_util.tree_map_with_path(draw, shapes)


# The tests' own helpers are jitted (config static) so every shape compiles once (eager Flax is
# slow on CPU), with XLA's backend optimizations off: they run a few times each on tiny inputs,
# so compiling them costs more than it saves. Set per function, never for the process, so
# nothing else is affected. Keep batches at 3 rows x 16 tokens where possible: the compiled
# programs are then shared by all test files.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
test_jit = partial(jax.jit, compiler_options=FAST_COMPILE)


@partial(test_jit, static_argnames=("config",))
def forward_h(params, batch, masks, *, config):
    """Logits and ``{mask name: h [B, L, F]}``, every masked projection's sown output."""
    logits, state = Transformer(config).apply({"params": params}, batch, masks, deterministic=True,
                                              mutable=["intermediates"])
    acts = {}

    def walk(tree, path):
        for key, value in tree.items():
            if key == "h":
                acts["/".join(path)] = value[0]  # a mask name is its parameter path
            else:
                walk(value, path + (key,))

    walk(state["intermediates"], ())
    return logits, acts


def low_precision_logits(params, batch, masks, *, config):
    """Logits with bfloat16 or int8 parameters (``model/low_precision.convert_params``) the way the
    beam search takes them (int8 dequantized to bfloat16, then the interceptor); float32 parameters
    give ``forward``'s."""
    with nn.intercept_methods(low_precision_products):
        return Transformer(config).apply({"params": dequantize(params)}, batch, masks, deterministic=True)


forward_low_precision = test_jit(low_precision_logits, static_argnames=("config",))


def summed_loss(params, batch, masks, config, label_smoothing=0.1):
    logits = Transformer(config).apply({"params": params}, batch, masks, deterministic=True)
    return label_smoothed_nll(logits, batch["tgt_labels"], batch["tgt_segments"] > 0, label_smoothing)[0]


@partial(test_jit, static_argnames=("config",))
def loss_grad(params, batch, masks, *, config):
    """d(summed label-smoothed loss)/d(params)."""
    return jax.grad(summed_loss)(params, batch, masks, config)


def forward(params, batch, masks, *, config):
    """Logits [B, Lt, V] (the same compiled program as ``forward_h``)."""
    return forward_h(params, batch, masks, config=config)[0]


def equations(jaxpr, primitive: str) -> list:
    """Every ``primitive`` equation of a jaxpr, sub-jaxprs (scan, jit, custom VJPs) included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == primitive:
            found.append(eqn)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += equations(inner, primitive)
    return found


def dot_equations(jaxpr) -> list:
    """Every ``dot_general`` equation of a jaxpr, sub-jaxprs included."""
    return equations(jaxpr, "dot_general")


@pytest.fixture(scope="session")
def fns():
    return SimpleNamespace(forward=forward, forward_h=forward_h, loss_grad=loss_grad, summed_loss=summed_loss,
                           forward_low_precision=forward_low_precision)


@pytest.fixture(scope="session")
def tiny_config() -> ModelConfig:
    return TINY


@pytest.fixture(scope="session")
def tiny_params():
    return noisy_params(TINY, seed=0)


@pytest.fixture(scope="session")
def pack():
    return pack_rows


@pytest.fixture(scope="session")
def example():
    return random_example


@pytest.fixture(scope="session")
def make_masks():
    return random_masks


@pytest.fixture(scope="session")
def make_params():
    return noisy_params


# The tiny corpus: the first lines of each split of the embedded Multi30k for the tiny config's
# pairs, in the fairseq layout (``{split}.{src}-{tgt}.{lang}``).
TINY_LINES = {"train": 300, "valid": 40, "test": 20}


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """The tiny corpus directory (absolute), built once per session and shared by every test file
    that trains on it: read it, never write it (a test that damages a corpus copies it first)."""
    from jax_namnmt.config import load_config
    from jax_namnmt.data.multiway import MULTI30K_SPLITS, build_from_multiway, multi30k_dir

    root = tmp_path_factory.mktemp("tiny_corpus")
    return build_from_multiway(multi30k_dir(), root / "tinydata", load_config("tiny").data.pairs, MULTI30K_SPLITS,
                               max_lines=TINY_LINES).resolve()


def sacrebleu_scores(hyps: list[str], data_dir: Path, split: str, pair: str, max_lines: int) -> tuple[float, float]:
    """(BLEU, chrF) of ``hyps`` recomputed with sacreBLEU itself (its defaults: 13a, case-sensitive)
    against the first ``max_lines`` references of ``split`` read straight from the corpus files."""
    import sacrebleu

    tgt = pair.split("-")[1]
    refs = (Path(data_dir) / f"{split}.{pair}.{tgt}").read_text(encoding="utf-8").splitlines()[:max_lines]
    assert len(hyps) == len(refs) and all(r.strip() for r in refs), (pair, len(hyps), len(refs))
    return sacrebleu.corpus_bleu(list(hyps), [refs]).score, sacrebleu.corpus_chrf(list(hyps), [refs]).score


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """No file of this process may grow past ``nbytes`` (a write past it fails with EFBIG),
    as on a full disk."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
