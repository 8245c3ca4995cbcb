"""The look and plumbing shared by deltascope's plots: the colour-blind-safe palette,
fixed colours per block, axis labels with units, log-scale and tick rules, and how
figures are created (pyplot-managed in a session, off screen for files and reports)."""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..display import is_fraction_column
from ..naming import BLOCKS, TOWERS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "OKABE_ITO",
    "BLOCK_COLORS",
    "SERIES",
    "MARKERS",
    "STYLE",
    "style",
    "offscreen",
    "new_figure",
    "column_label",
    "column_title",
    "rule_label",
    "spans_decades",
    "ordered",
]

#: The Okabe-Ito palette (Okabe & Ito 2008), safe for the common colour-vision deficiencies.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
}
GREY = "#8C8C8C"
NA_COLOR = "#D9D9D9"
#: One colour per block, the same in every plot.
BLOCK_COLORS = {
    "attention": OKABE_ITO["blue"],
    "mlp": OKABE_ITO["vermillion"],
    "router": OKABE_ITO["bluish_green"],
    "embedding": OKABE_ITO["sky_blue"],
    "lm_head": OKABE_ITO["reddish_purple"],
    "projector": OKABE_ITO["orange"],
    "norm": GREY,
    "other": OKABE_ITO["black"],
}
#: Marker shapes, so groups differ by more than colour.
MARKERS = ["o", "s", "D", "^", "v", "P", "X", "*"]
#: Colours of series without a fixed meaning (runs, columns), in order.
SERIES = [OKABE_ITO[k] for k in ("blue", "vermillion", "bluish_green", "reddish_purple", "orange", "sky_blue", "black")]
TOWER_STYLES = {"language": "-", "vision": "--", "audio": ":", "projector": "-."}
MODULE_ORDER = [
    "q_proj",
    "k_proj",
    "v_proj",
    "qkv_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "gate_up_proj",
    "down_proj",
    "router",
    "input_layernorm",
    "post_attention_layernorm",
    "embed_tokens",
    "embed_positions",
    "final_norm",
    "lm_head",
]

#: The look of every plot (applied inside each plotting call only).
STYLE = {
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.labelsize": 9.0,
    "legend.fontsize": 8.0,
    "legend.frameon": False,
    "xtick.labelsize": 8.0,
    "ytick.labelsize": 8.0,
    "figure.dpi": 100.0,
    "svg.hashsalt": "deltascope",
}

# -- figure plumbing ---------------------------------------------------------------------
_STATE = threading.local()


@contextlib.contextmanager
def offscreen() -> Iterator[None]:
    """Within this block, plots create plain :class:`~matplotlib.figure.Figure` objects
    that pyplot does not track (no GUI, no inline display, freed when dropped): how the
    CLI and the HTML report render, whatever backend the session uses."""
    prev = getattr(_STATE, "offscreen", False)
    _STATE.offscreen = True
    try:
        yield
    finally:
        _STATE.offscreen = prev


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A new figure with constrained layout: pyplot-managed (shows inline in Jupyter)
    unless inside :func:`offscreen`."""
    if getattr(_STATE, "offscreen", False):
        from matplotlib.figure import Figure

        return Figure(figsize=figsize, layout="constrained")
    import matplotlib.pyplot as plt

    return plt.figure(figsize=figsize, layout="constrained")


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Apply :data:`STYLE` and restore exactly those settings afterwards.

    Not ``matplotlib.rc_context``: that restores *every* setting, including the
    ``interactive`` flag Jupyter's inline backend turns on when the first figure of a
    session is made, which would stop later figures from being shown.
    """
    import matplotlib as mpl

    old = {k: mpl.rcParams[k] for k in STYLE}
    mpl.rcParams.update(STYLE)
    try:
        yield
    finally:
        mpl.rcParams.update(old)


