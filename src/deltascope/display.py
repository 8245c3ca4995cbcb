"""Rich display of a Comparison in Jupyter (``_repr_html_``): a compact summary, the
block table and the mismatch counts. Numbers are rounded here, on display only."""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from pandas import NA as _NA

if TYPE_CHECKING:
    from .comparison import Comparison

__all__ = ["comparison_html", "fmt_number", "is_fraction_column", "text_table", "SHOW_COLUMNS"]


def fmt_number(v: Any, col: str = "") -> str:
    """Round for display: fractions as percentages, small numbers in scientific notation."""
    if v is None:
        return ""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return f"{int(v):,}"
    if v is _NA:
        return "–"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "–"
    if math.isinf(f):
        return "∞" if f > 0 else "−∞"
    if col == "cosine" and f != 1:  # near 1: show where it departs from 1
        return f"{f:.8f}" if f > 0.9999 else f"{f:.6f}"
    if col.endswith("_enrichment") or col.endswith("_ratio_random"):
        return f"{f:.2f}×"  # observed / expected: 1.00× is chance
    if is_fraction_column(col):
        if f == 0:
            return "0%"
        if abs(f) < 1e-4:  # keep tiny non-zero fractions visible instead of "0.00%"
            return f"{f * 100:.2g}%"
        return f"{f:.2%}"
    if f != 0 and (abs(f) < 1e-3 or abs(f) >= 1e6):
        return f"{f:.3e}"
    return f"{f:.4g}"


_FRACTION_PREFIXES = ("changed_", "proj", "top", "change_rate", "sv_energy_top", "null_change_rate")
_FRACTION_SUFFIXES = ("_share", "_frac", "_expected", "_density", "_overlap", "_coverage")


def is_fraction_column(col: str) -> bool:
    """Whether a column holds a fraction in [0, 1] that displays as a percentage
    (``changed_*``, ``*_share``, ``*_frac``/``*_frac_<tol>``, ``proj*`` projections and
    their expectations, ``top*``/``sv_energy_top*`` energy concentration, mask
    densities/overlaps/coverages, change rates)."""
    if col.endswith("_enrichment"):
        return False
    return col.startswith(_FRACTION_PREFIXES) or col.endswith(_FRACTION_SUFFIXES) or "_frac_" in col


SHOW_COLUMNS = [
    "n_tensors",
    "numel",
    "changed_exact",
    "changed_atol_1e-05",
    "changed_rel_0.001",
    "ulp1_share",
    "rel_update",
    "energy_share",
    "cosine",
]


def comparison_html(cmp: Comparison) -> str:
    """The compact rich summary Jupyter shows for a Comparison: sources, the headline
    findings in words, the by-block table, problems, and where to look next."""
    from .report.html import headline_findings
    from .report.tables import display_columns, run_table, to_html

    meta = cmp.metadata
    base = html.escape(str(meta.get("base", {}).get("spec")))
    tuned = html.escape(str(meta.get("tuned", {}).get("spec")))
    parts = [f"<div class='deltascope'><b>deltascope comparison</b>: <code>{base}</code> → <code>{tuned}</code>"]
    findings = headline_findings(cmp)
    if findings:
        parts.append("<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in findings[:8]) + "</ul>")
    if len(cmp.ok):
        blocks = cmp.by("block")
        parts.append(
            "<details open><summary>by block</summary>"
            + to_html(blocks, display_columns(blocks), css_class=None)
            + "</details>"
        )
    errors = cmp.errors
    if len(errors):
        parts.append(f"<p><b>{len(errors)} tensor(s) failed</b> (see <code>.errors</code>).</p>")
    if len(cmp.mismatches):
        counts = cmp.mismatches["kind"].value_counts()
        items = ", ".join(f"{html.escape(str(k))}: {v}" for k, v in counts.items())
        parts.append(f"<p>Mismatches: {items} (see <code>.mismatches</code>).</p>")
    facts = dict(run_table(meta))
    run = " · ".join(f"{k} {facts[k]}" for k in ("time taken", "bytes read") if k in facts)
    parts.append(
        f"<p style='font-size:smaller;color:#666'>{html.escape(run)}{' · ' if run else ''}more: "
        '<code>.summary()</code>, <code>.by("layer")</code>, <code>.top()</code>, '
        '<code>.plot.layer_profile()</code>, <code>.report("report.html")</code></p>'
    )
    parts.append("</div>")
    return "".join(parts)


def text_table(df: Any, cols: list[str] | None = None, *, max_rows: int = 60) -> str:
    """A plain-text table with display rounding (used by the CLI)."""
    cols = [c for c in (cols or list(df.columns)) if c in df.columns]
    index_name = ",".join(str(n) for n in df.index.names if n is not None) or ""
    header = [index_name, *cols]
    rows = []
    for idx, row in df.head(max_rows).iterrows():
        label = ",".join("–" if v is None or v is _NA else str(v) for v in (idx if isinstance(idx, tuple) else (idx,)))
        rows.append([label] + [fmt_number(row[c], c) for c in cols])
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)]
    lines = ["  ".join(str(h).ljust(w) if i == 0 else str(h).rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    for r in rows:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
    if len(df) > max_rows:
        lines.append(f"... {len(df) - max_rows} more rows")
    return "\n".join(lines)
