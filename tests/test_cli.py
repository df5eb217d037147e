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


def run_together(calls: dict) -> dict:
    """The doors of ``calls`` (key -> (door, args) or (door, args, stdin)) run at the same time, a
    few at once: a door refusing bad input spends its seconds starting Python and importing, on
    one core, so the other core takes the next door. Their processes, by key."""
    with ThreadPoolExecutor(min(4, len(calls))) as pool:
        futures = {key: pool.submit(door, call[0], *call[1], stdin=call[2] if len(call) > 2 else None)
                   for key, call in calls.items()}
        return {key: future.result() for key, future in futures.items()}


# ----------------------------------------------------------------------------- config


@pytest.fixture(scope="module")
def config_errors(tmp_path_factory) -> dict:
    """The config tests' doors (each in its own work directory), run together."""
    tmp = tmp_path_factory.mktemp("config_errors")
    return run_together({
        "typo": ("train", ["--config", "tiny", "--workdir", tmp / "typo", "--set", "train.stepz=3", "--quiet"]),
        "wrong_type": ("train", ["--config", "tiny", "--workdir", tmp / "wrong_type", "--set", "train.steps=abc",
                                 "--quiet"]),
        "unknown": ("train", ["--config", "no_such_config", "--workdir", tmp / "unknown", "--quiet"]),
        "debug": ("train", ["--config", "tiny", "--workdir", tmp / "debug", "--set", "train.stepz=3", "--debug"]),
    })


def test_config_field_typo(config_errors):
    line = assert_user_error(config_errors["typo"], "train.stepz")
    assert "steps" in line  # lists the fields that do exist


def test_config_wrong_type(config_errors):
    assert_user_error(config_errors["wrong_type"], "train.steps", "integer", "'abc'")


def test_unknown_config_file(config_errors):
    assert_user_error(config_errors["unknown"], "no_such_config", "not found")


def test_debug_shows_traceback(config_errors):
    assert_user_error(config_errors["debug"], "train.stepz", debug=True)


# ----------------------------------------------------------------------------- corpus


@pytest.fixture(scope="module")
def corpus_errors(tiny, tmp_path_factory) -> dict:
    """Each corpus test's case (its own damaged copy of the tiny corpus, its own work directory),
    the doors run together: key -> (process, the case's paths and counts)."""
    tmp = tmp_path_factory.mktemp("corpus_errors")

    def bad_data(key: str) -> Path:
        """A private copy of the tiny corpus, for a case to corrupt."""
        return Path(shutil.copytree(tiny["data"], tmp / key / "data"))

    calls, facts = {}, {}

    data = bad_data("mismatched")  # a target file one line short
    src, tgt = data / "train.de-en.de", data / "train.de-en.en"
    lines = tgt.read_text(encoding="utf-8").splitlines(keepends=True)
    tgt.write_text("".join(lines[:-1]), encoding="utf-8")
    out = tmp / "mismatched" / "run"
    calls["mismatched"] = ("train", ["--config", "tiny", "--workdir", tiny["workdir"], "--data", data, "--out", out,
                                     "--set", "train.steps=1", "--quiet"])
    facts["mismatched"] = {"src": src, "tgt": tgt, "lines": len(lines), "out": out}

    data = bad_data("utf8")  # a byte that is not UTF-8 on line 3
    path = data / "valid.fr-en.fr"
    raw = path.read_bytes().split(b"\n")
    raw[2] = raw[2][:4] + b"\xff" + raw[2][4:]
    path.write_bytes(b"\n".join(raw))
    calls["utf8"] = ("prepare", ["--config", "tiny", "--workdir", tmp / "utf8" / "work", "--data", data, "--quiet"])
    facts["utf8"] = {"path": path}

    data = bad_data("empty")  # a blank line 5, refused when asked
    path = data / "train.en-fr.en"
    text = path.read_text(encoding="utf-8").split("\n")
    text[4] = "   "
    path.write_text("\n".join(text), encoding="utf-8")
    calls["empty"] = ("prepare", ["--config", "tiny", "--workdir", tmp / "empty" / "work", "--data", data,
                                  "--set", "data.empty_lines=fail", "--quiet"])
    facts["empty"] = {"path": path}

    data = bad_data("missing")  # no test file of en-fr's target side
    missing = data / "test.en-fr.fr"
    missing.unlink()
    calls["missing"] = ("prepare", ["--config", "tiny", "--workdir", tmp / "missing" / "work", "--data", data,
                                    "--quiet"])
    facts["missing"] = {"path": missing}

    calls["no_pair_files"] = ("prepare", ["--config", "tiny", "--workdir", tmp / "no_pair_files" / "work", "--data",
                                          tiny["data"], "--pairs", "de-en,cs-en", "--quiet"])
    facts["no_pair_files"] = {}
    procs = run_together(calls)
    return {key: (procs[key], facts[key]) for key in calls}


def test_mismatched_line_counts(corpus_errors):
    proc, case = corpus_errors["mismatched"]
    assert_user_error(proc, case["src"], case["tgt"], case["lines"], case["lines"] - 1)
    assert not (case["out"] / "checkpoints").exists()


