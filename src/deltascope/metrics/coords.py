"""Which coordinates an update moves: magnitude vs source, rank masks, overlaps.

Pure functions: tensors in, numbers or small dicts of arrays out; no I/O, no pandas.
Definitions (DESIGN.md §5 "Magnitude vs source"; docs/coordinates.md), with Δ = W1 − W0
per coordinate, *scope* = the coordinates where Δ is finite, n = |scope|:

* **Changed mask U** under a sparsity rule of the elementwise family (``exact``,
  ``atol_t``, ``rms_t``, ``rel_t``); :func:`changed_mask` reproduces the family's counts
  bit for bit (same compute dtype, same threshold arithmetic).
* **Rank order**: coordinates sorted by value, ties broken by flat index (row-major).
  The bottom-k set of x is the first k coordinates in that order; the top-k set is the
  bottom-k set of −x. Quantile bin j of B holds the coordinates of rank
  ⌊j·n/B⌋ … ⌊(j+1)·n/B⌋ − 1, so every bin has n/B coordinates (±1) even when |W0| has
  many ties (bf16 has only 128 values per binade).
* **Masks** (Zhu et al. 2025, "The Path Not Taken", arXiv:2511.08567): low-magnitude
  mask M = bottom ⌊r·n⌉ of |W0|; principal mask M = top ⌊r·n⌉ of |rank-k reconstruction
  of W0|. For each: density |M|/n, overlap |M∩U|/|U|, coverage |M∩U|/|M|, enrichment
  overlap/density = |M∩U|·n / (|U|·|M|) (1.0 = chance).
* **Correlations**: Spearman (Pearson of average ranks, as ``scipy.stats.spearmanr``)
  and Pearson of |Δ| with |W0|, over the scope and over U; above ``sample_limit``
  coordinates on a seeded uniform sample without replacement.
* **Rounding null models**: every coordinate receives δ ~ N(0, σ²), blind to |W0|, and
  the tuned checkpoint stores the result rounded to nearest in its dtype. ``grid``: the
  trainer started from the stored w0, P(visible) = Q(u↑/2σ) + Q(u↓/2σ) with u↑, u↓ the
  grid spacings above and below |w0| and Q(x) = ½·erfc(x/√2); ``offgrid``: it started
  from a master weight anywhere in w0's rounding cell (see :func:`visible_probability`).
  σ is fitted per tensor so that the expected number of visible changes equals the
  observed number of ``exact`` changes; the profile then compares, per |W0| bin, the
  observed change rate with what rounding alone would make of an update blind to |W0|.
* **Overlap of two updates** A, B of one base (Mukherjee et al. 2025, arXiv:2505.11711):
  Jaccard of changed sets |A∩B|/|A∪B| and of unchanged sets, coverage each way, and the
  independent-random baseline p_a·p_b/(p_a + p_b − p_a·p_b) (from E|A∩B| = n_a·n_b/n).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from ..dtypes import DType, dtype_from_torch
from .elementwise import _div, compute_dtype_for, fmt_threshold

__all__ = [
    "RULE_KINDS",
    "parse_rule",
    "changed_mask",
    "order_statistics",
    "rank_mask",
    "rank_bins",
    "rankdata",
    "pearson",
    "spearman",
    "abs_correlations",
    "ulp_classes",
    "visible_probability",
    "fit_null_sigma",
    "bin_positions",
    "mask_positions",
    "magnitude_bins",
    "mask_counts",
    "derive_mask_overlap",
    "overlap_counts",
    "derive_overlap",
    "sample_seed",
]

#: Sparsity rules :func:`changed_mask` knows (the elementwise family's rules).
RULE_KINDS = ("exact", "atol", "rms", "rel")


def parse_rule(rule: str) -> tuple[str, float | None, str]:
    """``(kind, tolerance, canonical name)`` of a rule name.

    Accepts the elementwise family's column suffixes (``exact``, ``atol_1e-05``,
    ``rms_0.001``, ``rel_0.001``) and the same with ``=`` or a shorter number.

    >>> parse_rule("atol=1e-5")
    ('atol', 1e-05, 'atol_1e-05')
    >>> parse_rule("exact")
    ('exact', None, 'exact')
    """
    text = str(rule).strip()
    if text == "exact":
        return "exact", None, "exact"
    for sep in ("_", "="):
        kind, _, value = text.partition(sep)
        if kind in RULE_KINDS[1:] and value:
            try:
                t = float(value)
            except ValueError:
                break
            if not math.isfinite(t) or t < 0:
                break
            return kind, t, f"{kind}_{fmt_threshold(t)}"
    raise ValueError(
        f"Unknown sparsity rule {rule!r}: use 'exact', 'atol_<t>', 'rms_<t>' or 'rel_<t>' (e.g. 'atol_1e-05')."
    )


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    view = ints[a.element_size()]
    return a.contiguous().view(view) == b.contiguous().view(view)


def changed_mask(
    w0: torch.Tensor,
    w1: torch.Tensor,
    rule: str = "exact",
    *,
    base_dtype: DType | None = None,
    tuned_dtype: DType | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """The coordinates changed under ``rule``, as a bool tensor shaped like ``w0``.

    Same definitions and arithmetic as :mod:`deltascope.metrics.elementwise`, so
    ``changed_mask(w0, w1, r).sum()`` equals the family's ``n_changed_<r>``:
    ``exact``: stored values differ (+0 == −0; NaN equal only to the same NaN bits);
    ``atol_t``: |Δ| > t; ``rms_t``: |Δ| > t·RMS(W0) (RMS over finite W0 values, divided
    by the full numel); ``rel_t``: |Δ| > t·max(|w0|, |w1|). Δ is formed in float32 for
    ≤16-bit floats and in float64 otherwise; coordinates where Δ is not finite count as
    changed under every rule when they are ``exact``-changed. Integer and bool tensors
    support ``exact`` only.

    Example:
        >>> w0 = torch.tensor([1.0, 2.0, 0.0, 3.0], dtype=torch.bfloat16)
        >>> w1 = torch.tensor([1.0, 2.5, -0.0, 3.0], dtype=torch.bfloat16)
        >>> changed_mask(w0, w1).tolist(), changed_mask(w0, w1, "atol_1").tolist()
        ([False, True, False, False], [False, False, False, False])
    """
    kind, t, _ = parse_rule(rule)
    if w0.shape != w1.shape:
        raise ValueError(f"shapes differ: {tuple(w0.shape)} vs {tuple(w1.shape)}")
    dev = torch.device(device) if device is not None else w0.device
    a, b = w0.to(dev), w1.to(dev)
    if not (a.is_floating_point() and b.is_floating_point()):
        if kind != "exact":
            raise ValueError(f"rule {rule!r} needs float tensors; {a.dtype}/{b.dtype} support only 'exact'")
        if a.dtype != b.dtype:  # as families._equality: compare values
            both_int = a.dtype != torch.bool and b.dtype != torch.bool
            a, b = (a.long(), b.long()) if both_int else (a.double(), b.double())
        return a != b
    bdt = base_dtype or dtype_from_torch(a.dtype)
    tdt = tuned_dtype or dtype_from_torch(b.dtype)
    cdt = compute_dtype_for(bdt, tdt)
    # Upcast both sides to the family's compute dtype: exact for every stored value.
    af, bf = a.to(cdt), b.to(cdt)
    nan0, nan1 = torch.isnan(af), torch.isnan(bf)
    same = _bits_equal(a, b) if a.dtype == b.dtype else (af == bf) | (nan0 & nan1)
    exact = ~same & ((af != bf) | nan0 | nan1)  # +0 vs -0 compare equal
    if kind == "exact":
        return exact
    d = bf - af
    finite = torch.isfinite(d)
    ad = torch.where(finite, d.abs(), torch.zeros((), dtype=cdt, device=dev))
    if kind == "atol":
        thr: torch.Tensor | float = float(t)  # type: ignore[arg-type]
    elif kind == "rms":
        # float64: a sum of squares over a whole tensor; RMS uses the full numel.
        sq = torch.where(torch.isfinite(af), af, torch.zeros((), dtype=cdt, device=dev)).double()
        n = af.numel()
        rms = math.sqrt(float(torch.dot(sq.reshape(-1), sq.reshape(-1))) / n) if n else math.nan
        thr = float(t) * rms if math.isfinite(rms) else math.inf  # type: ignore[operator]
    else:  # rel: the threshold is formed in the compute dtype, as the family does
        thr = torch.maximum(af.abs(), bf.abs()) * float(t)  # type: ignore[arg-type]
    return (torch.gt(ad, thr) & finite) | (exact & ~finite)


# -- rank order --------------------------------------------------------------------------
def order_statistics(x: torch.Tensor, positions: Sequence[int]) -> list[float]:
    """Values at 0-based ``positions`` of ``sorted(x)`` (1-D, no NaN), in one pass.

    CPU: ``numpy.partition`` with all positions at once (introselect, O(n log p));
    other devices: one sort.

    >>> order_statistics(torch.tensor([5.0, 1.0, 3.0, 2.0]), [0, 2])
    [1.0, 3.0]
    """
    if not positions:
        return []
    pos = sorted(set(int(p) for p in positions))
    if x.device.type == "cpu":
        part = np.partition(x.numpy(), pos)
        vals = {p: float(part[p]) for p in pos}
    else:
        s = torch.sort(x).values
        vals = {p: float(s[p]) for p in pos}
    return [vals[int(p)] for p in positions]


def rank_mask(x: torch.Tensor, k: int, *, largest: bool = False, kth: float | None = None) -> torch.Tensor:
    """The k smallest (or, with ``largest``, the k largest) coordinates of 1-D ``x``, ties
    broken by index (lowest first), as a bool mask with exactly ``min(max(k, 0), n)``
    true entries. The k largest are the k smallest of −x.

    ``kth`` is the threshold value when already known: the k-th smallest value
    (``order_statistics(x, [k − 1])``), or with ``largest`` the k-th largest
    (``order_statistics(x, [n − k])``).

    >>> x = torch.tensor([2.0, 1.0, 1.0, 0.0, 1.0])
    >>> rank_mask(x, 3).tolist(), rank_mask(x, 2, largest=True).tolist()
    ([False, True, True, True, False], [True, True, False, False, False])
    """
    n = x.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=x.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=x.device)
    t = order_statistics(x, [n - k if largest else k - 1])[0] if kth is None else kth
    mask = x > t if largest else x < t
    need = k - int(torch.count_nonzero(mask))
    ties = torch.nonzero(x == t).reshape(-1)[:need]
    mask[ties] = True
    return mask


def rank_bins(x: torch.Tensor, bins: int, *, stats: Mapping[int, float] | None = None) -> torch.Tensor:
    """Quantile bin of each coordinate of 1-D ``x`` by rank (ties broken by index):
    bin j holds ranks ⌊j·n/B⌋ … ⌊(j+1)·n/B⌋ − 1. Returns int32 bin indices.

    ``stats`` may hold already computed order statistics (position -> value).

    >>> rank_bins(torch.tensor([0.5, 0.1, 0.1, 0.9, 0.1, 0.3]), 3).tolist()
    [2, 0, 0, 2, 1, 1]
    """
    n = x.numel()
    edges = [j * n // bins for j in range(1, bins)]
    inner = [k for k in edges if 0 < k < n]
    known = dict(stats or {})
    missing = [k for k in inner if k not in known]
    known.update(zip(missing, order_statistics(x, missing)))
    values = torch.tensor([known[k] for k in inner], dtype=x.dtype, device=x.device)
    # Coordinates strictly between edge values: bin = number of edge values below them.
    out = torch.bucketize(x, values, right=False, out_int32=True)
    out += sum(1 for k in edges if k == 0)  # leading empty bins (n < B)
    k_edges = torch.tensor(edges, device=x.device)
    for v in sorted(set(values.tolist())):
        # A tie group on an edge value: split it by index order, as the rank order says.
        pos = torch.nonzero(x == v).reshape(-1)
        below = int(torch.count_nonzero(x < v))
        ranks = below + torch.arange(pos.numel(), device=x.device)
        out[pos] = torch.bucketize(ranks, k_edges, right=True, out_int32=True)
    return out


# -- correlations ------------------------------------------------------------------------
def rankdata(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based, ties get the mean of their ranks), float64, as
    ``scipy.stats.rankdata(method="average")``.

    >>> rankdata(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist()
    [3.5, 1.0, 3.5, 2.0]
    """
    n = x.numel()
    if n == 0:
        return torch.empty(0, dtype=torch.float64, device=x.device)
    xs, order = torch.sort(x)
    new = torch.ones(n, dtype=torch.bool, device=x.device)
    new[1:] = xs[1:] != xs[:-1]
    starts = torch.nonzero(new).reshape(-1)
    ends = torch.cat([starts[1:], torch.tensor([n], device=x.device)])
    avg = (starts + ends - 1).double() / 2 + 1
    ranks = torch.empty(n, dtype=torch.float64, device=x.device)
    ranks[order] = avg[torch.cumsum(new, 0) - 1]
    return ranks


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson r = Σ(x−x̄)(y−ȳ) / √(Σ(x−x̄)² Σ(y−ȳ)²), centred in float64 for accuracy;
    NaN when fewer than two points or either side is constant.

    >>> pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 7.0]))  # doctest: +ELLIPSIS
    0.99339...
    """
    if x.numel() < 2:
        return math.nan
    xc = x.double() - x.double().mean()
    yc = y.double() - y.double().mean()
    sxx, syy = float(torch.dot(xc, xc)), float(torch.dot(yc, yc))
    if sxx == 0 or syy == 0:
        return math.nan
    return max(-1.0, min(1.0, float(torch.dot(xc, yc)) / math.sqrt(sxx * syy)))


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman ρ: Pearson r of the average ranks (Spearman 1904; as scipy.stats.spearmanr).

    >>> spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 8.0, 27.0, 64.0]))
    1.0
    """
    return pearson(rankdata(x), rankdata(y))


