"""Structure checks over the package's source (issue 25): what holds today is guarded here."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hwbench"
MAX_FUNCTION_LINES = 60


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(PACKAGE.parent), node


def test_no_function_is_longer_than_60_lines():
    long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, node in _functions()
            if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def test_the_check_sees_every_module_and_would_catch_a_long_function(tmp_path):
    names = {str(p) for p, _ in _functions()}
    assert "hwbench/cli/training.py" in names and "hwbench/engine/compact.py" in names
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    node = ast.parse(f"def f():\n{body}\n").body[0]
    assert node.end_lineno - node.lineno + 1 == MAX_FUNCTION_LINES + 1


RUNTIME_HOME = ("hwbench/engine/runtimes/", "hwbench/cli/options.py")


def _runtime_literals(source: str, names) -> list[int]:
    """Lines of ``source`` with a string constant that is exactly one of ``names``."""
    return [node.lineno for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and node.value in names]


def test_runtime_names_live_in_the_registry_and_the_clis_choice_list():
    from hwbench.engine.graphs import DEFAULT_EXECUTION
    from hwbench.engine.runtimes import RUNTIMES

    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE.parent))
        if rel.startswith(RUNTIME_HOME):
            continue
        lines = _runtime_literals(path.read_text(encoding="utf-8"), set(RUNTIMES))
        if rel == "hwbench/engine/graphs.py":  # the execution of the same name, defined once
            assert DEFAULT_EXECUTION in RUNTIMES and len(lines) == 1
            continue
        found += [f"{rel}:{n}" for n in lines]
    assert not found, found


def test_the_runtime_name_check_would_catch_a_comparison_and_a_default():
    src = 'def f(runtime="openvino"):\n    return runtime == "eager"\n'
    assert _runtime_literals(src, {"eager", "openvino"}) == [1, 2]
    assert _runtime_literals('x = "eager execution"\n', {"eager"}) == []


MAX_MODULE_LINES = 600


def test_no_module_is_longer_than_600_lines():
    long = [f"{p.relative_to(PACKAGE.parent)} ({n} lines)" for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert not long, long