def styled(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with style():
            return fn(*args, **kwargs)

    return wrapper


def one_axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is not None:
        return ax
    return new_figure(figsize).add_subplot()


def axes_list(ax: Any, n: int, figsize: tuple[float, float], **kw: Any) -> tuple[Figure, list[Axes]]:
    if ax is None:
        fig = new_figure(figsize)
        axes = list(np.ravel(fig.subplots(n, 1, squeeze=False, **kw)))
        return fig, axes
    axes = list(np.ravel(ax)) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
    if len(axes) != n:
        raise ValueError(f"This plot draws {n} panels; pass ax=None or a sequence of {n} Axes (got {len(axes)}).")
    return axes[0].figure, axes


# -- labels and scales -------------------------------------------------------------------
_LABELS = {
    "changed_exact": "changed coordinates, exact (%)",
    "rel_update": "relative update ‖Δ‖/‖W0‖",
    "energy_share": "share of update energy ‖Δ‖² (%)",
    "numel_share": "share of parameters (%)",
    "energy": "update energy ‖Δ‖²",
    "cosine": "cos(W0, W1)",
    "norm_delta": "‖Δ‖_F",
    "rms_delta": "RMS(Δ)",
    "mean_abs_delta": "mean |Δ|",
    "max_abs_delta": "max |Δ|",
    "ulp1_share": "changes of ≤ 1 ULP (% of changed)",
    "effective_rank_frac": "effective rank of Δ / min(m, n) (%)",
    "stable_rank": "stable rank of Δ",
    "spearman_absdelta_absw0": "Spearman ρ(|Δ|, |W0|)",
}


def rule_label(rule: str) -> str:
    """Human name of a sparsity rule column suffix (``"atol_1e-05"`` -> ``"|Δ| > 1e-05"``)."""
    kind, _, thr = rule.partition("_")
    return {
        "exact": "exact (bitwise)",
        "atol": f"|Δ| > {thr}",
        "rms": f"|Δ| > {thr}·RMS(W0)",
        "rel": f"|Δ| > {thr}·max(|w0|,|w1|)",
    }.get(kind, rule)


_TITLES = {
    "energy_share": "Share of update energy",
    "changed_exact": "Changed coordinates (exact)",
    "rel_update": "Relative update ‖Δ‖/‖W0‖",
    "numel_share": "Share of parameters",
}


def column_title(column: str) -> str:
    """Short title of a column for plot headings."""
    if column in _TITLES:
        return _TITLES[column]
    label = column_label(column).removesuffix(" (%)")
    return label[:1].upper() + label[1:]


def column_label(column: str) -> str:
    """Axis label of a column, with its unit (``%`` for fractions)."""
    if column in _LABELS:
        return _LABELS[column]
    if column.startswith("changed_"):
        return f"changed coordinates, {rule_label(column[8:])} (%)"
    text = column.replace("_", " ")
    return f"{text} (%)" if is_fraction_column(column) else text


def finite_positive(values: Any) -> np.ndarray:
    v = np.asarray(values, dtype=float).ravel()
    return v[np.isfinite(v) & (v > 0)]


def spans_decades(values: Any, decades: float = 2.0) -> bool:
    """True when the positive finite values span more than ``decades`` powers of ten."""
    v = finite_positive(values)
    return v.size >= 2 and float(v.max()) > float(v.min()) * 10**decades


def pct_text(v: float) -> str:
    if v == 0:
        return "0%"
    p = v * 100
    return f"{p:.2g}%" if abs(p) < 1 else f"{p:.3g}%"


def format_axis(axis: Any, column: str, log: bool) -> None:
    """Tick labels of an axis: percentages for fraction columns; on a log axis, plain
    numbers at 1-2-5 steps when it spans few decades (no crowded minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, PercentFormatter

    frac = is_fraction_column(column)
    if not log:
        if frac:
            axis.set_major_formatter(PercentFormatter(1.0))
        return
    lo, hi = (float(v) for v in axis.get_data_interval())
    few = lo > 0 and np.isfinite(hi) and hi / lo < 10**2.5
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if few else (1.0,)))
    axis.set_minor_formatter(NullFormatter())
    axis.set_major_formatter(FuncFormatter(lambda v, _: pct_text(v) if frac else f"{v:g}"))


def short_name(name: str, width: int = 48) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _order_key(kind: str) -> Callable[[Any], tuple]:
    def key(v: Any) -> tuple:
        s = str(v)
        if kind == "block":
            return (BLOCKS.index(s) if s in BLOCKS else len(BLOCKS), s)
        if kind == "tower":
            return (TOWERS.index(s) if s in TOWERS else len(TOWERS), s)
        if kind == "module":
            return (MODULE_ORDER.index(s) if s in MODULE_ORDER else len(MODULE_ORDER), s)
        if kind == "expert":
            return (0, int(s), "") if s.isdigit() else (1, 0, s)
        return (0, s)

    return key


def ordered(values: Any, kind: str) -> list[Any]:
    """Distinct values in deltascope's reading order (blocks as in :data:`BLOCKS`,
    modules q/k/v/o then MLP then norms, experts numerically)."""
    seen = [v for v in dict.fromkeys(values) if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sorted(seen, key=_order_key(kind))


def horizontal() -> dict[str, Any]:
    import matplotlib as mpl

    major, minor = (int(x) for x in mpl.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def color_of(group: Any, kind: str, i: int) -> str:
    if kind == "block" and str(group) in BLOCK_COLORS:
        return BLOCK_COLORS[str(group)]
    return SERIES[i % len(SERIES)]


def legend_right(ax: Axes, **kw: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kw)


def thin_ticks(axis: Any, labels: Sequence[Any], max_labels: int = 40, offset: float = 0.0) -> None:
    """Label at most ``max_labels`` of the categorical positions 0..n-1 (every k-th),
    so 80 layers or hundreds of experts do not overlap."""
    n = len(labels)
    step = max(1, math.ceil(n / max_labels))
    pos = list(range(0, n, step))
    axis.set_ticks([p + offset for p in pos])
    axis.set_ticklabels([str(labels[i]) for i in pos])


def is_missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))
