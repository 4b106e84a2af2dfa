"""The closing line of scripts/gpu_check.sh: ``N passed, N failed`` (then ``, N skipped`` if any).

    python scripts/gpu_check_summary.py JUNIT_XML PYTEST_LOG PYTEST_EXIT_CODE

Counts come from pytest's junit XML; when there is none (pytest stopped at the time limit, or
refused to start), from the ``-v`` log's per-test lines. A run that stopped, crashed or selected
nothing counts as one more failure: it checked nothing, or not everything. Exit code: 1 when
anything failed, else 0. Standard library only (it runs before anything is installed).
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REASONS = {124: "stopped at the time limit", 137: "killed at the time limit",
           5: "no check selected", 4: "pytest refused the command line or a setting",
           2: "interrupted", 3: "pytest internal error"}


def counts_from_junit(path: Path) -> tuple[int, int, int]:
    """(passed, failed, skipped); errors (a fixture that broke) count as failures."""
    root = ET.parse(path).getroot()
    suites = root.findall("testsuite") if root.tag == "testsuites" else [root]
    n = {k: sum(int(s.get(k, 0)) for s in suites)
         for k in ("tests", "failures", "errors", "skipped")}
    failed = n["failures"] + n["errors"]
    return n["tests"] - failed - n["skipped"], failed, n["skipped"]


def counts_from_log(text: str) -> tuple[int, int, int]:
    """(passed, failed, skipped) from ``pytest -v`` lines such as ``tests/x.py::t[a] PASSED``."""
    def count(word: str) -> int:
        return len(re.findall(rf"^\S+::\S+ {word}\b", text, flags=re.M))

    return count("PASSED"), count("FAILED") + count("ERROR"), count("SKIPPED")


def summarise(junit: Path, log: Path, rc: int) -> tuple[str, int, str | None]:
    """The closing line, the failures counted, and why one failure was added for the run
    itself (None when it was not)."""
    try:
        counts, from_junit = counts_from_junit(junit), True
    except (OSError, ET.ParseError):  # none, or cut short while being written
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        counts, from_junit = counts_from_log(text), False
    passed, failed, skipped = counts
    why = None
    if rc != 0 and (failed == 0 or not from_junit):
        why = REASONS.get(rc, f"pytest exit code {rc}")
        failed += 1
    line = f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else "")
    return line, failed, why


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not argv[2].lstrip("-").isdigit():
        print("usage: gpu_check_summary.py JUNIT_XML PYTEST_LOG PYTEST_EXIT_CODE",
              file=sys.stderr)
        print("0 passed, 1 failed")
        return 1
    line, failed, why = summarise(Path(argv[0]), Path(argv[1]), int(argv[2]))
    if why:
        print(f"the run itself failed ({why}): counted as one failure", file=sys.stderr)
    print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
