"""The spectral family against independent float64 numpy/scipy references, known answers,
fast-vs-exact error bounds, group aggregation by hand and the JSON round trip."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch

import deltascope
from conftest import llama_shapes, random_state, write_checkpoint
from deltascope import Comparison
from deltascope.checkpoint.base import TensorInfo
from deltascope.decomp import w0_gram_svd, w0_svd, w0_top_svd
from deltascope.families import PairContext
from deltascope.family_spectral import SpectralFamily, split_from_config
from deltascope.metrics.spectral import (
    SpectralOptions,
    derive_spectral,
    matrix_spectral,
    singular_values,
    svd_exact,
    svd_gram,
)
from deltascope.naming import role_of
from reference import to_f64

F64 = torch.float64
SMALL = {"ranks": (0.1, 0.2), "topk": (1, 2, 4), "top_fracs": (0.1,)}


# -- independent numpy/scipy reference -----------------------------------------------------
def ref_k(rho: float, r: int) -> int:
    return max(1, int(np.floor(rho * r + 1e-9)))


def np_reference(w0: np.ndarray, w1: np.ndarray, opts: SpectralOptions) -> dict[str, float]:
    """Every per-matrix raw statistic, straight from the definitions with numpy.linalg.svd
    and scipy.linalg.subspace_angles (shares no code with deltascope)."""
    d = w1 - w0
    m, n = d.shape
    r = min(m, n)
    s = np.linalg.svd(d, compute_uv=False)
    e = float((d * d).sum())
    out: dict[str, float] = {"spectral_energy": e, "spectral_norm": s[0], "rank_capacity": r}
    out["sum_stable_rank"] = e / s[0] ** 2
    p = s[s > 0] / s.sum()
    out["sum_effective_rank"] = math.exp(-(p * np.log(p)).sum())
    for t in opts.tols:
        out[f"sum_numerical_rank_{t:g}"] = float((s > t * s[0]).sum())
    for k in opts.topk:
        out[f"sv_energy_in_top{k}"] = float((s[:k] ** 2).sum())
    for f in opts.top_fracs:
        out[f"sv_energy_in_top{f * 100:g}pct"] = float((s[: ref_k(f, r)] ** 2).sum())
    u0, s0, v0t = np.linalg.svd(w0, full_matrices=False)
    u1, s1, _ = np.linalg.svd(w1, full_matrices=False)
    for rho in opts.ranks:
        k, lab = ref_k(rho, r), f"{rho * 100:g}pct"
        uk, vk = u0[:, :k], v0t[:k].T
        out[f"energy_proj_left_{lab}"] = float(((uk.T @ d) ** 2).sum())
        out[f"energy_proj_right_{lab}"] = float(((d @ vk) ** 2).sum())
        out[f"energy_proj2_{lab}"] = float(((uk.T @ d @ vk) ** 2).sum())
        out[f"expected_energy_proj_left_{lab}"] = e * k / m
        out[f"expected_energy_proj_right_{lab}"] = e * k / n
        out[f"expected_energy_proj2_{lab}"] = e * k * k / (m * n)
        sines = np.sin(scipy.linalg.subspace_angles(uk, u1[:, :k]))
        out[f"rot_sin_sum_{lab}"] = float(sines.sum())
        out[f"rot_sin_max_{lab}"] = float(sines.max())
        out[f"n_rot_angles_{lab}"] = k
    out["sv_drift_sq"] = float(((s1 - s0) ** 2).sum())
    out["sv_sumsq_w0"] = float((w0 * w0).sum())
    ki = min(opts.intruder_k, r)
    best = np.abs(u0.T @ u1[:, :ki]).max(axis=0)
    out["n_intruders"] = float((best < opts.intruder_eps).sum())
    return out


def raw_of(w0: torch.Tensor, w1: torch.Tensor, opts: SpectralOptions) -> dict[str, float]:
    raw, _ = matrix_spectral(w0, w1, w1 - w0, opts=opts)
    return raw


def derived(raw: dict[str, float], opts: SpectralOptions) -> dict[str, float]:
    return {k: float(v) for k, v in derive_spectral({k: np.array(v) for k, v in raw.items()}, opts).items()}


def orthonormal(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=F64))[0]


def low_rank(m: int, n: int, s: list[float], g: torch.Generator) -> torch.Tensor:
    return (orthonormal(m, len(s), g) * torch.tensor(s, dtype=F64)) @ orthonormal(n, len(s), g).T


def ctx_for(name: str, w0: torch.Tensor, w1: torch.Tensor, dtype: str = "F64") -> PairContext:
    info = TensorInfo(name, dtype, tuple(w0.shape), "f")
    return PairContext(name, role_of(name), info, info, w0, w1, torch.device("cpu"), 1 << 20)


@pytest.fixture(scope="module")
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


# -- every raw statistic against numpy/scipy -----------------------------------------------
@pytest.mark.parametrize("mode", ["exact", "fast"])
@pytest.mark.parametrize("shape", [(40, 64), (64, 40)])
def test_raw_statistics_match_numpy(mode: str, shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    w0 = torch.randn(*shape, generator=g, dtype=F64)
    w1 = w0 + 0.05 * torch.randn(*shape, generator=g, dtype=F64) + low_rank(*shape, [0.5, 0.3], g)
    opts = SpectralOptions(mode=mode, intruder_k=6, intruder_eps=0.9, **SMALL)
    got = raw_of(w0, w1, opts)
    ref = np_reference(w0.numpy(), w1.numpy(), opts)
    for key, want in ref.items():
        assert got[key] == pytest.approx(want, rel=1e-9, abs=1e-12), key
    assert got["n_spectral_matrices"] == got["n_rank_matrices"] == 1


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_rank_k_equal_singular_values(mode: str, rng: torch.Generator) -> None:
    """U diag(s) Vᵀ with k equal singular values: effective, stable and numerical rank are k."""
    for k in (1, 5, 17):
        d = low_rank(50, 70, [2.0] * k, rng)
        w0 = torch.randn(50, 70, generator=rng, dtype=F64)
        opts = SpectralOptions(mode=mode, ranks=(0.1,), rotation=False)
        out = derived(raw_of(w0, w0 + d, opts), opts)
        # fast: the r - k zero singular values come out as noise ≲ 1e-7·σ1, which adds
        # ≈ r·δ·|ln δ| / Σ(σ/σ1) to the entropy (documented); exact sees ~1e-16.
        rel = 1e-9 if mode == "exact" else 1e-4
        assert out["effective_rank"] == pytest.approx(k, rel=rel)
        assert out["effective_rank_frac"] == pytest.approx(k / 50, rel=rel)
        assert out["stable_rank"] == pytest.approx(k, rel=1e-9)
        for t in opts.tols:
            assert out[f"numerical_rank_{t:g}"] == k
            assert out[f"numerical_rank_frac_{t:g}"] == pytest.approx(k / 50)
        assert out["sv_energy_top1"] == pytest.approx(1 / k)
        assert out["sv_energy_top64"] == pytest.approx(1.0)


def test_numerical_rank_resolves_tolerances() -> None:
    """σ = 1, 1e-3, 2e-5, 2e-6, 5e-7: counts above 1e-4, 1e-5, 1e-6 are 2, 3, 4, in both modes."""
    g = torch.Generator().manual_seed(5)
    d = low_rank(120, 200, [1.0, 1e-3, 2e-5, 2e-6, 5e-7], g)
    for mode in ("exact", "fast"):
        opts = SpectralOptions(mode=mode, ranks=(0.1,), rotation=False)
        w0 = torch.randn(120, 200, generator=g, dtype=F64)
        out = derived(raw_of(w0, w0 + d, opts), opts)
        assert [out[f"numerical_rank_{t}"] for t in ("0.0001", "1e-05", "1e-06")] == [2, 3, 4], mode


def test_singular_values_and_gram_svd_against_numpy(rng: torch.Generator) -> None:
    for shape in ((30, 45), (45, 30)):
        a = torch.randn(*shape, generator=rng, dtype=F64)
        ref_u, ref_s, ref_vt = np.linalg.svd(a.numpy(), full_matrices=False)
        for mode in ("exact", "fast"):
            np.testing.assert_allclose(singular_values(a, mode=mode).numpy(), ref_s, rtol=1e-11)
        for svd in (svd_exact(a), svd_gram(a)):
            np.testing.assert_allclose(svd.S.numpy(), ref_s, rtol=1e-11)
            # vectors agree up to sign (distinct singular values)
            np.testing.assert_allclose(np.abs(np.sum(svd.U.numpy() * ref_u, axis=0)), 1.0, atol=1e-9)
            np.testing.assert_allclose(np.abs(np.sum(svd.Vh.numpy() * ref_vt, axis=1)), 1.0, atol=1e-9)
        part = svd_gram(a, vectors=3)
        assert min(part.U.shape[1], part.Vh.shape[0]) == 3 and part.S.numel() == 30


# -- projection: known answers and the random baseline --------------------------------------
def test_projection_inside_and_orthogonal_to_principal_subspace(rng: torch.Generator) -> None:
    m, n, k = 60, 80, 6  # k = ⌊0.1·60⌋
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=rng, dtype=F64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=rng, dtype=F64))
    s = torch.linspace(10, 1, m, dtype=F64)
    w0 = (u * s) @ v[:, :m].T
    core = torch.randn(k, k, generator=rng, dtype=F64)
    inside = u[:, :k] @ core @ v[:, :k].T
    outside = u[:, k:] @ torch.randn(m - k, n - k, generator=rng, dtype=F64) @ v[:, k:].T
    left_only = u[:, :k] @ torch.randn(k, n - k, generator=rng, dtype=F64) @ v[:, k:].T
    for mode in ("exact", "fast"):
        opts = SpectralOptions(mode=mode, ranks=(0.1,), rotation=False)
        for d, want in ((inside, (1, 1, 1)), (outside, (0, 0, 0)), (left_only, (1, 0, 0))):
            out = derived(raw_of(w0, w0 + d, opts), opts)
            got = (out["proj_left_10pct"], out["proj_right_10pct"], out["proj2_10pct"])
            assert got == pytest.approx(want, abs=1e-10), mode
        out = derived(raw_of(w0, w0 + inside, opts), opts)
        assert out["proj2_10pct_expected"] == pytest.approx(k * k / (m * n))
        assert out["proj2_10pct_enrichment"] == pytest.approx(m * n / (k * k))


def test_random_update_projection_matches_expectation(rng: torch.Generator) -> None:
    """For an isotropic Gaussian Δ, ‖U_kᵀΔ‖²/‖Δ‖² ~ Beta(kn/2, (m−k)n/2): mean k/m, standard
    deviation ≈ √(2p(1−p)/(mn)). Allow 6 standard deviations (seeded, so deterministic)."""
    m, n = 200, 300
    w0 = torch.randn(m, n, generator=rng, dtype=F64)
    d = torch.randn(m, n, generator=rng, dtype=F64)
    opts = SpectralOptions(ranks=(0.05, 0.2), rotation=False)
    out = derived(raw_of(w0, w0 + d, opts), opts)
    for lab, rho in (("5pct", 0.05), ("20pct", 0.2)):
        k = ref_k(rho, m)
        for side, p in (("proj_left", k / m), ("proj_right", k / n), ("proj2", k * k / (m * n))):
            assert out[f"{side}_{lab}_expected"] == pytest.approx(p)
            sd = math.sqrt(2 * p * (1 - p) / (m * n))
            assert abs(out[f"{side}_{lab}"] - p) < 6 * sd, (side, lab)
            assert out[f"{side}_{lab}_enrichment"] == pytest.approx(1, abs=6 * sd / p)


# -- rotation, drift, intruders --------------------------------------------------------------
def test_rotation_zero_and_drift_known_when_update_scales_the_subspace(rng: torch.Generator) -> None:
    """W1 = W0 + U_k diag(c) V_kᵀ (top singular values grow, order kept): no rotation of any
    top-k subspace that contains the scaled directions, drift = ‖c‖/‖s(W0)‖, per update = 1."""
    m, n = 40, 50
    u = orthonormal(m, m, rng)
    v = orthonormal(n, m, rng)
    s = torch.linspace(10, 1, m, dtype=F64)
    w0 = (u * s) @ v.T
    c = torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=F64)
    d = (u[:, :4] * c) @ v[:, :4].T
    for mode in ("exact", "fast"):
        opts = SpectralOptions(mode=mode, ranks=(0.1, 0.2), intruder_k=5)
        out = derived(raw_of(w0, w0 + d, opts), opts)
        assert out["rot_sin_mean_10pct"] == pytest.approx(0, abs=1e-7)
        assert out["rot_sin_mean_20pct"] == pytest.approx(0, abs=1e-7)
        assert out["spectral_drift"] == pytest.approx(float(c.norm() / s.norm()), rel=1e-9)
        assert out["spectral_drift_per_update"] == pytest.approx(1, rel=1e-9)
        assert out["intruder_frac"] == 0


def test_orthogonal_rotation_has_no_drift(rng: torch.Generator) -> None:
    """W1 = Q W0 with Q orthogonal: the spectrum is unchanged (drift 0) although Δ ≠ 0, and
    the left subspaces rotate (mean sin θ against scipy)."""
    w0 = torch.randn(30, 40, generator=rng, dtype=F64)
    q = torch.linalg.matrix_exp(0.05 * (lambda a: a - a.T)(torch.randn(30, 30, generator=rng, dtype=F64)))
    w1 = q @ w0
    opts = SpectralOptions(ranks=(0.2,))
    out = derived(raw_of(w0, w1, opts), opts)
    assert out["spectral_drift"] == pytest.approx(0, abs=1e-12)
    u0 = np.linalg.svd(w0.numpy())[0][:, :6]
    u1 = np.linalg.svd(w1.numpy())[0][:, :6]
    assert out["rot_sin_mean_20pct"] == pytest.approx(np.sin(scipy.linalg.subspace_angles(u0, u1)).mean(), rel=1e-9)
    assert out["rot_sin_mean_20pct"] > 1e-3


def test_drift_is_bounded_by_update(rng: torch.Generator) -> None:
    """Mirsky: ‖s(W1) − s(W0)‖₂ ≤ ‖Δ‖_F."""
    for _ in range(3):
        w0 = torch.randn(25, 35, generator=rng, dtype=F64)
        w1 = w0 + torch.randn(25, 35, generator=rng, dtype=F64)
        opts = SpectralOptions(ranks=(0.2,))
        assert 0 < derived(raw_of(w0, w1, opts), opts)["spectral_drift_per_update"] <= 1


def test_intruder_dimension_constructed(rng: torch.Generator) -> None:
    """W1 = W0 + σ x yᵀ with x = Σ_j u_j/√m (|cos| = 1/√m = 0.25 with every left singular
    vector of W0), y outside W0's row space and σ ≫ σ1(W0): W1's top left singular vector
    is ~x, an intruder at ε = 0.5; W1's next vectors are W0's (not intruders)."""
    m, n = 16, 40
    u = orthonormal(m, m, rng)
    basis = orthonormal(n, n, rng)
    v, y = basis[:, :m], basis[:, m]
    w0 = (u * torch.linspace(4, 1, m, dtype=F64)) @ v.T
    x = u.sum(dim=1) / math.sqrt(m)
    w1 = w0 + 100.0 * torch.outer(x, y)
    for mode in ("exact", "fast"):
        opts = SpectralOptions(mode=mode, ranks=(0.1,), intruder_k=4, intruder_eps=0.5)
        raw = raw_of(w0, w1, opts)
        assert raw["n_intruders"] == 1 and raw["n_intruder_checked"] == 4
        ref = np_reference(w0.numpy(), w1.numpy(), opts)
        assert raw["n_intruders"] == ref["n_intruders"]
    # the same matrix with a tiny σ: the new direction is not in the top 4, no intruder
    raw = raw_of(w0, w0 + 0.01 * torch.outer(x, y), opts)
    assert raw["n_intruders"] == 0


# -- degenerate inputs -----------------------------------------------------------------------
def test_zero_update_and_zero_w0_and_nonfinite(rng: torch.Generator) -> None:
    w0 = torch.randn(20, 30, generator=rng, dtype=F64)
    opts = SpectralOptions(ranks=(0.1,))
    raw, notes = matrix_spectral(w0, w0, torch.zeros_like(w0), opts=opts)
    assert notes == ["zero update"]
    assert raw["n_rank_matrices"] == 0 and raw["rank_capacity"] == 0 and math.isnan(raw["sum_effective_rank"])
    assert raw["spectral_energy"] == 0 and raw["energy_proj2_10pct"] == 0 and raw["sv_drift_sq"] == 0
    assert raw["rot_sin_max_10pct"] == 0 and raw["n_intruders"] == 0
    out = derived(raw, opts)
    assert math.isnan(out["effective_rank"]) and math.isnan(out["proj2_10pct"]) and out["spectral_drift"] == 0

    zero = torch.zeros(20, 30, dtype=F64)
    raw, notes = matrix_spectral(zero, w0, w0, opts=opts)
    assert notes == ["W0 is zero: no principal subspace"]
    assert math.isnan(raw["proj_energy"]) and math.isnan(raw["n_intruders"]) and math.isnan(raw["rot_sin_sum_10pct"])
    assert raw["sv_drift_sq"] == pytest.approx(float((torch.linalg.svdvals(w0) ** 2).sum()))
    assert raw["sum_effective_rank"] == pytest.approx(raw_of(zero, w0, opts)["sum_effective_rank"])

    bad = w0.clone()
    bad[3, 4] = math.nan
    raw, notes = matrix_spectral(bad, w0, w0 - bad, opts=opts)
    assert notes == ["non-finite values in W0 or W1"] and all(math.isnan(v) for v in raw.values())


def test_family_notes_for_vectors_caps_and_ints() -> None:
    fam = SpectralFamily(SpectralOptions(ranks=(0.1,), max_numel=500))
    v = torch.ones(8, dtype=F64)
    out = fam.compute(ctx_for("model.norm.weight", v, v))
    assert out["spectral_note"] == "1-D tensor: no spectral metrics"
    assert set(out) == set(fam.raw_columns())
    assert all(math.isnan(x) for k, x in out.items() if k != "spectral_note")
    big = torch.ones(30, 20, dtype=F64)
    out = fam.compute(ctx_for("model.layers.0.mlp.up_proj.weight", big, big))
    assert out["spectral_note"].startswith("skipped: a 30x20 matrix exceeds max_numel=500")
    assert math.isnan(out["spectral_energy"])
    out = SpectralFamily(SpectralOptions(ranks=(0.1,), max_dim=10)).compute(ctx_for("w", big, big))
    assert "max_dim=10" in out["spectral_note"]
    ints = torch.ones(4, 4, dtype=torch.int32)
    assert fam.compute(ctx_for("w", ints, ints, "I32"))["spectral_note"] == "not a float tensor"


# -- stacked experts and fused splits ---------------------------------------------------------
def test_stacked_experts_combine_like_separate_matrices(rng: torch.Generator) -> None:
    w0 = torch.randn(3, 12, 20, generator=rng, dtype=F64)
    w1 = w0 + 0.1 * torch.randn(3, 12, 20, generator=rng, dtype=F64)
    w1[1] = w0[1]  # one frozen expert
    opts = SpectralOptions(ranks=(0.1, 0.2), intruder_k=3)
    fam = SpectralFamily(opts)
    out = fam.compute(ctx_for("model.layers.0.mlp.experts.gate_up_proj", w0, w1))
    assert out["spectral_note"] == "3 stacked matrices; zero update (1 of 3 matrices)"
    refs = [np_reference(w0[e].numpy(), w1[e].numpy(), opts) for e in (0, 2)]
    assert out["n_spectral_matrices"] == 3 and out["n_rank_matrices"] == 2
    assert out["rank_capacity"] == 24
    assert out["sum_effective_rank"] == pytest.approx(sum(r["sum_effective_rank"] for r in refs))
    assert out["spectral_norm"] == pytest.approx(max(r["spectral_norm"] for r in refs))
    assert out["energy_proj2_10pct"] == pytest.approx(sum(r["energy_proj2_10pct"] for r in refs))
    assert out["n_rot_angles_10pct"] == 3  # frozen expert's angles count, as zeros
    assert out["rot_sin_sum_10pct"] == pytest.approx(sum(r["rot_sin_sum_10pct"] for r in refs))
    row = derived({k: v for k, v in out.items() if k != "spectral_note"}, opts)
    assert row["effective_rank_frac"] == pytest.approx(sum(r["sum_effective_rank"] for r in refs) / 24)
    assert row["rot_sin_mean_10pct"] == pytest.approx(sum(r["rot_sin_sum_10pct"] for r in refs) / 3)


def test_fused_split_equals_parts(rng: torch.Generator) -> None:
    w0 = torch.randn(24, 16, generator=rng, dtype=F64)
    w1 = w0 + 0.1 * torch.randn(24, 16, generator=rng, dtype=F64)
    opts = SpectralOptions(ranks=(0.2,), split={"qkv_proj": [16, 4, 4]})
    out = SpectralFamily(opts).compute(ctx_for("model.layers.0.self_attn.qkv_proj.weight", w0, w1))
    assert out["spectral_note"] == "split along dim 0 into [16, 4, 4]"
    parts = [np_reference(w0[a:b].numpy(), w1[a:b].numpy(), opts) for a, b in ((0, 16), (16, 20), (20, 24))]
    for key in ("sum_effective_rank", "energy_proj_left_20pct", "sv_drift_sq", "rank_capacity"):
        assert out[key] == pytest.approx(sum(p[key] for p in parts)), key
    # a column split (GPT-2 Conv1D c_attn) and a spec that does not fit
    opts = SpectralOptions(ranks=(0.2,), split={"qkv_proj": {"sizes": 2, "dim": 1}})
    out = SpectralFamily(opts).compute(ctx_for("h.0.attn.c_attn.weight", w0, w1))
    assert out["n_spectral_matrices"] == 2 and out["rank_capacity"] == 16
    opts = SpectralOptions(ranks=(0.2,), split={"qkv_proj": 5})
    out = SpectralFamily(opts).compute(ctx_for("model.layers.0.self_attn.qkv_proj.weight", w0, w1))
    assert "analysed whole" in out["spectral_note"] and out["n_spectral_matrices"] == 1


def test_split_from_config_and_auto(rng: torch.Generator) -> None:
    cfg = {"model_type": "phi3", "hidden_size": 16, "num_attention_heads": 4, "num_key_value_heads": 1}
    assert split_from_config(cfg) == {
        "qkv_proj": {"sizes": [16, 4, 4], "dim": 0},
        "gate_up_proj": {"sizes": 2, "dim": 0},
    }
    assert split_from_config({"model_type": "gpt2"}) == {"qkv_proj": {"sizes": 3, "dim": 1}}
    assert "qkv_proj" not in split_from_config({"model_type": "gpt_neox", "hidden_size": 8, "num_attention_heads": 2})
    w0 = torch.randn(24, 16, generator=rng, dtype=F64)
    fam = SpectralFamily(SpectralOptions(ranks=(0.2,), split="auto"))
    ctx = ctx_for("model.layers.0.self_attn.qkv_proj.weight", w0, w0 + 0.1)
    assert "needs the model config" in fam.compute(ctx)["spectral_note"]
    ctx.config = cfg  # what the engine would attach (see the family's docs)
    assert fam.compute(ctx)["n_spectral_matrices"] == 3


# -- fast vs exact on a realistic shape --------------------------------------------------------
def test_fast_mode_error_bounds_on_realistic_shape() -> None:
    """512x1376 (a small MLP), W0 with a decaying spectrum like trained weights, Δ a dense
    small update plus a low-rank part partly aligned with W0's top subspace: fast is within
    1e-3 absolute on every projection and 1 % on effective rank (measured: ~1e-12)."""
    g = torch.Generator().manual_seed(7)
    m, n = 512, 1376
    u, v = orthonormal(m, m, g), orthonormal(n, m, g)
    s = 0.5 * torch.arange(1, m + 1, dtype=F64) ** -0.5
    w0 = (u * s) @ v.T
    d = 2e-3 * torch.randn(m, n, generator=g, dtype=F64) + 0.05 * (u[:, :8] @ v[:, 4:12].T)
    d += low_rank(m, n, [0.05, 0.03], g)
    w1 = w0 + d
    exact = derived(raw_of(w0, w1, SpectralOptions()), SpectralOptions())
    fast_opts = SpectralOptions(mode="fast")
    fast = derived(raw_of(w0, w1, fast_opts), fast_opts)
    for key, want in exact.items():
        if key.startswith(("proj", "sv_energy")):
            assert fast[key] == pytest.approx(want, abs=1e-3), key
        if "enrichment" in key:
            assert fast[key] == pytest.approx(want, rel=1e-3), key
    assert fast["effective_rank"] == pytest.approx(exact["effective_rank"], rel=0.01)
    for key in ("stable_rank", "spectral_drift", "spectral_drift_per_update"):
        assert fast[key] == pytest.approx(exact[key], rel=1e-6), key
    for key in [k for k in exact if k.startswith("rot_sin_mean")]:
        assert fast[key] == pytest.approx(exact[key], rel=1e-3, abs=1e-6), key
    for key in [k for k in exact if k.startswith("numerical_rank")] + ["intruder_frac"]:
        assert fast[key] == exact[key], key


def test_float32_exact_mode_is_close_to_float64(rng: torch.Generator) -> None:
    w0 = torch.randn(64, 96, generator=rng, dtype=F64)
    w1 = w0 + 0.01 * torch.randn(64, 96, generator=rng, dtype=F64)
    o64, o32 = SpectralOptions(tols=(1e-4,)), SpectralOptions(dtype="float32", tols=(1e-4,))
    a = derived(raw_of(w0, w1, o64), o64)
    b = derived(raw_of(w0.float(), w1.float(), o32), o32)
    for key in ("effective_rank", "stable_rank", "proj2_10pct", "proj_left_20pct", "spectral_drift"):
        assert b[key] == pytest.approx(a[key], rel=1e-3), key


# -- options -------------------------------------------------------------------------------------
def test_options_parsing_and_round_trip() -> None:
    assert SpectralFamily.from_user(True).opts == SpectralOptions()
    assert SpectralFamily.from_user("fast").opts.mode == "fast"
    fam = SpectralFamily.from_user({"mode": "fast", "ranks": [0.3, 0.1], "split": {"gate_up_proj": 2}})
    assert fam.opts.ranks == (0.1, 0.3)
    again = SpectralFamily.from_options(fam.options())
    assert again.opts == fam.opts and [s.name for s in again.specs()] == [s.name for s in fam.specs()]
    with pytest.raises(ValueError, match="below what fast mode"):
        SpectralOptions(mode="fast", tols=(1e-8,))
    with pytest.raises(ValueError, match="float32"):
        SpectralOptions(dtype="float32")
    with pytest.raises(ValueError, match="Unknown spectral option"):
        SpectralOptions.from_dict({"rank": [0.1]})
    with pytest.raises(ValueError, match="spectral="):
        SpectralFamily.from_user(3)
    with pytest.raises(ValueError, match="split"):
        SpectralOptions(split={"qkv_proj": 1})


def test_decomp_shares_w0_decompositions(rng: torch.Generator) -> None:
    w0 = torch.randn(30, 50, generator=rng, dtype=F64)
    ctx = ctx_for("w", w0, w0 + 0.01)
    gram = w0_gram_svd(ctx)
    top = w0_top_svd(ctx, 4, mode="fast")  # slices the Gram decomposition, no sketch
    assert torch.equal(top.U, gram.U[:, :4]) and torch.equal(top.S, gram.S[:4])
    full = w0_svd(ctx)
    assert torch.allclose(full.S, gram.S, rtol=1e-12)
    assert w0_top_svd(ctx, 4, mode="fast").S.data_ptr() == full.S.data_ptr()  # exact now preferred
    fam = SpectralFamily(SpectralOptions(ranks=(0.1,)))
    fam.compute(ctx)
    assert ctx.shared("w0_svd:torch.float64", lambda: None) is full  # the family reused it


# -- end to end --------------------------------------------------------------------------------
def _tuned(base: dict[str, torch.Tensor], seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in base.items():
        if t.ndim == 2 and "embed" not in name:  # embeddings frozen: a zero update
            t = (t.float() + 2e-3 * torch.randn(t.shape, generator=g)).to(t.dtype)
        out[name] = t
    return out


def test_compare_groups_aggregate_exactly(make_pair) -> None:
    b, t, base, tuned = make_pair(_tuned, shapes=llama_shapes(layers=2))
    opts = {"ranks": [0.1, 0.2], "intruder_k": 4}
    cmp = deltascope.compare(b, t, spectral=opts)
    so = SpectralOptions.from_dict(opts)
    by = cmp.by("module")
    assert not len(cmp.errors)
    assert {"effective_rank_frac", "proj2_10pct", "proj2_10pct_enrichment"} <= set(by.columns)
    for module in ("q_proj", "down_proj", "k_proj"):
        names = [n for n in base if n.endswith(f".{module}.weight")]
        refs = [
            np_reference(to_f64(base[n]).reshape(base[n].shape), to_f64(tuned[n]).reshape(base[n].shape), so)
            for n in names
        ]

        def tot(key: str, refs: list[dict[str, float]] = refs) -> float:
            return sum(r[key] for r in refs)

        row = by.loc[module]
        assert row["proj2_10pct"] == pytest.approx(tot("energy_proj2_10pct") / tot("spectral_energy"), rel=1e-9)
        assert row["proj_left_20pct_enrichment"] == pytest.approx(
            tot("energy_proj_left_20pct") / tot("expected_energy_proj_left_20pct"), rel=1e-9
        )
        assert row["proj2_10pct_expected"] == pytest.approx(
            tot("expected_energy_proj2_10pct") / tot("spectral_energy"), rel=1e-9
        )
        assert row["effective_rank_frac"] == pytest.approx(tot("sum_effective_rank") / tot("rank_capacity"), rel=1e-9)
        assert row["stable_rank"] == pytest.approx(tot("sum_stable_rank") / len(refs), rel=1e-9)
        assert row["rot_sin_mean_10pct"] == pytest.approx(
            tot("rot_sin_sum_10pct") / tot("n_rot_angles_10pct"), rel=1e-6
        )
        assert row["spectral_drift"] == pytest.approx(math.sqrt(tot("sv_drift_sq") / tot("sv_sumsq_w0")), rel=1e-6)
        assert row["spectral_norm"] == pytest.approx(max(r["spectral_norm"] for r in refs), rel=1e-9)
        assert row["n_spectral_matrices"] == len(refs)
    rows = cmp.tensors.set_index("name")
    assert rows.loc["model.embed_tokens.weight", "spectral_note"] == "zero update"
    assert rows.loc["model.norm.weight", "spectral_note"] == "1-D tensor: no spectral metrics"
    assert rows.loc["model.layers.0.mlp.up_proj.weight", "changed_exact"] > 0
    assert math.isnan(by.loc["input_layernorm", "effective_rank_frac"])


def test_stacked_row_equals_group_of_separate_experts(tmp_path) -> None:
    """A 3-D expert tensor's row equals the group of the same matrices stored one by one."""
    experts = {f"model.layers.1.mlp.experts.{e}.up_proj.weight": (20, 12) for e in range(3)}
    base = random_state(experts, seed=4)
    tuned = _tuned(base)
    for state in (base, tuned):
        state["model.layers.0.mlp.experts.gate_up_proj"] = torch.stack([state[n] for n in experts])
    b = write_checkpoint(tmp_path / "base", base)
    t = write_checkpoint(tmp_path / "tuned", tuned)
    cmp = deltascope.compare(b, t, spectral={"ranks": [0.1, 0.25]}, progress=False)
    by = cmp.by("layer")
    cols = [c for c in by.columns if c in {s.name for s in cmp.columns if s.family == "spectral"}]
    assert len(cols) > 50
    np.testing.assert_allclose(by.loc[0, cols].to_numpy(float), by.loc[1, cols].to_numpy(float), rtol=1e-12)


