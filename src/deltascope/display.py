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

__all__ = ["comparison_html", "fmt_number", "text_table", "SHOW_COLUMNS"]


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
    if col.startswith(("changed_", "ulp", "energy_share", "numel_share")) or col.endswith("_share"):
        return f"{f:.2%}"
    if f != 0 and (abs(f) < 1e-3 or abs(f) >= 1e6):
        return f"{f:.3e}"
    return f"{f:.4g}"


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


def _table(df: Any, cols: list[str]) -> str:
    cols = [c for c in cols if c in df.columns]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [df.index.name or "", *cols])
    body = []
    for idx, row in df.iterrows():
        cells = "".join(f"<td>{html.escape(fmt_number(row[c], c))}</td>" for c in cols)
        body.append(f"<tr><th>{html.escape(str(idx))}</th>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def comparison_html(cmp: Comparison) -> str:
    meta = cmp.metadata
    base = html.escape(str(meta.get("base", {}).get("spec")))
    tuned = html.escape(str(meta.get("tuned", {}).get("spec")))
    parts = [f"<div class='deltascope'><b>deltascope comparison</b>: <code>{base}</code> → <code>{tuned}</code>"]
    if len(cmp.ok):
        parts.append(_table(cmp.summary(), SHOW_COLUMNS))
        parts.append("<details open><summary>by block</summary>" + _table(cmp.by("block"), SHOW_COLUMNS) + "</details>")
    errors = cmp.errors
    if len(errors):
        parts.append(f"<p><b>{len(errors)} tensor(s) failed</b> (see <code>.errors</code>).</p>")
    if len(cmp.mismatches):
        counts = cmp.mismatches["kind"].value_counts()
        items = ", ".join(f"{html.escape(str(k))}: {v}" for k, v in counts.items())
        parts.append(f"<p>Mismatches: {items} (see <code>.mismatches</code>).</p>")
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
