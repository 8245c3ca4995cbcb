"""Decompositions of the source weight W0, computed once per tensor pair and shared by
every metric family that needs them (spectral projections and rotation, the principal
coordinate mask).

Both functions cache their result in the pair's :class:`~deltascope.families.PairContext`,
so asking twice (from two families) costs one decomposition.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from .families import PairContext

__all__ = ["SVD", "w0_svd", "w0_top_svd"]

Mode = Literal["exact", "fast"]


class SVD(NamedTuple):
    """A thin SVD ``A = U diag(S) Vh`` (singular values descending)."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor


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
        w0, _, _ = ctx.float_pair(dtype)
        if w0.ndim != 2:
            raise ValueError(f"SVD needs a 2-D tensor, {ctx.name!r} has shape {tuple(w0.shape)}")
        U, S, Vh = torch.linalg.svd(w0, full_matrices=False)
        return SVD(U, S, Vh)

    return ctx.shared(f"w0_svd:{dtype}", make)


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
    Results are cached per (mode, k); an exact SVD already computed is reused by both.
    """
    if mode not in ("exact", "fast"):
        raise ValueError(f"mode must be 'exact' or 'fast', got {mode!r}")
    exact_key = f"w0_svd:{dtype}"
    if mode == "exact" or exact_key in ctx._cache:
        full = w0_svd(ctx, dtype=dtype)
        return SVD(full.U[:, :k], full.S[:k], full.Vh[:k])

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
