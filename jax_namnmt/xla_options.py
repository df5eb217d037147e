"""XLA compiler options for the training-shaped programs (train, eval and importance steps).

On CPU, XLA hands dots to YNNPACK and, by default, also groups of elementwise and reduce ops
(``xla_cpu_experimental_ynn_fusion_type``). In the training step those elementwise groups cost
more than XLA's own loop fusions: a YNNPACK fusion cannot absorb a broadcast, so XLA writes each
layer norm's broadcast scale ([tokens, d_model]) and the loss's broadcast row maxima ([512, 8000]
a chunk) to memory, among others. Dots only (``LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT``): +6% median
tokens/s on 2 cores, A/B in one process (8 rounds), +8-22% in separate processes; same loss to
the last digit; masked steps neutral. Beam decoding measured no gain (77.8 vs 81.3 sentences/s, within the noise) and
keeps XLA's default.

Set ``JAX_NAMNMT_XLA_DEFAULTS=0`` to compile with XLA's defaults; a value of the option in
``XLA_FLAGS`` is left to XLA as well. Both are read when a step function is made (the steps are
cached per process).
"""

from __future__ import annotations

import os

import jax

ENV = "JAX_NAMNMT_XLA_DEFAULTS"
YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
CPU_TRAINING_OPTIONS = {YNN_FUSION_TYPE: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def training_compiler_options(platform: str | None = None) -> dict[str, str] | None:
    """``compiler_options`` for ``jax.jit`` of a training-shaped program on ``platform`` (the
    default backend if None): the CPU options above, or None (XLA's defaults) on other platforms,
    with ``JAX_NAMNMT_XLA_DEFAULTS=0``, or when ``XLA_FLAGS`` sets the option itself."""
    if os.environ.get(ENV, "1") == "0" or YNN_FUSION_TYPE in os.environ.get("XLA_FLAGS", ""):
        return None
    if (platform or jax.default_backend()) != "cpu":
        return None
    return dict(CPU_TRAINING_OPTIONS)
