"""Reporting: tables, plots and a self-contained HTML report of a comparison.

* :mod:`deltascope.report.tables` -- grouped and top-N tables; Markdown, HTML, CSV, Parquet.
* :mod:`deltascope.report.plots` -- ``cmp.plot.<name>()`` and :func:`compare_runs` (matplotlib;
  look and figure plumbing in :mod:`deltascope.report.style`).
* :mod:`deltascope.report.figures` -- the figures of a report, with captions; off-screen rendering.
* :mod:`deltascope.report.html` -- :func:`write_report` (one HTML file, images embedded),
  :func:`write_report_folder` (plots as PNG/SVG, tables, Markdown and HTML into a folder)
  and :func:`headline_findings`.

matplotlib is imported only when a figure is drawn, so importing this package is cheap.
"""

from __future__ import annotations

from .html import headline_findings, write_report, write_report_folder
from .plots import PlotAccessor, compare_runs

__all__ = ["write_report", "write_report_folder", "headline_findings", "compare_runs", "PlotAccessor"]
