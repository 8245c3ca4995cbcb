"""Decompositions of the source weight W0, computed once per tensor pair and shared by
every metric family that needs them (spectral projections and rotation, the principal
coordinate mask).

Every function caches its result in the pair's :class:`~deltascope.families.PairContext`,
so asking twice (from two families) costs one decomposition; :func:`w0_top_svd` also
slices a full decomposition another family already made (the exact SVD, or the float64
Gram eigen-decomposition of ``spectral="fast"``) rather than sketching a new one. The
maths lives in :mod:`deltascope.metrics.spectral`.
"""

from __future__ import annotations

from typing import Literal

import torch

from .families import PairContext
from .metrics.spectral import SVD, svd_exact, svd_gram

__all__ = ["SVD", "w0_svd", "w0_gram_svd", "w0_top_svd"]

Mode = Literal["exact", "fast"]
_GRAM_KEY = "w0_gram_svd:float64"


def w0_svd(ctx: PairContext, *, dtype: torch.dtype = torch.float64) -> SVD:
    """The full thin SVD of W0 (2-D), by LAPACK (``torch.linalg.svd``), cached per pair.

    Example:
        >>> import torch
        >>> from deltascope.checkpoint.base import TensorInfo
        >>> from deltascope.naming import role_of
        >>> w = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
        >>> info = TensorInfo("w", "F32", (3, 3), "f")
        >>> ctx = PairContext("w", role_of("w"), info, info, w, w, torch.device("cpu"), 1 << 20)
        >>> w0_svd(ctx).S.tolist()
        [3.0, 2.0, 1.0]
    """

    def make() -> SVD:
        return svd_exact(_matrix(ctx, dtype))

    return ctx.shared(f"w0_svd:{dtype}", make)


def _matrix(ctx: PairContext, dtype: torch.dtype) -> torch.Tensor:
    w0, _, _ = ctx.float_pair(dtype)
    if w0.ndim != 2:
        raise ValueError(f"SVD needs a 2-D tensor, {ctx.name!r} has shape {tuple(w0.shape)}")
    return w0


def _vectors_held(svd: SVD) -> int:
    return min(svd.U.shape[1], svd.Vh.shape[0])


def w0_gram_svd(ctx: PairContext, *, vectors: int | None = None) -> SVD:
    """The thin SVD of W0 (2-D) from the float64 eigen-decomposition of its smaller Gram
    matrix (:func:`~deltascope.metrics.spectral.svd_gram`), cached per pair.

    All singular values and all vectors of the Gram side; the leading ``vectors`` (default
    all) of the other side. A cached one holding enough vectors is returned as is.

    Example:
        >>> import torch
        >>> from deltascope.checkpoint.base import TensorInfo
        >>> from deltascope.naming import role_of
        >>> w = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
        >>> info = TensorInfo("w", "F32", (3, 3), "f")
        >>> ctx = PairContext("w", role_of("w"), info, info, w, w, torch.device("cpu"), 1 << 20)
        >>> svd = w0_gram_svd(ctx, vectors=1)       # 3x3: U from the Gram side, one row of Vh
        >>> svd.S.tolist(), svd.U.shape[1], svd.Vh.shape[0]
        ([3.0, 2.0, 1.0], 3, 1)
        >>> w0_gram_svd(ctx, vectors=1) is svd, w0_gram_svd(ctx).Vh.shape[0]
        (True, 3)
    """
    cached = ctx._cache.get(_GRAM_KEY)
    if cached is not None and _vectors_held(cached) >= (cached.S.numel() if vectors is None else vectors):
        return cached
    svd = svd_gram(_matrix(ctx, torch.float64), vectors=vectors)
    ctx._cache[_GRAM_KEY] = svd
    return svd


def w0_top_svd(
    ctx: PairContext,
    k: int,
    *,
    mode: Mode = "exact",
    dtype: torch.dtype = torch.float64,
    oversample: int = 10,
    niter: int = 4,
    seed: int = 0,
) -> SVD:
    """The top-``k`` singular triplets of W0.

    ``exact`` slices :func:`w0_svd`; ``fast`` uses a seeded randomized range finder
    (Halko, Martinsson & Tropp 2011; ``torch.svd_lowrank`` with ``q = k + oversample``
    and ``niter`` power iterations), which is much cheaper when ``k << min(m, n)``.
    Results are cached per (mode, k); an exact SVD already computed is reused by both,
    and ``fast`` also reuses a Gram decomposition (:func:`w0_gram_svd`) holding ``k``
    vectors (it is more accurate than the sketch: float64, no truncation).
    """
    if mode not in ("exact", "fast"):
        raise ValueError(f"mode must be 'exact' or 'fast', got {mode!r}")
    exact_key = f"w0_svd:{dtype}"
    if mode == "exact" or exact_key in ctx._cache:
        full = w0_svd(ctx, dtype=dtype)
        return SVD(full.U[:, :k], full.S[:k], full.Vh[:k])
    gram = ctx._cache.get(_GRAM_KEY)
    if gram is not None and _vectors_held(gram) >= k:
        return SVD(gram.U[:, :k].to(dtype), gram.S[:k].to(dtype), gram.Vh[:k].to(dtype))

    def make() -> SVD:
        w0, _, _ = ctx.float_pair(dtype)
        q = min(k + oversample, min(w0.shape))
        gen_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            U, S, V = torch.svd_lowrank(w0, q=q, niter=niter)
        finally:
            torch.random.set_rng_state(gen_state)
        return SVD(U[:, :k], S[:k], V[:, :k].T)

    return ctx.shared(f"w0_top_svd:{dtype}:{k}:{oversample}:{niter}:{seed}", make)
