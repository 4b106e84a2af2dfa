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


STAGES = ("pattern", "engine", "measure", "profile", "pick", "train", "deploy", "report")
SHARED = ("nets", "ssl", "data", "cli")
SHARED_MODULES = ("__init__", "__main__", "errors", "io", "units", "provenance")


def test_the_top_level_reads_as_the_pipeline():
    """One sub-package per stage (pattern -> engine -> measure -> profile -> pick -> train ->
    deploy -> report), the shared ones beside them, and four small modules every stage uses."""
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert packages == set(STAGES) | set(SHARED)
    assert modules == set(SHARED_MODULES)


def _module_imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules ``path`` imports, anywhere in it (``from a.b import c`` counts as
    ``a.b.c`` when that is a module, else ``a.b``)."""
    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hwbench"):
            found |= {resolve(f"{node.module}.{a.name}") for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {resolve(a.name) for a in node.names if a.name.startswith("hwbench")}
    return found - {""}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (iterative Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _module_graph() -> dict[str, set[str]]:
    paths = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return {m: _module_imports(p, set(paths)) - {m} for m, p in paths.items()}


def test_no_import_cycle_between_modules_even_through_imports_inside_functions():
    graph = _module_graph()
    assert "hwbench.pick.t_d" in graph["hwbench.pick.target"]  # the graph sees real imports
    assert not _cycles(graph), _cycles(graph)


def test_the_cycle_check_would_catch_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _imports_inside_functions(source: str) -> list[tuple[int, bool]]:
    """(line, has a reason) of every import inside a function: the reason is a comment on it."""
    lines = source.split("\n")
    out = []
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out += [(n.lineno, "#" in "".join(lines[n.lineno - 1:n.end_lineno]))
                    for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return out


def test_imports_inside_functions_are_in_the_cli_or_say_why():
    """The CLI imports inside its commands so that ``--help`` loads no torch; anywhere else an
    import inside a function is an optional extra, a slow import few runs need, or a module that
    must stay light, and says so on its line."""
    bare = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE.parent))
        if not rel.startswith("hwbench/cli/"):
            bare += [f"{rel}:{n}" for n, why in
                     _imports_inside_functions(path.read_text(encoding="utf-8")) if not why]
    assert not bare, bare


def test_the_import_check_would_catch_a_bare_one():
    src = "def f():\n    import json\n    import onnx  # the optional extra\n"
    assert _imports_inside_functions(src) == [(2, False), (3, True)]


# What every command needs is resolved once at the edge (issue 25): the deployment checked
# (``deploy_on``), the target parsed, the profile located (``hwbench.pick.goal``). Each call
# below may be made only where it is listed.
RESOLVED_AT_THE_EDGE = {
    "check_runtime": ("hwbench/engine/runtimes/deployment.py",),
    "LatencyTarget.parse": ("hwbench/pick/goal.py",),
    "resolve_profile": ("hwbench/pick/goal.py",),
    "measuring_profile": ("hwbench/pick/goal.py",),
    "parse_goals": ("hwbench/cli/",),
    "locate": ("hwbench/cli/", "hwbench/pick/goal.py"),
    "measuring_goal": ("hwbench/cli/",),
    "trim_goal": ("hwbench/cli/",),
    "on_disk": ("hwbench/cli/",),
    # the CLI, the goal resolver, and the commands that check their own options once
    "deploy_on": ("hwbench/cli/", "hwbench/pick/goal.py", "hwbench/engine/runtimes/deployment.py",
                  "hwbench/deploy/export.py"),
    "deploy_engine_on": ("hwbench/profile/build.py", "hwbench/profile/speedup.py"),
}


def _calls(source: str) -> list[tuple[str, int]]:
    """(name, line) of every call: ``f(...)`` as ``f``, ``A.f(...)`` as ``A.f``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                out.append((f.id, node.lineno))
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                out.append((f"{f.value.id}.{f.attr}", node.lineno))
    return out


def test_the_deployment_target_and_profile_are_resolved_only_at_the_edge():
    misplaced, seen = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE.parent))
        for name, line in _calls(path.read_text(encoding="utf-8")):
            if name in RESOLVED_AT_THE_EDGE:
                seen.add(name)
                if not rel.startswith(RESOLVED_AT_THE_EDGE[name]):
                    misplaced.append(f"{rel}:{line} {name}")
    assert seen == set(RESOLVED_AT_THE_EDGE)  # every rule is about calls that exist
    assert not misplaced, misplaced


