"""A self-contained HTML report of a comparison, its Markdown twin, and the headline
findings in plain words.

The HTML file needs nothing else: CSS is inline, figures are embedded as ``data:``
URIs, there is no script and no external URL, so it can be mailed, attached to a CI run
or opened offline. Numbers are rounded only on display (hover a number for its full value).

Example:
    >>> import deltascope, tempfile, pathlib
    >>> cmp = deltascope.compare(*deltascope.demo_pair(), progress=False)
    >>> headline_findings(cmp)[0].split(" of the ")[0]
    '66.16%'
    >>> out = cmp.report(pathlib.Path(tempfile.mkdtemp()) / "report.html", plots=False)
    >>> out.read_text(encoding="utf-8").count('<section id="')
    11
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..display import fmt_number
from . import tables as T

if TYPE_CHECKING:
    from ..comparison import Comparison
    from .figures import PlotSpec

__all__ = ["write_report", "write_report_folder", "headline_findings", "markdown_report", "report_html", "SECTIONS"]

#: Sections of every report, in order: (id, heading). ``experts``, ``spectral`` and
#: ``coords`` appear only when the comparison has such data.
SECTIONS = [
    ("findings", "Headline findings"),
    ("run", "Run"),
    ("summary", "Summary"),
    ("blocks", "By block"),
    ("layers", "By layer"),
    ("experts", "MoE experts"),
    ("modules", "By module"),
    ("towers", "By tower"),
    ("sparsity", "Sparsity rules"),
    ("top", "Top tensors"),
    ("spectral", "Spectral geometry"),
    ("coords", "Which coordinates move"),
    ("mismatches", "Mismatches"),
    ("errors", "Errors"),
]
OPTIONAL_SECTIONS = ("experts", "spectral", "coords")

_BLOCK_WORDS = {
    "mlp": "MLP",
    "attention": "attention",
    "embedding": "embedding",
    "lm_head": "LM-head",
    "norm": "norm",
    "router": "MoE-router",
    "projector": "projector",
    "other": "other",
}


# -- findings ------------------------------------------------------------------------------
def _finite(v: Any) -> bool:
    try:
        return v is not None and v is not pd.NA and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _pct(v: float) -> str:
    return fmt_number(float(v), "changed_")


def _count(n: float) -> str:
    n = float(n)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{int(n):,}"


def _model_value(cmp: Comparison, column: str, s: pd.Series) -> tuple[float | None, str]:
    """A model-level value of ``column`` and how it was obtained: from the summary if
    the family aggregates it; else energy-weighted for projections (their group value);
    else the median over tensors."""
    if column in s.index and _finite(s[column]):
        return float(s[column]), "model"
    if column not in cmp.tensors.columns:
        return None, ""
    ok = cmp.ok
    v = pd.to_numeric(ok[column], errors="coerce")
    if column.startswith("proj") and "energy" in ok.columns:
        e = ok["energy"].astype(float)
        keep = v.notna() & (e > 0)
        if keep.any():
            return float((v[keep] * e[keep]).sum() / e[keep].sum()), "model"
        return None, ""
    v = v.dropna()
    return (float(v.median()), "median") if len(v) else (None, "")


def _pick_r(columns: Sequence[str], prefix: str, suffix: str = "") -> str | None:
    """The ``<prefix><r>pct<suffix>`` column to quote: r = 10% if present, else the first."""
    import re

    found = [c for c in columns if re.fullmatch(rf"{re.escape(prefix)}\d+(?:\.\d+)?pct{re.escape(suffix)}", c)]
    if not found:
        return None
    ten = [c for c in found if c == f"{prefix}10pct{suffix}"]
    return ten[0] if ten else found[0]


def headline_findings(cmp: Comparison) -> list[str]:
    """Plain-language sentences computed from the numbers; a sentence appears only when
    every number in it exists (e.g. no spectral sentence without ``spectral=True``)."""
    out: list[str] = []
    ok = cmp.ok
    n_err = int((cmp.tensors["status"] == "error").sum()) if "status" in cmp.tensors else 0
    if not len(ok):
        out.append("No tensor pair could be compared" + (f" ({n_err} failed; see Errors)." if n_err else "."))
        return out + _problem_findings(cmp, n_err)
    s = cmp.summary().iloc[0]
    cols = cmp.tensors.columns
    if _finite(s.get("changed_exact")):
        ch = float(s["changed_exact"])
        if ch == 0:
            out.append(f"No coordinate changed: all {_count(s['numel'])} compared parameters are bit-identical.")
        else:
            out.append(
                f"{_pct(1 - ch)} of the {_count(s['numel'])} compared parameters are bit-identical to the base "
                f"({_pct(ch)} changed under the exact rule)."
            )
            c = _alternative_rule(s, [c for c in cols if c.startswith("changed_") and c != "changed_exact"])
            if c is not None:
                from .style import rule_label

                out.append(
                    f"Under the tolerance {rule_label(c[8:])}, {_pct(float(s[c]))} changed instead: the sparsity "
                    "figure depends on the tolerance (see Sparsity rules)."
                )
    if "energy_share" in cols and _finite(s.get("energy")) and float(s["energy"]) > 0:
        blocks = cmp.by("block")
        top = blocks["energy_share"].sort_values(ascending=False, kind="stable")
        b0 = top.index[0]
        words = _BLOCK_WORDS.get(str(b0), str(b0))
        sent = f"{_pct(top.iloc[0])} of the update energy ‖Δ‖² is in {words} tensors"
        if _finite(blocks.loc[b0, "numel_share"]):
            sent += f", which hold {_pct(blocks.loc[b0, 'numel_share'])} of the parameters"
        if len(top) > 1 and float(top.iloc[0]) < 0.9 and float(top.iloc[1]) > 0:
            b1 = top.index[1]
            sent += f"; next: {_BLOCK_WORDS.get(str(b1), str(b1))} ({_pct(top.iloc[1])})"
        out.append(sent + ".")
        frozen = [str(b) for b in blocks.index if blocks.loc[b, "n_changed_exact"] == 0]
        if frozen:
            out.append("Bit-identical (frozen) blocks: " + ", ".join(_BLOCK_WORDS.get(b, b) for b in frozen) + ".")
        out += _tower_findings(cmp)
        out += _layer_findings(cmp, s)
        out += _expert_findings(cmp)
    if _finite(s.get("ulp1_share")) and float(s.get("changed_exact", 0)) > 0:
        dtypes = ", ".join(sorted({str(d) for d in ok["dtype_base"].dropna()}))
        out.append(
            f"{_pct(s['ulp1_share'])} of the changed coordinates moved by a single rounding step (ULP) of the "
            f"stored dtype ({dtypes}): at the rounding floor, where the tolerance decides what counts as sparse."
        )
    out += _spectral_findings(cmp, s)
    out += _coords_findings(cmp, s)
    return out + _problem_findings(cmp, n_err)


def _alternative_rule(s: pd.Series, rules: Sequence[str]) -> str | None:
    """The tolerance rule to quote next to ``exact``: the common ``atol 1e-05`` if the run
    has it, else the bf16-aware relative rule, else the one that differs most -- and only
    when it differs from ``exact`` by more than 1% of its value."""
    ch = float(s["changed_exact"])
    differs = [c for c in rules if _finite(s.get(c)) and abs(float(s[c]) - ch) > 0.01 * ch]
    for pref in ("changed_atol_1e-05", "changed_rel_0.001"):
        if pref in differs:
            return pref
    return max(differs, key=lambda c: abs(float(s[c]) - ch)) if differs else None


def _tower_findings(cmp: Comparison) -> list[str]:
    towers = cmp.by("tower")
    if len(towers) < 2:
        return []
    out = []
    for t in towers.index:
        if str(t) == "language":
            continue
        row = towers.loc[t]
        if row["n_changed_exact"] == 0:
            out.append(f"The {t} tower is bit-identical.")
        elif _finite(row.get("energy_share")):
            out.append(
                f"The {t} tower holds {_pct(row['energy_share'])} of the update energy "
                f"({_pct(row['changed_exact'])} of its parameters changed)."
            )
    return out


def _layer_findings(cmp: Comparison, s: pd.Series) -> list[str]:
    ok = cmp.ok
    if "rel_update" not in ok.columns or not ok["layer"].notna().any():
        return []
    tower = "language" if (ok.loc[ok["layer"].notna(), "tower"] == "language").any() else None
    layers = cmp.by("tower", "layer", dropna=True)
    if tower is None:
        tower = str(layers.index.get_level_values("tower")[0])
    lt = layers.xs(tower, level="tower")["rel_update"].dropna()
    if len(lt) < 2 or float(lt.max()) <= 0:
        return []
    hi, lo = lt.idxmax(), lt.idxmin()
    model = s["rel_update"]
    where = f" of the {tower} tower" if tower != "language" else ""
    return [
        f"The relative update ‖Δ‖/‖W0‖ is largest in layer {hi}{where} ({fmt_number(lt[hi])}) and smallest in "
        f"layer {lo} ({fmt_number(lt[lo])}); whole model {fmt_number(model)}."
    ]


def _expert_findings(cmp: Comparison) -> list[str]:
    ok = cmp.ok
    digits = np.array([isinstance(e, str) and e.isdigit() for e in ok["expert"]], dtype=bool)
    numeric = ok[digits & ok["layer"].notna().to_numpy()]
    if numeric.empty or numeric["expert"].nunique() < 2:
        return []
    per = numeric.groupby(["tower", "layer", "expert"])["n_changed_exact"].sum()
    frozen = int((per == 0).sum())
    return [
        f"MoE: {frozen} of {len(per)} (layer, expert) pairs are bit-identical"
        + (" (experts the tuning never updated)." if frozen else "; every expert was updated.")
    ]


def _has_experts(cmp: Comparison) -> bool:
    ok = cmp.ok
    return bool(ok["expert"].notna().any()) and ok["expert"].nunique() > 1


def _spectral_findings(cmp: Comparison, s: pd.Series) -> list[str]:
    out = []
    cols = list(cmp.tensors.columns)
    obs = _pick_r(cols, "proj2_")
    if obs and f"{obs}_expected" in cols:
        o, _ = _model_value(cmp, obs, s)
        e, _ = _model_value(cmp, f"{obs}_expected", s)
        if o is not None and e is not None and e > 0:
            ratio = o / e
            r = obs[len("proj2_") : -3]
            if ratio < 0.8:
                verb = f"Updates avoid the top-{r}% principal subspace of W0"
            elif ratio > 1.25:
                verb = f"Updates concentrate in the top-{r}% principal subspace of W0"
            else:
                verb = f"Updates fall in the top-{r}% principal subspace of W0 about as a random direction would"
            out.append(f"{verb} ({ratio:.2f}× random; {_pct(o)} of ‖Δ‖² there vs {_pct(e)} expected).")
    if "effective_rank_frac" in cols:
        v = pd.to_numeric(cmp.ok["effective_rank_frac"], errors="coerce").dropna()
        if len(v):
            out.append(
                f"The median update matrix has an effective rank of {_pct(v.median())} of full rank "
                f"({len(v)} tensors): {'high-rank, not LoRA-like' if v.median() > 0.5 else 'low-rank'}."
            )
    return out


def _coords_findings(cmp: Comparison, s: pd.Series) -> list[str]:
    out = []
    cols = list(cmp.tensors.columns)
    if "spearman_absdelta_absw0" in cols:
        v, how = _model_value(cmp, "spearman_absdelta_absw0", s)
        if v is not None:
            trend = (
                "larger moves on smaller weights"
                if v < -0.1
                else "larger moves on larger weights"
                if v > 0.1
                else "little relation"
            )
            scope = "median over tensors" if how == "median" else "mean over tensors, weighted by size"
            out.append(f"|Δ| vs |W0|: Spearman ρ = {v:.2f} ({scope}): {trend}.")
    for prefix, words in (("lowmag_", "smallest |W0|"), ("principal_", "largest entries of W0's principal part")):
        c = _pick_r(cols, prefix, "_enrichment")
        if c is None:
            continue
        v, how = _model_value(cmp, c, s)
        if v is not None:
            r = c[len(prefix) : -len("pct_enrichment")]
            scope = ", median over tensors" if how == "median" else ""
            out.append(
                f"Changed coordinates are {v:.2f}× as frequent among the {r}% {words} as chance "
                f"(1× = no preference{scope})."
            )
    out += _profile_findings(cmp)
    return out


def _profile_findings(cmp: Comparison) -> list[str]:
    """The smallest- and largest-|W0| bins of the model-level magnitude profile against
    the rounding null: how much of a low-magnitude preference is the dtype's rounding."""
    if "magnitude_profile" not in cmp.extras:
        return []
    try:
        prof = cmp.magnitude_profile()
    except Exception:  # an optional sentence: never fail the report over it
        return []
    need = ("change_rate_exact", "null_change_rate")
    if len(prof) < 2 or any(c not in prof.columns for c in need):
        return []
    first, last = prof.iloc[0], prof.iloc[-1]
    if not all(_finite(r[c]) for r in (first, last) for c in need):
        return []
    parts = []
    for where, r in (("smallest", first), ("largest", last)):
        text = f"in the {where}-|W0| bin {_pct(r['change_rate_exact'])} changed vs {_pct(r['null_change_rate'])}"
        if "null_change_rate_offgrid" in prof.columns and _finite(r["null_change_rate_offgrid"]):
            text += f" (off-grid start: {_pct(r['null_change_rate_offgrid'])})"
        parts.append(text)
    return [
        "Against the rounding null (an update blind to |W0|, rounded to the stored dtype): "
        + "; ".join(parts)
        + ". Where observed and null agree, the dtype's rounding explains the pattern."
    ]


