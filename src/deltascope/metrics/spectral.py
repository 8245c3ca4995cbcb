"""Spectral geometry of an update Δ = W1 − W0 (2-D weights): ranks and spectrum of Δ,
projection of Δ onto the principal subspaces of W0, rotation of those subspaces, drift of
the spectrum, intruder dimensions.

Pure functions: matrices (any device) in, numbers out; no I/O, no pandas. One matrix
gives one dict of *raw* statistics (:func:`matrix_spectral`); several matrices (the
experts of a stacked MoE tensor, the parts of a fused projection, the tensors of a group)
combine by summing those (:func:`combine_raw`), and :func:`derive_spectral` turns raw
sums into the reported ratios -- so a group's value is a ratio of sums, never an
unweighted mean of ratios.

Definitions (σ1 ≥ σ2 ≥ … the singular values of Δ, r = min(m, n), E = ‖Δ‖²_F):

* spectral norm σ1; stable rank E/σ1²;
* effective rank exp(−Σ p_i ln p_i), p_i = σ_i/Σσ_j (Roy & Vetterli 2007, "The effective
  rank: a measure of effective dimensionality", EUSIPCO);
* numerical rank #{σ_i > tol·σ1};
* top-k energy Σ_{i≤k} σ_i²/E (k > r counts all r values);
* principal-subspace projection (W0 = U S Vᵀ, k = max(1, ⌊ρ·r⌋)): left ‖U_kᵀΔ‖²/E,
  right ‖ΔV_k‖²/E, two-sided ‖U_kᵀΔV_k‖²/E, next to their expectation for a uniformly
  random direction Δ of the same size (k/m, k/n, k²/(mn)) and enrichment =
  observed/expected;
* rotation: principal angles θ_i between the top-k left singular subspaces of W0 and W1;
  sin θ_i are the singular values of (I − U0_k U0_kᵀ) U1_k (accurate for small angles,
  as in ``scipy.linalg.subspace_angles``);
* spectral drift ‖s(W1) − s(W0)‖₂/‖s(W0)‖₂ and ‖s(W1) − s(W0)‖₂/‖Δ‖_F (the second is
  ≤ 1 by Mirsky's theorem);
* intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion
  of Equivalence", arXiv:2410.21228): among the top-k left singular vectors of W1, the
  number whose largest |cos| with any left singular vector of W0 is below ε.

Modes:

* ``exact``: LAPACK SVDs (``torch.linalg.svd`` / ``svdvals``) in float64 (singular values
  with absolute error ~1e-16·σ1), or float32 (~1e-7·σ1; numerical-rank tolerances below
  1e-5 are refused).
* ``fast``: eigen-decompositions of the smaller Gram matrix in float64 (:func:`svd_gram`).
  Forming AᵀA squares the condition number: an eigenvalue error of ~ε64·σ1² becomes a
  singular-value error of ~ε64·σ1²/(2σ_i), so values far above ~1e-7·σ1 keep full
  accuracy, while values below it (true zeros of a low-rank update included) come out
  as noise of size ≲ 1e-7·σ1 (measured ≤ 4e-8·σ1 at r = 2048). Numerical rank is exact
  for tol ≥ 1e-6 (25x above that noise); smaller tolerances are refused in this mode. The
  noise also inflates the effective rank of an *exactly* low-rank update by about
  r·δ·|ln δ|/Σ(σ_i/σ1), δ ≈ 4e-8 (~1e-3 relative for rank 1 at r = 2048). Singular
  vectors of W0/W1 come from the same eigen-decompositions (float64, error ~ε64·σ1²/gap,
  so top subspaces are as accurate as LAPACK's); no randomized sketch is used, because at
  ρ = 20 % a range finder costs as much as the eigen-decomposition and its subspace error
  swamps rotations of size ‖Δ‖/‖W0‖.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from .elementwise import _div, _fmt_pct, fmt_threshold

__all__ = [
    "SVD",
    "SpectralOptions",
    "svd_exact",
    "svd_gram",
    "singular_values",
    "rank_for",
    "effective_rank",
    "spectrum_stats",
    "subspace_energies",
    "principal_sines",
    "intruder_count",
    "matrix_spectral",
    "combine_raw",
    "gram_vectors",
    "derive_spectral",
    "spectral_raw_kinds",
    "FAST_MIN_TOL",
    "FLOAT32_MIN_TOL",
]

Mode = Literal["exact", "fast"]

#: Smallest numerical-rank tolerance accepted in ``fast`` mode (Gram noise ≲ 1e-7·σ1).
FAST_MIN_TOL: float = 1e-6
#: Smallest numerical-rank tolerance accepted by ``exact`` mode in float32 (σ errors ~1e-7·σ1).
FLOAT32_MIN_TOL: float = 1e-5


class SVD(NamedTuple):
    """A thin SVD ``A = U diag(S) Vh`` (singular values descending).

    A partial decomposition may hold fewer columns of ``U`` (rows of ``Vh``) than values
    in ``S``: the leading ones.
    """

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor


# -- decompositions ----------------------------------------------------------------------
def svd_exact(a: torch.Tensor) -> SVD:
    """Thin SVD by LAPACK (``torch.linalg.svd``, full_matrices=False) in ``a``'s dtype.

    Example:
        >>> svd_exact(torch.diag(torch.tensor([1.0, 3.0]))).S.tolist()
        [3.0, 1.0]
    """
    U, S, Vh = torch.linalg.svd(a, full_matrices=False)
    return SVD(U, S, Vh)


def svd_gram(a: torch.Tensor, *, vectors: int | None = None) -> SVD:
    """Thin SVD of ``a`` (m×n) from the eigen-decomposition of its smaller Gram matrix.

    With r = min(m, n): G = AAᵀ (m ≤ n) or AᵀA, G = X Λ Xᵀ, σ_i = √max(λ_i, 0); X gives
    all r singular vectors of that side, and the leading ``vectors`` (default: all) of the
    other side are Aᵀx_i (or Ax_i) normalised to unit length (a column of zeros where
    σ_i = 0). Use float64 (see the module notes on accuracy).

    Example:
        >>> a = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64)
        >>> svd_gram(a).S.tolist()
        [3.0, 2.0]
    """
    m, n = a.shape
    left = m <= n
    g = a @ a.mT if left else a.mT @ a
    lam, x = torch.linalg.eigh(g)
    lam, x = lam.flip(0), x.flip(1)
    s = lam.clamp_min(0).sqrt()
    kv = x.shape[1] if vectors is None else max(0, min(int(vectors), x.shape[1]))
    y = (a.mT @ x[:, :kv]) if left else (a @ x[:, :kv])
    norms = torch.linalg.vector_norm(y, dim=0)
    y = y / torch.where(norms > 0, norms, torch.ones_like(norms))
    return SVD(x, s, y.mT) if left else SVD(y, s, x.mT)


def singular_values(a: torch.Tensor, *, mode: Mode = "exact") -> torch.Tensor:
    """All r = min(m, n) singular values of ``a``, descending.

    ``exact``: LAPACK ``svdvals`` in ``a``'s dtype; ``fast``: √eigenvalues of the smaller
    Gram matrix (values below ~1e-7·σ1 in float64 are noise, see the module notes).

    Example:
        >>> a = torch.tensor([[0.0, 2.0], [1.0, 0.0]], dtype=torch.float64)
        >>> singular_values(a).tolist(), singular_values(a, mode="fast").tolist()
        ([2.0, 1.0], [2.0, 1.0])
    """
    if mode == "exact":
        return torch.linalg.svdvals(a)
    m, n = a.shape
    g = a @ a.mT if m <= n else a.mT @ a
    return torch.linalg.eigvalsh(g).flip(0).clamp_min(0).sqrt()


def rank_for(fraction: float, r: int) -> int:
    """k = max(1, ⌊fraction·r⌋), capped at r (the float product is rounded to 9 digits
    first, so 0.29·100 gives 29, not 28).

    Example:
        >>> rank_for(0.1, 2048), rank_for(0.01, 50), rank_for(0.29, 100)
        (204, 1, 29)
    """
    return max(1, min(int(r), math.floor(round(fraction * r, 9))))


# -- metrics of one matrix ---------------------------------------------------------------
def effective_rank(s: torch.Tensor) -> float:
    """exp(−Σ p_i ln p_i), p_i = σ_i/Σσ_j (Roy & Vetterli 2007); NaN when all σ are 0.

    Ranges from 1 (one non-zero singular value) to r (all equal).

    Example:
        >>> round(effective_rank(torch.tensor([2.0, 2.0, 2.0, 0.0], dtype=torch.float64)), 12)
        3.0
    """
    s = s.to(torch.float64)  # entropy sums: keep float64 whatever the decomposition used
    total = s.sum()
    if not bool(total > 0):
        return math.nan
    p = s[s > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


def spectrum_stats(
    s: torch.Tensor,
    energy: float,
    *,
    tols: Sequence[float],
    topk: Sequence[int],
    top_fracs: Sequence[float],
) -> dict[str, float]:
    """Raw statistics of one update's singular values ``s`` (descending) and E = ‖Δ‖²_F.

    Returns ``spectral_norm``, ``stable_rank`` (E/σ1²), ``effective_rank``,
    ``numerical_rank_<tol>``, ``energy_in_top<k>`` and ``energy_in_top<p>pct``
    (Σ_{i≤k} σ_i², absolute; divide by E for the share). Rank values are NaN for a zero
    update (σ1 = 0).

    Example:
        >>> s = torch.tensor([4.0, 2.0, 0.0], dtype=torch.float64)
        >>> st = spectrum_stats(s, 20.0, tols=[1e-6], topk=[1], top_fracs=[])
        >>> st["stable_rank"], st["numerical_rank_1e-06"], st["energy_in_top1"]
        (1.25, 2.0, 16.0)
    """
    s = s.to(torch.float64)
    r = s.numel()
    s1 = float(s[0]) if r else 0.0
    zero = not s1 > 0
    out: dict[str, float] = {"spectral_norm": s1 if r else math.nan}
    out["stable_rank"] = math.nan if zero else energy / (s1 * s1)
    out["effective_rank"] = math.nan if zero else effective_rank(s)
    for t in tols:
        out[f"numerical_rank_{fmt_threshold(t)}"] = math.nan if zero else float((s > t * s1).sum())
    cum = torch.cumsum(s * s, 0).cpu()
    for k in topk:
        out[f"energy_in_top{k}"] = float(cum[min(k, r) - 1]) if r else math.nan
    for f in top_fracs:
        out[f"energy_in_top{_fmt_pct(f)}"] = float(cum[rank_for(f, r) - 1]) if r else math.nan
    return out


def subspace_energies(delta: torch.Tensor, svd0: SVD, ks: Sequence[int]) -> dict[int, tuple[float, float, float]]:
    """Energy of Δ inside W0's top-k singular subspaces, for each k in ``ks``:
    (‖U_kᵀΔ‖²_F, ‖ΔV_k‖²_F, ‖U_kᵀΔV_k‖²_F) -- left, right, two-sided.

    ``svd0`` must hold at least max(ks) vectors on both sides.

    Example:
        >>> w0 = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
        >>> d = torch.zeros(3, 3, dtype=torch.float64); d[0, 1] = 1.0   # row 1, column 2
        >>> subspace_energies(d, svd_exact(w0), [1, 2])
        {1: (1.0, 0.0, 0.0), 2: (1.0, 1.0, 1.0)}
    """
    kmax = max(ks)
    U = svd0.U[:, :kmax]
    V = svd0.Vh[:kmax].mT
    left = U.mT @ delta  # kmax × n
    right = delta @ V  # m × kmax
    two = left @ V  # kmax × kmax
    lcum = torch.cumsum((left * left).sum(dim=1), 0).cpu()
    rcum = torch.cumsum((right * right).sum(dim=0), 0).cpu()
    out = {}
    for k in ks:
        t = two[:k, :k]
        out[k] = (float(lcum[k - 1]), float(rcum[k - 1]), float((t * t).sum()))
    return out


def principal_sines(u0: torch.Tensor, u1: torch.Tensor) -> torch.Tensor:
    """sin θ_i of the principal angles between span(u0) and span(u1) (orthonormal columns,
    same count k), descending: the singular values of u1 − u0(u0ᵀu1), clipped to [0, 1].

    Example:
        >>> e = torch.eye(3, dtype=torch.float64)
        >>> c, s = math.cos(0.3), math.sin(0.3)
        >>> u1 = torch.tensor([[c], [s], [0.0]], dtype=torch.float64)
        >>> round(float(principal_sines(e[:, :1], u1)[0]), 12) == round(s, 12)
        True
    """
    b = u1 - u0 @ (u0.mT @ u1)
    return torch.linalg.svdvals(b).clamp(0.0, 1.0)


def intruder_count(u0: torch.Tensor, u1_top: torch.Tensor, eps: float) -> int:
    """How many columns of ``u1_top`` (W1's top left singular vectors) have
    max_j |⟨u1_i, u0_j⟩| < ``eps`` over all columns u0_j of ``u0`` (W0's left singular
    vectors) -- intruder dimensions (Shuttleworth et al. 2024). |cos|, because the sign
    of a singular vector is arbitrary.

    Example:
        >>> e = torch.eye(4, dtype=torch.float64)
        >>> new = torch.full((4, 1), 0.5, dtype=torch.float64)   # |cos| = 0.5 with each e_j
        >>> intruder_count(e[:, :4], torch.cat([e[:, :1], new], 1), 0.6)
        1
    """
    if u1_top.shape[1] == 0:
        return 0
    best = (u0.mT @ u1_top).abs().amax(dim=0)
    return int((best < eps).sum())


# -- options -----------------------------------------------------------------------------
def _fractions(name: str, vals: Any, *, upper_open: bool = False) -> tuple[float, ...]:
    out = tuple(sorted({float(v) for v in vals}))
    if any(not (0 < v < 1 if upper_open else 0 < v <= 1) for v in out):
        raise ValueError(f"SpectralOptions.{name} must be fractions in (0, 1{')' if upper_open else ']'}, got {vals!r}")
    labels = [_fmt_pct(v) for v in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"SpectralOptions.{name} {out} give duplicate column labels {labels}")
    return out


@dataclass(frozen=True)
class SpectralOptions:
    """Options of the spectral family (see docs/spectral.md).

    Attributes:
        mode: ``"exact"`` (LAPACK SVDs) or ``"fast"`` (Gram-matrix eigen-decompositions
            in float64; same columns, accuracy in the module notes).
        dtype: working precision of ``exact`` mode, ``"float64"`` or ``"float32"``
            (``fast`` always works in float64).
        ranks: fractions ρ of min(m, n) for the principal subspaces (projection and
            rotation): k = max(1, ⌊ρ·min(m, n)⌋).
        tols: numerical-rank tolerances (relative to σ1).
        topk: k of the top-k energy shares.
        top_fracs: fractions of min(m, n) for the top-k energy shares.
        rotation: compute rotation, spectral drift and intruder dimensions (needs a
            decomposition of W1 too: about a third of the cost).
        intruder_k: how many of W1's top left singular vectors are checked.
        intruder_eps: the |cos| threshold ε below which one is an intruder.
        max_numel: skip (with a note) any matrix with more elements (``None``: no cap).
            Working memory is about 32 bytes per element in float64.
        max_dim: skip (with a note) any matrix whose min(m, n) is larger (``None``: no
            cap); time grows like m·n·min(m, n).
        stacked: analyse 3-D tensors (stacked MoE experts ``[E, m, n]``) as E matrices.
        split: fused projections to analyse part by part: ``{module: spec}`` where the
            module is the canonical role module (``"qkv_proj"``, ``"gate_up_proj"``) and
            spec is a number of equal parts, a list of part sizes, or
            ``{"sizes": [...] | int, "dim": 0 | 1}`` (dim 0 = rows, the output side of a
            ``torch.nn.Linear`` weight; GPT-2's Conv1D stores ``c_attn`` transposed, so
            dim 1). See ``deltascope.family_spectral.split_from_config``.
    """

    mode: Mode = "exact"
    dtype: Literal["float64", "float32"] = "float64"
    ranks: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2)
    tols: tuple[float, ...] = (1e-6, 1e-5, 1e-4)
    topk: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    top_fracs: tuple[float, ...] = (0.01, 0.05, 0.1)
    rotation: bool = True
    intruder_k: int = 10
    intruder_eps: float = 0.5
    max_numel: int | None = 1 << 27
    max_dim: int | None = 8192
    stacked: bool = True
    split: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in ("exact", "fast"):
            raise ValueError(f"SpectralOptions.mode must be 'exact' or 'fast', got {self.mode!r}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"SpectralOptions.dtype must be 'float64' or 'float32', got {self.dtype!r}")
        object.__setattr__(self, "ranks", _fractions("ranks", self.ranks))
        object.__setattr__(self, "top_fracs", _fractions("top_fracs", self.top_fracs))
        if not self.ranks:
            raise ValueError("SpectralOptions.ranks needs at least one fraction, e.g. (0.1,)")
        tols = _fractions("tols", self.tols, upper_open=True)
        floor = FAST_MIN_TOL if self.mode == "fast" else FLOAT32_MIN_TOL if self.dtype == "float32" else 0.0
        low = [t for t in tols if t < floor]
        if low:
            what = "fast mode (Gram matrices square the condition number)" if self.mode == "fast" else "float32"
            raise ValueError(
                f"SpectralOptions.tols {low} are below what {what} resolves (~{floor:g}·σ1); "
                f"use tolerances >= {floor:g} or mode='exact', dtype='float64'."
            )
        object.__setattr__(self, "tols", tols)
        topk = tuple(sorted({int(k) for k in self.topk}))
        if any(k < 1 for k in topk):
            raise ValueError(f"SpectralOptions.topk must be positive integers, got {self.topk!r}")
        object.__setattr__(self, "topk", topk)
        if int(self.intruder_k) < 1 or not 0 < float(self.intruder_eps) <= 1:
            raise ValueError(
                f"SpectralOptions needs intruder_k >= 1 and 0 < intruder_eps <= 1, got "
                f"{self.intruder_k!r}, {self.intruder_eps!r}"
            )
        object.__setattr__(self, "intruder_k", int(self.intruder_k))
        object.__setattr__(self, "intruder_eps", float(self.intruder_eps))
        for cap in ("max_numel", "max_dim"):
            v = getattr(self, cap)
            if v is not None and int(v) < 1:
                raise ValueError(f"SpectralOptions.{cap} must be a positive integer or None, got {v!r}")
            object.__setattr__(self, cap, None if v is None else int(v))
        object.__setattr__(self, "rotation", bool(self.rotation))
        object.__setattr__(self, "stacked", bool(self.stacked))
        object.__setattr__(self, "split", _normalize_split(self.split))

    @property
    def torch_dtype(self) -> torch.dtype:
        """The working dtype: float64 unless ``exact`` mode asks for float32."""
        return torch.float32 if self.mode == "exact" and self.dtype == "float32" else torch.float64

    def labels(self) -> list[str]:
        """Column labels of ``ranks``: ``['1pct', '5pct', '10pct', '20pct']``."""
        return [_fmt_pct(r) for r in self.ranks]

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "dtype": self.dtype,
            "ranks": list(self.ranks),
            "tols": list(self.tols),
            "topk": list(self.topk),
            "top_fracs": list(self.top_fracs),
            "rotation": self.rotation,
            "intruder_k": self.intruder_k,
            "intruder_eps": self.intruder_eps,
            "max_numel": self.max_numel,
            "max_dim": self.max_dim,
            "stacked": self.stacked,
            "split": {k: dict(v) for k, v in self.split.items()} if isinstance(self.split, Mapping) else self.split,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpectralOptions:
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"Unknown spectral option(s) {bad}; known: {sorted(known)}")
        return cls(**dict(d))


def _normalize_split(split: Any) -> Any:
    """``{module: {"sizes": int | [int, ...], "dim": 0 | 1}}``, or ``"auto"``."""
    if split is None:
        return {}
    if split == "auto":
        return "auto"
    if not isinstance(split, Mapping):
        raise ValueError(f"SpectralOptions.split must be a dict {{module: parts}} or 'auto', got {split!r}")
    out: dict[str, dict[str, Any]] = {}
    for module, spec in split.items():
        dim = 0
        if isinstance(spec, Mapping):
            dim, spec = spec.get("dim", 0), spec.get("sizes")
        if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool) and spec >= 2:
            sizes: int | list[int] = int(spec)
        elif isinstance(spec, (list, tuple)) and len(spec) >= 2 and all(int(s) >= 1 for s in spec):
            sizes = [int(s) for s in spec]
        else:
            raise ValueError(
                f"SpectralOptions.split[{module!r}] = {spec!r}: give a number of equal parts (>= 2), "
                "a list of part sizes, or {'sizes': ..., 'dim': 0 or 1}."
            )
        if dim not in (0, 1):
            raise ValueError(f"SpectralOptions.split[{module!r}]: dim must be 0 (rows) or 1 (columns), got {dim!r}")
        out[str(module)] = {"sizes": sizes, "dim": int(dim)}
    return out


# -- columns -----------------------------------------------------------------------------
_SIDES = (("proj_left", "left"), ("proj_right", "right"), ("proj2", "two-sided"))


def spectral_raw_kinds(opts: SpectralOptions) -> dict[str, str]:
    """Raw columns of one matrix (or a sum of matrices) -> ``"sum"`` or ``"max"``, in
    column order."""
    kinds: dict[str, str] = {
        "n_spectral_matrices": "sum",
        "n_rank_matrices": "sum",
        "rank_capacity": "sum",
        "spectral_norm": "max",
        "sum_stable_rank": "sum",
        "sum_effective_rank": "sum",
    }
    for t in opts.tols:
        kinds[f"sum_numerical_rank_{fmt_threshold(t)}"] = "sum"
    kinds["spectral_energy"] = "sum"
    for k in opts.topk:
        kinds[f"sv_energy_in_top{k}"] = "sum"
    for f in opts.top_fracs:
        kinds[f"sv_energy_in_top{_fmt_pct(f)}"] = "sum"
    kinds["proj_energy"] = "sum"
    for p in opts.labels():
        for side, _ in _SIDES:
            kinds[f"energy_{side}_{p}"] = "sum"
            kinds[f"expected_energy_{side}_{p}"] = "sum"
    if opts.rotation:
        for p in opts.labels():
            kinds[f"rot_sin_sum_{p}"] = "sum"
            kinds[f"n_rot_angles_{p}"] = "sum"
            kinds[f"rot_sin_max_{p}"] = "max"
        kinds["sv_drift_sq"] = "sum"
        kinds["sv_sumsq_w0"] = "sum"
        kinds["n_intruders"] = "sum"
        kinds["n_intruder_checked"] = "sum"
    return kinds


def _nan_raw(opts: SpectralOptions) -> dict[str, float]:
    return dict.fromkeys(spectral_raw_kinds(opts), math.nan)


def _sumsq(x: torch.Tensor) -> float:
    # accumulate in float64 whatever the working dtype: energies are ratio denominators
    return float(torch.linalg.vector_norm(x, dtype=torch.float64) ** 2)


def matrix_spectral(
    w0: torch.Tensor,
    w1: torch.Tensor,
    delta: torch.Tensor,
    *,
    opts: SpectralOptions,
    svd0: SVD | Callable[[], SVD] | None = None,
    svd1: SVD | None = None,
    s_delta: torch.Tensor | None = None,
) -> tuple[dict[str, float], list[str]]:
    """Raw spectral statistics of one matrix pair, and notes on what was undefined.

    Decompositions not given are computed here in ``opts.mode`` (pass them, or for W0 a
    function that makes it, to share a cached one). ``svd0`` must hold at least max(k) vectors on both sides and all of
    W0's left singular vectors when ``opts.rotation`` (intruders compare against all of
    them); ``svd1`` at least max(k, intruder_k) left vectors and all singular values.

    Undefined parts are NaN with a note, never an error: a zero update has no ranks or
    projections (its energies are 0 and it still counts in group sums); a zero W0 has no
    principal subspace (no projection, rotation or intruders); non-finite values give
    all-NaN.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> w0 = torch.randn(40, 30, generator=g, dtype=torch.float64)
        >>> raw, notes = matrix_spectral(w0, w0, torch.zeros_like(w0), opts=SpectralOptions(ranks=(0.1,)))
        >>> raw["spectral_energy"], raw["n_rank_matrices"], raw["rot_sin_max_10pct"], notes
        (0.0, 0.0, 0.0, ['zero update'])
    """
    m, n = delta.shape
    r = min(m, n)
    raw = _nan_raw(opts)
    if not (bool(torch.isfinite(w0).all()) and bool(torch.isfinite(w1).all())):
        return raw, ["non-finite values in W0 or W1"]
    notes: list[str] = []
    energy = _sumsq(delta)
    if s_delta is None:
        s_delta = singular_values(delta, mode=opts.mode)
    stats = spectrum_stats(s_delta, energy, tols=opts.tols, topk=opts.topk, top_fracs=opts.top_fracs)
    zero_update = not energy > 0
    if zero_update:
        notes.append("zero update")
    raw["n_spectral_matrices"] = 1.0
    raw["n_rank_matrices"] = 0.0 if zero_update else 1.0
    raw["rank_capacity"] = 0.0 if zero_update else float(r)
    raw["spectral_norm"] = stats["spectral_norm"]
    raw["sum_stable_rank"] = stats["stable_rank"]
    raw["sum_effective_rank"] = stats["effective_rank"]
    for t in opts.tols:
        raw[f"sum_numerical_rank_{fmt_threshold(t)}"] = stats[f"numerical_rank_{fmt_threshold(t)}"]
    raw["spectral_energy"] = energy
    for k in opts.topk:
        raw[f"sv_energy_in_top{k}"] = stats[f"energy_in_top{k}"]
    for f in opts.top_fracs:
        raw[f"sv_energy_in_top{_fmt_pct(f)}"] = stats[f"energy_in_top{_fmt_pct(f)}"]

    ks = [rank_for(rho, r) for rho in opts.ranks]
    ki = min(opts.intruder_k, r)
    w0_zero = not bool((w0 != 0).any())
    if w0_zero:
        notes.append("W0 is zero: no principal subspace")
    elif zero_update:  # W1 == W0: nothing in any subspace, no rotation, drift or intruder
        energies = dict.fromkeys(ks, (0.0, 0.0, 0.0))
    else:
        if svd0 is None:
            svd0 = _decompose(w0, opts.mode, left=None if opts.rotation else max(ks), right=max(ks))
        elif callable(svd0):
            svd0 = svd0()
        energies = subspace_energies(delta, svd0, ks)
    if not w0_zero:
        raw["proj_energy"] = energy
        for k, p in zip(ks, opts.labels()):
            for (side, _), e, frac in zip(_SIDES, energies[k], (k / m, k / n, k * k / (m * n))):
                raw[f"energy_{side}_{p}"] = e
                raw[f"expected_energy_{side}_{p}"] = energy * frac
    if opts.rotation:
        raw["sv_sumsq_w0"] = _sumsq(w0)
        if zero_update:
            raw["sv_drift_sq"] = 0.0
        else:
            if svd1 is None:
                svd1 = _decompose(w1, opts.mode, left=max(max(ks), ki), right=0)
            s0 = svd0.S if isinstance(svd0, SVD) else singular_values(w0, mode=opts.mode)
            raw["sv_drift_sq"] = _sumsq(svd1.S.to(torch.float64) - s0.to(torch.float64))
        if not w0_zero:
            assert zero_update or isinstance(svd0, SVD)
            for k, p in zip(ks, opts.labels()):
                sines = torch.zeros(1) if zero_update else principal_sines(svd0.U[:, :k], svd1.U[:, :k])
                raw[f"rot_sin_sum_{p}"] = float(sines.to(torch.float64).sum())
                raw[f"n_rot_angles_{p}"] = float(k)
                raw[f"rot_sin_max_{p}"] = float(sines.max())
            raw["n_intruders"] = (
                0.0 if zero_update else float(intruder_count(svd0.U, svd1.U[:, :ki], opts.intruder_eps))
            )
            raw["n_intruder_checked"] = float(ki)
    return raw, notes


def gram_vectors(shape: Sequence[int], *, left: int | None, right: int | None) -> int | None:
    """The ``vectors`` argument of :func:`svd_gram` for a matrix of ``shape`` when ``left``
    and ``right`` leading singular vectors are needed on each side (``None``: all): the
    Gram side (left when m <= n) always comes whole, the other side is derived.

    Example:
        >>> gram_vectors((100, 300), left=None, right=20), gram_vectors((300, 100), left=None, right=20)
        (20, None)
    """
    return right if shape[0] <= shape[1] else left


def _decompose(a: torch.Tensor, mode: Mode, *, left: int | None, right: int | None) -> SVD:
    if mode == "exact":
        return svd_exact(a)
    return svd_gram(a, vectors=gram_vectors(a.shape, left=left, right=right))


def combine_raw(parts: Sequence[Mapping[str, float]], opts: SpectralOptions) -> dict[str, float]:
    """Raw statistics of several matrices as one: sums (NaN entries skipped; NaN when all
    are NaN) and maxima, per :func:`spectral_raw_kinds`.

    Example:
        >>> o = SpectralOptions(ranks=(0.1,), rotation=False)
        >>> a, b = dict.fromkeys(spectral_raw_kinds(o), 1.0), dict.fromkeys(spectral_raw_kinds(o), math.nan)
        >>> b["spectral_norm"] = 3.0
        >>> c = combine_raw([a, b], o)
        >>> c["spectral_energy"], c["spectral_norm"]
        (1.0, 3.0)
    """
    out: dict[str, float] = {}
    for key, kind in spectral_raw_kinds(opts).items():
        vals = [float(p[key]) for p in parts if not math.isnan(float(p[key]))]
        out[key] = (sum(vals) if kind == "sum" else max(vals)) if vals else math.nan
    return out


def derive_spectral(raw: Mapping[str, Any], opts: SpectralOptions) -> dict[str, np.ndarray]:
    """Reported columns from raw sums -- for one tensor or a group alike.

    Rules (each a ratio of sums over the row's matrices):

    * ``effective_rank``, ``stable_rank``, ``numerical_rank_<tol>``: mean over the
      matrices with a non-zero update; ``*_frac``: Σ rank / Σ min(m, n) over them (a
      min(m, n)-weighted mean of the per-matrix fractions);
    * ``sv_energy_top*``: Σ top-k energy / Σ ‖Δ‖² (energy-weighted mean of the shares);
    * projections: Σ energy in the subspace / Σ ‖Δ‖²; ``_expected``: Σ ‖Δ‖²·expected /
      Σ ‖Δ‖² (the energy-weighted mean expectation); ``_enrichment``: their ratio;
    * ``rot_sin_mean_*``: mean sin θ over all principal angles of the row;
    * ``spectral_drift``: √(Σ‖s1 − s0‖²/Σ‖W0‖²_F); ``spectral_drift_per_update``:
      √(Σ‖s1 − s0‖²/Σ‖Δ‖²_F);
    * ``intruder_frac``: Σ intruders / Σ vectors checked.
    """
    out: dict[str, np.ndarray] = {}
    nmat = raw["n_rank_matrices"]
    cap = raw["rank_capacity"]
    for name in ("effective_rank", "stable_rank"):
        out[name] = _div(raw[f"sum_{name}"], nmat)
        out[f"{name}_frac"] = _div(raw[f"sum_{name}"], cap)
    for t in opts.tols:
        ft = fmt_threshold(t)
        out[f"numerical_rank_{ft}"] = _div(raw[f"sum_numerical_rank_{ft}"], nmat)
        out[f"numerical_rank_frac_{ft}"] = _div(raw[f"sum_numerical_rank_{ft}"], cap)
    energy = raw["spectral_energy"]
    for k in opts.topk:
        out[f"sv_energy_top{k}"] = _div(raw[f"sv_energy_in_top{k}"], energy)
    for f in opts.top_fracs:
        out[f"sv_energy_top{_fmt_pct(f)}"] = _div(raw[f"sv_energy_in_top{_fmt_pct(f)}"], energy)
    pe = raw["proj_energy"]
    for p in opts.labels():
        for side, _ in _SIDES:
            got, exp = raw[f"energy_{side}_{p}"], raw[f"expected_energy_{side}_{p}"]
            out[f"{side}_{p}"] = _div(got, pe)
            out[f"{side}_{p}_expected"] = _div(exp, pe)
            out[f"{side}_{p}_enrichment"] = _div(got, exp)
    if opts.rotation:
        for p in opts.labels():
            out[f"rot_sin_mean_{p}"] = _div(raw[f"rot_sin_sum_{p}"], raw[f"n_rot_angles_{p}"])
        out["spectral_drift"] = np.sqrt(_div(raw["sv_drift_sq"], raw["sv_sumsq_w0"]))
        out["spectral_drift_per_update"] = np.sqrt(_div(raw["sv_drift_sq"], energy))
        out["intruder_frac"] = _div(raw["n_intruders"], raw["n_intruder_checked"])
    return out
