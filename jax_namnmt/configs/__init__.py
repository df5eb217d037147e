"""The config files (``NAME.py``, each defining ``get_config()``), read by file with
``jax_namnmt.config.load_config`` (``--config NAME``), not imported. They ship in the package, so an
installed ``jax_namnmt`` finds them from any directory; in a checkout the top-level ``configs/`` is
a symlink to this directory."""
