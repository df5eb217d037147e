"""Benchmarks of jax_namnmt against PyTorch (HuggingFace Marian) and CTranslate2. Run one from the
checkout as ``python -m benchmarks.NAME`` (``python benchmarks/NAME.py`` works too), e.g.
``python -m benchmarks.train_throughput --quick --no-torch``.

Scripts: ``cpu_throughput`` (CPU, ours against Marian and CTranslate2), the GPU benchmarks
``train_throughput``, ``decode_speed``, ``masked_overhead`` and ``importance_throughput`` (all five
with ``--quick``: tiny shapes on a CPU, the report in a new temporary directory unless ``--out``
names one; a full run writes ``benchmarks/results/NAME.json``), ``run_gpu.sh`` (the four GPU ones
in one time budget) and ``profile_summary`` (a table of a ``--profile-dir`` trace).

Shared modules, by concern:

- ``synthetic``: random sentences, their packed batches and token counts, the forced-length check
- ``shapes``: the model shape from the flags, training matmul FLOPs, the bf16 peak, the learning rate
- ``ours``: our JAX side (device, parameters, batches on the device, the timed train-step loop)
- ``peers_torch``: the HuggingFace Marian twin in PyTorch, its batches and ``generate`` settings
- ``peers_ct2``: the Marian twin converted to CTranslate2
- ``report``: the JSON header and writing, timing records, ratios, tables, where a report goes
- ``driver``: the GPU benchmarks' shared flags and the one-process-per-side driver

Nothing heavy is imported here or at the top of those modules (jax, torch and numpy load inside
the functions): a benchmark sets its thread counts before they load.
"""
