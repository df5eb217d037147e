"""The project as users get it: the config files are package data, found by name or by
``configs/NAME.py`` from any directory; each door's usage line names it as it is run
(``python -m jax_namnmt.NAME``); ``evaluate`` scores a package trained on the embedded corpus
without a data directory; and the wheel, installed (not editable) into a fresh environment, runs
``translate``, ``evaluate`` and ``pipeline`` from an empty directory."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import site
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import pytest

import jax_namnmt
from jax_namnmt import cli, evaluate, packaged
from jax_namnmt.config import CONFIG_DIR, Config, config_path, load_config
from jax_namnmt.errors import ConfigError

SHIPPED = packaged.shipped_model_dir()
REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "__init__")


def test_configs_are_package_data(tmp_path, monkeypatch):
    assert CONFIG_DIR == Path(jax_namnmt.__file__).resolve().parent / "configs"
    if (REPO / ".git").exists():  # a checkout: configs/ is the package's (a symlink committed in git)
        assert (REPO / "configs").resolve() == CONFIG_DIR
    assert {"demo", "multi30k_cpu", "multi30k_shipped", "reproduce_cpu", "tiny"} <= set(CONFIGS)
    monkeypatch.chdir(tmp_path)  # nowhere near a checkout
    for name in CONFIGS:
        for spelling in (name, f"{name}.py", f"configs/{name}.py"):
            assert config_path(spelling) == CONFIG_DIR / f"{name}.py"
        assert isinstance(load_config(name), Config)
    assert load_config().name == "demo"
    (tmp_path / "configs").mkdir()  # a path that exists wins over the package's file of that name
    (tmp_path / "configs" / "tiny.py").write_text((CONFIG_DIR / "demo.py").read_text())
    assert load_config("configs/tiny.py").name == "demo" and load_config("tiny").name == "tiny"
    for missing in ("no_such_config", "other/tiny.py", str(tmp_path / "tiny.py")):
        with pytest.raises(ConfigError, match="not found"):
            config_path(missing)


DOORS = ["allocate", "analyze", "average", "evaluate", "export", "finetune", "importance", "pipeline", "prepare",
         "reproduce", "score", "train", "translate"]


@pytest.mark.parametrize("door", DOORS)
def test_help_names_the_door_as_python_m(door, monkeypatch, capsys):
    module = importlib.import_module(f"jax_namnmt.{door}")
    monkeypatch.setattr(sys, "argv", [f"{door}.py", "--help"])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m jax_namnmt.{door} "), out[:200]
    assert f"{door}.py" not in out


def test_prog_under_python_m_and_as_a_script():
    # python -m jax_namnmt.translate: the door's __name__ is __main__, its __spec__ names the module
    code = compile("p = cli.parser('x', config=False)", "translate.py", "exec")
    as_module = {"cli": cli, "__name__": "__main__", "__spec__": SimpleNamespace(name="jax_namnmt.translate")}
    exec(code, as_module)
    assert as_module["p"].prog == "python -m jax_namnmt.translate"
    # python jax_namnmt/translate.py: no spec, argparse's default (the file name) stays
    as_script = {"cli": cli, "__name__": "__main__", "__spec__": None}
    exec(code, as_script)
    assert as_script["p"].prog == sys.argv[0].rsplit("/", 1)[-1]
    assert cli.parser("x", config=False, prog="mine").prog == "mine"


def test_evaluate_defaults_to_the_embedded_corpus(tmp_path, monkeypatch, capsys):
    """``evaluate --checkpoint jax_namnmt/resources/model``: no data/ beside the package, config
    data.data_dir empty: the embedded Multi30k's test split, built in a temporary directory."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "scores.json"
    monkeypatch.setattr(sys, "argv", ["evaluate", "--checkpoint", str(SHIPPED), "--max-lines", "5", "--quiet",
                                      "--out", str(out)])
    assert evaluate.main() == 0
    captured = capsys.readouterr()
    assert "embedded Multi30k" in captured.err and "on test (5 lines per pair)" in captured.out
    scores = json.loads(out.read_text())
    pairs = ["de-en", "en-de", "fr-en", "en-fr", "cs-en", "en-cs", "de-fr", "fr-de"]
    # the trained pairs and, by default, the zero-shot directions between their languages
    assert scores["zero_shot"] == ["de-cs", "fr-cs", "cs-de", "cs-fr"]
    assert scores["sentences"] == 5 * (len(pairs) + 4)
    assert all(len(scores["hypotheses"][pair]) == 5 for pair in pairs)
    assert scores["avg"]["bleu"] > 25  # the shipped model on its test lines (about 50 on these 5)
    assert sorted(tmp_path.iterdir()) == [out]  # nothing left behind in the working directory


