"""jax_namnmt: multilingual NMT with importance-based neuron allocation (Xie et al., ACL 2021)."""
from jax_namnmt.malloc import reuse_freed_memory as _reuse_freed_memory

__version__ = "0.1.0"
_reuse_freed_memory()  # before any thread allocates: see jax_namnmt/malloc.py (JAX_NAMNMT_MALLOC=system: off)
