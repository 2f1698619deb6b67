"""Start-up: which modules a command imports, each in a fresh process (speed is benchmarks/startup.py's).

`cnnlab --help`, `--version` and every `COMMAND --help` build the whole parser and must not import
torch, NumPy, rich or matplotlib; the NumPy teaching commands must not import torch. `import cnnlab`
is lazy, and its functions keep their names even where a submodule has the same name.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys

import pytest

import cnnlab
from cnnlab.cli.main import build_parser

HEAVY = ("torch", "numpy", "rich", "matplotlib", "PIL")
NOT_TORCH = ("torch", "rich", "matplotlib")  # the teaching commands compute with NumPy

# Run argv through cnnlab's main (or `python -m cnnlab`), then print which heavy modules got imported.
PROBE = """
import json, runpy, sys
argv, modules = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.argv = ["cnnlab", *argv]
try:
    if {as_module}:
        runpy.run_module("cnnlab", run_name="__main__")
    else:
        from cnnlab.cli.main import main
        main(argv)
except SystemExit:
    pass
sys.stdout.flush()
print("\\nIMPORTED " + json.dumps([m for m in modules if m in sys.modules]))
"""


def imported(argv: list[str], modules: tuple[str, ...], as_module: bool = False) -> list[str]:
    """Which of `modules` a fresh process has imported after running `cnnlab ARGV`."""
    code = PROBE.format(as_module=as_module)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(argv), json.dumps(modules)], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    return json.loads(out.rsplit("IMPORTED ", 1)[1])


def subcommands() -> list[str]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices)


@pytest.mark.parametrize("argv", [["--version"], ["--help"]])
@pytest.mark.parametrize("as_module", [False, True], ids=["main", "python -m cnnlab"])
def test_version_and_help_import_nothing_heavy(argv: list[str], as_module: bool) -> None:
    assert imported(argv, HEAVY, as_module) == []


def test_every_command_help_imports_nothing_heavy() -> None:
    commands = subcommands()
    assert {"train", "summary", "arith", "conv", "sample-images"} <= set(commands)
    for command in commands:
        assert imported([command, "--help"], HEAVY) == [], command


@pytest.mark.parametrize("argv", [
    ["arith", "size", "28", "--kernel", "3", "--padding", "1"],
    ["arith", "padding", "--kernel", "7"],
    ["arith", "pool", "--factor", "4", "--size", "130"],
    ["conv", "--input", "1 2 3; 4 5 6; 7 8 9", "--kernel", "1 0; 0 -1", "--grad", "ones"],
    ["conv", "--input", "1 2 3 4; 5 6 7 8; 9 10 11 12; 13 14 15 16", "--chain", "maxpool(2); pad(1); relu"],
    ["pool", "--input", "1 2; 3 4", "--avg"],
])
def test_teaching_commands_do_not_import_torch(argv: list[str]) -> None:
    assert imported(argv, NOT_TORCH) == []


def run_python(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_import_cnnlab_is_lazy() -> None:
    run_python("import sys, cnnlab; cnnlab.UsageError; cnnlab.__version__; "
               "assert not {'torch', 'numpy', 'rich'} & set(sys.modules), sorted(sys.modules)")


def clashing_names() -> list[str]:
    """The public names that are also submodules: cnnlab.export is the function, not export.py."""
    return [name for name in cnnlab.__all__ if importlib.util.find_spec(f"cnnlab.{name}") is not None]


def test_clashes_are_the_known_ones() -> None:
    assert set(clashing_names()) == {"export"}


def keeps_its_name(name: str) -> str:
    """Code asserting that cnnlab.NAME is the function and the module stays reachable, by every way of importing."""
    return (f"mod = importlib.import_module('cnnlab.{name}'); f = cnnlab.{name}; "
            f"assert callable(f) and f is mod.{name} and f is not mod, f; "
            f"import cnnlab.{name}; from cnnlab.{name} import {name} as g; assert cnnlab.{name} is f is g; ")


@pytest.mark.parametrize("name", clashing_names())
def test_a_function_keeps_its_name_after_its_module_is_imported(name: str) -> None:
    run_python(f"import importlib, cnnlab; {keeps_its_name(name)}")  # in a fresh process, the module first


def test_functions_keep_their_names_used_first_or_imported_in_passing() -> None:
    names = clashing_names()
    run_python("import importlib, cnnlab; " + "".join(f"cnnlab.{n}; " for n in names)
               + "".join(map(keeps_its_name, names)))
    run_python("import importlib, cnnlab, cnnlab.cli.main, cnnlab.training.compare, cnnlab.report.page; "  # they import the others
               + "".join(map(keeps_its_name, names)))


def test_dir_and_unknown_names() -> None:
    run_python("import cnnlab; assert set(cnnlab.__all__) <= set(dir(cnnlab)), dir(cnnlab)")  # none resolved yet
    for name in cnnlab.__all__:
        assert getattr(cnnlab, name) is not None
    assert not isinstance(cnnlab.train, type(cnnlab))
    with pytest.raises(AttributeError, match="no_such_name"):
        cnnlab.no_such_name  # noqa: B018
    assert not hasattr(cnnlab, "sections_typo")
