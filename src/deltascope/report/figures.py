"""The set of figures a report shows for a comparison, each with a caption saying how to
read it, and off-screen rendering to PNG/SVG bytes."""

from __future__ import annotations

import functools
import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .style import offscreen, style

if TYPE_CHECKING:
    from ..comparison import Comparison

__all__ = ["PlotSpec", "report_figures", "render"]


@dataclass
class PlotSpec:
    """One figure of a report: a stable ``key`` (file name), its section, a title, a
    caption saying how to read it, and ``draw`` -- a function that makes it."""

    key: str
    section: str
    title: str
    caption: str
    draw: Callable[[], Any]


def report_figures(cmp: Comparison, *, spectra: Any = "auto") -> tuple[list[PlotSpec], list[str]]:
    """The figures a report shows for ``cmp`` and notes on the ones left out.

    Args:
        cmp: the comparison.
        spectra: tensor names for :meth:`PlotAccessor.spectrum`, ``"auto"`` (the 2-D
            tensor with the most update energy, if both sources are local paths that still
            exist), or ``None``/``0`` for none.

    Returns:
        (figures, notes).
    """
    p = cmp.plot
    specs: list[PlotSpec] = []
    notes: list[str] = []
    if not len(cmp.ok):
        return specs, ["No tensor was analysed, so there is nothing to plot."]
    specs.append(
        PlotSpec(
            "block_bars",
            "blocks",
            "Where the update lands, by block",
            "Each block's share of the model's parameters (blue) next to its share of the update energy ‖Δ‖² "
            "(vermillion). A block whose energy bar is much longer than its parameter bar attracts the update.",
            p.block_bars,
        )
    )
    for tower in p.layer_towers():
        specs.append(
            PlotSpec(
                f"layer_profile_{tower}",
                "layers",
                f"Per-layer profile, {tower} tower",
                "One line per block. Top: share of coordinates whose stored value changed (exact rule). Bottom: "
                "relative update ‖Δ‖/‖W0‖. Log scales when values span decades; blocks that never change are listed "
                "in the legend.",
                functools.partial(p.layer_profile, tower=tower),
            )
        )
        specs.append(
            PlotSpec(
                f"heatmap_energy_share_{tower}",
                "layers",
                f"Update energy by layer and module, {tower} tower",
                "Share of the whole update energy in each (layer, module) cell; experts are summed into their module. "
                "Bright cells hold the update; white cells did not change at all.",
                functools.partial(p.heatmap, "energy_share", tower=tower),
            )
        )
        specs.append(
            PlotSpec(
                f"heatmap_changed_exact_{tower}",
                "layers",
                f"Changed coordinates by layer and module, {tower} tower",
                "Fraction of each (layer, module) cell's coordinates whose stored value changed (exact rule).",
                functools.partial(p.heatmap, "changed_exact", tower=tower),
            )
        )
        ok = cmp.ok
        experts = ok.loc[(ok["tower"] == tower) & ok["expert"].notna() & ok["layer"].notna(), "expert"]
        if experts.nunique() > 1:
            specs.append(
                PlotSpec(
                    f"heatmap_experts_{tower}",
                    "experts",
                    f"Update energy by layer and expert, {tower} tower",
                    "MoE experts: each cell sums an expert's tensors in one layer. Experts that were never routed to "
                    "during tuning typically stay white (unchanged).",
                    functools.partial(p.heatmap, "energy_share", rows="expert", tower=tower),
                )
            )
    specs.append(
        PlotSpec(
            "module_bars",
            "modules",
            "Where the update lands, by module",
            "Share of parameters and of update energy per canonical module (q_proj, down_proj ...; experts summed).",
            p.module_bars,
        )
    )
    specs.append(
        PlotSpec(
            "sparsity_rules",
            "sparsity",
            "Sparsity under each tolerance rule",
            "Changed fraction of each block (dots) and of the whole model (black bars, labelled) under every rule the "
            "run computed. The spread between rules is how much 'sparsity' depends on the tolerance: for bf16 "
            "checkpoints, absolute tolerances like 1e-5 mostly re-count the dtype's rounding.",
            p.sparsity_rules,
        )
    )
    if "ulp1_share" in cmp.tensors.columns and (cmp.ok["n_changed_exact"].fillna(0) > 0).any():
        specs.append(
            PlotSpec(
                "ulp_shares",
                "sparsity",
                "Size of the changes in ULPs of the stored dtype",
                "Of the coordinates that changed, the share that moved by one rounding step (ULP) of the stored dtype, "
                "two, or more. Mostly-1-ULP changes sit at the rounding floor: a slightly smaller update would not "
                "have been visible at all.",
                p.ulp_shares,
            )
        )
    if p._projection_columns("2"):
        specs.append(
            PlotSpec(
                "projection",
                "spectral",
                "Principal-subspace projection vs random",
                "Energy of Δ inside W0's top-r% singular subspaces divided by what a random direction would put there. "
                "1× (dashed) is chance; dots left of it mean the update avoids W0's principal directions.",
                p.projection,
            )
        )
    if any(c in cmp.tensors.columns for c in ("effective_rank_frac", "effective_rank")):
        specs.append(
            PlotSpec(
                "effective_rank",
                "spectral",
                "Effective rank of the update",
                "Per tensor, Δ's effective rank (Roy & Vetterli 2007) as a fraction of min(m, n): near 100% the update "
                "is spread over all directions (high rank); near 0 it is low-rank, LoRA-like.",
                p.effective_rank,
            )
        )
    if "magnitude_profile" in cmp.extras:
        specs.append(
            PlotSpec(
                "magnitude_profile",
                "coords",
                "Change rate and |Δ| by source magnitude",
                "Coordinates binned by |W0| (quantiles). Top: the share that changed, with the change rate a "
                "rounding-only null model expects (dashed). Bottom: mean |Δ| with half the dtype's ULP (dotted): a "
                "higher change rate at small |W0| that the null model also shows is the bf16 rounding floor, not a "
                "preference of the update.",
                p.magnitude_profile,
            )
        )
    for name in _spectrum_names(cmp, spectra, notes):
        specs.append(
            PlotSpec(
                "spectrum_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name),
                "top",
                f"Spectrum of {name}",
                "Singular values of the base weight (black), the tuned weight (orange, dashed) and the update Δ "
                "(blue), log scale. A Δ curve that falls steeply is low-rank; a flat one is spread over many "
                "directions.",
                functools.partial(p.spectrum, name),
            )
        )
    return specs, notes


