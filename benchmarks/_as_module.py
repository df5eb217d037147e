"""``python benchmarks/NAME.py``: runs the file as ``python -m benchmarks.NAME`` from the checkout.

A script run as a file has no package (its relative imports fail) and its own directory first on
``sys.path``; ``run_as_module`` puts the checkout in that first place instead (what ``python -m``
run from the checkout has there) and runs the module as ``__main__``. The scripts import this only
when run as files (an empty ``__package__``); as modules they never touch ``sys.path``."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def run_as_module(file: str) -> None:
    """Runs ``file`` (``<checkout>/benchmarks/NAME.py``) as the module ``benchmarks.NAME``, then exits."""
    path = Path(file).resolve()
    sys.path[0] = str(path.parents[1])
    runpy.run_module(f"{path.parent.name}.{path.stem}", run_name="__main__", alter_sys=True)
    raise SystemExit(0)
