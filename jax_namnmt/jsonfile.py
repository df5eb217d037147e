"""Reading the project's small JSON files (configs of runs, package descriptions) without the
checkpoint library, so that ``translate`` starts without importing Orbax."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jax_namnmt.errors import CheckpointError


def load_json(path: str | os.PathLike) -> Any:
    """Reads a JSON file; a missing or malformed file raises CheckpointError."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; check the run directory") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{path}:{e.lineno}: invalid JSON ({e.msg}); the file is corrupted") from None
