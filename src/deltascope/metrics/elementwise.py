"""Elementwise metrics of an update: sparsity under several rules, ULP counts, energy
concentration, norms, cosine and NaN/Inf counts.

Pure functions: tensors in, a flat ``dict`` of numbers out; no I/O, no pandas. The
streaming engine hands over one tensor pair at a time (stored dtype, any device); the
work is done in chunks of ``chunk`` elements, so working memory is a few chunk-sized
buffers whatever the tensor size.

Definitions (Δ = W1 − W0 per coordinate, n = numel):

* ``exact``: changed iff the stored values differ (``+0 == -0``; NaN positions are
  unchanged only when both sides hold the same NaN bits).
* ``atol=t``: changed iff |Δ| > t.
* ``rms=τ``: changed iff |Δ| > τ·RMS(W0).
* ``rel=η``: changed iff |Δ| > η·max(|w0|, |w1|) (bf16-aware; η < 2^-9 equals ``exact``
  for bf16).
* ULP counts: among ``exact``-changed coordinates, r = |Δ| / ULP(w0) in the *base's
  stored dtype*; ``ulp1``: r <= 1, ``ulp2``: 1 < r <= 2, ``ulp3plus``: r > 2.
* Concentration ``q``: share of ‖Δ‖²_F held by the k = max(1, round(q·n)) coordinates
  with the largest |Δ| (ties do not matter: equal |Δ| carry equal energy).

Coordinates where Δ is not finite (NaN or Inf on one side only) count as changed under
every rule.

Precision: Δ is formed in float32 for 16- and 8-bit floats (exact unless the two values
differ in magnitude by more than 2^16, when the relative error is below 2^-24) and in
float64 for 32/64-bit floats and mixed pairs. Sums of squares and products accumulate
per row of ≤4096 elements and then in float64 (relative error ~1e-7 for float32).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..constants import CHUNK_ELEMENTS
from ..dtypes import DType, common_dtype

__all__ = [
    "ElementwiseOptions",
    "elementwise_metrics",
    "elementwise_columns",
    "compute_dtype_for",
    "equality_metrics",
    "fmt_threshold",
    "derive_elementwise",
    "release_workspaces",
]


def fmt_threshold(t: float) -> str:
    """Column suffix of a threshold: ``1e-05`` -> ``'1e-05'``, ``0.001`` -> ``'0.001'``."""
    return f"{t:g}"


def _fmt_pct(q: float) -> str:
    pct = q * 100
    return f"{pct:g}pct"


@dataclass(frozen=True)
class ElementwiseOptions:
    """Which sparsity rules and extras to compute. ``exact`` and norms are always on.

    Attributes:
        atol: absolute tolerances (literature defaults span 1e-8 ... 1e-4).
        rms: RMS(W0)-relative tolerances τ.
        rel: bf16-aware relative tolerances η.
        ulp: count changes in units of ULP(w0) of the stored dtype.
        concentration: fractions q of coordinates whose share of ‖Δ‖² is reported.
    """

    atol: tuple[float, ...] = (1e-5,)
    rms: tuple[float, ...] = ()
    rel: tuple[float, ...] = ()
    ulp: bool = True
    concentration: tuple[float, ...] = ()

    #: Everything DESIGN.md lists, for ``metrics="full"``.
    @classmethod
    def full(cls) -> ElementwiseOptions:
        return cls(
            atol=(1e-8, 1e-7, 1e-6, 1e-5, 1e-4),
            rms=(1e-4, 1e-3, 1e-2),
            rel=(1e-3,),
            ulp=True,
            concentration=(0.001, 0.01, 0.05),
        )

    def __post_init__(self) -> None:
        for name in ("atol", "rms", "rel", "concentration"):
            vals = tuple(float(v) for v in getattr(self, name))
            if any(not math.isfinite(v) or v < 0 for v in vals):
                raise ValueError(f"ElementwiseOptions.{name} must hold finite non-negative numbers, got {vals}")
            if name == "concentration" and any(not 0 < v <= 1 for v in vals):
                raise ValueError(f"ElementwiseOptions.concentration fractions must be in (0, 1], got {vals}")
            object.__setattr__(self, name, tuple(sorted(set(vals))))

    def rule_names(self) -> list[str]:
        """Names of the sparsity rules, ``exact`` first: ``['exact', 'atol_1e-05']``."""
        return (
            ["exact"]
            + [f"atol_{fmt_threshold(t)}" for t in self.atol]
            + [f"rms_{fmt_threshold(t)}" for t in self.rms]
            + [f"rel_{fmt_threshold(t)}" for t in self.rel]
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "atol": list(self.atol),
            "rms": list(self.rms),
            "rel": list(self.rel),
            "ulp": self.ulp,
            "concentration": list(self.concentration),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ElementwiseOptions:
        return cls(
            atol=tuple(d.get("atol", ())),
            rms=tuple(d.get("rms", ())),
            rel=tuple(d.get("rel", ())),
            ulp=bool(d.get("ulp", True)),
            concentration=tuple(d.get("concentration", ())),
        )


def elementwise_columns(opts: ElementwiseOptions) -> list[str]:
    """The keys :func:`elementwise_metrics` returns, in order."""
    cols = ["numel"]
    for r in opts.rule_names():
        cols.append(f"n_changed_{r}")
    if opts.ulp:
        cols += ["n_ulp1", "n_ulp2", "n_ulp3plus"]
    cols += [
        "sumsq_w0",
        "sumsq_w1",
        "energy",
        "dot_w0_delta",
        "sum_abs_delta",
        "max_abs_delta",
        "nan_w0",
        "inf_w0",
        "nan_w1",
        "inf_w1",
    ]
    cols += [f"top{_fmt_pct(q)}_energy" for q in opts.concentration]
    return cols


def compute_dtype_for(base: DType, tuned: DType) -> torch.dtype:
    """float32 when both sides are floats of at most 16 bits, else float64."""
    if base.is_float and tuned.is_float and base.bits <= 16 and tuned.bits <= 16:
        return torch.float32
    return torch.float64


# -- helpers ----------------------------------------------------------------------------
_ROW = 4096


def _sum_products(x: torch.Tensor, y: torch.Tensor) -> float:
    """Σ x·y with float64 accumulation across rows of ≤4096 elements.

    A plain float32 BLAS dot over millions of elements loses ~1e-4 relative; summing
    rows of 4096 in float32 and the row sums in float64 keeps ~1e-8.
    """
    n = x.numel()
    if x.dtype == torch.float64:
        return float(torch.dot(x, y))
    full = n - n % _ROW
    total = 0.0
    if full:
        total = float(torch.linalg.vecdot(x[:full].view(-1, _ROW), y[:full].view(-1, _ROW)).double().sum())
    if full < n:
        total += float(torch.dot(x[full:].double(), y[full:].double()))
    return total


def _sum(x: torch.Tensor) -> float:
    # torch's CPU sum uses cascade summation: float32 error ~1e-7 relative.
    return float(x.sum(dtype=torch.float64) if x.dtype == torch.float64 else x.sum().double())


_UINT_VIEW = {16: torch.int16, 32: torch.int32, 64: torch.int64, 8: torch.uint8}


def _ulp(a: torch.Tensor, af: torch.Tensor, dt: DType, out: torch.Tensor) -> torch.Tensor:
    """ULP(w0) in the stored dtype ``dt`` for each element of ``a``, written into ``out``.

    ULP(w) = 2^(max(e, e_min) - mantissa) with e = floor(log2|w|); zero and subnormal w
    get the subnormal spacing 2^(e_min - mantissa).
    """
    floor = math.ldexp(1.0, dt.min_exponent - dt.mantissa)
    if dt.name in ("BF16", "F16", "F32", "F64") and a.dtype == dt.torch:
        # Keep only the exponent bits: the value becomes 2^e exactly (0 for subnormals).
        exp_mask = ((1 << dt.exponent_bits) - 1) << dt.mantissa
        out.copy_((a.view(_UINT_VIEW[dt.bits]) & exp_mask).view(a.dtype))
    else:  # float8 and friends: via frexp (slower, rare)
        _, exp = torch.frexp(af)
        torch.ldexp(torch.ones_like(af), exp - 1, out=out)
        out.masked_fill_(af == 0, 0.0)
    out.mul_(math.ldexp(1.0, -dt.mantissa))
    out.clamp_(min=floor)
    return out


@dataclass
class _Workspace:
    af: torch.Tensor
    bf: torch.Tensor
    d: torch.Tensor
    ad: torch.Tensor
    tmp: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def make(cls, size: int, dtype: torch.dtype, device: torch.device) -> _Workspace:
        def e() -> torch.Tensor:
            return torch.empty(size, dtype=dtype, device=device)

        return cls(e(), e(), e(), e(), e(), torch.empty(size, dtype=torch.bool, device=device))


_WS_CACHE: dict[tuple[torch.dtype, str], _Workspace] = {}


def _workspace(size: int, dtype: torch.dtype, device: torch.device) -> _Workspace:
    # One workspace per (dtype, device), grown as needed and reused across tensors.
    key = (dtype, str(device))
    ws = _WS_CACHE.get(key)
    if ws is None or ws.af.numel() < size:
        _WS_CACHE.pop(key, None)
        ws = _Workspace.make(size, dtype, device)
        _WS_CACHE[key] = ws
    return ws


def release_workspaces() -> None:
    """Free the cached chunk buffers (they are reused across tensors within a run)."""
    _WS_CACHE.clear()


@dataclass
class _State:
    n: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    sumsq_w0: float = 0.0
    sumsq_w1: float = 0.0
    energy: float = 0.0
    dot_w0_delta: float = 0.0
    sum_abs: float = 0.0
    max_abs: float = 0.0
    nan_w0: int = 0
    inf_w0: int = 0
    nan_w1: int = 0
    inf_w1: int = 0
    hist: torch.Tensor | None = None


def _upcast_pair(a: torch.Tensor, b: torch.Tensor, ws: _Workspace, m: int) -> tuple[torch.Tensor, ...]:
    af, bf, d = ws.af[:m], ws.bf[:m], ws.d[:m]
    af.copy_(a)
    bf.copy_(b)
    torch.sub(bf, af, out=d)
    return af, bf, d


_NP_CMP = {"gt": np.greater, "le": np.less_equal, "ne": np.not_equal}


def _count_cmp(op: str, x: torch.Tensor, y: torch.Tensor | float, mask: torch.Tensor) -> int:
    """Number of elements where ``x <op> y`` (``op`` in gt / le / ne), using ``mask`` as
    scratch. On the CPU numpy's compare-and-count is ~3x faster than torch's (it is the
    hot loop of the pass); on other devices torch does it. Both compare in x's dtype."""
    if x.device.type == "cpu":
        yv = y.numpy() if isinstance(y, torch.Tensor) else y
        return int(np.count_nonzero(_NP_CMP[op](x.numpy(), yv, out=mask.numpy())))
    return int(torch.count_nonzero(getattr(torch, op)(x, y, out=mask)))


