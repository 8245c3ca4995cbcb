"""Independent float64 numpy references for the elementwise metrics.

Written from the definitions in docs/metrics.md, sharing no code with deltascope: values
are decoded from the stored bits with numpy (bf16 = the top 16 bits of a float32).
"""

from __future__ import annotations

import math

import numpy as np
import torch

_MANT = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23, torch.float64: 52}
_EMIN = {torch.bfloat16: -126, torch.float16: -14, torch.float32: -126, torch.float64: -1022}


def to_f64(t: torch.Tensor) -> np.ndarray:
    """Exact float64 values of a stored tensor, decoded without torch arithmetic."""
    t = t.reshape(-1).contiguous()
    if t.dtype == torch.bfloat16:
        bits = t.view(torch.int16).numpy().astype(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).astype(np.float64)
    if t.dtype == torch.float16:
        return t.view(torch.int16).numpy().view(np.float16).astype(np.float64)
    return t.numpy().astype(np.float64)


def bits_of(t: torch.Tensor) -> np.ndarray:
    t = t.reshape(-1).contiguous()
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.view(view).numpy()


def ulp_of(w0: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    mant, emin = _MANT[dtype], _EMIN[dtype]
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(np.abs(w0)))
    e = np.where(np.isfinite(e), np.maximum(e, emin), emin)
    return np.ldexp(1.0, (e - mant).astype(int))


def reference(w0_t: torch.Tensor, w1_t: torch.Tensor, *, atol=(), rms=(), rel=(), conc=()) -> dict[str, float]:
    a, b = to_f64(w0_t), to_f64(w1_t)
    n = a.size
    if w0_t.dtype == w1_t.dtype:
        same = bits_of(w0_t) == bits_of(w1_t)
    else:
        same = (a == b) | (np.isnan(a) & np.isnan(b))
    changed = ~same & ((a != b) | np.isnan(a) | np.isnan(b))
    fin = np.isfinite(a) & np.isfinite(b)
    with np.errstate(invalid="ignore"):
        d = np.where(fin, b - a, 0.0)
    ad = np.abs(d)
    nonfinite_changed = changed & ~fin
    a0 = np.where(np.isfinite(a), a, 0.0)
    b0 = np.where(np.isfinite(b), b, 0.0)
    out: dict[str, float] = {
        "numel": n,
        "n_changed_exact": int(changed.sum()),
        "sumsq_w0": float((a0 * a0).sum()),
        "sumsq_w1": float((b0 * b0).sum()),
        "energy": float((d * d).sum()),
        "dot_w0_delta": float((a0 * d).sum()),
        "sum_abs_delta": float(ad.sum()),
        "max_abs_delta": float(ad.max()) if n else math.nan,
        "nan_w0": int(np.isnan(a).sum()),
        "nan_w1": int(np.isnan(b).sum()),
        "inf_w0": int(np.isinf(a).sum()),
        "inf_w1": int(np.isinf(b).sum()),
    }
    for t in atol:
        out[f"n_changed_atol_{t:g}"] = int(((ad > t) | nonfinite_changed).sum())
    rms_w0 = math.sqrt(out["sumsq_w0"] / n) if n else math.nan
    for t in rms:
        out[f"n_changed_rms_{t:g}"] = int(((ad > t * rms_w0) | nonfinite_changed).sum())
    for t in rel:
        m = np.maximum(np.abs(a), np.abs(b))
        out[f"n_changed_rel_{t:g}"] = int(((ad > t * m) & fin | nonfinite_changed).sum())
    if w0_t.dtype in _MANT:
        r = ad / ulp_of(a, w0_t.dtype)
        ch = changed & fin
        out["n_ulp1"] = int((ch & (r <= 1)).sum())
        out["n_ulp2"] = int((ch & (r > 1) & (r <= 2)).sum())
        out["n_ulp3plus"] = int(changed.sum()) - out["n_ulp1"] - out["n_ulp2"]
    total = out["energy"]
    sq = np.sort(d * d)[::-1]
    for q in conc:
        k = max(1, round(q * n))
        out[f"top{q * 100:g}pct_energy"] = float(sq[:k].sum() / total) if total > 0 else math.nan
    return out


def cosine(w0_t: torch.Tensor, w1_t: torch.Tensor) -> float:
    a, b = to_f64(w0_t), to_f64(w1_t)
    return float(np.dot(a, b) / math.sqrt(np.dot(a, a) * np.dot(b, b)))
