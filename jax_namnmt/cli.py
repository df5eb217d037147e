"""Shared command-line plumbing: common flags, config loading, clean errors (exit 2)."""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable

from jax_namnmt import parallel
from jax_namnmt.config import Config, load_config
from jax_namnmt.errors import UserError


def parser(description: str, config: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    if config:
        p.add_argument("--config", default=None, help="configs/<name>.py, its bare name, or a JSON file (default: demo)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="override a config field, e.g. --set train.steps=200 (repeatable)")
        p.add_argument("--data", default=None, help="a corpus in the fairseq layout (default: embedded Multi30k)")
        p.add_argument("--pairs", default=None, help="comma-separated pairs, e.g. de-en,en-de")
        p.add_argument("--mesh", default=None, metavar="AXIS=N,...",
                       help="device mesh for training and importance, e.g. data=2,tensor=2 (axes data, fsdp, "
                            "tensor; data takes the devices the others leave; default: every device on data); "
                            "the same as --set parallel.mesh=...")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def config_from_args(args) -> Config:
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.data_dir={args.data}")
    if args.pairs:
        overrides.append(f"data.pairs={args.pairs}")
    if getattr(args, "mesh", None) is not None:
        overrides.append(f"parallel.mesh={args.mesh}")
    config = load_config(args.config, overrides)
    # jax.distributed.initialize (when a coordinator is configured) before anything touches the devices
    parallel.setup(config.parallel)
    return config


def run(main: Callable[[], int | None]) -> None:
    """Run a door: a UserError prints one clear line and exits 2 (traceback only with --debug)."""
    try:
        code = main()
    except UserError as err:
        if "--debug" in sys.argv:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is kept; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