def test_invalid_utf8_names_file_and_line(corpus_errors):
    proc, case = corpus_errors["utf8"]
    assert_user_error(proc, f"{case['path']}:3:", "UTF-8", "0xff")


def test_empty_line_fails_when_asked(corpus_errors):
    proc, case = corpus_errors["empty"]
    assert_user_error(proc, f"{case['path']}:5:", "empty line")


def test_missing_split_file(corpus_errors):
    proc, case = corpus_errors["missing"]
    assert_user_error(proc, case["path"], "'test'", "en-fr")


def test_pair_without_files(tiny, corpus_errors):
    proc, _ = corpus_errors["no_pair_files"]
    assert_user_error(proc, "cs-en", tiny["data"] / "train.cs-en.cs", tiny["data"] / "train.cs-en.en")


# ----------------------------------------------------------------------------- runs


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


DAMAGES = {
    "no_config": ["config.json"],
    "bad_json": ["config.json:2:", "invalid JSON"],
    "no_checkpoints": ["checkpoint"],
    "no_vocab": ["spm.model"],
}
SENTENCE = "Zwei Hunde spielen im Schnee.\n"


@pytest.fixture(scope="module")
def run_errors(tiny, tmp_path_factory) -> dict:
    """Each run test's case (masks that do not fit, a run copy resumed with another model shape,
    run directories with a part damaged, directions the model does not have), the doors run
    together: key -> (process, the case's paths)."""
    tmp = tmp_path_factory.mktemp("run_errors")
    config = tiny["config"]
    calls, facts = {}, {}

    pairs = list(config.data.pairs)  # masks half as wide as the model's projections
    sizes = module_sizes(config.model)
    bad = tmp / "narrow_masks.npz"
    save_masks(bad, {name: np.ones((len(pairs), width // 2), bool) for name, width in sizes.items()}, pairs, {})
    first = next(iter(sizes))
    calls["narrow_masks"] = ("finetune", ["--from", tiny["run"], "--masks", bad, "--out", tmp / "ft", "--quiet"])
    facts["narrow_masks"] = {"masks": bad, "first": first, "shape": str((len(pairs), sizes[first])), "out": tmp / "ft"}

    run = Path(shutil.copytree(tiny["run"], tmp / "run"))  # resumed with another FFN width
    calls["other_shape"] = ("train", ["--config", "tiny", "--workdir", tiny["workdir"], "--data", tiny["data"],
                                      "--out", run, "--set", "model.ffn_dim=128", "--set", "train.steps=4",
                                      "--quiet"])
    facts["other_shape"] = {"run": run, "config": (run / "config.json").read_bytes()}

    for damage in DAMAGES:
        broken = _broken_copy(tiny["run"], tmp / f"broken_{damage}", damage)
        calls[damage] = ("translate", ["--checkpoint", broken, "--src", "de", "--tgt", "en", "--quiet"], SENTENCE)
        facts[damage] = {"run": broken}

    # averaging more checkpoints than the run keeps
    calls["average_too_many"] = ("average", ["--checkpoint", tiny["run"], "--out", tmp / "averaged", "--last", "9"])
    facts["average_too_many"] = {"out": tmp / "averaged"}

    # an unknown target, a source code the model does not know (it used to translate anyway), one
    # language twice
    for src, tgt in (("de", "xx"), ("xx", "en"), ("de", "de")):
        calls[f"{src}-{tgt}"] = ("translate", ["--checkpoint", tiny["run"], "--src", src, "--tgt", tgt, "--quiet"],
                                 SENTENCE)
        facts[f"{src}-{tgt}"] = {}
    procs = run_together(calls)
    return {key: (procs[key], facts[key]) for key in calls}


def test_translate_unknown_language(tiny, run_errors):
    target, source, twice = (run_errors[key][0] for key in ("de-xx", "xx-en", "de-de"))
    assert_user_error(target, "target language 'xx'", "de, en, fr", tiny["run"])
    assert target.stdout == ""
    assert_user_error(source, "source language 'xx'", "de, en, fr")
    assert_user_error(twice, "both 'de'")


def test_finetune_masks_that_do_not_fit(run_errors):
    proc, case = run_errors["narrow_masks"]
    assert_user_error(proc, case["masks"], case["first"], case["shape"])
    assert not (case["out"] / "config.json").exists()  # nothing that looks like a run is left behind


def test_resume_with_another_model_shape_keeps_the_run(run_errors):
    proc, case = run_errors["other_shape"]
    assert_user_error(proc, case["run"] / "config.json")
    # the refused run still describes its checkpoints
    assert (case["run"] / "config.json").read_bytes() == case["config"]


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_translate_from_corrupted_run_dir(run_errors, damage):
    proc, case = run_errors[damage]
    assert_user_error(proc, case["run"], *DAMAGES[damage])
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


def test_average_refuses_more_checkpoints_than_the_run_keeps(tiny, run_errors):
    proc, case = run_errors["average_too_many"]
    assert_user_error(proc, "--last 9", str(tiny["run"]), "keep_checkpoints")
    assert not (case["out"] / "checkpoints").exists()
