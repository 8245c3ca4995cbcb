"""Plots of a comparison (matplotlib), reached as ``cmp.plot.<name>(...)``.

Conventions (as scikit-learn's Display objects and seaborn):

* every plot takes ``ax=None``: with ``None`` it creates a figure, otherwise it draws
  into what you pass; it returns what it drew on and never calls ``plt.show()``;
* single-panel plots (``heatmap``, ``projection``, ``spectrum``, ``block_bars``,
  ``module_bars``, ``effective_rank``, ``sparsity_rules``, ``ulp_shares``) return the
  :class:`~matplotlib.axes.Axes`; multi-panel plots (``layer_profile``,
  ``magnitude_profile``, :func:`compare_runs`) return the :class:`~matplotlib.figure.Figure`
  and accept a sequence of Axes as ``ax``;
* colours are the Okabe-Ito colour-blind-safe palette, with one fixed colour per block
  (attention blue, MLP vermillion ...) across all plots; heatmaps use viridis;
* axes are labelled with their units, log scales are used where values span more than
  two decades, and many layers (80+) or experts (hundreds) are thinned on the ticks,
  aggregated (experts into their module) or given their own plot (``heatmap(rows="expert")``).

Plots of the optional metric families raise a :class:`ValueError` naming the
``compare()`` option that produces their columns (``spectral=True``, ``coords=True``).

Example:
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import deltascope
    >>> cmp = deltascope.compare(*deltascope.demo_pair(), progress=False)
    >>> fig = cmp.plot.layer_profile()
    >>> [a.get_ylabel() for a in fig.axes]
    ['changed coordinates, exact (%)', 'relative update ‖Δ‖/‖W0‖']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..display import fmt_number, is_fraction_column
from .style import (
    BLOCK_COLORS,
    GREY,
    MARKERS,
    NA_COLOR,
    OKABE_ITO,
    SERIES,
    axes_list,
    color_of,
    column_label,
    column_title,
    finite_positive,
    format_axis,
    horizontal,
    is_missing,
    legend_right,
    new_figure,
    one_axes,
    ordered,
    pct_text,
    rule_label,
    short_name,
    spans_decades,
    styled,
    thin_ticks,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..comparison import Comparison

__all__ = ["PlotAccessor", "compare_runs", "source_spec"]

_SPECTRAL_HINT = "run deltascope.compare(..., spectral=True) to compute it"
_COORDS_HINT = "run deltascope.compare(..., coords=True) to compute it"


# -- the accessor ------------------------------------------------------------------------
class PlotAccessor:
    """``cmp.plot``: every plot of one :class:`~deltascope.Comparison`.

    Example:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import deltascope
        >>> cmp = deltascope.compare(*deltascope.demo_pair(), progress=False)
        >>> ax = cmp.plot.heatmap("energy_share")
        >>> ax.get_ylabel()
        'module'
    """

    def __init__(self, cmp: Comparison) -> None:
        self._cmp = cmp
        self._groups: dict[tuple[Any, ...], pd.DataFrame] = {}

    def __repr__(self) -> str:
        names = [n for n in dir(self) if not n.startswith("_")]
        return f"<PlotAccessor: {', '.join(names)}>"

    # -- data helpers --------------------------------------------------------------------
    def _by(self, *keys: str, dropna: bool = False) -> pd.DataFrame:
        k = (*keys, dropna)
        if k not in self._groups:
            self._groups[k] = self._cmp.by(*keys, dropna=dropna)
        return self._groups[k]

    def _need(self, *columns: str, hint: str = "") -> None:
        missing = [c for c in columns if c not in self._cmp.tensors.columns]
        if missing:
            raise ValueError(f"This comparison has no column {missing[0]!r}" + (f"; {hint}." if hint else "."))

    def layer_towers(self) -> list[str]:
        """Towers that have per-layer tensors, in reading order."""
        ok = self._cmp.ok
        if "layer" not in ok.columns:
            return []
        return ordered(ok.loc[ok["layer"].notna(), "tower"], "tower")

    def _tower(self, tower: str | None) -> str:
        towers = self.layer_towers()
        if not towers:
            raise ValueError("No analysed tensor has a layer index, so there is nothing to plot by layer.")
        if tower is None:
            return "language" if "language" in towers else towers[0]
        if tower not in towers:
            raise ValueError(f"No layers in tower {tower!r}; towers with layers: {towers}.")
        return tower

    def _layer_frame(self, key: str, tower: str) -> pd.DataFrame:
        """The (layer, key) table of one tower; rows without a layer or a key value left out."""
        df = self._by("tower", "layer", key, dropna=False)
        df = df.xs(tower, level="tower")
        keep = [not is_missing(lay) and not is_missing(k) for lay, k in df.index]
        return df[keep]

    # -- plots ---------------------------------------------------------------------------
    @styled
    def layer_profile(
        self,
        columns: Sequence[str] = ("changed_exact", "rel_update"),
        *,
        tower: str | None = None,
        by: str = "block",
        ax: Any = None,
    ) -> Figure:
        """Per-layer profile: one panel per column, one line per block (or ``by`` value).

        Args:
            columns: group-table columns to plot (default: changed fraction under the
                exact rule and the relative update ‖Δ‖/‖W0‖).
            tower: which tower's layers (default: ``language`` if present).
            by: one line per value of this key (``"block"`` or ``"module"``).
            ax: ``None`` or a sequence of ``len(columns)`` Axes.

        Returns:
            The Figure.
        """
        tower = self._tower(tower)
        df = self._layer_frame(by, tower)
        layers = sorted({int(v) for v in df.index.get_level_values("layer")})
        groups = ordered(df.index.get_level_values(by), by)
        fig, axes = axes_list(ax, len(columns), (9.0, 0.8 + 2.4 * len(columns)), sharex=True)
        marker = "o" if len(layers) <= 40 else None
        for a, col in zip(axes, columns):
            if col not in df.columns:
                raise ValueError(f"No column {col!r} in the layer table; choose from {list(df.columns)}.")
            wide = df[col].unstack(by).reindex(index=layers)
            log = spans_decades(wide.to_numpy()) and col not in ("cosine",)
            for i, g in enumerate(groups):
                y = wide[g].to_numpy(dtype=float) if g in wide.columns else np.full(len(layers), np.nan)
                if np.isnan(y).all():
                    continue
                color = color_of(g, by, i)
                if not finite_positive(np.abs(y)).size:  # all zero: say so instead of hiding a flat line
                    a.plot([], [], color=color, lw=1.5, label=f"{g} (0 in every layer)")
                    if not log:
                        a.plot(layers, y, color=color, lw=1.0, alpha=0.6)
                    continue
                a.plot(layers, y, color=color, lw=1.5, marker=marker, ms=3, label=str(g))
            if log:
                a.set_yscale("log")
            format_axis(a.yaxis, col, log)
            a.set_ylabel(column_label(col))
            if not log and is_fraction_column(col):
                a.set_ylim(bottom=0)
        axes[-1].set_xlabel(f"layer ({tower} tower)")
        axes[-1].xaxis.get_major_locator().set_params(integer=True)
        legend_right(axes[0], title=by)
        fig.suptitle(f"Update by layer, {tower} tower")
        return fig

    @styled
    def heatmap(
        self,
        column: str = "energy_share",
        *,
        rows: str = "module",
        tower: str | None = None,
        log: bool | None = None,
        cmap: str = "viridis",
        ax: Axes | None = None,
    ) -> Axes:
        """Layer × module (or × expert, × block) heatmap of one group-table column.

        Experts are aggregated into their module for ``rows="module"``; use
        ``rows="expert"`` for an MoE model's layer × expert map. White cells are exactly
        zero (on a log scale), grey cells have no tensor or no value.

        Args:
            column: e.g. ``"energy_share"``, ``"changed_exact"``, ``"rel_update"``.
            rows: ``"module"``, ``"expert"`` or ``"block"``.
            tower: which tower's layers (default: ``language`` if present).
            log: log colour scale; default when values span more than two decades.
            cmap: a matplotlib colormap (default viridis, perceptually uniform).
        """
        from matplotlib import colormaps
        from matplotlib.colors import LogNorm, Normalize

        if rows not in ("module", "expert", "block"):
            raise ValueError(f"rows must be 'module', 'expert' or 'block', got {rows!r}")
        tower = self._tower(tower)
        df = self._layer_frame(rows, tower)
        if column not in df.columns:
            raise ValueError(f"No column {column!r} in the layer × {rows} table; choose from {list(df.columns)}.")
        if df.empty:
            raise ValueError(f"No {rows} values in the layers of the {tower} tower (is this an MoE model?).")
        wide = df[column].unstack("layer")
        row_names = ordered(wide.index, rows)
        layers = sorted(wide.columns)
        wide = wide.reindex(index=row_names, columns=layers)
        values = wide.to_numpy(dtype=float)
        positive = finite_positive(values)
        log = spans_decades(values) if log is None else log
        cm = colormaps[cmap].with_extremes(bad=NA_COLOR, under="white")
        finite = values[np.isfinite(values)]
        nonneg = bool(finite.size) and float(finite.min()) >= 0
        # Exact zeros (frozen cells) get their own colour, white, when the rest is positive.
        white_zero = nonneg and bool((finite == 0).any()) and bool(positive.size)
        if log and positive.size:
            vmin, vmax = float(positive.min()), float(positive.max())
            norm: Any = LogNorm(vmin=vmin, vmax=vmax if vmax > vmin else vmin * 10)
            shown = np.where(values <= 0, vmin / 10, values)  # zeros -> the "under" colour
        else:
            lo = min(0.0, float(finite.min())) if finite.size else 0.0
            hi = float(finite.max()) if finite.size else 1.0
            norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1)
            shown = np.where(values == 0, -abs(hi) if white_zero else 0.0, values) if white_zero else values
            log = False
        n_rows, n_cols = values.shape
        ax = one_axes(ax, (min(14.0, max(6.5, 2.8 + 0.1 * n_cols)), min(12.0, max(2.8, 1.3 + 0.26 * n_rows))))
        mesh = ax.pcolormesh(np.ma.masked_invalid(shown), cmap=cm, norm=norm, shading="flat")
        ax.set_xlim(0, n_cols)
        ax.set_ylim(n_rows, 0)
        ax.grid(False)
        thin_ticks(ax.xaxis, layers, 24, offset=0.5)
        thin_ticks(ax.yaxis, row_names, 40, offset=0.5)
        ax.tick_params(length=2)
        ax.set_xlabel(f"layer ({tower} tower)")
        ax.set_ylabel(rows)
        cb = ax.figure.colorbar(mesh, ax=ax, extend="min" if white_zero else "neither", fraction=0.05, pad=0.02)
        cb.set_label(column_label(column) + (", log scale" if log else ""))
        format_axis(cb.ax.yaxis, column, log)
        notes = []
        if white_zero:
            notes.append("white = exactly 0")
        if np.isnan(values).any():
            notes.append("grey = no tensor")
        title = f"{column_title(column)} by layer and {rows}, {tower} tower"
        ax.set_title(title + (f" ({'; '.join(notes)})" if notes else ""))
        return ax

    @styled
    def block_bars(
        self, columns: Sequence[str] = ("numel_share", "energy_share"), *, by: str = "block", ax: Axes | None = None
    ) -> Axes:
        """Horizontal bars per block (or ``by`` value): by default each block's share of
        the parameters next to its share of the update energy."""
        return self._bars(by, columns, None, ax)

    @styled
    def module_bars(
        self, columns: Sequence[str] = ("numel_share", "energy_share"), *, top: int = 25, ax: Axes | None = None
    ) -> Axes:
        """Like :meth:`block_bars` by module (experts aggregated into their module), the
        ``top`` modules by the last column."""
        return self._bars("module", columns, top, ax)

    def _bars(self, key: str, columns: Sequence[str], top: int | None, ax: Axes | None) -> Axes:
        df = self._by(key)
        for c in columns:
            if c not in df.columns:
                raise ValueError(f"No column {c!r} in the {key} table; choose from {list(df.columns)}.")
        groups = ordered(df.index, key)
        note = ""
        if top is not None and len(groups) > top:
            groups = list(df[columns[-1]].reindex(groups).sort_values(ascending=False, kind="stable").index[:top])
            note = f" (top {top} of {len(df)} by {columns[-1]})"
        n, k = len(groups), len(columns)
        ax = one_axes(ax, (8.5, min(14.0, 1.2 + n * (0.1 + 0.15 * k))))
        height = 0.8 / k
        y = np.arange(n)
        values = df.loc[groups, list(columns)].to_numpy(dtype=float)
        log = spans_decades(values) and not all(c.endswith("_share") for c in columns)
        for j, c in enumerate(columns):
            v = values[:, j]
            pos = y - 0.4 + height * (j + 0.5)
            color = SERIES[j % len(SERIES)]
            ax.barh(pos, np.nan_to_num(v), height=height * 0.92, color=color, label=column_label(c))
            if n * k <= 80:
                for p, val in zip(pos, v):
                    if np.isfinite(val):
                        ax.text(val, p, " " + fmt_number(val, c), va="center", fontsize=7)
        ax.set_yticks(y)
        ax.set_yticklabels([str(g) for g in groups])
        ax.set_ylim(n - 0.5, -0.5)
        if log:
            ax.set_xscale("log")
        same_unit = len({is_fraction_column(c) for c in columns}) == 1
        format_axis(ax.xaxis, columns[0] if same_unit else "", log)
        if k == 1:
            ax.set_xlabel(column_label(columns[0]))
        elif all(c.endswith("_share") for c in columns):
            ax.set_xlabel("share of the whole model (%)")
        else:
            ax.set_xlabel("value (see legend)")
        ax.margins(x=0.15)
        ax.grid(axis="y", visible=False)
        ax.set_ylabel(key)
        if k > 1:
            legend_right(ax)
        title = (
            "Parameters vs update energy"
            if list(columns) == ["numel_share", "energy_share"]
            else (" vs ".join(column_title(c) for c in columns))
        )
        ax.set_title(f"{title}, by {key}{note}")
        return ax

    @styled
    def sparsity_rules(self, *, by: str = "block", ax: Axes | None = None) -> Axes:
        """Changed fraction under every sparsity rule of the run (dots per ``by`` value,
        black bars for the whole model): how much the answer to "how sparse?" depends
        on the tolerance. Groups unchanged under every rule are named in the title."""
        cmp = self._cmp
        rules = [c for c in cmp.tensors.columns if c.startswith("changed_")]
        if not rules:
            raise ValueError("This comparison has no changed_* columns.")
        df = self._by(by)
        model = self._by().iloc[0]
        groups = ordered(df.index, by)
        frozen = [g for g in groups if (df.loc[g, rules].fillna(0) == 0).all()]
        shown = [g for g in groups if g not in frozen]
        values = df.loc[shown, rules].to_numpy(dtype=float) if shown else np.zeros((0, len(rules)))
        allv = np.concatenate([values.ravel(), model[rules].to_numpy(dtype=float)])
        log = spans_decades(allv)
        ax = one_axes(ax, (8.0, 1.4 + 0.42 * len(rules)))
        y = np.arange(len(rules))
        mv = model[rules].to_numpy(dtype=float)
        lo = float(finite_positive(allv).min()) / 2 if log and finite_positive(allv).size else 0.0
        if log:  # a bar's length means nothing on a log axis: mark the value instead
            ax.scatter(
                np.where(mv > 0, mv, lo),
                y,
                marker="|",
                s=400,
                linewidths=2.5,
                color=OKABE_ITO["black"],
                zorder=2,
                label="whole model",
            )
        else:
            ax.barh(y, np.nan_to_num(mv), height=0.18, color=OKABE_ITO["black"], label="whole model")
        for i, g in enumerate(shown):
            v = values[i]
            color = color_of(g, by, i)
            plot_v = np.where(v > 0, v, lo) if log else v
            zero = log & (v <= 0)
            mk = MARKERS[i % len(MARKERS)]
            ax.scatter(plot_v[~zero], y[~zero], color=color, marker=mk, s=30, zorder=3, label=str(g))
            if zero.any():
                ax.scatter(plot_v[zero], y[zero], facecolors="none", edgecolors=color, marker=mk, s=30, zorder=3)
        for yi, v in zip(y, mv):
            if np.isfinite(v):
                ax.annotate(
                    fmt_number(v, "changed_"),
                    (v if not log or v > 0 else lo, yi),
                    xytext=(4, -9),
                    textcoords="offset points",
                    fontsize=7,
                )
        if log:
            ax.set_xscale("log")
        format_axis(ax.xaxis, "changed_", log)
        ax.set_yticks(y)
        ax.set_yticklabels([rule_label(r[8:]) for r in rules])
        ax.set_ylim(len(rules) - 0.5, -0.5)
        any_zero = log and bool((values <= 0).any())
        note = (", log scale; open marker = 0)" if any_zero else ", log scale)") if log else ")"
        ax.set_xlabel("changed coordinates (%" + note)
        ax.set_ylabel("rule: a coordinate counts as changed if")
        legend_right(ax, title=by)
        title = "Sparsity under each tolerance rule"
        if frozen:
            title += f"\nunchanged under every rule: {', '.join(map(str, frozen))}"
        ax.set_title(title)
        return ax

    @styled
    def ulp_shares(self, *, by: str = "block", ax: Axes | None = None) -> Axes:
        """Among the exactly-changed coordinates of each group: the share that moved by
        ≤ 1, 2 and > 2 ULP of the stored dtype (1 ULP = the smallest visible step)."""
        self._need("ulp1_share", hint="run compare() with ulp=True (the default)")
        df = self._by(by)
        groups = [g for g in ordered(df.index, by) if df.loc[g, "n_changed_exact"] and df.loc[g, "n_changed_exact"] > 0]
        if not groups:
            raise ValueError("No coordinate changed, so there is no ULP breakdown to plot.")
        cols = ["ulp1_share", "ulp2_share", "ulp3plus_share"]
        names = ["≤ 1 ULP", "2 ULP", "> 2 ULP"]
        colors = [OKABE_ITO["sky_blue"], OKABE_ITO["blue"], OKABE_ITO["vermillion"]]
        ax = one_axes(ax, (8.0, 1.3 + 0.35 * len(groups)))
        left = np.zeros(len(groups))
        y = np.arange(len(groups))
        for c, name, color in zip(cols, names, colors):
            v = df.loc[groups, c].to_numpy(dtype=float)
            v = np.nan_to_num(v)
            ax.barh(y, v, left=left, color=color, label=name, height=0.7)
            for yi, lft, val in zip(y, left, v):
                if val >= 0.06:
                    ax.text(
                        lft + val / 2,
                        yi,
                        pct_text(val),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if color != OKABE_ITO["sky_blue"] else "black",
                    )
            left += v
        ax.set_yticks(y)
        ax.set_yticklabels([str(g) for g in groups])
        ax.set_ylim(len(groups) - 0.5, -0.5)
        ax.set_xlim(0, 1)
        format_axis(ax.xaxis, "changed_", False)
        ax.set_xlabel("share of the exactly-changed coordinates (%)")
        ax.set_ylabel(by)
        ax.grid(axis="y", visible=False)
        legend_right(ax, title="|Δ| in ULP(w0)")
        ax.set_title("Size of the changes in units of the stored dtype's rounding step")
        return ax

    # -- spectral family -----------------------------------------------------------------
    def _projection_columns(self, side: str) -> dict[str, tuple[str, str | None, str | None]]:
        """r label -> (observed, expected, enrichment) columns of one side (``"2"``,
        ``"left"``, ``"right"``: the spectral family's ``proj2_<r>``, ``proj_left_<r>`` ...)."""
        cols = self._cmp.tensors.columns
        prefix = "proj2" if side == "2" else f"proj_{side}"
        out: dict[str, tuple[str, str | None, str | None]] = {}
        for c in cols:
            m = re.fullmatch(rf"{re.escape(prefix)}_(\d+(?:\.\d+)?pct)", c)
            if m:
                r = m.group(1)
                exp, enr = f"{c}_expected", f"{c}_enrichment"
                out[r] = (c, exp if exp in cols else None, enr if enr in cols else None)
        return dict(sorted(out.items(), key=lambda kv: float(kv[0][:-3])))

    def _energy_weighted(self, key: str, column: str) -> pd.Series:
        """Group value of a per-tensor share as Σ energy·value / Σ energy over the tensors
        where it is defined -- the group's own share when the value is a fraction of
        each tensor's ‖Δ‖² (e.g. a projection); used when no group column exists."""
        ok = self._cmp.ok
        v = pd.to_numeric(ok[column], errors="coerce")
        e = ok["energy"].astype(float)
        keep = v.notna() & (e > 0)
        num = (v[keep] * e[keep]).groupby(ok.loc[keep, key]).sum()
        den = e[keep].groupby(ok.loc[keep, key]).sum()
        return num / den

    def _group_values(self, key: str, column: str) -> pd.Series:
        df = self._by(key)
        if column in df.columns and df[column].notna().any():
            return df[column]
        return self._energy_weighted(key, column)

    @styled
    def projection(self, *, side: str = "2", by: str = "module", ax: Axes | None = None) -> Axes:
        """How much of the update lies in W0's principal subspaces, relative to a random
        direction (enrichment = observed / expected; 1 = chance, < 1 = the update avoids
        the principal subspace), one dot per fraction r of the spectrum, per module.

        Args:
            side: ``"2"``: two-sided ‖U_kᵀΔV_k‖² (random expectation k²/(mn));
                ``"left"``: ‖U_kᵀΔ‖² (k/m); ``"right"``: ‖ΔV_k‖² (k/n).
            by: group key (default ``module``).
        """
        cols = self._projection_columns(side)
        if not cols:
            prefix = "proj2" if side == "2" else f"proj_{side}"
            raise ValueError(
                f"This comparison has no principal-subspace projection columns ({prefix}_*); " + _SPECTRAL_HINT + "."
            )
        ratios: dict[str, pd.Series] = {}
        for r, (obs, exp, _enr) in cols.items():
            if exp is None:
                raise ValueError(f"No expectation column for {obs!r} ({obs}_expected), cannot compare with random.")
            ratio = self._group_values(by, obs) / self._group_values(by, exp)
            ratios[r] = ratio.replace([np.inf, -np.inf], np.nan).dropna()
        groups = ordered([g for v in ratios.values() for g in v.index], by)
        if not groups:
            raise ValueError("No tensor has a projection value (the update may be zero everywhere).")
        ax = one_axes(ax, (8.0, 1.4 + 0.3 * max(3, len(groups))))
        y = np.arange(len(groups))
        for i, (r, ratio) in enumerate(ratios.items()):
            x = ratio.reindex(groups).to_numpy(dtype=float)
            ax.scatter(
                x,
                y,
                s=32,
                zorder=3,
                color=SERIES[i % len(SERIES)],
                marker=MARKERS[i % len(MARKERS)],
                label=f"top {r[:-3]}%",
            )
        ax.axvline(1.0, color=OKABE_ITO["black"], lw=1, ls="--", zorder=2)
        ax.annotate(
            "random direction",
            (1.0, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            fontsize=7,
            va="top",
        )
        ax.set_xscale("log")
        vals = finite_positive(np.concatenate([v.to_numpy(dtype=float) for v in ratios.values()]))
        lo, hi = min(float(vals.min()), 1.0), max(float(vals.max()), 1.0)
        ax.set_xlim(lo / 1.6, hi * 1.6)
        from matplotlib.ticker import FuncFormatter

        format_axis(ax.xaxis, "", True)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.set_yticks(np.arange(len(groups)))
        ax.set_yticklabels([str(g) for g in groups])
        ax.set_ylim(len(groups) - 0.5, -0.5)
        ax.set_xlabel("energy of Δ in W0's top-r% subspace, observed / random expectation (log)")
        ax.set_ylabel(by)
        legend_right(ax, title="subspace")
        ax.set_title(f"Principal-subspace projection ({'two-sided' if side == '2' else side}) vs random")
        return ax

    @styled
    def effective_rank(self, column: str | None = None, *, by: str = "module", ax: Axes | None = None) -> Axes:
        """Distribution over tensors of Δ's effective rank as a fraction of min(m, n),
        one box per module (median line, quartile box; dots are tensors)."""
        candidates = [column] if column else ["effective_rank_frac", "effective_rank"]
        col = next((c for c in candidates if c in self._cmp.tensors.columns), None)
        if col is None:
            raise ValueError(f"This comparison has no {candidates[0]!r} column; " + _SPECTRAL_HINT + ".")
        ok = self._cmp.ok
        v = pd.to_numeric(ok[col], errors="coerce")
        data = pd.DataFrame({by: ok[by], "block": ok["block"], "_v": v})[v.notna()]
        if data.empty:
            raise ValueError(f"No tensor has a value of {col!r} (spectral metrics cover 2-D tensors with Δ ≠ 0).")
        groups = ordered(data[by], by)
        ax = one_axes(ax, (8.0, 1.3 + 0.36 * len(groups)))
        series = [data.loc[data[by] == g, "_v"].to_numpy(dtype=float) for g in groups]
        ax.boxplot(
            series,
            **horizontal(),
            widths=0.6,
            showfliers=False,
            medianprops={"color": OKABE_ITO["black"]},
            boxprops={"color": GREY},
            whiskerprops={"color": GREY},
            capprops={"color": GREY},
        )
        rng = np.random.default_rng(0)
        for i, (g, s) in enumerate(zip(groups, series)):
            blocks = data.loc[data[by] == g, "block"].astype(str).to_numpy()
            colors = [BLOCK_COLORS.get(b, GREY) for b in blocks]
            ax.scatter(
                s,
                i + 1 + rng.uniform(-0.18, 0.18, len(s)),
                s=8,
                alpha=0.5 if len(s) > 50 else 0.8,
                c=colors,
                zorder=3,
                linewidths=0,
            )
        ax.set_yticks(np.arange(1, len(groups) + 1))
        ax.set_yticklabels([f"{g} (n={len(s)})" for g, s in zip(groups, series)])
        ax.set_ylim(len(groups) + 0.5, 0.5)
        if is_fraction_column(col):
            ax.set_xlim(0, 1.02)
        format_axis(ax.xaxis, col, False)
        ax.set_xlabel(column_label(col))
        ax.set_ylabel(by)
        ax.set_title("Effective rank of the update per tensor (100% = spread evenly over all directions)")
        return ax

    # -- coords family -------------------------------------------------------------------
    @styled
    def magnitude_profile(self, *, by: str | None = "block", ax: Any = None, **options: Any) -> Figure:
        """Change rate and mean |Δ| by |W0| quantile bin, one line per ``by`` value
        (``None``: the whole model), with the storage dtype's rounding floor: the change
        rate that rounding alone would make of an update blind to |W0| (null models,
        dashed and dotted), and half the dtype's ULP at |W0| (a smaller move rounds away).
        Needs ``compare(..., coords=True)``.

        Args:
            by: group key (``"block"``, ``"module"``, ``"tower"`` ...) or ``None``.
            ax: ``None`` or a sequence of 2 Axes.
            **options: passed to :meth:`Comparison.magnitude_profile`.
        """
        if "magnitude_profile" not in self._cmp.extras:
            raise ValueError("This comparison has no magnitude profile; " + _COORDS_HINT + ".")
        prof = self._cmp.magnitude_profile(by=by, **options)
        return _draw_magnitude_profile(prof, by if by is not None else "", ax)

    # -- spectrum ------------------------------------------------------------------------
    @styled
    def spectrum(
        self,
        name: str,
        *,
        base: Any = None,
        tuned: Any = None,
        index: int | None = None,
        ax: Axes | None = None,
        **source_options: Any,
    ) -> Axes:
        """Singular values of W0, W1 and Δ for one tensor, re-read from the checkpoints
        recorded in the comparison's metadata (or from ``base=``/``tuned=`` if they moved).

        Args:
            name: tensor name in the base checkpoint (see ``cmp.tensors.name``).
            base, tuned: override the recorded sources (paths, Hub ids or Checkpoints).
            index: for a 3-D tensor (stacked experts), which slice of the first axis.
            **source_options: passed to :func:`deltascope.open_checkpoint` (``token`` ...).

        Raises:
            CheckpointNotFoundError: a recorded source is gone (pass ``base=``/``tuned=``).
            ValueError: the tensor is not in the comparison or is not a matrix.
        """
        import torch

        w0, w1, row = self._read_pair(name, base, tuned, source_options)
        if w0.ndim == 3:
            if index is None:
                raise ValueError(f"{name!r} is 3-D {tuple(w0.shape)} (stacked experts?): pass index= to pick a slice.")
            w0, w1 = w0[index], w1[index]
        if w0.ndim != 2:
            raise ValueError(f"A spectrum needs a 2-D tensor; {name!r} has shape {tuple(w0.shape)}.")
        # float64 so that singular values of a tiny Δ are not lost to float32 rounding;
        # float32 for very large matrices (SVD cost), said in the title.
        dtype = torch.float64 if w0.numel() <= 16 * 2**20 else torch.float32
        a, b = w0.to(dtype), w1.to(dtype)
        s = {k: torch.linalg.svdvals(t).numpy() for k, t in (("W0", a), ("W1", b), ("Δ", b - a))}
        ax = one_axes(ax, (8.0, 4.2))
        i = np.arange(1, len(s["W0"]) + 1)
        ax.plot(i, s["W0"], color=OKABE_ITO["black"], lw=1.6, label="W0 (base)")
        ax.plot(i, s["W1"], color=OKABE_ITO["orange"], lw=1.4, ls="--", label="W1 (tuned)")
        sd = s["Δ"]
        floor = float(sd.max()) * 1e-13 if sd.size else 0.0
        keep = sd > floor
        if keep.any():
            ax.plot(i[keep], sd[keep], color=OKABE_ITO["blue"], lw=1.6, label="Δ = W1 − W0")
            if (~keep).any():
                ax.plot([], [], " ", label=f"({int((~keep).sum())} singular values of Δ ≈ 0 not shown)")
        else:
            ax.plot([], [], " ", label="Δ = 0 (tensor unchanged)")
        ax.set_yscale("log")
        format_axis(ax.yaxis, "", True)
        ax.set_xlabel("index i (singular values in descending order)")
        ax.set_ylabel("singular value σ_i")
        if len(i) > 200:
            ax.set_xscale("log")
            format_axis(ax.xaxis, "", True)
        rel = row.get("rel_update")
        extra = f", ‖Δ‖/‖W0‖ = {fmt_number(rel)}" if rel is not None and np.isfinite(rel) else ""
        ax.set_title(
            f"Spectrum of {short_name(name, 60)}\nshape {tuple(w0.shape)}, {row.get('dtype_base')}{extra}"
            + (" (float32 SVD)" if dtype == torch.float32 else "")
        )
        legend_right(ax)
        return ax

    def _read_pair(self, name: str, base: Any, tuned: Any, options: dict[str, Any]) -> tuple[Any, Any, dict]:
        from .. import open_checkpoint
        from ..errors import CheckpointNotFoundError, DeltascopeError

        t = self._cmp.tensors
        hit = t[t["name"] == name]
        if hit.empty:
            example = self._cmp.top(1)["name"].tolist() if len(self._cmp.ok) else []
            raise ValueError(
                f"No tensor {name!r} in this comparison" + (f" (e.g. {example[0]!r})" if example else "") + "."
            )
        row = hit.iloc[0].to_dict()
        names = {"base": name, "tuned": row.get("tuned_name") or name}
        out = []
        for side, override in (("base", base), ("tuned", tuned)):
            spec = override if override is not None else source_spec(self._cmp.metadata.get(side) or {})
            if spec is None:
                raise CheckpointNotFoundError(
                    f"The comparison does not record where its {side} checkpoint came from; pass {side}=PATH.",
                    path=None,
                )
            try:
                ck = open_checkpoint(spec, **options)
            except (DeltascopeError, OSError) as e:
                raise CheckpointNotFoundError(
                    f"Cannot re-read {names[side]!r} for its spectrum: the {side} checkpoint {str(spec)!r} recorded in "
                    f"this result is not available ({e}). Pass {side}=... with its current location.",
                    path=str(spec),
                ) from e
            try:
                if names[side] not in ck:
                    raise CheckpointNotFoundError(
                        f"The {side} checkpoint {str(spec)!r} no longer holds tensor {names[side]!r}; "
                        f"was it replaced since the comparison? Pass {side}=... with the compared checkpoint.",
                        path=str(spec),
                    )
                w = ck.read(names[side]).clone()
            finally:
                if ck is not spec:
                    ck.close()
            if list(w.shape) != list(row.get("shape") or w.shape):
                raise ValueError(
                    f"{names[side]!r} in {str(spec)!r} now has shape {tuple(w.shape)}, not the compared "
                    f"{tuple(row['shape'])}: the checkpoint changed since the comparison."
                )
            out.append(w)
        return out[0], out[1], row


def source_spec(side: dict[str, Any]) -> str | None:
    """The spec to re-open a recorded source, pinned to the resolved Hub revision."""
    spec = side.get("spec")
    if spec is None:
        return None
    spec = str(spec)
    rev = side.get("revision")
    if side.get("kind") == "hub" and rev:
        return spec.split("@", 1)[0] + "@" + str(rev)
    return spec


def _draw_magnitude_profile(prof: pd.DataFrame, by: str, ax: Any) -> Figure:
    """Two panels from :func:`deltascope.family_coords.magnitude_profile` (columns
    ``mean_abs_w0``, ``change_rate_exact``, ``null_change_rate``,
    ``null_change_rate_offgrid``, ``mean_abs_delta``, ``mean_ulp``)."""
    need = ["mean_abs_w0", "change_rate_exact", "mean_abs_delta", "mean_ulp"]
    missing = [c for c in need if c not in prof.columns]
    if missing:
        raise ValueError(f"The magnitude profile lacks columns {missing}; was it made by an older deltascope?")
    frame = prof.reset_index()
    groups = ordered(frame[by], by) if by in frame.columns else [None]
    changed = [g for g in groups if g is None or frame.loc[frame[by] == g, "change_rate_exact"].fillna(0).gt(0).any()]
    frozen = [g for g in groups if g not in changed]
    fig, axes = axes_list(ax, 2, (9.0, 6.4), sharex=True)
    nulls = [
        ("null_change_rate", "--", "rounding null, from stored w0"),
        ("null_change_rate_offgrid", ":", "rounding null, off-grid start"),
    ]
    nulls = [n for n in nulls if n[0] in frame.columns]
    for i, g in enumerate(changed):
        part = frame if g is None else frame[frame[by] == g]
        part = part.sort_values("mean_abs_w0")
        x = part["mean_abs_w0"].to_numpy(dtype=float)
        color = color_of(g, by, i) if g is not None else SERIES[0]
        label = "all" if g is None else str(g)
        mk = MARKERS[i % len(MARKERS)]
        axes[0].plot(
            x, part["change_rate_exact"].to_numpy(dtype=float), color=color, marker=mk, ms=3.5, lw=1.6, label=label
        )
        for col, ls, _ in nulls:
            axes[0].plot(x, part[col].to_numpy(dtype=float), color=color, ls=ls, lw=1.1)
        axes[1].plot(
            x, part["mean_abs_delta"].to_numpy(dtype=float), color=color, marker=mk, ms=3.5, lw=1.6, label=label
        )
        axes[1].plot(x, part["mean_ulp"].to_numpy(dtype=float) / 2, color=color, ls="--", lw=1.1)
    for _, ls, text in nulls:
        axes[0].plot([], [], color=GREY, ls=ls, lw=1.1, label=text)
    axes[1].plot([], [], color=GREY, ls="--", lw=1.1, label="½ ULP of the dtype at |W0|")
    rates = frame.loc[frame[by].isin(changed) if by in frame.columns else slice(None), "change_rate_exact"]
    log_rate = spans_decades(rates)
    if log_rate:
        axes[0].set_yscale("log")
    else:
        axes[0].set_ylim(bottom=0)
    format_axis(axes[0].yaxis, "changed_", log_rate)
    axes[0].set_ylabel("changed coordinates, exact (%)")
    axes[1].set_ylabel("mean |Δ| in the bin")
    axes[1].set_yscale("log")
    format_axis(axes[1].yaxis, "", True)
    if spans_decades(frame["mean_abs_w0"], 1.0):
        axes[1].set_xscale("log")
        format_axis(axes[1].xaxis, "", True)
    axes[1].set_xlabel("mean |W0| of the bin (bins are quantiles of |W0| within each tensor)")
    legend_right(axes[0], title=by if by in frame.columns else None)
    legend_right(axes[1], title=by if by in frame.columns else None)
    title = "Change rate and |Δ| by source magnitude |W0|"
    if frozen:
        title += f"\n(unchanged, not shown: {', '.join(map(str, frozen))})"
    fig.suptitle(title)
    return fig


# -- several comparisons side by side ------------------------------------------------------
@styled
def compare_runs(
    comparisons: Sequence[Comparison],
    labels: Sequence[str] | None = None,
    *,
    by: str = "block",
    columns: Sequence[str] = ("changed_exact", "energy_share", "rel_update"),
    layer_column: str | None = "rel_update",
    tower: str | None = None,
    ax: Any = None,
) -> Figure:
    """Two or more comparisons side by side (e.g. OPD vs SFT vs RL of one base): one
    panel per column with bars per run and ``by`` group, and (if the runs have layers)
    a per-layer line of ``layer_column`` per run.

    Args:
        comparisons: the runs.
        labels: a name per run (default: the tuned checkpoint's folder name).
        by: group key of the bar panels.
        columns: group-table columns, one panel each.
        layer_column: column of the per-layer panel, or ``None`` for no such panel.
        tower: tower of the per-layer panel (default ``language``).
        ax: ``None`` or a sequence of ``len(columns) (+1)`` Axes.

    Returns:
        The Figure.
    """
    cmps = list(comparisons)
    if len(cmps) < 2:
        raise ValueError("compare_runs needs at least two comparisons.")
    if labels is None:
        labels = [_run_label(c, i) for i, c in enumerate(cmps)]
    labels = list(labels)
    if len(labels) != len(cmps):
        raise ValueError(f"Got {len(labels)} labels for {len(cmps)} comparisons.")
    tables = [c.by(by) for c in cmps]
    groups = ordered([g for t in tables for g in t.index], by)
    for c in columns:
        for lab, t in zip(labels, tables):
            if c not in t.columns:
                raise ValueError(f"Run {lab!r} has no column {c!r}.")
    accessors = [c.plot for c in cmps]
    with_layers = layer_column is not None and all(a.layer_towers() for a in accessors)
    n_panels = len(columns) + (1 if with_layers else 0)
    n_runs = len(cmps)
    bar_h = 1.2 + len(groups) * (0.16 + 0.12 * n_runs)
    if ax is None:
        fig = new_figure((max(9.0, 3.4 * len(columns)), bar_h + (3.0 if with_layers else 0.0)))
        mosaic = [[f"c{i}" for i in range(len(columns))]]
        heights = [bar_h]
        if with_layers:
            mosaic.append(["layers"] * len(columns))
            heights.append(3.0)
        named = fig.subplot_mosaic(mosaic, height_ratios=heights)
        axes = [named[f"c{i}"] for i in range(len(columns))] + ([named["layers"]] if with_layers else [])
    else:
        fig, axes = axes_list(ax, n_panels, (1, 1))
    height = 0.8 / n_runs
    y = np.arange(len(groups))
    for a, col in zip(axes, columns):
        vals = np.array([[t[col].get(g, np.nan) for g in groups] for t in tables], dtype=float)
        log = spans_decades(vals) and not col.endswith("_share")
        for j, lab in enumerate(labels):
            pos = y - 0.4 + height * (j + 0.5)
            a.barh(pos, np.nan_to_num(vals[j]), height=height * 0.92, color=SERIES[j % len(SERIES)], label=lab)
            if len(groups) * n_runs <= 80:  # tell "zero" from "not in this run" where no bar shows
                for p, v in zip(pos, vals[j]):
                    if not np.isfinite(v) or v == 0:
                        a.text(
                            0,
                            p,
                            " 0" if np.isfinite(v) else " n/a",
                            va="center",
                            fontsize=6,
                            color=SERIES[j % len(SERIES)],
                            transform=a.get_yaxis_transform(),
                        )
        if log:
            a.set_xscale("log")
        format_axis(a.xaxis, col, log)
        a.set_xlabel(column_label(col))
        a.set_yticks(y)
        a.set_yticklabels([str(g) for g in groups] if a is axes[0] else [])
        a.set_ylim(len(groups) - 0.5, -0.5)
        a.grid(axis="y", visible=False)
    axes[0].set_ylabel(by)
    if with_layers:
        la = axes[-1]
        assert layer_column is not None
        allv = []
        for j, (acc, lab) in enumerate(zip(accessors, labels)):
            tw = acc._tower(tower)
            df = acc._by("tower", "layer", dropna=True).xs(tw, level="tower")
            if layer_column not in df.columns:
                raise ValueError(f"Run {lab!r} has no column {layer_column!r}.")
            v = df[layer_column].to_numpy(dtype=float)
            allv.append(v)
            layers = df.index.to_numpy(dtype=float)
            la.plot(
                layers,
                v,
                color=SERIES[j % len(SERIES)],
                lw=1.5,
                marker="o" if len(layers) <= 40 else None,
                ms=3,
                label=lab,
            )
        log = spans_decades(np.concatenate(allv))
        if log:
            la.set_yscale("log")
        format_axis(la.yaxis, layer_column, log)
        la.set_ylabel(column_label(layer_column))
        la.set_xlabel(f"layer ({tower or 'language'} tower; all blocks)")
        la.xaxis.get_major_locator().set_params(integer=True)
    handles, labs = axes[0].get_legend_handles_labels()
    constrained = type(fig.get_layout_engine()).__name__ == "ConstrainedLayoutEngine"
    fig.legend(handles, labs, loc="outside lower center" if constrained else "lower center", ncols=min(len(labs), 6))
    fig.suptitle(f"{len(cmps)} runs side by side, by {by}")
    return fig


def _run_label(cmp: Comparison, i: int) -> str:
    spec = str((cmp.metadata.get("tuned") or {}).get("spec") or f"run {i + 1}")
    parts = [p for p in re.split(r"[/\\]", spec) if p]
    return short_name(parts[-1] if parts else spec, 28)
