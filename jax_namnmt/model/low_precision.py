"""Decoding with bfloat16 or int8 weights (``DecodeConfig.weights``): the model's matrices in
fewer bits, every product accumulated in float32, everything else float32.

:func:`convert_params` changes the matrices of a float32 parameter tree, once, before decoding:
every 2-D ``.../dense/kernel`` (the attention and FFN projections of ``Transformer`` and
``BakedTransformer``) and the embedding (the tied output layer). Layer norms, biases and the +TS
and adapter parameters stay float32.

- ``bfloat16``: the matrices rounded to bfloat16. A projection casts its input to bfloat16 and
  multiplies with float32 accumulation.
- ``int8``: symmetric int8 with one float32 scale per output feature (``kernel ~= int8 * scale``
  column by column, the embedding row by row: a row is the output layer's feature for one
  vocabulary entry and the lookup's vector for it), stored beside it as ``kernel_scale`` /
  ``embedding_scale``: half of bfloat16's memory at rest. The search's program turns them into
  bfloat16 matrices once per call (:func:`dequantize`: ``int8 * scale``, rounded), before its
  loop, and multiplies like ``bfloat16``: int8 weights with bfloat16 inputs. On the benchmarks'
  AVX512-BF16 CPU that decodes at bfloat16's speed (1.90 against 1.88 s for all of Multi30k
  test_2016_flickr de-en). Converting the int8 matrix at every product and scaling its output
  was 6-14% slower than bfloat16 weights there; multiplying in integers (the input quantised per
  token, CTranslate2's int8) 34% slower (XLA's int8 products run at only ~1.35x float32).

:func:`low_precision_products` is the Flax method interceptor (``nn.intercept_methods``) that
routes ``nn.Dense`` calls and ``nn.Embed.attend`` through the bfloat16 product when their matrix
is bfloat16; with float32 parameters it changes nothing, so one decoder program source takes any
of the three (the dtype is part of the compiled program's arguments).

Speed and quality (shipped model, all 1,000 test_2016_flickr de-en, beam 4, 2-core AVX-512 CPU):
``docs/performance_log.md`` and ``benchmarks/README.md``. On that CPU XLA's bfloat16 products
run at ~1.8x float32 (AVX512-BF16).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jax_namnmt.config import DECODE_WEIGHTS
from jax_namnmt.errors import ConfigError

QMAX = 127


def check_weights(weights: str, where: str = "decode.weights") -> str:
    if weights not in DECODE_WEIGHTS:
        raise ConfigError(f"{where} = {weights!r}: expected one of {', '.join(DECODE_WEIGHTS)}")
    return weights


def quantize_columns(matrix) -> tuple[np.ndarray, np.ndarray]:
    """``(int8 [in, out], float32 scale [out])`` with ``matrix ~= int8 * scale`` column by column
    (each column's largest magnitude maps to 127; an all-zero column gets scale 1)."""
    matrix = np.asarray(matrix, np.float32)
    amax = np.abs(matrix).max(axis=0)
    scale = np.where(amax > 0, amax / QMAX, 1.0).astype(np.float32)
    return np.clip(np.rint(matrix / scale), -QMAX, QMAX).astype(np.int8), scale


def params_weights(params) -> str:
    """The ``weights`` setting a parameter tree is in: ``int8`` or ``bfloat16`` when its embedding
    is (``convert_params`` made it), else ``float32``."""
    embedding = np.dtype(params["embed"]["embedding"].dtype)
    return {np.dtype(np.int8): "int8", np.dtype(jnp.bfloat16): "bfloat16"}.get(embedding, "float32")


def convert_params(params, weights: str) -> dict:
    """``params`` (float32) with its matrices in ``weights`` (see the module docstring); a tree
    already in ``weights`` is returned as it is. Device arrays."""
    current = params_weights(params)
    if check_weights(weights) == current:
        return params
    if current != "float32":
        raise ConfigError(f"decode.weights = {weights!r}: the parameters are already {current}; convert float32 ones")

    def convert(matrix, outputs_on_rows=False):
        if weights == "bfloat16":
            return {"": np.asarray(matrix, jnp.bfloat16)}
        q, scale = quantize_columns(np.asarray(matrix).T if outputs_on_rows else matrix)
        return {"": q.T if outputs_on_rows else q, "_scale": scale}

    def walk(tree, path):
        if not isinstance(tree, dict):
            return tree
        out = {}
        for key, value in tree.items():
            if key == "kernel" and path[-1:] == ("dense",) and np.ndim(value) == 2:
                out.update({key + suffix: array for suffix, array in convert(value).items()})
            elif key == "embedding" and path == ("embed",):
                out.update({key + suffix: array for suffix, array in convert(value, outputs_on_rows=True).items()})
            else:
                out[key] = walk(value, path + (key,))
        return out

    return jax.device_put(walk(jax.device_get(params), ()))


def dequantize(params):
    """The tree the products take: an int8 tree's matrices times their scales, rounded to bfloat16
    (their ``*_scale`` leaves dropped); any other tree as it is. The beam search calls it inside its
    program, before its loop, so each search converts the matrices once (not at every step) and
    then runs at the speed of bfloat16 weights. Rounding ``int8 * scale`` to bfloat16 moves it by
    at most 2^-8 of itself: up to about half an int8 step more for a column's largest entries,
    much less for its small ones (on Multi30k de-en the BLEU was the same, 40.78, as with the
    scales applied to each product's float32 output)."""
    if params_weights(params) != "int8":
        return params

    def walk(tree):
        if not isinstance(tree, dict):
            return tree
        out = {}
        for key, value in tree.items():
            if key.endswith("_scale") and key[: -len("_scale")] in tree:
                continue
            if key + "_scale" in tree:
                scale = tree[key + "_scale"]
                scale = scale[:, None] if key == "embedding" else scale  # the embedding: one a row
                out[key] = (value.astype(jnp.float32) * scale).astype(jnp.bfloat16)
            else:
                out[key] = walk(value)
        return out

    return walk(params)


def _dot(x, matrix, contract: int):
    """``x [..., in]`` (rounded to the matrix's dtype) times ``matrix`` over its dimension
    ``contract``, accumulated in float32."""
    return jax.lax.dot_general(x.astype(matrix.dtype), matrix, (((x.ndim - 1,), (contract,)), ((), ())),
                               preferred_element_type=jnp.float32)


def _refuse_int8(matrix):
    if matrix.dtype == jnp.int8:
        raise ValueError("int8 parameters go through low_precision.dequantize before the model is applied")


def low_precision_products(next_fun, args, kwargs, context):
    """Flax interceptor: ``nn.Dense.__call__`` with a bfloat16 kernel and ``nn.Embed.attend`` with
    a bfloat16 embedding take the products above (float32 out); every other call runs as it is."""
    import flax.linen as nn

    module, method = context.module, context.method_name
    if isinstance(module, nn.Dense) and method == "__call__" and module.has_variable("params", "kernel"):
        kernel = module.get_variable("params", "kernel")
        _refuse_int8(kernel)
        if kernel.dtype == jnp.bfloat16:
            (x,) = args
            y = _dot(x, kernel, contract=0)
            if module.use_bias:
                y = y + module.get_variable("params", "bias")
            return y if module.dtype is None else y.astype(module.dtype)
    if isinstance(module, nn.Embed) and method == "attend":
        table = module.get_variable("params", "embedding")
        _refuse_int8(table)
        if table.dtype == jnp.bfloat16:
            (x,) = args
            return _dot(x, table, contract=1)
    return next_fun(*args, **kwargs)