def _key_shift(dtype: torch.dtype) -> tuple[torch.dtype, int]:
    return (torch.int32, 16) if dtype == torch.float32 else (torch.int64, 48)


def _chunk_update(
    st: _State,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    opts: ElementwiseOptions,
    base_dt: DType,
    ws: _Workspace,
    rms_w0: float | None,
) -> None:
    m = a.numel()
    af, bf, d = _upcast_pair(a, b, ws, m)
    ad, tmp, mask = ws.ad[:m], ws.tmp[:m], ws.mask[:m]

    s00 = _sum_products(af, af)
    s11 = _sum_products(bf, bf)
    n_nonfinite = 0
    if math.isfinite(s00) and math.isfinite(s11):
        # Finite values: Δ == 0 exactly where the stored values are equal (+0 == -0).
        changed = _count_cmp("ne", d, 0.0, mask)
        n_nonzero = changed
        energy = _sum_products(d, d)
        dot0d = _sum_products(af, d)
    else:
        # Rare path: NaN/Inf present, or float32 overflow of a sum of squares. Count the
        # non-finite values, then compute every sum over finite coordinates in float64.
        fin0, fin1 = torch.isfinite(af), torch.isfinite(bf)
        nan0, nan1 = torch.isnan(af), torch.isnan(bf)
        st.nan_w0 += int(nan0.sum())
        st.nan_w1 += int(nan1.sum())
        st.inf_w0 += int((~fin0 & ~nan0).sum())
        st.inf_w1 += int((~fin1 & ~nan1).sum())
        if a.dtype == b.dtype:
            ubits = _UINT_VIEW[a.element_size() * 8]
            same = a.view(ubits) == b.view(ubits)
        else:  # mixed storage dtypes: equal values, or NaN on both sides
            same = (af == bf) | (nan0 & nan1)
        changed_mask = ~same & ((af != bf) | nan0 | nan1)  # +0 vs -0 compare equal
        changed = int(changed_mask.sum())
        both = fin0 & fin1
        n_nonfinite = int((changed_mask & ~both).sum())
        af.masked_fill_(~fin0, 0.0)
        bf.masked_fill_(~fin1, 0.0)
        d.masked_fill_(~both, 0.0)  # Δ over coordinates finite on both sides only
        a64, b64, d64 = af.double(), bf.double(), d.double()
        s00, s11 = float(torch.dot(a64, a64)), float(torch.dot(b64, b64))
        energy, dot0d = float(torch.dot(d64, d64)), float(torch.dot(a64, d64))
        n_nonzero = _count_cmp("ne", d, 0.0, mask)
    st.counts["exact"] = st.counts.get("exact", 0) + changed
    st.sumsq_w0 += s00
    st.sumsq_w1 += s11
    st.energy += energy
    st.dot_w0_delta += dot0d

    torch.abs(d, out=ad)
    st.sum_abs += _sum(ad)
    if m:
        st.max_abs = max(st.max_abs, float(ad.max()))

    def bump(key: str, thr: torch.Tensor | float) -> None:
        st.counts[key] = st.counts.get(key, 0) + _count_cmp("gt", ad, thr, mask) + n_nonfinite

    for t in opts.atol:
        bump(f"atol_{fmt_threshold(t)}", t)
    for t in opts.rms:
        assert rms_w0 is not None
        bump(f"rms_{fmt_threshold(t)}", t * rms_w0 if math.isfinite(rms_w0) else math.inf)
    if opts.rel:
        torch.abs(af, out=tmp)
        torch.maximum(tmp, bf.abs_(), out=tmp)  # bf is a scratch copy; not used below
        for i, t in enumerate(opts.rel):
            bump(f"rel_{fmt_threshold(t)}", tmp.mul_(t) if i == len(opts.rel) - 1 else tmp * t)
    if opts.ulp:
        ulp = _ulp(a, af, base_dt, tmp)
        n_zero = m - n_nonzero  # unchanged (and non-finite) coordinates have Δ = 0 here
        n1 = _count_cmp("le", ad, ulp, mask) - n_zero
        n2 = _count_cmp("le", ad, ulp.mul_(2), mask) - n_zero
        st.counts["ulp1"] = st.counts.get("ulp1", 0) + n1
        st.counts["ulp2"] = st.counts.get("ulp2", 0) + n2 - n1
        st.counts["ulp3plus"] = st.counts.get("ulp3plus", 0) + changed - n2
    if opts.concentration:
        kdt, shift = _key_shift(ad.dtype)
        h = torch.bincount((ad.view(kdt) >> shift).reshape(-1), minlength=1 << 16)
        st.hist = h if st.hist is None else st.hist + h
    st.n += m


