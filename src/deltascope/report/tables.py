"""Tables of a comparison for people: by tensor, layer, module, block, tower, layer×module,
the top-N tensors, and their Markdown / HTML / CSV / Parquet forms.

The frames are the full-precision ones :meth:`Comparison.by` returns; numbers are rounded
only when a table is *displayed* (Markdown, HTML, ``repr``), by
:func:`deltascope.display.fmt_number`. CSV and Parquet keep every digit.

Example:
    >>> import deltascope
    >>> from deltascope.report import tables
    >>> cmp = deltascope.compare(*deltascope.demo_pair(), progress=False)
    >>> list(tables.standard_tables(cmp))[:4]
    ['summary', 'block', 'module', 'layer']
    >>> print(tables.to_markdown(cmp.by("block"), ["n_tensors", "changed_exact"]).splitlines()[0])
    | block | n_tensors | changed_exact |
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..display import SHOW_COLUMNS, fmt_number

if TYPE_CHECKING:
    from ..comparison import Comparison

__all__ = [
    "GROUPINGS",
    "Table",
    "group_table",
    "top_tensors",
    "standard_tables",
    "display_columns",
    "family_columns",
    "family_headline",
    "has_columns",
    "to_markdown",
    "to_html",
    "write_table",
    "column_doc",
    "run_table",
]

#: Named groupings of the standard tables -> the keys passed to ``Comparison.by``.
GROUPINGS: dict[str, tuple[str, ...]] = {
    "block": ("block",),
    "module": ("module",),
    "layer": ("tower", "layer"),
    "tower": ("tower",),
    "layer_module": ("tower", "layer", "module"),
}

#: Identity columns shown first in per-tensor tables.
TENSOR_KEYS = ["name", "tower", "layer", "block", "module", "expert", "shape", "dtype_base"]

#: Headline columns of the optional families, shown next to :data:`SHOW_COLUMNS` when present.
FAMILY_SHOW = [
    "effective_rank_frac",
    "stable_rank",
    "proj2_10pct",
    "proj2_10pct_expected",
    "proj2_10pct_enrichment",
    "spearman_absdelta_absw0",
    "lowmag_10pct_enrichment",
    "principal_10pct_enrichment",
]


def has_columns(cmp: Comparison, *columns: str) -> bool:
    """True when every column exists in ``cmp.tensors`` and holds at least one number."""
    t = cmp.tensors
    return all(c in t.columns and pd.to_numeric(t[c], errors="coerce").notna().any() for c in columns)


def family_columns(cmp: Comparison, family: str, kinds: Sequence[str] = ("derived", "tensor", "max")) -> list[str]:
    """The columns a metric family declared (``cmp.columns``), restricted to ``kinds``
    and to columns present in the tensor table."""
    return [s.name for s in cmp.columns if s.family == family and s.agg in kinds and s.name in cmp.tensors.columns]


#: Columns a report shows first for each optional family (regexes, in order); the rest
#: of the family's columns go in a collapsed "every column" table.
FAMILY_HEADLINE: dict[str, list[str]] = {
    "spectral": [
        r"effective_rank_frac",
        r"stable_rank",
        r"numerical_rank_frac_1e-05",
        r"sv_energy_top1pct",
        r"proj2_10pct(_expected|_enrichment)?",
        r"proj_(left|right)_10pct_enrichment",
        r"rot_sin_mean_10pct",
        r"spectral_drift",
        r"intruder_frac",
    ],
    "coords": [
        r"spearman_absdelta_absw0(_changed)?",
        r"pearson_absdelta_absw0",
        r"lowmag_[\d.]+pct_enrichment",
        r"principal_[\d.]+pct_enrichment",
    ],
}


def family_headline(cmp: Comparison, family: str, kinds: Sequence[str] = ("derived", "tensor", "max")) -> list[str]:
    """The headline columns of ``family`` present in the run (see :data:`FAMILY_HEADLINE`);
    all of the family's columns of ``kinds`` for a family without a headline list."""
    import re

    cols = family_columns(cmp, family, kinds)
    patterns = FAMILY_HEADLINE.get(family)
    if not patterns:
        return cols
    return [c for pat in patterns for c in cols if re.fullmatch(pat, c)]


def column_doc(cmp: Comparison, column: str) -> str:
    """The one-line meaning of ``column`` from the run's column specs ('' if unknown)."""
    for s in cmp.columns:
        if s.name == column:
            return s.doc
    return ""


def display_columns(df: pd.DataFrame, extra: Sequence[str] = ()) -> list[str]:
    """The columns worth showing by default: the core headline columns, the optional
    families' headline columns, then ``extra`` -- those present in ``df``."""
    out: list[str] = []
    for c in [*SHOW_COLUMNS, *FAMILY_SHOW, *extra]:
        if c in df.columns and c not in out:
            out.append(c)
    return out


