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
  ``embedding_scale``. A projection multiplies in bfloat16 (its input cast to bfloat16, the int8
  values converted, which bfloat16 holds exactly) with float32 accumulation, and scales the
  result per output feature before the bias: int8 weights with bfloat16 inputs. On the
  benchmarks' AVX512-BF16 CPU this ran 21% faster than quantising each input per token to int8
  and multiplying in integers (CTranslate2's int8), whose XLA int8 products are only ~1.35x
  float32 there, and scored 40.78 BLEU against 40.74.

:func:`low_precision_products` is the Flax method interceptor (``nn.intercept_methods``) that
routes ``nn.Dense`` calls and ``nn.Embed.attend`` through those products when their matrix has
one of those dtypes; with float32 parameters it changes nothing, so one decoder program source
takes any of them (the dtype is part of the compiled program's arguments). The embedding lookup
(``Transformer._embed``) reads an int8 table through :func:`embedding_rows`.

Speed and quality (shipped model, all 1,000 test_2016_flickr de-en, beam 4, 2-core AVX-512 CPU):
``docs/performance_log.md`` and ``benchmarks/README.md``. On that CPU XLA's bfloat16 products
run at ~1.8x float32 (AVX512-BF16); int8 weights cost a conversion and a scaling more.
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


def embedding_rows(embed, table, tokens):
    """``table[tokens]`` as float32-scaled rows: an int8 table's rows times their scales, any other
    table's rows as they are (``Transformer._embed``)."""
    rows = jnp.take(table, tokens, axis=0)
    if table.dtype != jnp.int8:
        return rows
    return rows * jnp.take(embed.get_variable("params", "embedding_scale"), tokens, axis=0)[..., None]


def int8_product(x, matrix, scale, contract: int):
    """``x [..., in]`` times an int8 ``matrix`` (its dimension ``contract`` is ``in``), the
    other dimension's outputs times ``scale``: a bfloat16 product (``x`` rounded to bfloat16, the
    int8 values exact in it) accumulated in float32, then scaled; float32 result."""
    acc = _dot(x.astype(jnp.bfloat16), matrix.astype(jnp.bfloat16), contract)
    return acc * scale


def _dot(x, matrix, contract: int):
    """``x [..., in]`` times ``matrix`` over its dimension ``contract``, accumulated in float32."""
    return jax.lax.dot_general(x, matrix, (((x.ndim - 1,), (contract,)), ((), ())), preferred_element_type=jnp.float32)


def _product(x, matrix, scale, contract: int):
    if matrix.dtype == jnp.int8:
        return int8_product(x, matrix, scale, contract)
    return _dot(x.astype(matrix.dtype), matrix, contract)


def low_precision_products(next_fun, args, kwargs, context):
    """Flax interceptor: ``nn.Dense.__call__`` with a bfloat16 or int8 kernel and
    ``nn.Embed.attend`` with a bfloat16 or int8 embedding take the products above (float32
    out); every other call runs as it is."""
    import flax.linen as nn

    module, method = context.module, context.method_name
    if isinstance(module, nn.Dense) and method == "__call__" and module.has_variable("params", "kernel"):
        kernel = module.get_variable("params", "kernel")
        if kernel.dtype in (jnp.bfloat16, jnp.int8):
            (x,) = args
            scale = module.get_variable("params", "kernel_scale") if kernel.dtype == jnp.int8 else None
            y = _product(x, kernel, scale, contract=0)
            if module.use_bias:
                y = y + module.get_variable("params", "bias")
            return y if module.dtype is None else y.astype(module.dtype)
    if isinstance(module, nn.Embed) and method == "attend":
        table = module.get_variable("params", "embedding")
        if table.dtype in (jnp.bfloat16, jnp.int8):
            (x,) = args
            scale = module.get_variable("params", "embedding_scale") if table.dtype == jnp.int8 else None
            return _product(x, table, scale, contract=1)
    return next_fun(*args, **kwargs)
