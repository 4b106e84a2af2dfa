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
