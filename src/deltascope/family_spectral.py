"""The ``spectral`` metric family: the geometry of each weight update.

Turned on with ``deltascope.compare(base, tuned, spectral=True)`` (``"exact"``),
``spectral="fast"`` or options (:class:`SpectralOptions`, or a dict of its fields). Per
matrix it reports the rank and spectrum of Δ, how much of Δ lies in W0's principal
subspaces next to the random-direction expectation, the rotation of those subspaces,
spectral drift and intruder dimensions (definitions in :mod:`deltascope.metrics.spectral`
and docs/spectral.md).

Which tensors: 2-D weights; 3-D tensors (stacked MoE experts ``[E, m, n]``) as E
matrices; fused projections (``qkv_proj``, ``gate_up_proj``) part by part when
``split`` says how. 1-D tensors and scalars get NaN columns and a short
``spectral_note``; so do matrices above the size caps (``max_numel``, ``max_dim``), whose
other families' columns are still computed.

Several matrices in one row (experts, parts) and the rows of a group table combine the
same way: raw sums, then ratios of sums (:func:`~deltascope.metrics.spectral.derive_spectral`
lists the rules). W0's decomposition of a plain 2-D tensor comes from
:mod:`deltascope.decomp`, so the coords family's principal mask reuses it.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from .columns import ColumnSpec
from .families import OptionsFamily, PairContext
from .metrics.elementwise import _fmt_pct, fmt_threshold
from .metrics.spectral import (
    SVD,
    SpectralOptions,
    combine_raw,
    derive_spectral,
    gram_vectors,
    matrix_spectral,
    rank_for,
    spectral_raw_kinds,
)

__all__ = ["SpectralFamily", "SpectralOptions", "split_from_config"]

_F = "spectral"


def _specs(opts: SpectralOptions) -> list[ColumnSpec]:
    mean = "mean over the row's matrices with a non-zero update"
    frac = "Σ rank / Σ min(m, n) over the row's matrices with a non-zero update"
    specs = [
        ColumnSpec("spectral_note", "key", "What the spectral family analysed (experts, parts) or why it is NaN.", _F),
        ColumnSpec("effective_rank", "derived", f"Effective rank exp(H(σ/Σσ)) of Δ (Roy & Vetterli 2007); {mean}.", _F),
        ColumnSpec("effective_rank_frac", "derived", f"Effective rank as a fraction of min(m, n); {frac}.", _F),
        ColumnSpec("stable_rank", "derived", f"Stable rank ‖Δ‖²_F/σ1² of Δ; {mean}.", _F),
        ColumnSpec("stable_rank_frac", "derived", f"Stable rank as a fraction of min(m, n); {frac}.", _F),
        ColumnSpec("spectral_norm", "max", "σ1(Δ), the spectral norm of the update (groups: the largest).", _F),
    ]
    for t in opts.tols:
        ft = fmt_threshold(t)
        specs += [
            ColumnSpec(f"numerical_rank_{ft}", "derived", f"#{{σ_i(Δ) > {ft}·σ1}}; {mean}.", _F),
            ColumnSpec(f"numerical_rank_frac_{ft}", "derived", f"Numerical rank at {ft} / min(m, n); {frac}.", _F),
        ]
    share = "Share of ‖Δ‖²_F in the top {} singular directions of Δ (groups: energy-weighted)."
    specs += [ColumnSpec(f"sv_energy_top{k}", "derived", share.format(k), _F) for k in opts.topk]
    specs += [
        ColumnSpec(f"sv_energy_top{_fmt_pct(f)}", "derived", share.format(f"⌊{f:g}·min(m, n)⌋"), _F)
        for f in opts.top_fracs
    ]
    what = {
        "proj_left": ("‖U_kᵀΔ‖²/‖Δ‖²", "k/m"),
        "proj_right": ("‖ΔV_k‖²/‖Δ‖²", "k/n"),
        "proj2": ("‖U_kᵀΔV_k‖²/‖Δ‖²", "k²/(mn)"),
    }
    for rho, p in zip(opts.ranks, opts.labels()):
        sub = f"W0's top-k singular subspaces, k = max(1, ⌊{rho:g}·min(m, n)⌋)"
        for side, (formula, exp) in what.items():
            specs += [
                ColumnSpec(f"{side}_{p}", "derived", f"Share of Δ's energy in {sub}: {formula}.", _F),
                ColumnSpec(f"{side}_{p}_expected", "derived", f"Its value for a random direction ({exp}).", _F),
                ColumnSpec(f"{side}_{p}_enrichment", "derived", "Observed / expected (< 1: avoids the subspace).", _F),
            ]
    if opts.rotation:
        for rho, p in zip(opts.ranks, opts.labels()):
            k = f"k = max(1, ⌊{rho:g}·min(m, n)⌋)"
            specs += [
                ColumnSpec(
                    f"rot_sin_mean_{p}",
                    "derived",
                    f"Mean sin θ of the principal angles between W0's and W1's top-k left subspaces, {k}.",
                    _F,
                ),
                ColumnSpec(f"rot_sin_max_{p}", "max", f"Largest sin θ of those angles, {k}.", _F),
            ]
        specs += [
            ColumnSpec("spectral_drift", "derived", "‖s(W1) − s(W0)‖₂ / ‖s(W0)‖₂ (groups: √Σ/√Σ).", _F),
            ColumnSpec(
                "spectral_drift_per_update", "derived", "‖s(W1) − s(W0)‖₂ / ‖Δ‖_F, in [0, 1] (groups: √Σ/√Σ).", _F
            ),
            ColumnSpec(
                "intruder_frac",
                "derived",
                f"Share of W1's top-{opts.intruder_k} left singular vectors whose max |cos| with every "
                f"singular vector of W0 is < {opts.intruder_eps:g} (Shuttleworth et al. 2024).",
                _F,
            ),
        ]
    raw_docs = _raw_docs(opts)
    done = {s.name for s in specs}
    specs += [ColumnSpec(c, kind, raw_docs[c], _F) for c, kind in spectral_raw_kinds(opts).items() if c not in done]
    return specs


def _raw_docs(opts: SpectralOptions) -> dict[str, str]:
    docs = {
        "n_spectral_matrices": "Matrices analysed by the spectral family (experts and parts count one each).",
        "n_rank_matrices": "Of those, matrices with a non-zero update (the ones rank columns describe).",
        "rank_capacity": "Σ min(m, n) over the matrices with a non-zero update (raw).",
        "sum_stable_rank": "Σ stable rank (raw).",
        "sum_effective_rank": "Σ effective rank (raw).",
        "spectral_energy": "Σ ‖Δ‖²_F over the matrices analysed (raw).",
        "proj_energy": "Σ ‖Δ‖²_F over the matrices with a principal subspace (W0 ≠ 0) (raw).",
        "sv_drift_sq": "Σ ‖s(W1) − s(W0)‖²₂ (raw).",
        "sv_sumsq_w0": "Σ ‖s(W0)‖²₂ = Σ ‖W0‖²_F over the matrices analysed (raw).",
        "n_intruders": "Intruder dimensions found (raw count).",
        "n_intruder_checked": "Top singular vectors of W1 checked for intrusion (raw count).",
    }
    for t in opts.tols:
        docs[f"sum_numerical_rank_{fmt_threshold(t)}"] = f"Σ numerical rank at {fmt_threshold(t)} (raw)."
    for k in [str(k) for k in opts.topk] + [_fmt_pct(f) for f in opts.top_fracs]:
        docs[f"sv_energy_in_top{k}"] = f"Σ_(i ≤ {k}) σ_i², absolute (raw)."
    for p in opts.labels():
        for side in ("proj_left", "proj_right", "proj2"):
            docs[f"energy_{side}_{p}"] = f"Energy of Δ in the subspace of {side}_{p} (raw)."
            docs[f"expected_energy_{side}_{p}"] = f"‖Δ‖² × the random-direction expectation of {side}_{p} (raw)."
        docs[f"rot_sin_sum_{p}"] = f"Σ sin θ over the principal angles at {p} (raw)."
        docs[f"n_rot_angles_{p}"] = f"Principal angles at {p} (raw count)."
    return docs


class SpectralFamily(OptionsFamily):
    """Ranks, spectrum, principal-subspace projection, rotation, drift and intruder
    dimensions of every matrix update.

    Example:
        >>> import deltascope
        >>> base, tuned = deltascope.demo_pair()
        >>> cmp = deltascope.compare(base, tuned, blocks="mlp", layers=0, spectral="fast", progress=False)
        >>> t = cmp.by("module")[["effective_rank_frac", "proj2_10pct", "proj2_10pct_enrichment"]]
        >>> bool((t["effective_rank_frac"] > 0.5).all())     # a dense, near full-rank update
        True
    """

    name: ClassVar[str] = "spectral"

    options_class = SpectralOptions
    mode_field = "mode"
    example = "{'mode': 'fast', 'ranks': [0.1]}"

    def __init__(self, opts: SpectralOptions | None = None) -> None:
        super().__init__(opts)
        self._kinds = spectral_raw_kinds(self.opts)

    def make_specs(self, opts: SpectralOptions) -> list[ColumnSpec]:
        return _specs(opts)

    def derive(self, raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return derive_spectral(raw, self.opts)

    # -- one pair --------------------------------------------------------------------
    def compute(self, ctx: PairContext) -> dict[str, Any]:
        out: dict[str, Any] = dict.fromkeys(self._kinds, math.nan)
        shape = tuple(ctx.base_info.shape)
        why = self._not_analysed(ctx, shape)
        if why is not None:
            out["spectral_note"] = why
            return out
        parts, split_note = self._parts(ctx, shape[-2:])
        notes = [] if split_note is None else [split_note]
        too_big = self._too_big(parts, shape[-2:])
        if too_big is not None:
            out["spectral_note"] = too_big
            return out
        try:
            raws, problems = self._run(ctx, shape, parts)
        except (RuntimeError, ValueError, MemoryError) as e:  # LinAlgError and OOM are RuntimeErrors
            out["spectral_note"] = f"decomposition failed ({type(e).__name__}: {e})"
            return out
        out.update(combine_raw(raws, self.opts))
        n = len(raws)
        if len(shape) == 3:
            notes.insert(0, f"{shape[0]} stacked matrices")
        notes += [p if n == 1 else f"{p} ({c} of {n} matrices)" for p, c in problems.items()]
        out["spectral_note"] = "; ".join(notes) or None
        return out

    def _not_analysed(self, ctx: PairContext, shape: tuple[int, ...]) -> str | None:
        if len(shape) < 2:
            return f"{len(shape)}-D tensor: no spectral metrics"
        if len(shape) > 3 or (len(shape) == 3 and not self.opts.stacked):
            return f"{len(shape)}-D tensor: not analysed (spectral takes matrices and stacks of matrices)"
        if not ctx.is_float:
            return "not a float tensor"
        if min(shape) == 0:
            return "empty tensor"
        return None

    def _parts(self, ctx: PairContext, mshape: tuple[int, ...]) -> tuple[list[tuple[int, int, int]], str | None]:
        """Slices ``(dim, start, stop)`` of each matrix to analyse, and a note."""
        whole = [(0, 0, mshape[0])]
        split = self.opts.split
        module = ctx.role.module
        if split == "auto":
            config = ctx.config
            if module not in ("qkv_proj", "gate_up_proj"):
                return whole, None
            if not config:
                return whole, "split='auto' needs the model config (not available): fused tensor analysed whole"
            split = split_from_config(config)
        spec = split.get(module) if isinstance(split, Mapping) else None
        if spec is None:
            return whole, None
        dim, sizes = spec["dim"], spec["sizes"]
        length = mshape[dim]
        if isinstance(sizes, int):
            if length % sizes:
                return (
                    whole,
                    f"cannot split {module} into {sizes} equal parts along dim {dim} ({length}): analysed whole",
                )
            sizes = [length // sizes] * sizes
        if sum(sizes) != length:
            return whole, f"split sizes {sizes} of {module} do not add up to {length} along dim {dim}: analysed whole"
        starts = np.cumsum([0, *sizes]).tolist()
        return [(dim, a, b) for a, b in itertools.pairwise(starts)], f"split along dim {dim} into {sizes}"

    def _too_big(self, parts: list[tuple[int, int, int]], mshape: tuple[int, ...]) -> str | None:
        for dim, a, b in parts:
            m, n = (b - a, mshape[1]) if dim == 0 else (mshape[0], b - a)
            if self.opts.max_numel is not None and m * n > self.opts.max_numel:
                return (
                    f"skipped: a {m}x{n} matrix exceeds max_numel={self.opts.max_numel} "
                    "(raise SpectralOptions.max_numel, or None for no cap)"
                )
            if self.opts.max_dim is not None and min(m, n) > self.opts.max_dim:
                return (
                    f"skipped: a {m}x{n} matrix exceeds max_dim={self.opts.max_dim} on its smaller side "
                    "(raise SpectralOptions.max_dim, or None for no cap)"
                )
        return None

    def _run(
        self, ctx: PairContext, shape: tuple[int, ...], parts: list[tuple[int, int, int]]
    ) -> tuple[list[dict[str, float]], Counter[str]]:
        dtype = self.opts.torch_dtype
        raws: list[dict[str, float]] = []
        problems: Counter[str] = Counter()
        stacks = shape[0] if len(shape) == 3 else 1
        for e in range(stacks):
            if len(shape) == 2:
                w0, w1, d = ctx.float_pair(dtype)
            else:  # one expert at a time: never a float64 copy of the whole stack
                w0, w1 = ctx.w0[e].to(ctx.device, dtype), ctx.w1[e].to(ctx.device, dtype)
                d = w1 - w0
            for dim, a, b in parts:
                sl = (slice(a, b), slice(None)) if dim == 0 else (slice(None), slice(a, b))
                shared = len(shape) == 2 and len(parts) == 1
                raw, notes = matrix_spectral(
                    w0[sl], w1[sl], d[sl], opts=self.opts, svd0=self._shared_w0(ctx, d[sl]) if shared else None
                )
                raws.append(raw)
                problems.update(notes)
        return raws, problems

    def _shared_w0(self, ctx: PairContext, d: torch.Tensor) -> Callable[[], SVD]:
        """W0's decomposition through :mod:`deltascope.decomp` (cached on the pair and
        shared with the coords family), made only if a metric asks for it."""
        from .decomp import w0_gram_svd, w0_svd

        o = self.opts
        if o.mode == "exact":
            return lambda: w0_svd(ctx, dtype=o.torch_dtype)
        kmax = max(rank_for(rho, min(d.shape)) for rho in o.ranks)
        vectors = gram_vectors(d.shape, left=None if o.rotation else kmax, right=kmax)
        return lambda: w0_gram_svd(ctx, vectors=vectors)


def split_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A ``split`` option for the fused projections of a Hugging Face ``config.json``.

    ``qkv_proj`` rows are [q, k, v] = [heads·head_dim, kv_heads·head_dim, kv_heads·head_dim]
    (Phi-3 and other contiguous layouts); ``gate_up_proj`` rows are two equal halves;
    GPT-2's ``c_attn`` (a Conv1D, stored [in, 3·out]) is three equal column blocks.
    GPT-NeoX and Falcon ``query_key_value`` interleave q, k, v per head, so they are not
    split (returned without ``qkv_proj``). A VLM's ``text_config`` fills missing keys.

    Example:
        >>> split_from_config({"model_type": "phi3", "hidden_size": 3072, "num_attention_heads": 32,
        ...                    "num_key_value_heads": 8})
        {'qkv_proj': {'sizes': [3072, 768, 768], 'dim': 0}, 'gate_up_proj': {'sizes': 2, 'dim': 0}}
    """
    cfg = {**dict(config.get("text_config") or {}), **dict(config)}
    kind = str(cfg.get("model_type", "")).lower()
    out: dict[str, Any] = {}
    if kind == "gpt2":
        return {"qkv_proj": {"sizes": 3, "dim": 1}}
    if kind not in ("gpt_neox", "falcon", "bloom", "mpt") and "num_attention_heads" in cfg and "hidden_size" in cfg:
        heads = int(cfg["num_attention_heads"])
        kv = int(cfg.get("num_key_value_heads") or heads)
        hd = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
        out["qkv_proj"] = {"sizes": [heads * hd, kv * hd, kv * hd], "dim": 0}
    out["gate_up_proj"] = {"sizes": 2, "dim": 0}
    return out
