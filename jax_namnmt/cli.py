"""Shared command-line plumbing: common flags, config loading, clean errors (exit 2)."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import traceback
from pathlib import Path
from typing import Callable

from jax_namnmt.config import Config, load_config
from jax_namnmt.errors import UserError, reason


def door_prog(module: str | None) -> str | None:
    """``python -m jax_namnmt.NAME`` for a door's module name (None: argparse's default, the
    script's file name)."""
    if not module or module == "__main__":
        return None
    return f"python -m {module}"


def _caller_module(depth: int = 2) -> str | None:
    """The module name of the function ``depth`` frames up: its ``__spec__`` name when it runs
    as ``python -m`` (``__name__`` is then ``__main__``), else its ``__name__``."""
    frame = sys._getframe(depth)
    spec = frame.f_globals.get("__spec__")
    return getattr(spec, "name", None) or frame.f_globals.get("__name__")


def parser(description: str, config: bool = True, prog: str | None = None) -> argparse.ArgumentParser:
    """A door's parser with the shared flags. Its usage line names the door as it is run,
    ``python -m jax_namnmt.NAME`` (the calling module; ``prog`` overrides), not ``NAME.py``."""
    p = argparse.ArgumentParser(prog=prog or door_prog(_caller_module()), description=description)
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
    from jax_namnmt import parallel  # here, not at the top: translate starts without Flax

    parallel.initialize_distributed(config.parallel)
    return config


CACHE_ENV = "JAX_NAMNMT_XLA_CACHE"
CACHE_OFF = ("", "0", "off", "none", "false")


def compilation_cache_dir(environ=os.environ) -> Path | None:
    """Where the doors keep compiled XLA programs between runs (JAX's persistent compilation
    cache): ``$JAX_NAMNMT_XLA_CACHE`` (``off``, ``0`` or empty: none); else None when
    ``$JAX_COMPILATION_CACHE_DIR`` is set (JAX then uses that itself); else
    ``$XDG_CACHE_HOME/jax_namnmt/xla/<host>`` (``~/.cache/...``): one directory per machine, since
    a home directory shared by machines with other CPU features would hold programs that XLA
    rejects there. The cache is trusted code (JAX's warning): keep it where only you can write."""
    if CACHE_ENV in environ:
        value = environ[CACHE_ENV].strip()
        return None if value.lower() in CACHE_OFF else Path(value).expanduser()
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jax_namnmt" / "xla" / (platform.node() or "localhost")


def enable_compilation_cache() -> Path | None:
    """Turn on JAX's persistent compilation cache at ``compilation_cache_dir()`` (programs that
    took >= 1 s to compile): a second ``translate`` of the shipped model starts in ~5 s instead of
    ~8 s on 2 cores, a second ``pipeline`` skips its compilations. A directory that cannot be
    created or written leaves the cache off."""
    path = compilation_cache_dir()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(path, os.W_OK):
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(path))
    return path


class _NoLibraryTracebacks(logging.Filter):
    """Drops the tracebacks Orbax logs from its worker threads: the same exception reaches the
    caller, which reports it as one ``error:`` line (``--debug`` keeps them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and f"{os.sep}orbax{os.sep}" in (record.pathname or ""))


def _drop_closed_loop_callbacks(hook):
    """An unraisable-exception hook that drops ``RuntimeError('Event loop is closed')``: after a
    failed checkpoint save, tensorstore completes the save's other writes and calls back into
    Orbax's event loop, already closed; each callback would print a traceback (``--debug`` keeps
    them). Everything else goes to ``hook``."""

    def drop(unraisable) -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        hook(unraisable)

    return drop


def _os_error_line(err: OSError) -> str:
    """One line for an OS error no writer turned into a UserError: the file and what failed."""
    where = f"{err.filename}: " if err.filename else ""
    if err.filename and getattr(err, "filename2", None):  # a copy or rename: both files
        where = f"{err.filename} -> {err.filename2}: "
    return f"{where}{reason(err)} (run with --debug for the traceback)"


def run(main: Callable[[], int | None]) -> None:
    """Run a door: a UserError prints one clear line and exits 2 (traceback only with --debug), as
    does an OS error (a file that cannot be read or written, a full disk) that reached no writer's
    own message. JAX's persistent compilation cache is on (``enable_compilation_cache``)."""
    debug = "--debug" in sys.argv
    if not debug:
        logging.getLogger("absl").addFilter(_NoLibraryTracebacks())
        sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)
    enable_compilation_cache()
    try:
        code = main()
    except BrokenPipeError:  # the reader of stdout went away (``| head``): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except (UserError, OSError) as err:
        if debug:
            traceback.print_exc()
        print(f"error: {err if isinstance(err, UserError) else _os_error_line(err)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is kept; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
