"""``hwbench report``: profiles and training runs -> figures, tidy CSVs, report.md, report.html.

Reads exported files only (see ``inputs``). The measurement and training code never import
this package or a plotting library.
"""

from __future__ import annotations

from hwbench.report.build import ReportResult, build_report

__all__ = ["ReportResult", "build_report"]
