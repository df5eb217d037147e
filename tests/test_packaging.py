"""The project as users get it: the config files are package data, found by name or by
``configs/NAME.py`` from any directory; each door's usage line names it as it is run
(``python -m jax_namnmt.NAME``); ``evaluate`` scores a package trained on the embedded corpus
without a data directory."""

from __future__ import annotations

import importlib
import json
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
CONFIGS = ["demo", "multi30k_cpu", "multi30k_gpu", "multi30k_shipped", "multi30k_shipped_gpu", "paper_base",
           "reproduce_cpu", "tiny"]


def test_configs_are_package_data(tmp_path, monkeypatch):
    assert CONFIG_DIR == Path(jax_namnmt.__file__).resolve().parent / "configs"
    if (REPO / ".git").exists():  # a checkout: configs/ is the package's (a symlink committed in git)
        assert (REPO / "configs").resolve() == CONFIG_DIR
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

DOORS = ["allocate", "analyze", "evaluate", "export", "finetune", "importance", "pipeline", "prepare",
         "reproduce", "train", "translate"]


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
    assert scores["sentences"] == 5 * len(pairs)
    assert all(len(scores["hypotheses"][pair]) == 5 for pair in pairs)
    assert scores["avg"]["bleu"] > 25  # the shipped model on its test lines (about 50 on these 5)
    assert sorted(tmp_path.iterdir()) == [out]  # nothing left behind in the working directory


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