def test_the_edge_check_would_catch_a_target_parsed_below_it():
    src = "def f(t):\n    return LatencyTarget.parse(t), check_runtime('x'), g(t)\n"
    assert _calls(src) == [("LatencyTarget.parse", 2), ("check_runtime", 2), ("g", 2)]


KIND_HOME = "hwbench/nets/gate.py"  # GateKind, KINDS: the gate-kind registry
# The same words, not as gate kinds: the engine's executor policy for nested blocks
# (engine.kinds.BY_WIDTH), a block's width field, the key trim's records name a channel by.
NOT_A_KIND = {("hwbench/engine/kinds.py", "width"), ("hwbench/nets/geometry.py", "width"),
              ("hwbench/deploy/moves.py", "channel")}


def _kind_literals(source: str, kinds) -> list[tuple[int, str]]:
    """(line, kind) of every string constant that is a gate kind's name or a gate text of it."""
    return [(node.lineno, k) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            for k in kinds if node.value == k or node.value.startswith(f"{k}:")]


def test_gate_kind_names_live_in_the_gate_kind_registry_and_the_cli():
    """Code asks the kind's strategy (``nets.gate.strategy``) instead of comparing kind names,
    so a third kind is one entry in ``KINDS`` (and, for a new shape of decision, one part per
    stage), not a search through the package."""
    from hwbench.nets.gate import GATE_KINDS

    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE.parent))
        if rel == KIND_HOME or rel.startswith("hwbench/cli/"):
            continue
        found += [f"{rel}:{line} {kind!r}" for line, kind in
                  _kind_literals(path.read_text(encoding="utf-8"), GATE_KINDS)
                  if (rel, kind) not in NOT_A_KIND]
    assert not found, found


def test_the_kind_check_would_catch_a_comparison_and_a_gate_text():
    src = 'def f(spec, gate="width:16"):\n    return spec.kind == "channel"\n'
    assert _kind_literals(src, ("channel", "width")) == [(1, "width"), (2, "channel")]


# What a decision keeps is read where a kind's strategy is chosen (the registry), and a
# layer's histogram where the pattern's strategy lives; everywhere else asks a strategy.
KIND_SWITCHES = {"nested": {KIND_HOME}, "keeps": {KIND_HOME},
                 "width_hist": {"hwbench/pattern/layer.py"}}


def _kind_switches(source: str) -> list[tuple[int, str]]:
    """(line, attribute) of every branch on a kind: ``if x.nested`` (any read of ``nested`` or
    ``keeps``), or ``x.width_hist is None`` / ``is not None`` (a kind told by its data)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in ("nested", "keeps"):
            out.append((node.lineno, node.attr))
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute) and \
                node.left.attr == "width_hist" and isinstance(node.ops[0], (ast.Is, ast.IsNot)):
            out.append((node.lineno, "width_hist"))
    return out


def test_gate_kinds_are_strategies_chosen_once_not_branches():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE.parent))
        found += [f"{rel}:{line} .{attr}" for line, attr in
                  _kind_switches(path.read_text(encoding="utf-8"))
                  if rel not in KIND_SWITCHES[attr]]
    assert not found, found


def test_the_kind_switch_check_would_catch_a_branch():
    src = "def f(spec, lp):\n    if spec.nested:\n        return lp.width_hist is not None\n"
    assert _kind_switches(src) == [(2, "nested"), (3, "width_hist")]


def test_every_stage_has_a_part_for_every_registered_kind():
    from hwbench.deploy.moves import MOVES
    from hwbench.deploy.network import BIAS
    from hwbench.engine.kinds import ENGINE
    from hwbench.nets.gate import KINDS
    from hwbench.pattern.layer import PATTERN
    from hwbench.profile.predictor import LATENCY
    from hwbench.train.budget import BUDGET

    shapes = {k.keeps for k in KINDS.values()}
    tables = {"engine": ENGINE, "pattern": PATTERN, "predictor": LATENCY, "budget": BUDGET,
              "trim": MOVES, "deployed gate": BIAS}
    missing = {stage: shapes - set(t) for stage, t in tables.items() if shapes - set(t)}
    assert not missing, missing
