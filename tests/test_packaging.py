"""The project as users get it: each door's usage line names it as it is run
(``python -m jax_namnmt.NAME``)."""

from __future__ import annotations

import importlib
import sys
from types import SimpleNamespace

import pytest

from jax_namnmt import cli

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
