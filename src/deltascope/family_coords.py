"""The ``coords`` metric family: which coordinates an update moves.

Turned on with ``deltascope.compare(base, tuned, coords=True)`` (or options). Per tensor
it adds (definitions in :mod:`deltascope.metrics.coords` and docs/coordinates.md):

* Spearman and Pearson correlation of |Δ| with |W0|, over all coordinates and over the
  changed ones (exact up to ``sample_limit`` coordinates, then a seeded sample whose
  size is recorded);
* overlap of the changed mask with low-magnitude and principal masks of W0 at several
  densities (density, overlap, coverage, enrichment over chance);
* an extra table, ``Comparison.extras["magnitude_profile"]``: per tensor and |W0|
  quantile bin, raw sums for the change rate, mean |Δ|, mean |Δ|/|W0|, the stored
  dtype's ULP and a rounding null model; :func:`magnitude_profile` aggregates it.

Group tables (``cmp.by(...)``): mask statistics are recomputed from summed counts
(exact); a correlation is not additive, so a group's ``spearman_absdelta_absw0`` (and
the other three coefficients) is the **numel-weighted mean of its tensors'
coefficients** -- weights are the coordinates each coefficient describes -- not a
coefficient of the pooled coordinates (which would mix tensors of different scales).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch

from .columns import ColumnSpec
from .constants import DEFAULT_SEED, SAMPLE_LIMIT
from .families import OptionsFamily, PairContext
from .metrics.coords import (
    abs_correlations,
    bin_positions,
    changed_mask,
    derive_mask_overlap,
    magnitude_bins,
    mask_counts,
    mask_positions,
    order_statistics,
    parse_rule,
    sample_seed,
)
from .metrics.elementwise import _div, _fmt_pct

__all__ = ["CoordsOptions", "CoordsFamily", "magnitude_profile", "PROFILE_SUMS"]

MASKS = ("lowmag", "principal")
_CORR = (("all", ""), ("changed", "_changed"))

#: Raw columns of the magnitude-profile table that sum over tensors.
PROFILE_SUMS = (
    "n",
    "n_changed",
    "n_changed_exact",
    "null_changed",
    "null_changed_offgrid",
    "sum_abs_w0",
    "sum_abs_delta",
    "sum_rel_delta",
    "n_rel",
    "sum_ulp",
)
_PROFILE_COUNTS = ("n", "n_changed", "n_changed_exact", "n_rel")


@dataclass(frozen=True)
class CoordsOptions:
    """Options of the coords family.

    Attributes:
        rule: sparsity rule of the changed mask U (``exact``, ``atol_<t>``, ``rms_<t>``,
            ``rel_<t>``; see the elementwise family).
        bins: |W0| quantile bins per tensor in the magnitude profile.
        densities: densities r of the low-magnitude and principal masks.
        principal_rank: rank k of the W0 reconstruction behind the principal mask: a
            value < 1 is a fraction of min(m, n) (k = max(1, ⌊r·min(m, n)⌋), as the
            principal subspaces of the spectral family), a value >= 1 is k itself.
        svd: ``"fast"`` (seeded randomized SVD of rank k) or ``"exact"`` (full LAPACK SVD,
            shared with ``spectral=True``); an exact SVD already computed for the pair is
            reused in both modes.
        sample_limit: coordinates above which correlations use a seeded sample.
        seed: seed of the correlation samples (mixed with each tensor's name).
        max_numel: tensors with more coordinates are skipped with a note in
            ``coords_note`` (``None``: no cap). The analysis ranks whole tensors in float64
            and needs ~70 bytes per coordinate: the default (2^26, 67M coordinates, an
            8B-class MLP matrix) bounds a pair at ~4.7 GB; embeddings of large vocabularies
            are skipped unless you raise it.
    """

    rule: str = "exact"
    bins: int = 10
    densities: tuple[float, ...] = (0.01, 0.1, 0.2)
    principal_rank: float = 0.01
    svd: Literal["fast", "exact"] = "fast"
    sample_limit: int = SAMPLE_LIMIT
    seed: int = DEFAULT_SEED
    max_numel: int | None = 1 << 26

    def __post_init__(self) -> None:
        object.__setattr__(self, "rule", parse_rule(self.rule)[2])
        if not isinstance(self.bins, (int, np.integer)) or not 1 <= int(self.bins) <= 1000:
            raise ValueError(f"CoordsOptions.bins must be an integer in 1..1000, got {self.bins!r}")
        dens = tuple(sorted({float(r) for r in self.densities}))
        if not dens or any(not 0 < r < 1 for r in dens):
            raise ValueError(f"CoordsOptions.densities must be fractions in (0, 1), got {self.densities!r}")
        labels = [_fmt_pct(r) for r in dens]
        if len(set(labels)) != len(labels):
            raise ValueError(f"CoordsOptions.densities {dens} give duplicate column labels {labels}")
        object.__setattr__(self, "densities", dens)
        if not math.isfinite(self.principal_rank) or self.principal_rank <= 0:
            raise ValueError(f"CoordsOptions.principal_rank must be > 0, got {self.principal_rank!r}")
        if self.svd not in ("fast", "exact"):
            raise ValueError(f"CoordsOptions.svd must be 'fast' or 'exact', got {self.svd!r}")
        if int(self.sample_limit) < 2:
            raise ValueError(f"CoordsOptions.sample_limit must be >= 2, got {self.sample_limit!r}")
        object.__setattr__(self, "bins", int(self.bins))
        object.__setattr__(self, "sample_limit", int(self.sample_limit))
        object.__setattr__(self, "seed", int(self.seed))
        if self.max_numel is not None:
            if int(self.max_numel) < 1:
                raise ValueError(f"CoordsOptions.max_numel must be >= 1 or None, got {self.max_numel!r}")
            object.__setattr__(self, "max_numel", int(self.max_numel))

    def labels(self) -> list[str]:
        """Column labels of the densities: ``['1pct', '10pct', '20pct']``."""
        return [_fmt_pct(r) for r in self.densities]

    def rank_for(self, shape: Sequence[int]) -> int:
        """The principal rank k for a matrix of ``shape``."""
        side = min(shape)
        k = math.floor(self.principal_rank * side) if self.principal_rank < 1 else int(self.principal_rank)
        return max(1, min(side, k))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["densities"] = list(self.densities)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CoordsOptions:
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"Unknown coords option(s) {bad}; known: {sorted(known)}")
        kw = dict(d)
        if "densities" in kw:
            kw["densities"] = tuple(kw["densities"])
        return cls(**kw)


def _specs(opts: CoordsOptions) -> list[ColumnSpec]:
    f = "coords"
    wmean = "group rows: numel-weighted mean of the tensors' coefficients, not a pooled coefficient"
    specs = []
    for scope, sfx in _CORR:
        over = "all coordinates" if scope == "all" else f"changed coordinates (rule {opts.rule})"
        specs += [
            ColumnSpec(
                f"spearman_absdelta_absw0{sfx}", "derived", f"Spearman ρ of |Δ| with |W0| over {over}; {wmean}.", f
            ),
            ColumnSpec(
                f"pearson_absdelta_absw0{sfx}", "derived", f"Pearson r of |Δ| with |W0| over {over}; {wmean}.", f
            ),
        ]
    for m in MASKS:
        what = "bottom r·n of |W0|" if m == "lowmag" else "top r·n of |rank-k reconstruction of W0|"
        for p in opts.labels():
            specs += [
                ColumnSpec(f"{m}_{p}_density", "derived", f"|M|/n for the {m} mask M ({what}).", f),
                ColumnSpec(
                    f"{m}_{p}_overlap", "derived", f"|M∩U|/|U|: share of the changed set inside the {m} mask.", f
                ),
                ColumnSpec(f"{m}_{p}_coverage", "derived", f"|M∩U|/|M|: share of the {m} mask that changed.", f),
                ColumnSpec(
                    f"{m}_{p}_enrichment", "derived", f"overlap/density = |M∩U|·n/(|U|·|M|), {m} mask (1 = chance).", f
                ),
            ]
    specs += [
        ColumnSpec(
            "null_sigma", "tensor", "σ of the 'grid' rounding null (Gaussian update fitted to the exact count).", f
        ),
        ColumnSpec("null_sigma_offgrid", "tensor", "σ of the 'offgrid' rounding null.", f),
    ]
    specs += [
        ColumnSpec("n_coords", "sum", "Coordinates analysed by the coords family (Δ finite).", f),
        ColumnSpec("n_coords_changed", "sum", f"Of those, changed under rule {opts.rule} (|U|).", f),
        ColumnSpec("n_principal_scope", "sum", "Coordinates of the tensors that have a principal mask (2-D).", f),
        ColumnSpec("n_principal_scope_changed", "sum", "Of those, changed (|U| within the principal scope).", f),
    ]
    for scope, sfx in _CORR:
        specs += [
            ColumnSpec(
                f"n_corr_{scope}", "sum", f"Coordinates the '{scope}' coefficients describe (0 if undefined).", f
            ),
            ColumnSpec(f"n_corr_{scope}_used", "sum", f"Coordinates the '{scope}' coefficients were computed on.", f),
            ColumnSpec(f"wsum_spearman_absdelta_absw0{sfx}", "sum", f"n_corr_{scope} × Spearman ρ (raw).", f),
            ColumnSpec(f"wsum_pearson_absdelta_absw0{sfx}", "sum", f"n_corr_{scope} × Pearson r (raw).", f),
        ]
    for m in MASKS:
        for p in opts.labels():
            specs += [
                ColumnSpec(f"n_{m}_{p}", "sum", f"|M|, {m} mask at {p}.", f),
                ColumnSpec(f"n_{m}_{p}_changed", "sum", f"|M∩U|, {m} mask at {p}.", f),
            ]
    specs.append(ColumnSpec("coords_note", "key", "Why coords columns of this row are NaN, if they are.", f))
    return specs


class CoordsFamily(OptionsFamily):
    """Magnitude vs source, low-magnitude and principal mask overlap, magnitude profile.

    Example:
        >>> import deltascope
        >>> base, tuned = deltascope.demo_pair()
        >>> cmp = deltascope.compare(base, tuned, blocks="mlp", layers=0, coords=True, progress=False)
        >>> by = cmp.by("block")
        >>> bool(by.loc["mlp", "lowmag_10pct_enrichment"] > 1)   # moves favour small |W0|
        True
    """

    name: ClassVar[str] = "coords"

    options_class = CoordsOptions
    mode_field = "svd"
    example = "{'rule': 'atol_1e-05', 'bins': 20}"

    def __init__(self, opts: CoordsOptions | None = None) -> None:
        super().__init__(opts)
        self._profile: list[dict[str, Any]] = []

    def make_specs(self, opts: CoordsOptions) -> list[ColumnSpec]:
        return _specs(opts)

    def start(self) -> None:
        self._profile = []

    def tables(self) -> dict[str, Any]:
        cols = ["name", "bin", *PROFILE_SUMS, "abs_w0_lo", "abs_w0_hi", "null_sigma", "null_sigma_offgrid"]
        df = pd.DataFrame(self._profile, columns=cols)
        df["bin"] = df["bin"].astype("int64")
        for c in _PROFILE_COUNTS:
            df[c] = df[c].astype("int64")
        for c in cols[2:]:
            if c not in _PROFILE_COUNTS:
                df[c] = df[c].astype("float64")
        df["name"] = df["name"].astype(object)
        return {"magnitude_profile": df}

    # -- per pair --------------------------------------------------------------------
    def compute(self, ctx: PairContext) -> dict[str, Any]:
        out: dict[str, Any] = dict.fromkeys(self.raw_columns(), math.nan)
        out["coords_note"] = ""
        if not ctx.is_float:
            out["coords_note"] = "not a float pair: coordinates not analysed"
            return out
        o = self.opts
        if o.max_numel is not None and ctx.base_info.numel > o.max_numel:
            out["coords_note"] = (
                f"skipped: {ctx.base_info.numel} coordinates exceed max_numel={o.max_numel} "
                "(raise CoordsOptions.max_numel, or None for no cap; ~70 bytes per coordinate)"
            )
            return out
        notes: list[str] = []
        dev = ctx.device
        kw = {"base_dtype": ctx.base_dtype, "tuned_dtype": ctx.tuned_dtype, "device": dev}
        changed = changed_mask(ctx.w0, ctx.w1, o.rule, **kw).reshape(-1)
        exact = changed if o.rule == "exact" else changed_mask(ctx.w0, ctx.w1, "exact", **kw).reshape(-1)
        w0, _, d = ctx.float_pair(torch.float64)  # float64: Δ of any stored float pair is exact
        a, ad = w0.reshape(-1).abs(), d.reshape(-1).abs()
        scope = torch.isfinite(ad)  # Δ finite <=> both sides finite
        partial = not bool(scope.all())
        if partial:
            notes.append(f"{int((~scope).sum())} non-finite coordinate(s) left out")
            a, ad, changed, exact = a[scope], ad[scope], changed[scope], exact[scope]
        n, n_u = a.numel(), int(torch.count_nonzero(changed))
        out.update(n_coords=n, n_coords_changed=n_u)
        if n == 0:
            out["coords_note"] = "; ".join([*notes, "no coordinates to analyse"])
            return out

        seed = sample_seed(o.seed, ctx.name)
        undefined = []
        for scope_name, sfx in _CORR:
            c = abs_correlations(
                a, ad, sample_limit=o.sample_limit, seed=seed, where=changed if scope_name == "changed" else None
            )
            ok = not math.isnan(c["pearson"])
            out[f"n_corr_{scope_name}"] = c["n"] if ok else 0
            out[f"n_corr_{scope_name}_used"] = c["n_used"] if ok else 0
            out[f"wsum_spearman_absdelta_absw0{sfx}"] = c["n"] * c["spearman"] if ok else 0.0
            out[f"wsum_pearson_absdelta_absw0{sfx}"] = c["n"] * c["pearson"] if ok else 0.0
            if not ok:
                undefined.append(f"{scope_name} ({c['reason']})")
        if undefined:
            notes.append("correlations undefined: " + ", ".join(undefined))

        # One selection pass over |W0| serves the bins, their |W0| ranges and the low-magnitude masks.
        positions = sorted(set(bin_positions(n, o.bins)) | set(mask_positions(n, o.densities, largest=False)))
        stats = dict(zip(positions, order_statistics(a, positions)))
        labels = o.labels()
        for p, (k, both) in zip(labels, mask_counts(a, changed, o.densities, largest=False, stats=stats)):
            out[f"n_lowmag_{p}"], out[f"n_lowmag_{p}_changed"] = k, both
        prof = magnitude_bins(a, ad, changed, exact, bins=o.bins, dtype=ctx.tuned_dtype, stats=stats)
        sigmas = {k: prof[k] for k in ("null_sigma", "null_sigma_offgrid")}
        out.update(sigmas)
        for j in range(o.bins):
            row = {k: float(prof[k][j]) for k in (*PROFILE_SUMS, "abs_w0_lo", "abs_w0_hi")}
            self._profile.append({"name": ctx.name, "bin": j, **row, **sigmas})
        del a, ad, exact, prof

        y, why = self._principal(ctx, scope if partial else None)
        if y is None:
            notes.append(why)
        else:
            out.update(n_principal_scope=n, n_principal_scope_changed=n_u)
            for p, (k, both) in zip(labels, mask_counts(y, changed, o.densities, largest=True)):
                out[f"n_principal_{p}"], out[f"n_principal_{p}_changed"] = k, both
        out["coords_note"] = "; ".join(notes)
        return out

    def _principal(self, ctx: PairContext, scope: torch.Tensor | None) -> tuple[torch.Tensor | None, str]:
        """|rank-k reconstruction of W0| over the scope, or None and the reason."""
        from .decomp import w0_top_svd

        w0, _, _ = ctx.float_pair(torch.float64)
        if w0.ndim != 2 or min(w0.shape) == 0:
            return None, f"no principal mask for a {w0.ndim}-D tensor (needs a matrix)"
        if not bool(torch.isfinite(w0).all()):
            return None, "no principal mask: W0 has non-finite values"
        if not bool((w0 != 0).any()):
            return None, "no principal mask: W0 is zero"
        k = self.opts.rank_for(w0.shape)
        try:
            svd = w0_top_svd(ctx, k, mode=self.opts.svd)
        except (RuntimeError, ValueError) as e:  # torch.linalg.LinAlgError is a RuntimeError
            return None, f"no principal mask: SVD of W0 failed ({e})"
        y = ((svd.U * svd.S) @ svd.Vh).reshape(-1).abs_()
        return (y if scope is None else y[scope]), ""

    # -- groups ----------------------------------------------------------------------
    def derive(self, raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for scope, sfx in _CORR:
            for coef in ("spearman", "pearson"):
                out[f"{coef}_absdelta_absw0{sfx}"] = _div(
                    raw[f"wsum_{coef}_absdelta_absw0{sfx}"], raw[f"n_corr_{scope}"]
                )
        for m in MASKS:
            n, u = (
                ("n_coords", "n_coords_changed")
                if m == "lowmag"
                else ("n_principal_scope", "n_principal_scope_changed")
            )
            for p in self.opts.labels():
                d = derive_mask_overlap(raw[n], raw[u], raw[f"n_{m}_{p}"], raw[f"n_{m}_{p}_changed"])
                out.update({f"{m}_{p}_{k}": v for k, v in d.items()})
        return out


def magnitude_profile(
    cmp: Any, by: str | Sequence[str] | None = None, *, dropna: bool = False, raw: bool = False
) -> pd.DataFrame:
    """The magnitude profile of a comparison run with ``coords=True``, aggregated.

    Bin j of a group pools bin j (the j-th |W0| quantile bin) of each of its tensors;
    every rate is recomputed from the pooled sums, so groups are weighted by coordinates.

    Args:
        cmp: a :class:`~deltascope.Comparison` with ``extras["magnitude_profile"]``.
        by: group key(s) from :data:`deltascope.comparison.GROUP_KEYS` (``"block"``,
            ``["layer", "module"]``, ``"name"`` for per tensor); ``None`` pools the model.
        dropna: drop groups whose key is missing (e.g. ``layer`` of the embeddings).
        raw: keep the raw sums as well.

    Returns:
        One row per group and bin: ``n_tensors``, ``n``, ``abs_w0_lo``/``abs_w0_hi`` (range
        of |W0|), ``mean_abs_w0``, ``change_rate`` (rule of the run), ``change_rate_exact``,
        ``null_change_rate`` (exact changes expected from rounding alone if the trainer
        started from the stored W0, see docs/coordinates.md), ``excess_over_null``
        (observed/expected exact changes), ``null_change_rate_offgrid`` and
        ``excess_over_null_offgrid`` (the same if it started from a master weight
        anywhere in W0's rounding cell),
        ``mean_ulp`` (mean spacing of the tuned dtype's grid at |W0|), ``mean_abs_delta``,
        ``delta_over_ulp`` (mean |Δ| / mean ULP), ``mean_rel_delta`` (mean |Δ|/|W0| over
        w0 ≠ 0); with ``by="name"`` also ``null_sigma`` and ``null_sigma_offgrid``.

    Example:
        >>> import deltascope
        >>> base, tuned = deltascope.demo_pair()
        >>> cmp = deltascope.compare(base, tuned, blocks="mlp", layers=0, coords=True, progress=False)
        >>> prof = cmp.magnitude_profile()
        >>> len(prof), bool(prof["change_rate"].iloc[0] > prof["change_rate"].iloc[-1])
        (10, True)
    """
    from .comparison import GROUP_KEYS

    table = getattr(cmp, "extras", {}).get("magnitude_profile")
    if table is None:
        raise ValueError("This comparison has no magnitude profile: run deltascope.compare(..., coords=True).")
    keys = [by] if isinstance(by, str) else list(by or [])
    bad = [k for k in keys if k not in GROUP_KEYS]
    if bad:
        raise ValueError(f"Cannot group the magnitude profile by {bad}; choose from {list(GROUP_KEYS)}.")
    ok = cmp.ok[["name", *[k for k in keys if k != "name"]]]
    merged = table.merge(ok, on="name", how="inner")
    g = merged.groupby([*keys, "bin"], dropna=dropna, sort=True)
    agg = g[list(PROFILE_SUMS)].sum()
    agg.insert(0, "n_tensors", g.size())
    agg["abs_w0_lo"] = g["abs_w0_lo"].min()
    agg["abs_w0_hi"] = g["abs_w0_hi"].max()
    s = {c: agg[c].to_numpy(dtype=np.float64) for c in PROFILE_SUMS}
    out = agg[["n_tensors", "n", "abs_w0_lo", "abs_w0_hi"]].copy()
    out["mean_abs_w0"] = _div(s["sum_abs_w0"], s["n"])
    out["change_rate"] = _div(s["n_changed"], s["n"])
    out["change_rate_exact"] = _div(s["n_changed_exact"], s["n"])
    out["null_change_rate"] = _div(s["null_changed"], s["n"])
    out["excess_over_null"] = _div(s["n_changed_exact"], s["null_changed"])
    out["null_change_rate_offgrid"] = _div(s["null_changed_offgrid"], s["n"])
    out["excess_over_null_offgrid"] = _div(s["n_changed_exact"], s["null_changed_offgrid"])
    out["mean_ulp"] = _div(s["sum_ulp"], s["n"])
    out["mean_abs_delta"] = _div(s["sum_abs_delta"], s["n"])
    out["delta_over_ulp"] = _div(s["sum_abs_delta"], s["sum_ulp"])
    out["mean_rel_delta"] = _div(s["sum_rel_delta"], s["n_rel"])
    if "name" in keys:
        out["null_sigma"] = g["null_sigma"].first()
        out["null_sigma_offgrid"] = g["null_sigma_offgrid"].first()
    if raw:
        for c in PROFILE_SUMS:
            if c != "n":
                out[c] = agg[c]
    return out
