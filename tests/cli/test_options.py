"""The CLI package: shared options, choice lists that match the library, --help without torch."""

import subprocess
import sys

import click

from hwbench.cli import cli
from hwbench.cli.options import (
    CHECKER_NAME,
    DEFAULT_RUNTIME_NAME,
    EXECUTION_NAMES,
    GRAPH_RUNTIME_NAMES,
    KNN_PROTOCOL_NAMES,
    RUNTIME_NAMES,
    VIEW_NAMES,
)


def _params(name):
    return {cmd: p for cmd, c in cli.commands.items() for p in c.params if p.name == name}


def test_the_spelled_out_choice_lists_are_the_librarys():
    from hwbench.data import VIEWS
    from hwbench.engine.graphs import DEFAULT_EXECUTION, EXECUTIONS
    from hwbench.engine.runtimes import CHECKER, DEFAULT_RUNTIME, RUNTIMES, is_graph
    from hwbench.ssl.knn import KNN_PROTOCOLS

    assert RUNTIME_NAMES == RUNTIMES and VIEW_NAMES == VIEWS
    assert (DEFAULT_RUNTIME_NAME, CHECKER_NAME) == (DEFAULT_RUNTIME, CHECKER)
    assert GRAPH_RUNTIME_NAMES == tuple(n for n in RUNTIMES if is_graph(n))
    assert EXECUTION_NAMES == EXECUTIONS and EXECUTION_NAMES[0] == DEFAULT_EXECUTION
    assert KNN_PROTOCOL_NAMES == KNN_PROTOCOLS


def test_every_runtime_option_is_the_shared_one():
    found = _params("runtime")
    assert set(found) == {"speedup", "profile", "predict", "pick", "train", "verify", "trim",
                          "compare"}
    assert all(tuple(p.type.choices) == RUNTIME_NAMES for p in found.values())
    # a profile's own runtime where the command reads a profile, eager where it builds one
    assert {c for c, p in found.items() if p.default is None} == {"predict", "pick"}


def test_every_command_is_registered_and_its_help_imports_no_torch():
    names = sorted(cli.commands)
    assert names == ["compare", "env", "eval", "export", "flops", "pick", "predict", "profile",
                     "report", "speedup", "train", "trim", "verify"]
    code = ("import sys; from click.testing import CliRunner; from hwbench.cli import cli; "
            f"codes = [CliRunner().invoke(cli, [c, '--help']).exit_code for c in {names!r}]; "
            "assert codes == [0] * len(codes), codes; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert isinstance(cli, click.Group)