def sample_seed(seed: int, name: str) -> int:
    """A per-tensor seed: the run's seed mixed with a stable hash of the tensor name, so
    samples differ between tensors and repeat between runs."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def abs_correlations(
    absw0: torch.Tensor,
    absd: torch.Tensor,
    *,
    sample_limit: int,
    seed: int,
    where: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Spearman and Pearson of |Δ| with |W0| over the coordinates ``where`` (all if None).

    Up to ``sample_limit`` coordinates the coefficients are exact; above it they use a
    uniform sample of ``sample_limit`` coordinates without replacement, drawn with
    ``numpy.random.default_rng(seed)``.

    Returns:
        ``{"spearman", "pearson", "n", "n_used", "reason"}``: n = coordinates in the
        population, n_used = coordinates the coefficients were computed on; NaN
        coefficients come with a reason.
    """
    if where is None:
        n = absw0.numel()
        idx = None
    else:
        idx = torch.nonzero(where.reshape(-1)).reshape(-1)
        n = idx.numel()
    if n > sample_limit:
        pick = np.sort(np.random.default_rng(seed).choice(n, size=sample_limit, replace=False))
        pick_t = torch.from_numpy(pick).to(absw0.device)
        idx = pick_t if idx is None else idx[pick_t]
    x = absw0 if idx is None else absw0[idx]
    y = absd if idx is None else absd[idx]
    used = x.numel()
    out: dict[str, Any] = {"n": n, "n_used": used, "reason": ""}
    if used < 2:
        out.update(spearman=math.nan, pearson=math.nan, reason=f"{used} coordinate(s)")
        return out
    r_p = pearson(y, x)
    if math.isnan(r_p):
        if bool((y == 0).all()):
            why = "no change"
        else:
            why = "|Δ| is constant" if bool((y == y[0]).all()) else "|W0| is constant"
        out.update(spearman=math.nan, pearson=math.nan, reason=why)
        return out
    out.update(spearman=spearman(y, x), pearson=r_p)
    return out