def _concentration(
    st: _State,
    chunks: list[tuple[torch.Tensor, torch.Tensor]],
    opts: ElementwiseOptions,
    ws: _Workspace,
    cached_ad: torch.Tensor | None,
) -> dict[str, float]:
    """Exact top-k energy shares from the |Δ| histogram plus a pass over the threshold bins."""
    out: dict[str, float] = {}
    total = st.energy
    assert st.hist is not None
    hist = st.hist.to("cpu", torch.int64)
    # counts of keys strictly above each bin
    above = torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0]) - hist
    kdt, shift = _key_shift(ws.ad.dtype)
    targets: dict[int, list[tuple[float, int]]] = {}
    for q in opts.concentration:
        k = max(1, round(q * st.n))
        if total == 0 or k >= st.n:
            out[f"top{_fmt_pct(q)}_energy"] = math.nan if total == 0 else 1.0
            continue
        # threshold bin: above[b] < k <= above[b] + hist[b]
        b = int(torch.nonzero((above < k) & (above + hist >= k))[-1])
        targets.setdefault(b, []).append((q, k - int(above[b])))
    if not targets:
        return out
    # One pass: energy strictly above each threshold bin, and the values inside it.
    energy_above = dict.fromkeys(targets, 0.0)
    inside: dict[int, list[torch.Tensor]] = {b: [] for b in targets}

    def scan(ad: torch.Tensor) -> None:
        keys = ad.view(kdt) >> shift
        for b in targets:
            sel_above = ad[keys > b]
            energy_above[b] += _sum_products(sel_above, sel_above) if sel_above.numel() else 0.0
            inside[b].append(ad[keys == b])

    if cached_ad is not None:
        scan(cached_ad)
    else:
        for a, bch in chunks:
            m = a.numel()
            _, _, d = _upcast_pair(a, bch, ws, m)
            d.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
            scan(torch.abs(d, out=ws.ad[:m]))
    for b, wanted in targets.items():
        vals = torch.cat(inside[b]) if inside[b] else torch.empty(0)
        for q, j in wanted:
            top = torch.topk(vals, j).values if j < vals.numel() else vals
            e = energy_above[b] + _sum_products(top, top)
            out[f"top{_fmt_pct(q)}_energy"] = e / total
    return out


