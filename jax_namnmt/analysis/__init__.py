"""The paper's analyses over a pipeline's outputs (``python -m jax_namnmt.analyze``): importance
plots, LScore/MScore, neuron erasure, k and rho sweeps. The math is in numpy (``scores``,
``erasure``), the figures in ``plots``, the runs in ``jax_namnmt/analyze.py``."""