def test_evaluate_with_bfloat16_weights(tmp_path, monkeypatch, capsys):
    """``evaluate --weights bfloat16``: the shipped model decodes with bfloat16 matrices (the
    setting recorded in the scores) and still scores like itself on its test lines."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "scores.json"
    monkeypatch.setattr(sys, "argv", ["evaluate", "--checkpoint", str(SHIPPED), "--max-lines", "5", "--quiet",
                                      "--zero-shot", "none", "--weights", "bfloat16", "--out", str(out)])
    assert evaluate.main() == 0
    scores = json.loads(out.read_text())
    assert scores["weights"] == "bfloat16" and scores["sentences"] == 5 * 8
    assert scores["avg"]["bleu"] > 25


def test_evaluate_data_directory_choice(tmp_path):
    def run(data_dir=""):
        return SimpleNamespace(config=SimpleNamespace(data=SimpleNamespace(data_dir=data_dir)),
                               pairs=["de-en", "en-fr"])

    checkpoint = tmp_path / "w" / "pretrain"
    checkpoint.mkdir(parents=True)
    with ExitStack() as stack:
        choose = lambda run, workdir=None, data=None, split="test": evaluate.data_dir(  # noqa: E731
            run, checkpoint, workdir, data, split, stack)
        assert choose(run(), data="elsewhere") == Path("elsewhere")
        assert choose(run("/corpus")) == Path("/corpus")  # the corpus the run was trained on
        assert choose(run(), workdir="other") == Path("other") / "data"  # as asked, even if absent
        built = choose(run(), split="valid")  # nothing beside the run: the embedded corpus
        assert sorted(p.name for p in built.iterdir()) == [
            "valid.de-en.de", "valid.de-en.en", "valid.en-fr.en", "valid.en-fr.fr"]
        with pytest.raises(ConfigError, match="not a split of the embedded Multi30k"):
            choose(run(), split="dev")
        (checkpoint.parent / "data").mkdir()
        assert choose(run()) == checkpoint.parent / "data"  # the run's work directory
    assert not built.exists()  # the temporary corpus goes with the stack


# ----------------------------------------------------------------------------- the wheel


def _run(cmd, cwd, env, stdin=None, timeout=1800):  # a hang guard: ~2 minutes in all on 2 idle cores
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def _build_wheel(tmp: Path, env: dict) -> Path:
    """The wheel of a copy of the sources (building in the checkout would leave build/ there):
    pyproject.toml, README.md, requirements.txt and the package, as ``pip install .`` sees them.
    Without build isolation when this interpreter can build it (offline), else with it."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "jax_namnmt", src / "jax_namnmt", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp / "wheels"
    base = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", out, src]
    proc = subprocess.run([str(c) for c in base[:4] + ["--no-build-isolation"] + base[4:]], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:  # e.g. setuptools < 70.1 without the wheel package: build in isolation
        _run(base, tmp, env)
    (wheel,) = out.glob("jax_namnmt-*.whl")
    return wheel


def _venv_with_our_dependencies(tmp: Path, env: dict) -> Path:
    """A fresh venv that sees this interpreter's packages (``--system-site-packages``, and a .pth
    naming this interpreter's site-packages, which ``--system-site-packages`` does not reach when
    this interpreter is itself a venv) but not the checkout: a plain path in a .pth is not a site
    directory, so the editable install's finder in it stays off."""
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], tmp, env)
    python = venv / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp,
                        env).stdout.strip())
    ours = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (purelib / "_test_dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    return venv


@pytest.mark.slow
def test_the_wheel_installs_and_runs_from_any_directory(tmp_path):
    """``pip install .`` (not editable) into a fresh environment, then the doors from an empty
    directory: the package brings its default config, the shipped model and the embedded corpus."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    wheel = _build_wheel(tmp_path, env)
    venv = _venv_with_our_dependencies(tmp_path, env)
    python = venv / "bin" / "python"
    # pip of this interpreter installs into the new venv (--python), the dependencies are already there
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel],
         tmp_path, env)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    where = _run([python, "-c", "import jax_namnmt, jax_namnmt.config as c; print(jax_namnmt.__file__); "
                  "print(c.CONFIG_DIR); print(c.load_config().name)"], empty, env).stdout.split()
    assert Path(where[0]).resolve().is_relative_to(venv.resolve()), where  # the wheel's, not the checkout's
    assert Path(where[1]).resolve().is_relative_to(venv.resolve()) and where[2] == "demo"
    package = Path(where[0]).parent

    usage = _run([python, "-m", "jax_namnmt.translate", "--help"], empty, env).stdout
    assert usage.startswith("usage: python -m jax_namnmt.translate ")
    out = _run([python, "-m", "jax_namnmt.translate", "--src", "de", "--tgt", "en"], empty, env,
               stdin="Zwei Hunde spielen im Schnee.\n").stdout
    assert "Two dogs" in out, out

    scores = empty / "scores.json"
    _run([python, "-m", "jax_namnmt.evaluate", "--checkpoint", package / "resources" / "model", "--max-lines", "5",
          "--quiet", "--zero-shot", "none", "--out", scores], empty, env)
    assert json.loads(scores.read_text())["sentences"] == 40

    work = empty / "W"  # from the shipped model with its packaged config, every phase small (batches of
    # 1024 target tokens, not the config's 4096: a step of the shipped model takes seconds on 2 cores)
    _run([python, "-m", "jax_namnmt.pipeline", "--workdir", work, "--set", "finetune.steps=2",
          "--set", "decode.test_max_lines=3", "--set", "method.importance_max_lines=5",
          "--set", "data.train_max_lines=100", "--set", "train.valid_max_lines=10",
          "--set", "train.tokens_per_batch=1024", "--quiet"], empty, env)
    results = json.loads((work / "results.json").read_text())
    assert set(results["systems"]) == {"multilingual", "method_te"}
    assert all("avg" in row for row in results["systems"].values())
    assert Path(results["start"]).resolve() == (package / "resources" / "model").resolve()
    assert sorted(p.name for p in empty.iterdir()) == ["W", "scores.json"]