def _problem_findings(cmp: Comparison, n_err: int) -> list[str]:
    out = []
    if n_err:
        out.append(f"{n_err} tensor(s) could not be compared; their rows carry the reason (see Errors).")
    if len(cmp.mismatches):
        counts = cmp.mismatches["kind"].value_counts()
        out.append("Pairing: " + ", ".join(f"{v} {str(k).replace('_', ' ')}" for k, v in counts.items()) + ".")
    if not (cmp.metadata or {}).get("complete", True):
        out.append("This result is INCOMPLETE: the run stopped before every tensor was compared.")
    return out


# -- building the page ---------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1a1a1a;
background:#fff;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:0 20px 40px}
header{background:#0b3d5c;color:#fff;padding:18px 20px}header h1{margin:0;font-size:1.4em}
header p{margin:4px 0 0;opacity:.9;font-size:.92em;word-break:break-all}
nav{position:sticky;top:0;background:#f4f6f8;border-bottom:1px solid #d5dbe0;padding:6px 20px;font-size:.85em;
z-index:2}nav a{margin-right:12px;color:#0b3d5c;text-decoration:none}nav a:hover{text-decoration:underline}
h2{border-bottom:2px solid #0b3d5c;padding-bottom:3px;margin-top:34px;font-size:1.2em}
h3{font-size:1em;margin:18px 0 6px}
ul.findings li{margin:4px 0}
.table-wrap{overflow-x:auto;max-width:100%}
table.ds-table,table.kv{border-collapse:collapse;font-size:.8em;margin:6px 0 10px}
table.ds-table th,table.ds-table td,table.kv th,table.kv td{border:1px solid #dde3e8;padding:3px 7px;
white-space:nowrap}
table.ds-table thead th{background:#eef2f5;position:sticky;top:0}
table.ds-table tbody tr:nth-child(even){background:#fafbfc}
table.ds-table td.num{text-align:right;font-variant-numeric:tabular-nums}
table.ds-table th[title]{text-decoration:underline dotted;cursor:help}
table.kv th{text-align:left;background:#f4f6f8;vertical-align:top}table.kv td{white-space:normal}
figure{margin:14px 0 22px}figure img{max-width:100%;height:auto;border:1px solid #e3e7ea}
figcaption{font-size:.85em;color:#333;max-width:900px}
p.note,p.more{font-size:.85em;color:#555}p.warn{color:#8a3b00;font-size:.9em}
pre{background:#f4f6f8;padding:8px;font-size:.78em;overflow-x:auto}
details summary{cursor:pointer;color:#0b3d5c}
footer{font-size:.8em;color:#666;margin-top:40px;border-top:1px solid #ddd;padding-top:8px}
"""


@dataclass
class _Page:
    cmp: Comparison
    images: dict[str, tuple[str, bytes]]  # key -> (mime, bytes)
    specs: list[PlotSpec]
    notes: list[str]
    failures: dict[str, str] = field(default_factory=dict)
    top: int = 20

    def figures(self, section: str) -> str:
        parts = []
        for spec in self.specs:
            if spec.section != section:
                continue
            if spec.key in self.failures:
                msg = html.escape(self.failures[spec.key])
                parts.append(f'<p class="warn">Could not draw “{html.escape(spec.title)}”: {msg}</p>')
                continue
            if spec.key not in self.images:
                continue
            mime, data = self.images[spec.key]
            uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
            parts.append(
                f'<figure id="fig-{html.escape(spec.key)}"><img src="{uri}" alt="{html.escape(spec.title)}">'
                f"<figcaption><b>{html.escape(spec.title)}.</b> {html.escape(spec.caption)}</figcaption></figure>"
            )
        return "".join(parts)


def _docs(cmp: Comparison) -> dict[str, str]:
    return {s.name: s.doc for s in cmp.columns}


def _table(cmp: Comparison, df: pd.DataFrame, columns: Sequence[str] | None = None, max_rows: int | None = 60) -> str:
    if df is None or not len(df):
        return '<p class="note">(empty)</p>'
    cols = columns if columns is not None else T.display_columns(df)
    return T.to_html(df, cols, max_rows=max_rows, docs=_docs(cmp))


def _kv(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2>{body}</section>'


def _run_section(cmp: Comparison) -> str:
    meta = cmp.metadata or {}
    parts = [_kv(T.run_table(meta))]
    for side in ("base", "tuned"):
        files = (meta.get(side) or {}).get("files") or []
        if files:
            df = pd.DataFrame(files)
            keep = [c for c in ("path", "size", "sha256") if c in df.columns]
            parts.append(f"<h3>{side} files</h3>" + T.to_html(df[keep], max_rows=30))
    opts = meta.get("options")
    if opts:
        text = json.dumps(opts, indent=1, default=str, ensure_ascii=False)
        parts.append("<details><summary>options</summary><pre>" + html.escape(text) + "</pre></details>")
    return "".join(parts)


def _summary_section(cmp: Comparison) -> str:
    s = cmp.summary()
    docs = _docs(cmp)
    row = s.iloc[0]
    shown = T.display_columns(s, [c for c in s.columns if c.startswith(("changed_", "n_"))])
    rows = []
    for c in shown:
        v = row[c]
        title = f' title="{float(v)!r}"' if isinstance(v, (float, np.floating)) and _finite(v) else ""
        rows.append(
            f"<tr><th>{html.escape(c)}</th><td class='num'{title}>{html.escape(fmt_number(v, c))}</td>"
            f"<td>{html.escape(docs.get(c, ''))}</td></tr>"
        )
    table = '<div class="table-wrap"><table class="ds-table"><thead><tr><th>column</th><th>value</th>'
    table += "<th>meaning</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>"
    full = "<details><summary>every summary column</summary>" + T.to_html(s.T, max_rows=None) + "</details>"
    return table + full


def _family_section(cmp: Comparison, page: _Page, family: str, sid: str) -> str:
    parts = [page.figures(sid)]
    derived = T.family_headline(cmp, family, kinds=("derived", "max"))
    if derived:
        by_module, by_block = cmp.by("module"), cmp.by("block")
        parts.append("<h3>By block</h3>" + _table(cmp, by_block, derived))
        parts.append("<h3>By module</h3>" + _table(cmp, by_module, derived, max_rows=200))
        every = T.family_columns(cmp, family, kinds=("derived", "max"))
        if len(every) > len(derived):
            parts.append(
                f"<details><summary>every {family} column by module ({len(every)})</summary>"
                + _table(cmp, by_module, every, max_rows=200)
                + "</details>"
            )
    per_tensor = T.family_headline(cmp, family, kinds=("tensor", "derived", "max"))
    if per_tensor:
        top = T.top_tensors(cmp, page.top, "energy")
        parts.append(
            f"<h3>Top {page.top} tensors by update energy</h3>" + _table(cmp, top, ["module", "shape", *per_tensor])
        )
    notes = [s.name for s in cmp.columns if s.family == family and s.agg == "key" and s.name in cmp.tensors]
    for c in notes:
        vals = cmp.ok[c].dropna().astype(str)
        vals = vals[vals != ""]
        if len(vals):
            items = "".join(
                f"<li>{html.escape(k)} ({v} tensor(s))</li>" for k, v in vals.value_counts().head(20).items()
            )
            parts.append(f"<h3>Notes ({html.escape(c)})</h3><ul>{items}</ul>")
    if family == "coords" and "magnitude_profile" in cmp.extras:
        try:
            prof = cmp.magnitude_profile(by="block")
            parts.append("<h3>Magnitude profile by block</h3>" + _table(cmp, prof, list(prof.columns), 200))
        except Exception as e:  # the extra table is optional: say why it is missing
            parts.append(f'<p class="warn">Magnitude profile unavailable: {html.escape(str(e))}</p>')
    return "".join(parts)


def _problems(cmp: Comparison) -> tuple[str, str]:
    mm = cmp.mismatches
    if len(mm):
        counts = ", ".join(f"{v} {html.escape(str(k))}" for k, v in mm["kind"].value_counts().items())
        mism = f"<p>{counts}.</p>" + T.to_html(mm, max_rows=200)
    else:
        mism = "<p>None: every tensor of the base paired with one of the tuned checkpoint.</p>"
    ok = cmp.ok
    notes = ok.loc[ok["reason"].fillna("") != "", "reason"] if "reason" in ok.columns else pd.Series([], dtype=object)
    if len(notes):
        mism += (
            "<h3>Notes on compared pairs</h3><ul>"
            + "".join(f"<li>{html.escape(str(k))} ({v} tensor(s))</li>" for k, v in notes.value_counts().items())
            + "</ul>"
        )
    errs = cmp.errors
    if len(errs):
        err = f"<p>{len(errs)} tensor(s) could not be compared; the run went on without them.</p>"
        err += T.to_html(errs, max_rows=200)
    else:
        err = "<p>None: every selected tensor pair was compared.</p>"
    return mism, err


def report_html(cmp: Comparison, page: _Page, title: str | None = None) -> str:
    """The whole HTML document (see :func:`write_report`)."""
    from .._version import __version__

    meta = cmp.metadata or {}
    base = str((meta.get("base") or {}).get("spec"))
    tuned = str((meta.get("tuned") or {}).get("spec"))
    title = title or f"deltascope: {_tail(base)} → {_tail(tuned)}"
    has_ok = len(cmp.ok) > 0
    body: dict[str, str] = {}
    findings = headline_findings(cmp)
    body["findings"] = '<ul class="findings">' + "".join(f"<li>{html.escape(f)}</li>" for f in findings) + "</ul>"
    if page.notes:
        body["findings"] += "".join(f'<p class="note">{html.escape(n)}</p>' for n in page.notes)
    body["run"] = _run_section(cmp)
    body["summary"] = _summary_section(cmp) if has_ok else '<p class="note">No tensor was compared.</p>'
    empty = '<p class="note">No tensor was compared.</p>'
    if has_ok:
        body["blocks"] = page.figures("blocks") + _table(cmp, T.group_table(cmp, "block"))
        layers = T.group_table(cmp, "layer")
        lm = T.group_table(cmp, "layer_module")
        body["layers"] = (
            page.figures("layers")
            + (_table(cmp, layers, max_rows=300) if len(layers) else '<p class="note">No tensor has a layer index.</p>')
            + (
                f"<details><summary>layer × module table ({len(lm)} rows)</summary>"
                + _table(cmp, lm, max_rows=500)
                + "</details>"
                if len(lm)
                else ""
            )
        )
        if _has_experts(cmp):
            by_expert = cmp.by("tower", "expert", dropna=True)
            body["experts"] = page.figures("experts") + _table(cmp, by_expert, max_rows=300)
        body["modules"] = page.figures("modules") + _table(cmp, T.group_table(cmp, "module"), max_rows=200)
        body["towers"] = _table(cmp, T.group_table(cmp, "tower"))
        rules = [c for c in cmp.tensors.columns if c.startswith("changed_")]
        ulp = [c for c in ("ulp1_share", "ulp2_share", "ulp3plus_share") if c in cmp.tensors.columns]
        body["sparsity"] = page.figures("sparsity") + _table(cmp, cmp.by("block"), ["numel", *rules, *ulp])
        top_e = T.top_tensors(cmp, page.top, "energy")
        keys = ["tower", "layer", "block", "module", "expert", "shape", "dtype_base"]
        top = f"<h3>Top {page.top} by update energy ‖Δ‖²</h3>" + _table(cmp, top_e, keys + T.display_columns(top_e))
        if "rel_update" in cmp.tensors.columns:
            top_r = T.top_tensors(cmp, page.top, "rel_update")
            top += f"<h3>Top {page.top} by relative update ‖Δ‖/‖W0‖</h3>" + _table(
                cmp, top_r, keys + T.display_columns(top_r)
            )
        body["top"] = top + page.figures("top")
        for fam, sid in (("spectral", "spectral"), ("coords", "coords")):
            if any(s.family == fam for s in cmp.columns) or page.figures(sid):
                body[sid] = _family_section(cmp, page, fam, sid)
    else:
        for sid in ("blocks", "layers", "modules", "towers", "sparsity", "top"):
            body[sid] = empty
    body["mismatches"], body["errors"] = _problems(cmp)
    sections = [(sid, head) for sid, head in SECTIONS if sid in body]
    nav = "".join(f'<a href="#{sid}">{html.escape(head)}</a>' for sid, head in sections)
    content = "".join(_section(sid, head, body[sid]) for sid, head in sections)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1><p>base: {html.escape(base)}<br>tuned: {html.escape(tuned)}</p></header>"
        f"<nav>{nav}</nav><main>{content}"
        f"<footer>Written by deltascope {html.escape(__version__)} on {stamp}. Numbers are rounded for display; hover "
        "a number for its full value, or read the CSV/JSON files for every digit.</footer></main></body></html>\n"
    )


def _tail(spec: str) -> str:
    parts = [p for p in spec.replace("\\", "/").split("/") if p]
    return "/".join(parts[-2:]) if parts else spec


# -- writing -------------------------------------------------------------------------------
def _render_all(
    cmp: Comparison, *, plots: bool, spectra: Any, formats: Sequence[str], dpi: int
) -> tuple[list[PlotSpec], list[str], dict[str, dict[str, bytes]], dict[str, str]]:
    if not plots:
        return [], [], {}, {}
    from .figures import render, report_figures

    specs, notes = report_figures(cmp, spectra=spectra)
    rendered: dict[str, dict[str, bytes]] = {}
    failures: dict[str, str] = {}
    for spec in specs:
        try:
            rendered[spec.key] = render(spec.draw, formats, dpi=dpi)
        except Exception as e:  # one figure must not cost the whole report
            failures[spec.key] = f"{type(e).__name__}: {e}"
    return specs, notes, rendered, failures


_MIME = {"png": "image/png", "svg": "image/svg+xml"}


def write_report(
    cmp: Comparison,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    plots: bool = True,
    top: int = 20,
    spectra: Any = "auto",
    image_format: str = "png",
    dpi: int = 100,
) -> Path:
    """Write one self-contained HTML report of ``cmp`` to ``path`` (atomically).

    Args:
        cmp: the comparison (live or loaded with ``Comparison.from_json``).
        path: the ``.html`` file to write.
        title: page title (default: ``deltascope: <base> → <tuned>``).
        plots: embed the figures (set ``False`` for a tables-only page).
        top: rows of the top-N tensor tables.
        spectra: tensors whose singular values to plot (re-read from the sources):
            ``"auto"`` (the top-energy 2-D tensor when both sources are local paths that
            still exist), a name or list of names, or ``None``.
        image_format: ``"png"`` (smaller) or ``"svg"`` (sharp at any zoom).
        dpi: resolution of PNG figures.

    Returns:
        The path written.
    """
    if image_format not in _MIME:
        raise ValueError(f"image_format must be 'png' or 'svg', got {image_format!r}")
    specs, notes, rendered, failures = _render_all(cmp, plots=plots, spectra=spectra, formats=[image_format], dpi=dpi)
    images = {k: (_MIME[image_format], v[image_format]) for k, v in rendered.items()}
    page = _Page(cmp, images, specs, notes, failures, top)
    from ..comparison import atomic_write_text

    out = Path(path)
    atomic_write_text(out, report_html(cmp, page, title))
    return out


def write_report_folder(
    cmp: Comparison,
    folder: str | os.PathLike[str],
    *,
    images: Sequence[str] = ("png", "svg"),
    title: str | None = None,
    plots: bool = True,
    top: int = 20,
    spectra: Any = "auto",
    dpi: int = 100,
) -> dict[str, list[Path]]:
    """Write the report's pieces into ``folder``: ``plots/<name>.<fmt>`` for each image
    format, ``top_energy.csv`` and ``top_rel_update.csv``, ``report.md`` and the
    self-contained ``report.html`` (figures rendered once, embedded as PNG).

    Returns:
        Paths written, by kind: ``plots``, ``tables``, ``markdown``, ``report``.
    """
    from ..comparison import atomic_write_text

    bad = [f for f in images if f not in ("png", "svg", "pdf")]
    if bad:
        raise ValueError(f"Unknown image format(s) {bad}: use png, svg or pdf.")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    formats = list(dict.fromkeys([*images, "png"]))  # the HTML embeds PNG
    specs, notes, rendered, failures = _render_all(cmp, plots=plots, spectra=spectra, formats=formats, dpi=dpi)
    written: dict[str, list[Path]] = {"plots": [], "tables": [], "markdown": [], "report": []}
    if rendered:
        (out / "plots").mkdir(exist_ok=True)
    for key, data in rendered.items():
        for fmt in images:
            p = out / "plots" / f"{key}.{fmt}"
            tmp = p.with_name(p.name + ".partial")
            tmp.write_bytes(data[fmt])
            os.replace(tmp, p)
            written["plots"].append(p)
    if len(cmp.ok):
        for by in ("energy", "rel_update"):
            if by in cmp.tensors.columns:
                written["tables"].append(T.write_table(T.top_tensors(cmp, top, by), out / f"top_{by}.csv"))
    md = out / "report.md"
    atomic_write_text(md, markdown_report(cmp, top=min(top, 10), failures=failures))
    written["markdown"].append(md)
    page = _Page(cmp, {k: ("image/png", v["png"]) for k, v in rendered.items()}, specs, notes, failures, top)
    report = out / "report.html"
    atomic_write_text(report, report_html(cmp, page, title))
    written["report"].append(report)
    return written


def markdown_report(cmp: Comparison, *, top: int = 10, failures: dict[str, str] | None = None) -> str:
    """A compact Markdown report (findings, run, summary, blocks, top tensors, problems)
    for a pull-request comment or a CI summary; numbers rounded for display."""
    meta = cmp.metadata or {}
    lines = ["# deltascope report", ""]
    lines += [f"- {f}" for f in headline_findings(cmp)]
    lines += ["", "## Run", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v.replace('|', '/')} |" for k, v in T.run_table(meta)]
    if len(cmp.ok):
        s = cmp.summary()
        lines += ["", "## Summary", "", T.to_markdown(s, T.display_columns(s))]
        blocks = cmp.by("block")
        lines += ["", "## By block", "", T.to_markdown(blocks, T.display_columns(blocks))]
        t = T.top_tensors(cmp, top, "energy")
        lines += ["", f"## Top {top} tensors by update energy", "", T.to_markdown(t, T.display_columns(t))]
    mm = cmp.mismatches
    lines += ["", "## Mismatches", ""]
    lines += [T.to_markdown(mm, max_rows=50)] if len(mm) else ["None."]
    errs = cmp.errors
    lines += ["", "## Errors", ""]
    lines += [T.to_markdown(errs, max_rows=50)] if len(errs) else ["None."]
    if failures:
        lines += ["", "## Figures that could not be drawn", ""] + [f"- {k}: {v}" for k, v in failures.items()]
    return "\n".join(lines) + "\n"