def test_json_round_trip_reproduces_groups(make_pair) -> None:
    b, t, _, _ = make_pair(_tuned, shapes=llama_shapes(layers=1))
    cmp = deltascope.compare(b, t, spectral="fast", progress=False)
    again = Comparison.from_json(cmp.to_json())
    pd.testing.assert_frame_equal(again.tensors, cmp.tensors)
    pd.testing.assert_frame_equal(again.by("module"), cmp.by("module"))
    pd.testing.assert_frame_equal(again.by("layer", "module"), cmp.by("layer", "module"))
    assert again.families[1].opts == cmp.families[1].opts


def test_split_auto_reads_config_json_end_to_end(tmp_path) -> None:
    """The engine hands the base checkpoint's config.json to the family."""
    import deltascope
    from conftest import write_checkpoint

    g = torch.Generator().manual_seed(11)
    name = "model.layers.0.self_attn.qkv_proj.weight"
    w0 = torch.randn(24, 16, generator=g)
    w1 = w0 + 0.1 * torch.randn(24, 16, generator=g)
    cfg = {"model_type": "phi3", "hidden_size": 16, "num_attention_heads": 4, "num_key_value_heads": 1}
    write_checkpoint(tmp_path / "b", {name: w0}, config=cfg)
    write_checkpoint(tmp_path / "t", {name: w1})
    row = deltascope.compare(tmp_path / "b", tmp_path / "t", spectral={"split": "auto"}).tensors.iloc[0]
    assert row["n_spectral_matrices"] == 3 and "split along dim 0" in row["spectral_note"]
