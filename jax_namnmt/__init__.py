"""jax_namnmt: multilingual NMT with importance-based neuron allocation (Xie et al., ACL 2021)."""
__version__ = "0.1.0"
