"""The command-line doors on bad input: exit status 2, one ``error:`` line naming the file, line or
field at fault, and no traceback unless ``--debug``. Every door runs in a fresh process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from jax_namnmt import workflow
from jax_namnmt.config import load_config
from jax_namnmt.method.allocation import save_masks
from jax_namnmt.method.masks import module_sizes

pytestmark = pytest.mark.slow  # every door runs in a fresh process

REPO = Path(__file__).resolve().parent.parent


def door(name: str, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``python -m jax_namnmt.<name> ARGS`` from the repository root."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", f"jax_namnmt.{name}", *map(str, args)], cwd=REPO, env=env,
                          input=stdin if stdin is not None else "", capture_output=True, text=True, timeout=300)


def assert_user_error(proc: subprocess.CompletedProcess, *needles, debug: bool = False) -> str:
    """Exit 2, exactly one ``error:`` line holding every needle, a traceback only with --debug."""
    report = f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 2, report
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, report
    for needle in needles:
        assert str(needle) in errors[0], f"{needle!r} not in {errors[0]!r}"
    assert ("Traceback" in proc.stderr) == debug, report
    return errors[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_corpus) -> dict:
    """The tiny corpus, a work directory prepared on it, and a briefly trained run in that work directory."""
    root = tmp_path_factory.mktemp("cli")
    data = tiny_corpus
    config = load_config("tiny", [f"data.data_dir={data}", "train.steps=2"])
    workdir = root / "work"
    workflow.prepare(config, workdir, quiet=True)
    run = workflow.run_pretrain(config, workdir, workdir / "pretrain", quiet=True)
    return {"data": data, "workdir": workdir, "run": run, "config": config}


@pytest.fixture
def bad_data(tiny, tmp_path) -> Path:
    """A private copy of the tiny corpus, for a test to corrupt."""
    return Path(shutil.copytree(tiny["data"], tmp_path / "data"))


# ----------------------------------------------------------------------------- config


def test_config_field_typo(tmp_path):
    proc = door("train", "--config", "tiny", "--workdir", tmp_path, "--set", "train.stepz=3", "--quiet")
    line = assert_user_error(proc, "train.stepz")
    assert "steps" in line  # lists the fields that do exist


def test_config_wrong_type(tmp_path):
    proc = door("train", "--config", "tiny", "--workdir", tmp_path, "--set", "train.steps=abc", "--quiet")
    assert_user_error(proc, "train.steps", "integer", "'abc'")


def test_unknown_config_file(tmp_path):
    proc = door("train", "--config", "no_such_config", "--workdir", tmp_path, "--quiet")
    assert_user_error(proc, "no_such_config", "not found")


def test_debug_shows_traceback(tmp_path):
    proc = door("train", "--config", "tiny", "--workdir", tmp_path, "--set", "train.stepz=3", "--debug")
    assert_user_error(proc, "train.stepz", debug=True)


# ----------------------------------------------------------------------------- corpus


def test_mismatched_line_counts(tiny, bad_data, tmp_path):
    src, tgt = bad_data / "train.de-en.de", bad_data / "train.de-en.en"
    lines = tgt.read_text(encoding="utf-8").splitlines(keepends=True)
    tgt.write_text("".join(lines[:-1]), encoding="utf-8")
    proc = door("train", "--config", "tiny", "--workdir", tiny["workdir"], "--data", bad_data,
                "--out", tmp_path / "run", "--set", "train.steps=1", "--quiet")
    assert_user_error(proc, src, tgt, len(lines), len(lines) - 1)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_invalid_utf8_names_file_and_line(bad_data, tmp_path):
    path = bad_data / "valid.fr-en.fr"
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2][:4] + b"\xff" + lines[2][4:]
    path.write_bytes(b"\n".join(lines))
    proc = door("prepare", "--config", "tiny", "--workdir", tmp_path / "work", "--data", bad_data, "--quiet")
    assert_user_error(proc, f"{path}:3:", "UTF-8", "0xff")


def test_empty_line_fails_when_asked(bad_data, tmp_path):
    path = bad_data / "train.en-fr.en"
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[4] = "   "
    path.write_text("\n".join(lines), encoding="utf-8")
    proc = door("prepare", "--config", "tiny", "--workdir", tmp_path / "work", "--data", bad_data,
                "--set", "data.empty_lines=fail", "--quiet")
    assert_user_error(proc, f"{path}:5:", "empty line")


def test_missing_split_file(bad_data, tmp_path):
    missing = bad_data / "test.en-fr.fr"
    missing.unlink()
    proc = door("prepare", "--config", "tiny", "--workdir", tmp_path / "work", "--data", bad_data, "--quiet")
    assert_user_error(proc, missing, "'test'", "en-fr")


def test_pair_without_files(tiny, tmp_path):
    proc = door("prepare", "--config", "tiny", "--workdir", tmp_path / "work", "--data", tiny["data"],
                "--pairs", "de-en,cs-en", "--quiet")
    assert_user_error(proc, "cs-en", tiny["data"] / "train.cs-en.cs", tiny["data"] / "train.cs-en.en")


# ----------------------------------------------------------------------------- runs


def test_translate_unknown_language(tiny):
    # an unknown target, a source code the model does not know (it used to translate anyway), and
    # one language twice: three doors, run at the same time (each mostly starts Python and imports)
    directions = [("de", "xx"), ("xx", "en"), ("de", "de")]
    with ThreadPoolExecutor(len(directions)) as pool:
        target, source, twice = pool.map(lambda d: door("translate", "--checkpoint", tiny["run"], "--src", d[0],
                                                        "--tgt", d[1], "--quiet",
                                                        stdin="Zwei Hunde spielen im Schnee.\n"), directions)
    assert_user_error(target, "target language 'xx'", "de, en, fr", tiny["run"])
    assert target.stdout == ""
    assert_user_error(source, "source language 'xx'", "de, en, fr")
    assert_user_error(twice, "both 'de'")


def test_finetune_masks_that_do_not_fit(tiny, tmp_path):
    config = tiny["config"]
    pairs = list(config.data.pairs)
    sizes = module_sizes(config.model)
    masks = {name: np.ones((len(pairs), width // 2), bool) for name, width in sizes.items()}
    bad = tmp_path / "narrow_masks.npz"
    save_masks(bad, masks, pairs, {})
    first = next(iter(sizes))
    proc = door("finetune", "--from", tiny["run"], "--masks", bad, "--out", tmp_path / "ft", "--quiet")
    assert_user_error(proc, bad, first, str((len(pairs), sizes[first])))
    assert not (tmp_path / "ft" / "config.json").exists()  # nothing that looks like a run is left behind


def test_resume_with_another_model_shape_keeps_the_run(tiny, tmp_path):
    run = Path(shutil.copytree(tiny["run"], tmp_path / "run"))
    before = (run / "config.json").read_bytes()
    proc = door("train", "--config", "tiny", "--workdir", tiny["workdir"], "--data", tiny["data"], "--out", run,
                "--set", "model.ffn_dim=128", "--set", "train.steps=4", "--quiet")
    assert_user_error(proc, run / "config.json")
    assert (run / "config.json").read_bytes() == before  # the refused run still describes its checkpoints


def _broken_copy(run: Path, dest: Path, damage: str) -> Path:
    shutil.copytree(run, dest)
    if damage == "no_config":
        (dest / "config.json").unlink()
    elif damage == "bad_json":
        (dest / "config.json").write_text('{"name": "tiny",\n  "model": {oops}\n}\n', encoding="utf-8")
    elif damage == "no_checkpoints":
        shutil.rmtree(dest / "checkpoints")
    elif damage == "no_vocab":
        (dest / "spm.model").unlink()
    return dest


@pytest.mark.parametrize("damage, needles", [
    ("no_config", ["config.json"]),
    ("bad_json", ["config.json:2:", "invalid JSON"]),
    ("no_checkpoints", ["checkpoint"]),
    ("no_vocab", ["spm.model"]),
])
def test_translate_from_corrupted_run_dir(tiny, tmp_path, damage, needles):
    broken = _broken_copy(tiny["run"], tmp_path / "broken", damage)
    proc = door("translate", "--checkpoint", broken, "--src", "de", "--tgt", "en", "--quiet",
                stdin="Zwei Hunde spielen im Schnee.\n")
    assert_user_error(proc, broken, *needles)
    assert proc.stdout == ""


def test_compilation_cache_location():
    """The doors' XLA cache: our variable first ('off' disables), JAX's own variable respected,
    else the XDG cache directory."""
    import platform
    from pathlib import Path

    from jax_namnmt.cli import CACHE_ENV, compilation_cache_dir

    assert compilation_cache_dir({CACHE_ENV: "/x/y"}) == Path("/x/y")
    assert compilation_cache_dir({CACHE_ENV: "/x/y", "JAX_COMPILATION_CACHE_DIR": "/z"}) == Path("/x/y")
    for off in ("off", "0", "", " OFF "):
        assert compilation_cache_dir({CACHE_ENV: off}) is None
    assert compilation_cache_dir({"JAX_COMPILATION_CACHE_DIR": "/z"}) is None
    host = platform.node() or "localhost"  # one directory per machine
    assert compilation_cache_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/jax_namnmt/xla") / host
    assert compilation_cache_dir({}) == Path.home() / ".cache" / "jax_namnmt" / "xla" / host
