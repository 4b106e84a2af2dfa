"""CI's guard on what the main command delivers: ``python scripts/check_final.py RUN_DIR``.

Exit 1 with one line when RUN_DIR/final.json is missing, says DEGRADED, or its gated kNN top-1
is more than 5 points under the dense stream's (``hwbench.deploy.final.guard``); else print the
verdict line and exit 0 (the latency verdict is printed, not judged: machines are noisy)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hwbench.deploy.final import guard, line  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/check_final.py RUN_DIR", file=sys.stderr)
        return 2
    path = Path(argv[0]) / "final.json"
    try:
        final = json.loads(path.read_text())
    except (OSError, ValueError):
        final = None
    why = guard(final)
    if why:
        print(f"check_final: FAIL: {path}: {why}", file=sys.stderr)
        return 1
    print(f"check_final: ok: {final['network']}: {line(final)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
