"""The CTranslate2 peer: the ``peers_torch.build_marian`` model (its very weights) converted with
CTranslate2's own Marian loader. ``ctranslate2`` is a benchmark-only dependency."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from .peers_torch import importable


def ctranslate2_available() -> bool:
    return importable("ctranslate2", "torch", "transformers")  # the model is converted from the Marian one


def ctranslate2_from_marian(model, vocab_size: int, out_dir) -> list[str]:
    """Converts the ``build_marian`` model (its very weights) with CTranslate2's own
    ``MarianMTLoader`` into ``out_dir``; returns the token of each id (``t<id>``; our special
    ids as ``<blank>`` (padding), ``<unk>``, ``<s>``, ``</s>``). The loader follows Marian's
    conversion: the decoder starts from a zero embedding and the vocabulary's last entry
    (Marian's ``<pad>``) is dropped, so the CTranslate2 model has ``vocab_size - 1`` words (id
    ``vocab_size - 1``, if a source holds it, reads as ``<unk>``)."""
    from ctranslate2.converters.transformers import MarianMTLoader

    from jax_namnmt.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID

    names = {PAD_ID: "<blank>", UNK_ID: "<unk>", BOS_ID: "<s>", EOS_ID: "</s>", vocab_size - 1: "<pad>"}
    tokens = [names.get(i, f"t{i}") for i in range(vocab_size)]

    class Vocabulary:  # what the loader asks of a tokenizer
        eos_token, unk_token, bos_token = "</s>", "<unk>", "<s>"

        @staticmethod
        def get_vocab():
            return {t: i for i, t in enumerate(tokens)}

    spec = MarianMTLoader()(model, Vocabulary())
    spec.validate()
    spec.optimize(quantization=None)
    spec.save(str(out_dir))
    return tokens



def ctranslate2_from_params(params: dict, config, out_dir) -> list[str]:
    """Our model (``params``: the nested parameter tree, ``config``: its ``ModelConfig``; post-norm,
    no +TS/+Adapter) written as a CTranslate2 ``TransformerSpec`` into ``out_dir``, weight for
    weight: the same sinusoid table, embedding scale sqrt(d), layer-norm epsilon 1e-6, the decoder
    starting from BOS's embedding, the output layer tied to the embedding, all ``vocab_size``
    words. Returns the token of each id (``t<id>``; ``<blank>``, ``<unk>``, ``<s>``, ``</s>`` for
    our special ids), which is how sentences of ids go in and out."""
    import numpy as np
    from ctranslate2.specs import common_spec, transformer_spec

    from jax_namnmt.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID
    from jax_namnmt.method.masks import layer_path
    from jax_namnmt.model.transformer import sinusoidal_positions

    if config.pre_norm or config.ts_target_of_pair or config.adapter_pairs:
        raise ValueError("ctranslate2_from_params: only the plain post-norm model converts")
    f32 = lambda a: np.ascontiguousarray(np.asarray(a, np.float32))  # noqa: E731

    def linear(spec, *denses):  # our kernels are [in, out]; CTranslate2's weights [out, in], fused by rows
        spec.weight = f32(np.concatenate([np.asarray(d["dense"]["kernel"]).T for d in denses]))
        spec.bias = f32(np.concatenate([np.asarray(d["dense"]["bias"]) for d in denses]))

    def norm(spec, p):
        spec.gamma, spec.beta = f32(p["norm"]["scale"]), f32(p["norm"]["bias"])

    def attention(spec, p, res, self_attention):
        if self_attention:
            linear(spec.linear[0], p["q"], p["k"], p["v"])
        else:
            linear(spec.linear[0], p["q"])
            linear(spec.linear[1], p["k"], p["v"])
        linear(spec.linear[-1], p["out"])
        norm(spec.layer_norm, res)

    def ffn(spec, layer):
        linear(spec.linear_0, layer["ffn"]["fc1"])
        linear(spec.linear_1, layer["ffn"]["fc2"])
        norm(spec.layer_norm, layer["ffn_res"])

    spec = transformer_spec.TransformerSpec.from_config((config.enc_layers, config.dec_layers), config.num_heads,
                                                        pre_norm=False, activation=common_spec.Activation.RELU)
    embedding = f32(params["embed"]["embedding"])
    table = sinusoidal_positions(config.max_positions, config.d_model)
    for side in (spec.encoder, spec.decoder):
        embeddings = side.embeddings[0] if isinstance(side.embeddings, list) else side.embeddings
        embeddings.weight = embedding
        side.scale_embeddings = float(np.sqrt(config.d_model))
        side.position_encodings.encodings = table
    for i, layer_spec in enumerate(spec.encoder.layer):
        layer = params[layer_path("encoder", i)]
        attention(layer_spec.self_attention, layer["self_attn"], layer["self_attn_res"], True)
        ffn(layer_spec.ffn, layer)
    for i, layer_spec in enumerate(spec.decoder.layer):
        layer = params[layer_path("decoder", i)]
        attention(layer_spec.self_attention, layer["self_attn"], layer["self_attn_res"], True)
        attention(layer_spec.attention, layer["cross_attn"], layer["cross_attn_res"], False)
        ffn(layer_spec.ffn, layer)
    spec.decoder.projection.weight = embedding
    names = {PAD_ID: "<blank>", UNK_ID: "<unk>", BOS_ID: "<s>", EOS_ID: "</s>"}
    tokens = [names.get(i, f"t{i}") for i in range(config.vocab_size)]
    spec.register_source_vocabulary(tokens)
    spec.register_target_vocabulary(tokens)
    spec.config.bos_token, spec.config.eos_token, spec.config.unk_token = "<s>", "</s>", "<unk>"
    spec.config.decoder_start_token = "<s>"
    spec.config.layer_norm_epsilon = 1e-6
    spec.validate()
    spec.optimize(quantization=None)
    spec.save(str(out_dir))
    return tokens


class BatchSession:
    """A CTranslate2 ``Translator`` on a converted model directory ``workdir`` (a
    ``TemporaryDirectory``, kept alive with the session) in thread layout ``INTERxINTRA``
    (``inter`` batches at once, from as many Python threads, ``intra`` threads each), timed on
    ``inputs`` (a list of batches of token strings) with ``translate_batch(**options)``: warmed
    up on the first batch (``warm_s``); ``run_round()`` translates every batch and returns its
    seconds, keeping the results in ``outputs`` (one list a batch)."""

    def __init__(self, workdir, compute_type: str, layout: str, inputs: list, options: dict):
        import ctranslate2

        self.workdir, self.inputs, self.options = workdir, inputs, options
        self.inter, self.intra = (int(x) for x in layout.split("x"))
        self.version = ctranslate2.__version__
        self.translator = ctranslate2.Translator(workdir.name, device="cpu", compute_type=compute_type,
                                                 inter_threads=self.inter, intra_threads=self.intra)
        t0 = time.perf_counter()
        self.translator.translate_batch(inputs[0], **options)
        self.warm_s = time.perf_counter() - t0
        self.outputs: list = []

    def run_round(self) -> float:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(self.inter) as pool:
            self.outputs = list(pool.map(lambda b: self.translator.translate_batch(b, **self.options), self.inputs))
        return time.perf_counter() - t0
