"""The coords family: changed masks, rank order, correlations, mask enrichment, the
magnitude profile and its rounding null models -- against scipy / float64 numpy
references written from docs/coordinates.md, and on planted updates with known answers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import integrate, stats

import deltascope
from conftest import llama_shapes, write_checkpoint
from deltascope import Comparison
from deltascope.dtypes import DTYPES
from deltascope.family_coords import CoordsFamily, CoordsOptions
from deltascope.metrics.coords import (
    abs_correlations,
    changed_mask,
    magnitude_bins,
    parse_rule,
    rank_bins,
    rank_mask,
    rankdata,
    ulp_classes,
    visible_probability,
)
from deltascope.metrics.elementwise import ElementwiseOptions, elementwise_metrics
from reference import bits_of, reference, to_f64, ulp_of


# -- references -----------------------------------------------------------------------------
def ref_rank(x: np.ndarray) -> np.ndarray:
    """0-based rank of each coordinate, ties broken by index (a stable sort)."""
    order = np.argsort(x, kind="stable")
    rank = np.empty(x.size, dtype=np.int64)
    rank[order] = np.arange(x.size)
    return rank


def ref_bins(x: np.ndarray, bins: int) -> np.ndarray:
    """Bin j holds ranks floor(j n / B) .. floor((j+1) n / B) - 1."""
    starts = np.array([j * x.size // bins for j in range(bins)])
    return np.searchsorted(starts, ref_rank(x), side="right") - 1


def ref_bottom(x: np.ndarray, k: int) -> np.ndarray:
    m = np.zeros(x.size, dtype=bool)
    m[np.argsort(x, kind="stable")[:k]] = True
    return m


def ref_top(x: np.ndarray, k: int) -> np.ndarray:
    return ref_bottom(-x, k)


def bf16_gauss(n: int, scale: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, generator=g)).to(torch.bfloat16)


# -- changed masks ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "dtypes", [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32), (torch.bfloat16, torch.float32)]
)
def test_changed_mask_matches_elementwise_and_reference(dtypes) -> None:
    g = torch.Generator().manual_seed(3)
    n = 5000
    w0 = 0.02 * torch.randn(n, generator=g)
    w1 = w0 + 2e-4 * torch.randn(n, generator=g) * (torch.rand(n, generator=g) < 0.5)
    w0[:4] = torch.tensor([0.0, float("nan"), float("inf"), 1.0])
    w1[:4] = torch.tensor([-0.0, float("nan"), 1.0, float("nan")])
    a, b = w0.to(dtypes[0]), w1.to(dtypes[1])
    opts = ElementwiseOptions(atol=(1e-5, 1e-4), rms=(1e-3,), rel=(1e-3,), ulp=False)
    fam = elementwise_metrics(a, b, opts=opts)
    ref = reference(a, b, atol=opts.atol, rms=opts.rms, rel=opts.rel)
    for rule in opts.rule_names():
        m = changed_mask(a, b, rule)
        assert m.shape == a.shape and m.dtype == torch.bool
        assert int(m.sum()) == fam[f"n_changed_{rule}"] == ref[f"n_changed_{rule}"], rule
    exact = changed_mask(a, b).numpy()
    assert not exact[0] and exact[2] and exact[3]  # +0/-0 equal; inf -> 1 and 1 -> nan changed
    if a.dtype == b.dtype:  # same NaN bits: unchanged
        assert not exact[1]
        np.testing.assert_array_equal(exact, (bits_of(a) != bits_of(b)) & ~((to_f64(a) == 0) & (to_f64(b) == 0)))


def test_changed_mask_ints_and_rules() -> None:
    assert changed_mask(torch.arange(5), torch.tensor([0, 1, 5, 3, 4])).tolist() == [False, False, True, False, False]
    with pytest.raises(ValueError, match="only 'exact'"):
        changed_mask(torch.arange(5), torch.arange(5), "atol_1e-05")
    assert parse_rule("rel_1e-3") == ("rel", 1e-3, "rel_0.001")
    for bad in ("close", "atol_", "atol_x", "atol_-1", "ulp_1"):
        with pytest.raises(ValueError, match="Unknown sparsity rule"):
            parse_rule(bad)


# -- rank order ------------------------------------------------------------------------------
@pytest.mark.parametrize("n,bins", [(1000, 10), (997, 10), (7, 10), (1, 3), (0, 4), (12, 12)])
def test_rank_bins_against_stable_sort(n: int, bins: int) -> None:
    x = bf16_gauss(n, 0.02, 1).double().abs()  # bf16: many ties
    if n > 10:
        x[: n // 5] = 0.0  # a tie group spanning several bins
    got = rank_bins(x, bins).numpy()
    np.testing.assert_array_equal(got, ref_bins(x.numpy(), bins))
    counts = np.bincount(got, minlength=bins)
    assert counts.sum() == n and counts.max() - counts.min() <= 1


@pytest.mark.parametrize("k", [0, 1, 37, 500, 999, 1000, 1200])
def test_rank_masks_against_stable_sort(k: int) -> None:
    x = bf16_gauss(1000, 0.02, 2).double().abs()
    np.testing.assert_array_equal(rank_mask(x, k).numpy(), ref_bottom(x.numpy(), min(k, 1000)))
    np.testing.assert_array_equal(rank_mask(x, k, largest=True).numpy(), ref_top(x.numpy(), min(k, 1000)))


# -- correlations --------------------------------------------------------------------------
def test_rankdata_and_correlations_match_scipy() -> None:
    w0 = bf16_gauss(4000, 0.02, 4)
    w1 = (w0.float() + 3e-4 * torch.randn(4000, generator=torch.Generator().manual_seed(5))).to(torch.bfloat16)
    a = to_f64(w0)
    d = to_f64(w1) - a
    np.testing.assert_array_equal(rankdata(torch.from_numpy(np.abs(a))).numpy(), stats.rankdata(np.abs(a)))
    changed = d != 0
    for where in (None, changed):
        c = abs_correlations(
            torch.from_numpy(np.abs(a)),
            torch.from_numpy(np.abs(d)),
            sample_limit=10**9,
            seed=0,
            where=None if where is None else torch.from_numpy(where),
        )
        sel = slice(None) if where is None else where
        x, y = np.abs(d)[sel], np.abs(a)[sel]
        assert c["n"] == c["n_used"] == x.size
        assert c["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, rel=1e-12, abs=1e-14)
        assert c["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic, rel=1e-12, abs=1e-14)


def test_correlation_sample_is_seeded_uniform_and_recorded() -> None:
    g = torch.Generator().manual_seed(6)
    a = torch.rand(50_000, generator=g, dtype=torch.float64)
    d = a * torch.rand(50_000, generator=g, dtype=torch.float64)  # |Δ| grows with |W0|
    full = abs_correlations(a, d, sample_limit=10**9, seed=1)
    c1 = abs_correlations(a, d, sample_limit=5000, seed=1)
    c2 = abs_correlations(a, d, sample_limit=5000, seed=1)
    c3 = abs_correlations(a, d, sample_limit=5000, seed=2)
    assert (c1["n"], c1["n_used"]) == (50_000, 5000)
    assert c1["spearman"] == c2["spearman"] and c1["spearman"] != c3["spearman"]
    # a uniform sample of 5000: the standard error of Spearman's rho is about 1/sqrt(n) < 0.015
    assert abs(c1["spearman"] - full["spearman"]) < 4 / math.sqrt(5000)
    # the sample is numpy's default_rng(seed).choice without replacement
    idx = np.sort(np.random.default_rng(1).choice(50_000, 5000, replace=False))
    assert c1["spearman"] == pytest.approx(stats.spearmanr(d.numpy()[idx], a.numpy()[idx]).statistic, rel=1e-12)


def test_degenerate_correlations_are_nan_with_reason() -> None:
    a = torch.rand(100, dtype=torch.float64)
    zero = abs_correlations(a, torch.zeros(100, dtype=torch.float64), sample_limit=1000, seed=0)
    assert math.isnan(zero["spearman"]) and zero["reason"] == "no change"
    one = abs_correlations(a, a, sample_limit=1000, seed=0, where=torch.arange(100) == 3)
    assert math.isnan(one["pearson"]) and "1 coordinate" in one["reason"]


# -- ULP classes and the null models ---------------------------------------------------------
@pytest.mark.parametrize("name,tdt", [("BF16", torch.bfloat16), ("F16", torch.float16), ("F32", torch.float32)])
def test_ulp_classes_against_reference(name: str, tdt: torch.dtype) -> None:
    g = torch.Generator().manual_seed(7)
    w = torch.cat([0.02 * torch.randn(2000, generator=g), torch.tensor([0.0, 1.0, 0.5, 2.0**-130, 2.0**-126, 3e-8])])
    w = w.to(tdt)
    a = np.abs(to_f64(w))
    cls, up, down = ulp_classes(torch.from_numpy(a), DTYPES[name])
    np.testing.assert_array_equal(up[cls].numpy(), ulp_of(a, tdt))
    # spacing below |w|: |w| - nextafter(|w|, 0) in the stored format (via float32 for the 16-bit ones)
    if tdt == torch.float32:
        below = a - np.nextafter(a.astype(np.float32), np.float32(0)).astype(np.float64)
    else:
        bits = torch.from_numpy(a).to(tdt).view(torch.int16)
        prev = (bits - 1).view(tdt).double().numpy()
        below = a - prev
    below = np.where(a == 0, ulp_of(a, tdt), below)  # from 0 the spacing is the subnormal step
    np.testing.assert_array_equal(down[cls].numpy(), below)


def test_visible_probability_against_integrals() -> None:
    up = torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64)
    down = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    for sigma in (0.05, 0.3, 1.0, 7.0):
        grid = visible_probability(up, down, sigma, "grid").numpy()
        want = stats.norm.sf(up.numpy() / 2 / sigma) + stats.norm.sf(down.numpy() / 2 / sigma)
        np.testing.assert_allclose(grid, want, rtol=1e-12)
        off = visible_probability(up, down, sigma, "offgrid").numpy()
        for i in range(3):
            lo, hi = -down[i].item() / 2, up[i].item() / 2  # the rounding cell around w0 = 0
            stay = integrate.quad(
                lambda x, lo=lo, hi=hi, sigma=sigma: (
                    stats.norm.cdf((hi - x) / sigma) - stats.norm.cdf((lo - x) / sigma)
                ),
                lo,
                hi,
            )[0] / (hi - lo)
            assert off[i] == pytest.approx(1 - stay, rel=1e-7, abs=1e-12)


@pytest.mark.parametrize("start", ["grid", "offgrid"])
def test_null_model_reproduces_a_dense_bf16_update(start: str) -> None:
    """A dense Gaussian update, blind to |W0|, stored in bf16: the apparent sparsity per
    |W0| bin is what the null predicts. ``grid``: the trainer started from the stored W0
    (W1 = bf16(W0 + δ)); ``offgrid``: from the float32 weights (W1 = bf16(w + δ))."""
    n, sigma = 400_000, 4e-5
    g = torch.Generator().manual_seed(11)
    w = 0.02 * torch.randn(n, generator=g)
    delta = sigma * torch.randn(n, generator=g)
    w0 = w.to(torch.bfloat16)
    w1 = ((w0.float() if start == "grid" else w) + delta).to(torch.bfloat16)
    a = torch.from_numpy(np.abs(to_f64(w0)))
    d = torch.from_numpy(np.abs(to_f64(w1) - to_f64(w0)))
    changed = changed_mask(w0, w1)
    prof = magnitude_bins(a, d, changed, changed, bins=10, dtype=DTYPES["BF16"])
    sfx = "" if start == "grid" else "_offgrid"
    obs, exp, size = prof["n_changed_exact"], prof["null_changed" + sfx], prof["n"]
    # The rounding floor makes the update look sparse, most in the bins of large |W0|.
    assert obs[0] / size[0] > 2 * obs[-1] / size[-1]
    # σ is fitted to the total count; it recovers the planted scale.
    assert prof["null_sigma" + sfx] == pytest.approx(sigma, rel=0.03)
    # Per bin the count is binomial around the null's expectation: allow 5 standard
    # deviations (plus 0.5% for the fitted σ, which moves all bins together).
    sd = np.sqrt(exp * (1 - exp / size))
    assert np.all(np.abs(obs - exp) <= 5 * sd + 0.005 * exp), (obs, exp)
    # The other start gives a visibly different profile on the same data.
    other = prof["null_changed_offgrid" if start == "grid" else "null_changed"]
    assert np.max(np.abs(obs - other) / np.sqrt(other + 1)) > 10


def test_magnitude_bins_against_numpy() -> None:
    w0 = bf16_gauss(3000, 0.02, 12)
    w1 = (w0.float() + 1e-4 * torch.randn(3000, generator=torch.Generator().manual_seed(13))).to(torch.bfloat16)
    a, b = to_f64(w0), to_f64(w1)
    d = np.abs(b - a)
    changed = changed_mask(w0, w1, "atol_1e-04")
    exact = changed_mask(w0, w1)
    prof = magnitude_bins(
        torch.from_numpy(np.abs(a)), torch.from_numpy(d), changed, exact, bins=7, dtype=DTYPES["BF16"]
    )
    binof = ref_bins(np.abs(a), 7)
    ulp = ulp_of(a, torch.bfloat16)
    for j in range(7):
        s = binof == j
        assert prof["n"][j] == s.sum()
        assert prof["n_changed"][j] == (d[s] > np.float32(1e-4)).sum() == changed.numpy()[s].sum()
        assert prof["n_changed_exact"][j] == (d[s] != 0).sum()
        assert prof["sum_abs_delta"][j] == pytest.approx(d[s].sum(), rel=1e-12)
        nz = s & (a != 0)
        assert prof["sum_rel_delta"][j] == pytest.approx((d[nz] / np.abs(a[nz])).sum(), rel=1e-12)
        assert prof["n_rel"][j] == nz.sum()
        assert prof["sum_ulp"][j] == pytest.approx(ulp[s].sum(), rel=1e-12)
        assert (prof["abs_w0_lo"][j], prof["abs_w0_hi"][j]) == (np.abs(a[s]).min(), np.abs(a[s]).max())
    assert prof["null_changed"].sum() == pytest.approx(exact.sum().item(), rel=1e-9)
    assert prof["null_changed_offgrid"].sum() == pytest.approx(exact.sum().item(), rel=1e-9)


# -- planted updates, end to end -----------------------------------------------------------
MATS = {"model.layers.0.mlp.up_proj.weight": (40, 50), "model.layers.0.self_attn.q_proj.weight": (30, 40)}


def _save_pair(tmp_path: Path, base: dict, tuned: dict) -> tuple[Path, Path]:
    return write_checkpoint(tmp_path / "base", base), write_checkpoint(tmp_path / "tuned", tuned)


def test_planted_low_magnitude_update_gives_exact_enrichment(tmp_path: Path) -> None:
    """Only the bottom 10 % of |W0| (ties broken by index) change: enrichment is 10 exactly,
    in bf16 where |W0| has many ties."""
    g = torch.Generator().manual_seed(20)
    base, tuned = {}, {}
    for name, shape in MATS.items():
        w0 = (0.02 * torch.randn(shape, generator=g)).to(torch.bfloat16)
        m = ref_bottom(np.abs(to_f64(w0)), round(0.1 * w0.numel()))
        bits = w0.reshape(-1).view(torch.int16).clone()
        bits[torch.from_numpy(m)] += 4  # 4 ULP: always visible
        base[name], tuned[name] = w0, bits.view(torch.bfloat16).reshape(shape)
    b, t = _save_pair(tmp_path, base, tuned)
    cmp = deltascope.compare(b, t, coords=True)
    rows = cmp.tensors.set_index("name")
    for name in MATS:
        r = rows.loc[name]
        assert r["lowmag_10pct_enrichment"] == 10.0
        assert (r["lowmag_10pct_density"], r["lowmag_10pct_overlap"], r["lowmag_10pct_coverage"]) == (0.1, 1.0, 1.0)
        assert r["lowmag_20pct_enrichment"] == 5.0 and r["lowmag_20pct_coverage"] == 0.5
        assert r["lowmag_1pct_enrichment"] == 10.0 and r["lowmag_1pct_overlap"] == 0.1
    model = cmp.by()
    assert model["lowmag_10pct_enrichment"].iloc[0] == 10.0


@pytest.mark.parametrize("svd", ["exact", "fast"])
def test_planted_principal_update_gives_exact_enrichment(tmp_path: Path, svd: str) -> None:
    """W0 of rank 3; only the top 10 % of |rank-3 reconstruction of W0| change."""
    rng = np.random.default_rng(21)
    base, tuned = {}, {}
    for name, (m, n) in MATS.items():
        u, _ = np.linalg.qr(rng.standard_normal((m, 3)))
        v, _ = np.linalg.qr(rng.standard_normal((n, 3)))
        w0 = torch.from_numpy((u * [3.0, 2.0, 1.0]) @ v.T).float()
        s_u, s, s_vt = np.linalg.svd(w0.double().numpy(), full_matrices=False)
        recon = np.abs((s_u[:, :3] * s[:3]) @ s_vt[:3]).reshape(-1)
        top = torch.from_numpy(ref_top(recon, round(0.1 * recon.size)))
        w1 = w0.reshape(-1).clone()
        w1[top] += 1.0
        base[name], tuned[name] = w0, w1.reshape(m, n)
    b, t = _save_pair(tmp_path, base, tuned)
    cmp = deltascope.compare(b, t, coords={"principal_rank": 3, "svd": svd})
    rows = cmp.tensors.set_index("name")
    for name in MATS:
        assert rows.loc[name, "principal_10pct_enrichment"] == 10.0
        assert rows.loc[name, "principal_10pct_coverage"] == 1.0
        assert rows.loc[name, "principal_20pct_enrichment"] == 5.0
    assert cmp.by("block")["principal_10pct_enrichment"].tolist() == [10.0, 10.0]


def test_compare_coords_groups_by_hand_and_json_round_trip(make_pair, tmp_path: Path) -> None:
    def edit(t: dict) -> dict:
        g = torch.Generator().manual_seed(30)
        for name, w in t.items():
            if w.ndim == 2 and "embed" not in name:
                step = 2e-4 if ".mlp." in name else 5e-5
                t[name] = (w.float() + step * torch.randn(w.shape, generator=g)).to(torch.bfloat16)
        return t

    b, t, base, tuned = make_pair(edit)
    cmp = deltascope.compare(b, t, coords=True)
    rows = cmp.tensors.set_index("name")
    assert not cmp.errors.size
    # per tensor: scipy on the stored values
    name = "model.layers.1.mlp.down_proj.weight"
    a = np.abs(to_f64(base[name]))
    d = np.abs(to_f64(tuned[name]) - to_f64(base[name]))
    ch = d != 0
    assert rows.loc[name, "spearman_absdelta_absw0"] == pytest.approx(stats.spearmanr(d, a).statistic, rel=1e-12)
    assert rows.loc[name, "pearson_absdelta_absw0_changed"] == pytest.approx(
        stats.pearsonr(d[ch], a[ch]).statistic, rel=1e-12
    )
    k = round(0.1 * a.size)
    assert rows.loc[name, "n_lowmag_10pct_changed"] == (ref_bottom(a, k) & ch).sum()
    # groups: counts summed, enrichment from the sums, correlations a numel-weighted mean
    by = cmp.by("block")
    mlp = [n for n in base if ".mlp." in n]
    n_sc = sum(rows.loc[n, "n_coords"] for n in mlp)
    u = sum(rows.loc[n, "n_coords_changed"] for n in mlp)
    mk = sum(rows.loc[n, "n_lowmag_10pct"] for n in mlp)
    both = sum(rows.loc[n, "n_lowmag_10pct_changed"] for n in mlp)
    assert by.loc["mlp", "lowmag_10pct_enrichment"] == pytest.approx(both * n_sc / (u * mk), rel=1e-15)
    rhos = [stats.spearmanr(np.abs(to_f64(tuned[n]) - to_f64(base[n])), np.abs(to_f64(base[n]))).statistic for n in mlp]
    sizes = [base[n].numel() for n in mlp]
    assert by.loc["mlp", "spearman_absdelta_absw0"] == pytest.approx(np.average(rhos, weights=sizes), rel=1e-12)
    # frozen and 1-D tensors: NaN with a reason, not an error
    assert math.isnan(by.loc["embedding", "spearman_absdelta_absw0"])
    assert "no change" in rows.loc["model.embed_tokens.weight", "coords_note"]
    assert "needs a matrix" in rows.loc["model.norm.weight", "coords_note"]
    assert math.isnan(rows.loc["model.norm.weight", "principal_10pct_enrichment"])
    assert rows.loc["model.norm.weight", "lowmag_10pct_density"] == pytest.approx(0.1, abs=0.02)
    # the magnitude profile, by block, against numpy bins of the stored tensors
    prof = cmp.magnitude_profile(by="block")
    for j in range(10):
        num = den = 0
        for n in mlp:
            a_n = np.abs(to_f64(base[n]))
            s = ref_bins(a_n, 10) == j
            num += (to_f64(tuned[n])[s] != to_f64(base[n])[s]).sum()
            den += s.sum()
        assert prof.loc[("mlp", j), "change_rate"] == num / den
        assert prof.loc[("mlp", j), "n_tensors"] == len(mlp)
    assert set(prof.index.get_level_values("block")) == set(cmp.by("block").index)
    assert len(cmp.magnitude_profile(by="name")) == 10 * len(base)
    # JSON round trip: columns, groups, extras and the profile
    back = Comparison.from_json(cmp.to_json(tmp_path / "run.json"))
    pd.testing.assert_frame_equal(back.tensors, cmp.tensors)
    pd.testing.assert_frame_equal(back.by("block"), cmp.by("block"))
    pd.testing.assert_frame_equal(back.extras["magnitude_profile"], cmp.extras["magnitude_profile"])
    pd.testing.assert_frame_equal(
        back.magnitude_profile(by=["layer", "module"]), cmp.magnitude_profile(by=["layer", "module"])
    )
    assert isinstance(back.families[-1], CoordsFamily) and back.families[-1].opts == cmp.families[-1].opts


def test_non_finite_and_non_float_tensors(tmp_path: Path) -> None:
    w0 = torch.randn(20, 30)
    w1 = w0.clone()
    w1[0, :5] += 1.0
    w1[1, 0] = float("nan")
    base = {"model.layers.0.mlp.up_proj.weight": w0, "ids": torch.arange(6)}
    tuned = {"model.layers.0.mlp.up_proj.weight": w1, "ids": torch.arange(6)}
    b, t = _save_pair(tmp_path, base, tuned)
    cmp = deltascope.compare(b, t, coords=True)
    rows = cmp.tensors.set_index("name")
    r = rows.loc["model.layers.0.mlp.up_proj.weight"]
    assert r["status"] == "ok" and r["n_coords"] == 599 and r["n_coords_changed"] == 5
    assert "1 non-finite" in r["coords_note"]
    assert r["n_principal_scope"] == 599
    assert rows.loc["ids", "status"] == "ok" and "not a float pair" in rows.loc["ids", "coords_note"]
    assert pd.isna(rows.loc["ids", "n_coords"])


def test_options_and_columns() -> None:
    fam = CoordsFamily.from_user(True)
    cols = [s.name for s in fam.specs()]
    for c in ("spearman_absdelta_absw0", "lowmag_10pct_enrichment", "principal_10pct_enrichment"):
        assert c in cols
    assert CoordsFamily.from_user("exact").opts.svd == "exact"
    opts = CoordsFamily.from_user({"rule": "atol=1e-5", "densities": [0.5, 0.05], "bins": 4}).opts
    assert (opts.rule, opts.densities, opts.labels()) == ("atol_1e-05", (0.05, 0.5), ["5pct", "50pct"])
    assert CoordsFamily.from_options(opts.to_dict()).opts == opts
    assert CoordsOptions(principal_rank=0.01).rank_for((4096, 11008)) == 40
    assert CoordsOptions(principal_rank=0.01).rank_for((32, 64)) == 1
    assert CoordsOptions(principal_rank=8).rank_for((4, 64)) == 4
    for bad in ({"bins": 0}, {"densities": [1.5]}, {"svd": "slow"}, {"rule": "close"}, {"colour": 1}):
        with pytest.raises(ValueError):
            CoordsFamily.from_user(bad)
    with pytest.raises(ValueError, match="coords="):
        CoordsFamily.from_user(3)


def test_profile_needs_coords(make_pair) -> None:
    b, t, *_ = make_pair()
    with pytest.raises(ValueError, match="coords=True"):
        deltascope.compare(b, t).magnitude_profile()


def test_coords_rule_agrees_with_the_elementwise_family(make_pair) -> None:
    def edit(t: dict) -> dict:
        g = torch.Generator().manual_seed(31)
        for name, w in t.items():
            t[name] = (w.float() + 3e-4 * torch.randn(w.shape, generator=g)).to(torch.bfloat16)
        return t

    b, t, *_ = make_pair(edit, shapes=llama_shapes(layers=1))
    cmp = deltascope.compare(b, t, atol=[1e-4], rel=[1e-2], coords={"rule": "rel_0.01"})
    rows = cmp.ok
    assert (rows["n_coords_changed"] == rows["n_changed_rel_0.01"]).all()
    assert (rows["n_coords_changed"] < rows["n_changed_exact"]).any()
    prof = cmp.extras["magnitude_profile"].groupby("name")[["n_changed", "n_changed_exact"]].sum()
    by_name = rows.set_index("name")
    assert (prof["n_changed"] == by_name.loc[prof.index, "n_changed_rel_0.01"]).all()
    assert (prof["n_changed_exact"] == by_name.loc[prof.index, "n_changed_exact"]).all()


def test_size_cap_skips_with_a_note(make_pair) -> None:
    """A tensor above max_numel is skipped (its other metrics still computed), not an OOM."""
    b, t, _, _ = make_pair()
    cap = 1000  # the 64x32 embedding and head (2048) exceed it; norms (32) do not
    cmp = deltascope.compare(b, t, coords={"max_numel": cap})
    rows = cmp.tensors.set_index("name")
    big = rows.loc["model.embed_tokens.weight"]
    assert big["status"] == "ok" and "exceed max_numel=1000" in big["coords_note"]
    assert np.isnan(big["spearman_absdelta_absw0"]) and big["numel"] == 2048
    small = rows.loc["model.layers.0.self_attn.k_proj.weight"]  # 16 x 32 = 512
    assert "max_numel" not in (small["coords_note"] or "")
    with pytest.raises(ValueError, match="max_numel"):
        CoordsOptions(max_numel=0)