def elementwise_metrics(
    w0: torch.Tensor,
    w1: torch.Tensor,
    *,
    opts: ElementwiseOptions | None = None,
    base_dtype: DType | None = None,
    tuned_dtype: DType | None = None,
    chunk: int = CHUNK_ELEMENTS,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Elementwise metrics of one tensor pair, streamed in chunks.

    Args:
        w0: base tensor in its stored dtype (any shape).
        w1: tuned tensor, same shape, in its stored dtype.
        opts: rules and extras; defaults to :class:`ElementwiseOptions()`.
        base_dtype, tuned_dtype: storage dtypes (inferred from the tensors when omitted).
        chunk: elements per chunk.
        device: where to compute (``"cpu"``, ``"cuda"``); defaults to ``w0``'s device.

    Returns:
        A dict with the keys of :func:`elementwise_columns` -- raw sums and counts; the
        derived columns (fractions, norms, cosine) come from :func:`derive_elementwise`.

    Example:
        >>> import torch
        >>> w0 = torch.zeros(1000, dtype=torch.bfloat16)
        >>> w1 = w0.clone(); w1[:10] = 1
        >>> m = elementwise_metrics(w0, w1)
        >>> m["n_changed_exact"], m["energy"]
        (10, 10.0)
    """
    from ..dtypes import dtype_from_torch

    opts = opts or ElementwiseOptions()
    if w0.shape != w1.shape:
        raise ValueError(f"shapes differ: {tuple(w0.shape)} vs {tuple(w1.shape)}")
    base_dt = base_dtype or dtype_from_torch(w0.dtype)
    tuned_dt = tuned_dtype or dtype_from_torch(w1.dtype)
    dev = torch.device(device) if device is not None else w0.device
    cdt = compute_dtype_for(base_dt, tuned_dt)
    a_all = w0.reshape(-1)
    b_all = w1.reshape(-1)
    n = a_all.numel()
    chunk = max(1, int(chunk))
    bounds = [(i, min(n, i + chunk)) for i in range(0, n, chunk)] or [(0, 0)]

    def chunk_at(i: int, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        return a_all[i:j].to(dev, non_blocking=True), b_all[i:j].to(dev, non_blocking=True)

    ws = _workspace(min(chunk, max(n, 1)), cdt, dev)
    rms_w0 = None
    if opts.rms:  # RMS(W0) over finite coordinates, before any threshold is applied
        s = 0.0
        for i, j in bounds:
            a, _ = chunk_at(i, j)
            af = ws.af[: a.numel()]
            af.copy_(a)
            part = _sum_products(af, af)
            if not math.isfinite(part):
                a64 = torch.where(torch.isfinite(af), af, 0).double()
                part = float(torch.dot(a64, a64))
            s += part
        rms_w0 = math.sqrt(s / n) if n else math.nan

    st = _State()
    for i, j in bounds:
        a, b = chunk_at(i, j)
        _chunk_update(st, a, b, opts=opts, base_dt=base_dt, ws=ws, rms_w0=rms_w0)

    out: dict[str, Any] = {"numel": n}
    for r in opts.rule_names():
        out[f"n_changed_{r}"] = st.counts.get(r, 0)
    if opts.ulp:
        for k in ("ulp1", "ulp2", "ulp3plus"):
            out[f"n_{k}"] = st.counts.get(k, 0)
    out.update(
        sumsq_w0=st.sumsq_w0,
        sumsq_w1=st.sumsq_w1,
        energy=st.energy,
        dot_w0_delta=st.dot_w0_delta,
        sum_abs_delta=st.sum_abs,
        max_abs_delta=st.max_abs if n else math.nan,
        nan_w0=st.nan_w0,
        inf_w0=st.inf_w0,
        nan_w1=st.nan_w1,
        inf_w1=st.inf_w1,
    )
    if opts.concentration:
        if n == 0:
            conc = {f"top{_fmt_pct(q)}_energy": math.nan for q in opts.concentration}
        else:
            single = len(bounds) == 1
            conc = _concentration(
                st,
                [chunk_at(i, j) for i, j in bounds] if not single else [],
                opts,
                ws,
                ws.ad[:n] if single else None,
            )
        out.update(conc)
    return out


def equality_metrics(w0: torch.Tensor, w1: torch.Tensor, *, chunk: int = CHUNK_ELEMENTS) -> dict[str, Any]:
    """Metrics of a non-float pair (ints, bool, packed bytes): changed coordinates only."""
    a = w0.reshape(-1)
    b = w1.reshape(-1)
    changed = 0
    for i in range(0, a.numel(), chunk):
        changed += int(torch.count_nonzero(a[i : i + chunk] != b[i : i + chunk]))
    return {"numel": a.numel(), "n_changed_exact": changed}


def common_dtype_note(base: DType, tuned: DType) -> str:
    """A note for the report when a pair is stored in different dtypes."""
    if base == tuned:
        return ""
    c = common_dtype(base, tuned)
    return f"stored {base.name} vs {tuned.name}: compared after an exact upcast to {c.name}"


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN (not inf) where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)


def derive_elementwise(raw: Mapping[str, Any], opts: ElementwiseOptions) -> dict[str, np.ndarray]:
    """Derived columns (fractions, norms, cosine ...) from the raw sums and counts.

    Works on one row or on group sums alike -- which is how group tables get the right
    weighting: sum the raw columns, then derive.
    """
    numel = np.asarray(raw["numel"], dtype=np.float64)
    s00 = np.asarray(raw["sumsq_w0"], dtype=np.float64)
    s11 = np.asarray(raw["sumsq_w1"], dtype=np.float64)
    energy = np.asarray(raw["energy"], dtype=np.float64)
    dot0d = np.asarray(raw["dot_w0_delta"], dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for r in opts.rule_names():
        frac = _div(raw[f"n_changed_{r}"], numel)
        if r.startswith("rms_"):
            frac = np.where(s00 > 0, frac, np.nan)  # RMS(W0) = 0: the rule is undefined
        out[f"changed_{r}"] = frac
    if opts.ulp:
        changed = raw["n_changed_exact"]
        out["ulp1_share"] = _div(raw["n_ulp1"], changed)
        out["ulp2_share"] = _div(raw["n_ulp2"], changed)
        out["ulp3plus_share"] = _div(raw["n_ulp3plus"], changed)
    n0, n1, nd = np.sqrt(s00), np.sqrt(s11), np.sqrt(energy)
    out["norm_w0"] = n0
    out["norm_w1"] = n1
    out["norm_delta"] = nd
    out["rel_update"] = _div(nd, n0)
    out["rms_w0"] = np.sqrt(_div(s00, numel))
    out["rms_delta"] = np.sqrt(_div(energy, numel))
    out["mean_abs_delta"] = _div(raw["sum_abs_delta"], numel)
    # 1 - cos = (‖Δ‖² - (‖W1‖ - ‖W0‖)²) / (2‖W0‖‖W1‖), with ‖W1‖ - ‖W0‖ = (2 W0·Δ + ‖Δ‖²)/(‖W0‖ + ‖W1‖):
    # every term is a small quantity computed directly, so cosines near 1 keep their digits.
    gap = _div(2.0 * dot0d + energy, n0 + n1)
    one_minus = _div(energy - gap * gap, 2.0 * n0 * n1)
    out["cosine"] = 1.0 - one_minus
    return out
