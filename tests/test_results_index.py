"""results/index.json: every committed result is listed with how to remake it; the cheap ones'
commands name scripts and options that exist on main (scripts/remake_results.sh runs them)."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INDEX = json.loads((ROOT / "results" / "index.json").read_text())["entries"]


def test_every_committed_result_is_listed_and_every_listed_one_exists():
    import subprocess

    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "results"],
                             capture_output=True, text=True, check=False).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    top = {Path(p).parts[1] for p in tracked} - {"README.md", "index.json"}
    assert top == set(INDEX), (sorted(top - set(INDEX)), sorted(set(INDEX) - top))


@pytest.mark.parametrize("name", sorted(INDEX))
def test_each_entry_says_how_and_why(name):
    e = INDEX[name]
    assert set(e) == {"remake", "cost", "cheap", "as_committed", "why"}
    assert e["remake"] and e["cost"]
    assert e["as_committed"] or e["why"], f"{name}: not remakeable as committed, and no why"


@pytest.mark.parametrize("name", sorted(n for n, e in INDEX.items() if e["cheap"]))
def test_the_cheap_ones_run_a_script_of_main_with_options_it_has(name):
    cmd = INDEX[name]["remake"].split()
    assert cmd[0] == "python" and cmd[1].startswith(("benchmarks/", "scripts/")), cmd
    src = (ROOT / cmd[1]).read_text()
    for flag in (t for t in cmd[2:] if t.startswith("--")):
        assert re.search(rf'add_argument\(\s*"{re.escape(flag)}"', src), (name, flag)
    assert INDEX[name]["as_committed"]


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "models" / "README.md",
        ROOT / "profiles" / "README.md"]


def _links(text: str) -> list[str]:
    """The relative targets of markdown links (``[x](path#anchor)`` -> ``path``)."""
    return [m.group(1) for m in re.finditer(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
            if not m.group(1).startswith(("http://", "https://", "mailto:"))]


def test_every_link_in_the_readme_and_docs_reaches_a_file():
    """The numbers in README and docs link to the files that hold them: a moved or renamed
    results file must not leave a link to nothing."""
    broken = [f"{doc.relative_to(ROOT)}: {target}" for doc in DOCS if doc.exists()
              for target in _links(doc.read_text(encoding="utf-8"))
              if not (doc.parent / target).exists()]
    assert not broken, broken
    assert _links("[a](../results/x.json#k) [b](https://e.org) [c](docs/y.md)") == \
        ["../results/x.json", "docs/y.md"]