def group_table(cmp: Comparison, grouping: str | Sequence[str]) -> pd.DataFrame:
    """A standard grouped table: ``"block"``, ``"module"``, ``"layer"`` (by tower and
    layer), ``"tower"``, ``"layer_module"``, or explicit ``Comparison.by`` keys.
    Rows without a layer are left out of the layer tables."""
    keys = GROUPINGS.get(grouping, (grouping,)) if isinstance(grouping, str) else tuple(grouping)
    return cmp.by(*keys, dropna="layer" in keys)


def top_tensors(cmp: Comparison, n: int = 20, by: str = "energy") -> pd.DataFrame:
    """The ``n`` tensors with the largest ``by`` (``"energy"``, ``"rel_update"`` ...),
    indexed by name, identity columns first."""
    top = cmp.top(n, by=by)
    keys = [c for c in TENSOR_KEYS if c in top.columns]
    rest = [c for c in top.columns if c not in keys]
    return top[keys + rest].set_index("name")


def standard_tables(cmp: Comparison, *, top: int = 20) -> dict[str, pd.DataFrame]:
    """Every table of a report, by name: ``summary``, ``block``, ``module``, ``layer``,
    ``tower``, ``layer_module``, ``top_energy``, ``top_rel_update``, ``tensors``,
    ``mismatches`` and ``errors`` (full precision)."""
    out: dict[str, pd.DataFrame] = {"summary": cmp.summary()}
    if len(cmp.ok):
        for name in GROUPINGS:
            out[name] = group_table(cmp, name)
        out["top_energy"] = top_tensors(cmp, top, "energy")
        if "rel_update" in cmp.tensors.columns:
            out["top_rel_update"] = top_tensors(cmp, top, "rel_update")
    out["tensors"] = cmp.tensors
    out["mismatches"] = cmp.mismatches
    out["errors"] = cmp.errors
    return out


# -- rendering -----------------------------------------------------------------------------
def _label(idx: Any) -> str:
    parts = idx if isinstance(idx, tuple) else (idx,)
    return ", ".join(
        "–" if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else str(v) for v in parts
    )


def _cell(v: Any, col: str) -> str:
    if isinstance(v, (list, tuple)):
        return "×".join(str(x) for x in v)
    return fmt_number(v, col)


def _shown(df: pd.DataFrame, columns: Sequence[str] | None) -> list[str]:
    cols = list(df.columns) if columns is None else [c for c in columns if c in df.columns]
    return [str(c) for c in cols]


def _has_index(df: pd.DataFrame) -> bool:
    return not isinstance(df.index, pd.RangeIndex)