def _spectrum_names(cmp: Comparison, spectra: Any, notes: list[str]) -> list[str]:
    if spectra is None or spectra is False or spectra == 0:
        return []
    if spectra != "auto":
        return [spectra] if isinstance(spectra, str) else list(spectra)
    import os

    for side in ("base", "tuned"):
        d = cmp.metadata.get(side) or {}
        spec = d.get("spec")
        if d.get("kind") == "hub" or spec is None or not os.path.exists(str(spec)):
            notes.append(
                f"No spectrum plot: the {side} checkpoint {spec!r} is not a local path that still exists "
                "(use cmp.plot.spectrum(name, base=..., tuned=...) to draw one)."
            )
            return []
    ok = cmp.ok
    matrix = np.array([isinstance(s, list) and len(s) == 2 and min(s) > 1 for s in ok["shape"]], dtype=bool)
    two_d = ok[matrix & (ok["energy"] > 0).to_numpy()]
    two_d = two_d[[math.prod(s) <= 16 * 2**20 for s in two_d["shape"]]]
    if two_d.empty:
        return []
    return [str(two_d.sort_values("energy", ascending=False, kind="stable").iloc[0]["name"])]


def render(draw: Callable[[], Any], formats: Sequence[str] = ("png",), *, dpi: int = 100) -> dict[str, bytes]:
    """Draw a figure off screen and return its bytes in each format (``png``, ``svg``, ``pdf``)."""
    with offscreen(), style():
        obj = draw()
        fig = obj if hasattr(obj, "savefig") else obj.figure
        out: dict[str, bytes] = {}
        for fmt in formats:
            buf = io.BytesIO()
            meta = {"Date": None} if fmt == "svg" else {"Software": None} if fmt == "png" else {}
            fig.savefig(buf, format=fmt, dpi=dpi, metadata=meta)
            out[fmt] = buf.getvalue()
    return out