# -- rounding floor and null model ---------------------------------------------------------
def ulp_classes(absw: torch.Tensor, dt: DType) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spacing classes of the grid of dtype ``dt`` at each |w| (finite, in float64).

    Returns ``(cls, up, down)``: per coordinate a class index, and per class the spacing
    above |w| (u↑ = 2^(max(e, e_min) − mantissa), e = ⌊log2|w|⌋; zero and subnormals get
    the subnormal spacing) and below it (u↓ = u↑/2 for a normal power of two above the
    smallest normal, else u↑). Classes are few (two per binade), so model sums over
    millions of coordinates cost a histogram.

    >>> from deltascope.dtypes import DTYPES
    >>> cls, up, down = ulp_classes(torch.tensor([1.0, 1.5, 0.0], dtype=torch.float64), DTYPES["BF16"])
    >>> up[cls].tolist(), down[cls].tolist()
    ([0.0078125, 0.0078125, 9.183549615799121e-41], [0.00390625, 0.0078125, 9.183549615799121e-41])
    """
    mant, e_min = dt.mantissa, dt.min_exponent
    e_max = 2 * dt.bias + 2  # generous: covers every finite exponent of the format
    # In place where possible: this runs over every coordinate of the largest tensor.
    m, e = torch.frexp(absw)  # |w| = m·2^e, m in [0.5, 1)
    pow2 = m == 0.5
    del m
    e = e.to(torch.int32).sub_(1)  # floor(log2|w|)
    e.masked_fill_(absw == 0, e_min).clamp_(min=e_min, max=e_max)
    pow2 &= e > e_min
    cls = e.sub_(e_min).mul_(2).add_(pow2)
    n_cls = (e_max - e_min + 1) * 2
    ex = torch.arange(n_cls, device=absw.device) // 2 + e_min
    up = torch.ldexp(torch.ones(n_cls, dtype=torch.float64, device=absw.device), ex - mant)
    down = torch.where(torch.arange(n_cls, device=absw.device) % 2 == 1, up / 2, up)
    return cls, up, down


NullStart = Literal["grid", "offgrid"]


def visible_probability(up: torch.Tensor, down: torch.Tensor, sigma: float, start: NullStart = "grid") -> torch.Tensor:
    """P(a change is visible) for δ ~ N(0, σ²) under round to nearest (ties have
    probability zero), on a grid with spacing ``up`` above w0 and ``down`` below.

    * ``grid``: the trainer started from the stored w0 (a fine-tune loading a bf16
      base): visible iff round(w0 + δ) ≠ w0, P = Q(u↑/2σ) + Q(u↓/2σ),
      Q(x) = ½ erfc(x/√2).
    * ``offgrid``: the trainer's master weight w sat anywhere in w0's rounding cell
      (uniformly; both checkpoints are casts of one higher-precision run): visible iff
      w + δ leaves the cell of width L = (u↑ + u↓)/2. With z = L/σ,
      P = 2Q(z) + (2/z)(φ(0) − φ(z)), φ the standard normal density
      (∫ of Φ: ∫Φ = tΦ(t) + φ(t)); for σ ≪ L, P ≈ 0.8·σ/L.

    >>> round(float(visible_probability(torch.tensor([2.0]), torch.tensor([2.0]), 1.0)[0]), 6)  # 2·Q(1)
    0.317311
    >>> round(float(visible_probability(torch.tensor([1.0]), torch.tensor([1.0]), 1e-3, "offgrid")[0]), 6)
    0.000798
    """
    if sigma <= 0:
        return torch.zeros_like(up)
    if math.isinf(sigma):
        return torch.ones_like(up)
    if start == "grid":
        s = 2.0 * math.sqrt(2.0) * sigma
        return 0.5 * torch.erfc(up / s) + 0.5 * torch.erfc(down / s)
    if start != "offgrid":
        raise ValueError(f"start must be 'grid' or 'offgrid', got {start!r}")
    z = (up + down) / (2.0 * sigma)
    tail = torch.erfc(z / math.sqrt(2.0))  # 2·Q(z)
    # φ(0) − φ(z) = −φ(0)·expm1(−z²/2): no cancellation for small z
    return tail - (2.0 / z) * torch.expm1(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def fit_null_sigma(
    counts: torch.Tensor, up: torch.Tensor, down: torch.Tensor, visible: int, start: NullStart = "grid"
) -> float:
    """The σ for which Σ_c counts_c · P_c(σ) = ``visible`` (bisection in log σ; the
    expected count rises monotonically from 0 to Σ counts). 0 when nothing is visible,
    inf when everything is.
    """
    total = float(counts.sum())
    if visible <= 0 or total == 0:
        return 0.0
    if visible >= total:
        return math.inf
    keep = counts > 0
    c, u, d = counts[keep].double(), up[keep], down[keep]
    lo, hi = math.log(float(d.min()) * 1e-12), math.log(float(u.max()) * 1e12)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float((c * visible_probability(u, d, math.exp(mid), start)).sum()) < visible:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13:
            break
    return math.exp(0.5 * (lo + hi))


def bin_positions(n: int, bins: int) -> list[int]:
    """Rank positions of the first and last coordinate of each non-empty quantile bin:
    the order statistics :func:`magnitude_bins` (and :func:`rank_bins`) need.

    >>> bin_positions(10, 3)
    [0, 2, 3, 5, 6, 9]
    """
    starts = [j * n // bins for j in range(bins + 1)]
    return sorted({p for j in range(bins) if starts[j] < starts[j + 1] for p in (starts[j], starts[j + 1] - 1)})


def mask_positions(n: int, densities: Sequence[float], *, largest: bool) -> list[int]:
    """Rank positions of the thresholds of :func:`mask_counts` (k = ⌊r·n⌉ per density).

    >>> mask_positions(100, [0.01, 0.1], largest=False), mask_positions(100, [0.1], largest=True)
    ([0, 9], [90])
    """
    ks = [round(r * n) for r in densities]
    return sorted({(n - k if largest else k - 1) for k in ks if 0 < k < n})


def magnitude_bins(
    absw0: torch.Tensor,
    absd: torch.Tensor,
    changed: torch.Tensor,
    exact: torch.Tensor,
    *,
    bins: int,
    dtype: DType,
    bin_index: torch.Tensor | None = None,
    stats: Mapping[int, float] | None = None,
) -> dict[str, Any]:
    """Raw sums per |W0| quantile bin (see :func:`rank_bins`) for the magnitude profile.

    Args:
        absw0, absd: |W0| and |Δ| over the scope (1-D float64).
        changed: the rule's changed mask; exact: the ``exact`` mask (for the null model).
        bins: number of bins B.
        dtype: the tuned checkpoint's stored dtype, whose rounding decides visibility.
        bin_index: precomputed :func:`rank_bins` result.
        stats: order statistics of ``absw0`` already known (position -> value).

    Returns:
        Arrays of length B: ``n``, ``n_changed``, ``n_changed_exact``, ``null_changed``
        and ``null_changed_offgrid`` (expected exact changes under the two rounding nulls
        of :func:`visible_probability`, σ fitted to the tensor's exact count),
        ``abs_w0_lo``, ``abs_w0_hi`` (smallest and largest |W0| in the bin), ``sum_abs_w0``,
        ``sum_abs_delta``, ``sum_rel_delta`` (Σ|Δ|/|W0| over w0 ≠ 0), ``n_rel``
        (coordinates with w0 ≠ 0), ``sum_ulp`` (Σ u↑); and the scalars ``null_sigma``,
        ``null_sigma_offgrid``.
    """
    n = absw0.numel()
    starts = [j * n // bins for j in range(bins + 1)]
    # The bins are rank ranges: the first and last value of each are order statistics.
    known = dict(stats or {})
    missing = [p for p in bin_positions(n, bins) if p not in known]
    known.update(zip(missing, order_statistics(absw0, missing)))
    lo = np.array([known[starts[j]] if starts[j] < starts[j + 1] else np.nan for j in range(bins)])
    hi = np.array([known[starts[j + 1] - 1] if starts[j] < starts[j + 1] else np.nan for j in range(bins)])
    idx = rank_bins(absw0, bins, stats=known) if bin_index is None else bin_index
    f64 = torch.float64

    def per_bin(weights: torch.Tensor | None = None) -> np.ndarray:
        w = None if weights is None else weights.to(f64)
        return torch.bincount(idx, weights=w, minlength=bins)[:bins].to(f64).cpu().numpy()

    # One per-coordinate temporary at a time: memory is what the largest tensor costs.
    out: dict[str, Any] = {
        "n": per_bin(),
        "n_changed": per_bin(changed),
        "n_changed_exact": per_bin(exact),
        "abs_w0_lo": lo,
        "abs_w0_hi": hi,
        "sum_abs_w0": per_bin(absw0),
        "sum_abs_delta": per_bin(absd),
    }
    nonzero = absw0 > 0
    out["n_rel"] = per_bin(nonzero)
    rel = absd / absw0  # inf or NaN where w0 = 0: those are left out
    rel.masked_fill_(~nonzero, 0.0)
    del nonzero
    out["sum_rel_delta"] = per_bin(rel)
    del rel
    cls, up, down = ulp_classes(absw0, dtype)
    n_cls = up.numel()
    cls.add_(idx * n_cls)  # bin-major key of (bin, spacing class)
    table = torch.bincount(cls, minlength=bins * n_cls).reshape(bins, n_cls).to(f64)
    del cls
    out["sum_ulp"] = (table @ up).cpu().numpy()
    n_exact = int(torch.count_nonzero(exact))
    for start, sfx in (("grid", ""), ("offgrid", "_offgrid")):
        sigma = fit_null_sigma(table.sum(0), up, down, n_exact, start)  # type: ignore[arg-type]
        out["null_changed" + sfx] = (table @ visible_probability(up, down, sigma, start)).cpu().numpy()  # type: ignore[arg-type]
        out["null_sigma" + sfx] = sigma
    return out


# -- mask overlap --------------------------------------------------------------------------
def mask_counts(
    x: torch.Tensor,
    changed: torch.Tensor,
    densities: Sequence[float],
    *,
    largest: bool,
    stats: Mapping[int, float] | None = None,
) -> list[tuple[int, int]]:
    """``(|M|, |M∩U|)`` for M = the ⌊r·n⌉ smallest (``largest=False``) or largest
    coordinates of ``x`` at each density r, ties broken by index (:func:`rank_mask`).

    ``stats`` may hold order statistics of ``x`` already known (position -> value).

    >>> x = torch.arange(10.0)
    >>> u = x < 3
    >>> mask_counts(x, u, [0.1, 0.5], largest=False), mask_counts(x, u, [0.1], largest=True)
    ([(1, 1), (5, 3)], [(1, 0)])
    """
    n = x.numel()
    known = dict(stats or {})
    wanted = [p for p in mask_positions(n, densities, largest=largest) if p not in known]
    known.update(zip(wanted, order_statistics(x, wanted)))
    out = []
    for r in densities:
        k = min(n, max(0, round(r * n)))
        m = rank_mask(x, k, largest=largest, kth=known.get(n - k if largest else k - 1))
        out.append((k, int(torch.count_nonzero(m & changed))))
    return out


def derive_mask_overlap(n_scope: Any, n_changed: Any, n_mask: Any, n_both: Any) -> dict[str, np.ndarray]:
    """Density |M|/n, overlap |M∩U|/|U|, coverage |M∩U|/|M| and enrichment
    |M∩U|·n/(|U|·|M|) from raw counts (one tensor or the sums of a group).

    >>> {k: float(v) for k, v in derive_mask_overlap(100, 10, 10, 10).items()}
    {'density': 0.1, 'overlap': 1.0, 'coverage': 1.0, 'enrichment': 10.0}
    """
    n, u, m, b = (np.asarray(v, dtype=np.float64) for v in (n_scope, n_changed, n_mask, n_both))
    return {
        "density": _div(m, n),
        "overlap": _div(b, u),
        "coverage": _div(b, m),
        # one division of exact integer products: a planted 10 % mask gives exactly 10
        "enrichment": _div(b * n, u * m),
    }


def overlap_counts(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Raw counts of two changed masks of one tensor: ``numel``, ``n_a``, ``n_b``,
    ``n_both`` and ``expected_both`` = n_a·n_b/numel (E|A∩B| for independent masks).

    >>> overlap_counts(torch.tensor([1, 1, 0, 0]).bool(), torch.tensor([1, 0, 1, 0]).bool())
    {'numel': 4, 'n_a': 2, 'n_b': 2, 'n_both': 1, 'expected_both': 1.0}
    """
    n = a.numel()
    na, nb = int(torch.count_nonzero(a)), int(torch.count_nonzero(b))
    both = int(torch.count_nonzero(a & b))
    return {"numel": n, "n_a": na, "n_b": nb, "n_both": both, "expected_both": na * nb / n if n else math.nan}


def derive_overlap(raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Overlap statistics of two updates from raw counts (one tensor or a group's sums).

    With N = numel, A, B the changed sets, E = Σ n_a·n_b/N (the expected |A∩B| of
    masks independent within each tensor; per tensor E/(n_a + n_b − E) is the design's
    p_a·p_b/(p_a + p_b − p_a·p_b)):

    * ``p_a``, ``p_b``: changed fractions;
    * ``jaccard_changed`` |A∩B|/|A∪B|, ``jaccard_changed_random`` E/(n_a + n_b − E),
      ``jaccard_changed_ratio`` observed/random;
    * ``jaccard_unchanged`` |A'∩B'|/|A'∪B'| with |A'∩B'| = N − n_a − n_b + |A∩B|, its
      random value (N − n_a − n_b + E)/(N − E), and the ratio;
    * ``coverage_a_by_b`` |A∩B|/|A| (share of A's changes that B also makes),
      ``coverage_b_by_a``, and their random values E/n_a, E/n_b;
    * ``intersection_lift`` |A∩B|/E (= each coverage over its random value).

    >>> d = derive_overlap({"numel": 100, "n_a": 10, "n_b": 10, "n_both": 10, "expected_both": 1.0})
    >>> float(d["jaccard_changed"]), round(float(d["jaccard_changed_random"]), 6), float(d["intersection_lift"])
    (1.0, 0.052632, 10.0)
    """
    n, na, nb, both, exp = (
        np.asarray(raw[k], dtype=np.float64) for k in ("numel", "n_a", "n_b", "n_both", "expected_both")
    )
    neither = n - na - nb + both
    exp_neither = n - na - nb + exp
    out = {
        "p_a": _div(na, n),
        "p_b": _div(nb, n),
        "jaccard_changed": _div(both, na + nb - both),
        "jaccard_changed_random": _div(exp, na + nb - exp),
        "jaccard_unchanged": _div(neither, n - both),
        "jaccard_unchanged_random": _div(exp_neither, n - exp),
        "coverage_a_by_b": _div(both, na),
        "coverage_b_by_a": _div(both, nb),
        "coverage_a_by_b_random": _div(exp, na),
        "coverage_b_by_a_random": _div(exp, nb),
        "intersection_lift": _div(both, exp),
    }
    out["jaccard_changed_ratio"] = _div(out["jaccard_changed"], out["jaccard_changed_random"])
    out["jaccard_unchanged_ratio"] = _div(out["jaccard_unchanged"], out["jaccard_unchanged_random"])
    return out