def to_markdown(df: pd.DataFrame, columns: Sequence[str] | None = None, *, max_rows: int | None = 60) -> str:
    """A GitHub-flavoured Markdown table, numbers rounded for display.

    Args:
        df: a table (e.g. ``cmp.by("block")``); a non-default index becomes the first column.
        columns: columns to show (default all).
        max_rows: rows to show; a last line says how many were left out.
    """
    cols = _shown(df, columns)
    index = _has_index(df)
    head = ([",".join(str(n) for n in df.index.names if n is not None) or ""] if index else []) + cols
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    shown = df if max_rows is None else df.head(max_rows)
    for idx, row in shown.iterrows():
        cells = ([_label(idx)] if index else []) + [_cell(row[c], c).replace("|", "\\|") for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    if max_rows is not None and len(df) > max_rows:
        lines.append(f"\n… {len(df) - max_rows} more rows (full table in the CSV files)")
    return "\n".join(lines)


def to_html(
    df: pd.DataFrame,
    columns: Sequence[str] | None = None,
    *,
    max_rows: int | None = 60,
    docs: Mapping[str, str] | None = None,
    css_class: str | None = "ds-table",
) -> str:
    """An HTML ``<table>`` with display rounding. Each numeric cell carries its full
    value in a ``title`` tooltip; ``docs`` (column -> meaning) become header tooltips.
    ``css_class=None`` gives a plain ``<table>`` (styled by Jupyter itself)."""
    cols = _shown(df, columns)
    index = _has_index(df)
    docs = docs or {}
    idx_name = ",".join(str(n) for n in df.index.names if n is not None) if index else ""
    head = (f"<th>{html.escape(idx_name)}</th>" if index else "") + "".join(
        f'<th title="{html.escape(docs.get(c, ""))}">{html.escape(c)}</th>'
        if docs.get(c)
        else f"<th>{html.escape(c)}</th>"
        for c in cols
    )
    body = []
    shown = df if max_rows is None else df.head(max_rows)
    for idx, row in shown.iterrows():
        cells = [f"<th>{html.escape(_label(idx))}</th>"] if index else []
        for c in cols:
            v = row[c]
            text = html.escape(_cell(v, c))
            if isinstance(v, (float, np.floating)) and math.isfinite(float(v)):
                cells.append(f'<td class="num" title="{float(v)!r}">{text}</td>')
            elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
                cells.append(f'<td class="num">{text}</td>')
            else:
                cells.append(f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = ""
    if max_rows is not None and len(df) > max_rows:
        more = f'<p class="more">… {len(df) - max_rows} more rows (full table in the CSV files).</p>'
    table = f'<table class="{css_class}">' if css_class else "<table>"
    return (
        f'<div class="table-wrap">{table}<thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>{more}"
    )


def write_table(df: pd.DataFrame, path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> Path:
    """Write ``df`` by the file's suffix: ``.csv`` and ``.parquet`` at full precision,
    ``.md`` and ``.html`` rounded for display. Written atomically."""
    from ..comparison import _flatten_for_export, atomic_write_text

    path = Path(path)
    suffix = path.suffix.lower()
    frame = df if columns is None else df[_shown(df, columns)]
    if suffix in (".md", ".html"):
        text = to_markdown(frame, max_rows=None) if suffix == ".md" else to_html(frame, max_rows=None)
        atomic_write_text(path, text + "\n")
        return path
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"Cannot write a table to {str(path)!r}: use a .csv, .parquet, .md or .html file name.")
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = _flatten_for_export(frame)
    tmp = path.with_name(path.name + ".partial")
    if suffix == ".csv":
        flat.to_csv(tmp, index=_has_index(flat))
    else:
        flat.to_parquet(tmp)
    os.replace(tmp, path)
    return path


class Table:
    """A DataFrame with a title and chosen columns, displayed rounded (Jupyter,
    ``print``, Markdown) while :attr:`frame` keeps full precision.

    Example:
        >>> import pandas as pd
        >>> t = Table(pd.DataFrame({"changed_exact": [0.123456]}, index=pd.Index(["mlp"], name="block")), "by block")
        >>> print(t.to_markdown())
        | block | changed_exact |
        |---|---|
        | mlp | 12.35% |
    """

    def __init__(self, frame: pd.DataFrame, title: str = "", columns: Sequence[str] | None = None) -> None:
        self.frame = frame
        self.title = title
        self.columns = _shown(frame, columns)

    def to_markdown(self, max_rows: int | None = 60) -> str:
        return to_markdown(self.frame, self.columns, max_rows=max_rows)

    def to_html(self, max_rows: int | None = 60) -> str:
        title = f"<b>{html.escape(self.title)}</b>" if self.title else ""
        return title + to_html(self.frame, self.columns, max_rows=max_rows)

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        from ..display import text_table

        return (self.title + "\n" if self.title else "") + text_table(self.frame, self.columns)


def run_table(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The run facts of ``Comparison.metadata`` as (label, text) pairs, for display."""
    rows: list[tuple[str, str]] = []
    for side in ("base", "tuned"):
        d = meta.get(side) or {}
        if not d:
            continue
        text = str(d.get("spec"))
        if d.get("revision"):
            text += f" @ {d['revision']}"
        extra = []
        if d.get("kind"):
            extra.append(str(d["kind"]))
        if d.get("n_tensors") is not None:
            extra.append(f"{int(d['n_tensors']):,} tensors")
        if d.get("tensor_bytes") is not None:
            extra.append(fmt_bytes(int(d["tensor_bytes"])))
        files = d.get("files") or []
        if files:
            extra.append(f"{len(files)} file(s)")
        rows.append((side, text + (f" ({', '.join(extra)})" if extra else "")))
    if meta.get("created"):
        rows.append(("created", str(meta["created"])))
    if meta.get("elapsed_s") is not None:
        rows.append(("time taken", f"{float(meta['elapsed_s']):.1f} s"))
    read = meta.get("bytes_compared") or {}
    if read:
        total = sum(int(v) for v in read.values() if v is not None)
        parts = ", ".join(f"{k} {fmt_bytes(int(v))}" for k, v in read.items() if v is not None)
        rows.append(("bytes read", f"{fmt_bytes(total)} ({parts})"))
    for key, label in (("device", "device"), ("n_pairs", "tensor pairs"), ("n_selected", "pairs analysed")):
        if meta.get(key) is not None:
            rows.append((label, str(meta[key])))
    if "complete" in meta:
        rows.append(("complete", "yes" if meta["complete"] else "NO (partial result)"))
    versions = meta.get("versions") or {}
    if versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    return rows


def fmt_bytes(n: int) -> str:
    """Bytes for display in binary units: ``fmt_bytes(1536) == '1.5 KiB'``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover
