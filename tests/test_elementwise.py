"""Elementwise metrics against the float64 numpy reference in reference.py, on planted
updates of known density, identical tensors, bf16 rounding cases and non-finite values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deltascope.metrics.elementwise import ElementwiseOptions, derive_elementwise, elementwise_metrics
from reference import cosine, reference, to_f64

FULL = ElementwiseOptions.full()
KW = {"atol": FULL.atol, "rms": FULL.rms, "rel": FULL.rel, "conc": FULL.concentration}


def planted(
    shape, density: float, scale: float, *, dtype=torch.bfloat16, seed: int = 0, tuned_dtype=None
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """W0 ~ N(0, 0.02); a known fraction `density` of coordinates moved by ~scale."""
    g = torch.Generator().manual_seed(seed)
    w0 = (0.02 * torch.randn(shape, generator=g)).to(dtype)
    mask = torch.rand(shape, generator=g) < density
    step = scale * torch.randn(shape, generator=g).abs().add(1.0)  # |step| >= scale
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
    w1 = (w0.double() + mask * sign * step).to(tuned_dtype or dtype)
    return w0, w1, mask.numpy().reshape(-1)


def assert_matches(got: dict, ref: dict, rtol: float = 2e-7) -> None:
    for k, v in ref.items():
        g = got[k]
        if isinstance(v, int) or k.startswith(("n_", "nan_", "inf_")) or k == "numel":
            assert g == v, f"{k}: {g} != {v}"
        elif math.isnan(v):
            assert math.isnan(g), k
        else:
            assert g == pytest.approx(v, rel=rtol, abs=1e-300), f"{k}: {g} vs {v}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("chunk", [10**9, 1000, 4097])
def test_planted_density_matches_reference(dtype: torch.dtype, chunk: int) -> None:
    w0, w1, mask = planted((123, 77), density=0.3, scale=2e-2, dtype=dtype)
    got = elementwise_metrics(w0, w1, opts=FULL, chunk=chunk)
    ref = reference(w0, w1, **KW)
    assert_matches(got, ref, rtol=1e-6 if dtype != torch.float32 else 1e-12)
    # Moves of >= 2e-2 on weights ~0.02 survive any rounding: exact == planted density.
    assert got["n_changed_exact"] == int(mask.sum())


def test_mixed_dtype_pair_upcasts_exactly() -> None:
    w0, w1, _ = planted((64, 33), 0.5, 1e-3, dtype=torch.bfloat16, tuned_dtype=torch.float32)
    got = elementwise_metrics(w0, w1, opts=FULL)
    assert_matches(got, reference(w0, w1, **KW), rtol=1e-12)


def test_identical_tensors_are_all_zero() -> None:
    w0, _, _ = planted((50, 40), 0.0, 0.0)
    got = elementwise_metrics(w0, w0.clone(), opts=FULL)
    for k, v in got.items():
        if k.startswith("n_") or k in ("energy", "dot_w0_delta", "sum_abs_delta", "max_abs_delta"):
            assert v == 0, k
    d = derive_elementwise(got, FULL)
    assert d["changed_exact"] == 0 and d["rel_update"] == 0 and d["cosine"] == 1.0
    assert math.isnan(d["ulp1_share"])  # no changes: share undefined, not 0/0 garbage
    assert all(math.isnan(got[k]) for k in got if k.startswith("top"))  # no energy to concentrate


def test_update_below_half_ulp_is_unchanged_under_exact() -> None:
    """bf16 rounding: adding less than half a ULP gives back the same bf16 value."""
    w0 = torch.tensor([1.0, 0.5, 3.0, -(2.0**-10), 0.0], dtype=torch.bfloat16)
    ulp = torch.tensor([2.0**-7, 2.0**-8, 2.0**-6, 2.0**-17, 2.0**-133], dtype=torch.float64)
    w1 = (w0.double() + torch.sign(w0.double()) * 0.49 * ulp).to(torch.bfloat16)
    got = elementwise_metrics(w0, w1, opts=FULL)
    assert torch.equal(w1.view(torch.int16), w0.view(torch.int16))
    assert got["n_changed_exact"] == 0 and got["energy"] == 0
    w2 = (w0.double() + torch.sign(w0.double() + 0.5) * 0.51 * ulp).to(torch.bfloat16)  # above half: moves
    assert elementwise_metrics(w0, w2, opts=FULL)["n_changed_exact"] == 5


def test_below_half_ulp_everywhere() -> None:
    g = torch.Generator().manual_seed(3)
    w0 = (0.02 * torch.randn(10_000, generator=g)).to(torch.bfloat16)
    a = to_f64(w0)
    assert (a != 0).all()
    half_ulp = np.ldexp(1.0, (np.floor(np.log2(np.abs(a))) - 7 - 1).astype(int))
    w1 = torch.from_numpy(a + np.sign(a) * 0.9 * half_ulp).to(torch.bfloat16)  # 0.45 ULP outward
    got = elementwise_metrics(w0, w1, opts=FULL)
    assert got["n_changed_exact"] == 0 and got["energy"] == 0
    # the same update kept in float32 is fully visible: the sparsity came from rounding
    w1_f32 = torch.from_numpy(a + np.sign(a) * 0.9 * half_ulp).float()
    assert elementwise_metrics(w0, w1_f32)["n_changed_exact"] == 10_000


def test_one_ulp_flips_are_counted_as_one_ulp() -> None:
    g = torch.Generator().manual_seed(4)
    w0 = (0.02 * torch.randn(5_000, generator=g)).to(torch.bfloat16)
    bits = w0.view(torch.int16).clone()
    bits[:1000] += 1  # next value up in magnitude: exactly one ULP
    bits[1000:1500] += 2  # two ULPs (same binade for almost all)
    w1 = bits.view(torch.bfloat16)
    got = elementwise_metrics(w0, w1, opts=FULL)
    ref = reference(w0, w1, **KW)
    assert_matches(got, ref, rtol=1e-6)
    assert got["n_changed_exact"] == 1500
    assert got["n_ulp1"] == 1000
    assert got["n_ulp1"] + got["n_ulp2"] + got["n_ulp3plus"] == 1500


def test_rel_below_2_pow_minus_9_equals_exact_for_bf16() -> None:
    w0, w1, _ = planted((200, 50), 0.4, 1e-4)
    got = elementwise_metrics(w0, w1, opts=ElementwiseOptions(rel=(1e-3,)))
    assert got["n_changed_rel_0.001"] == got["n_changed_exact"]


def test_atol_1e5_hides_changes_away_from_zero() -> None:
    """The documented bias: for bf16, atol=1e-5 only sees changes of small weights."""
    g = torch.Generator().manual_seed(5)
    w0 = torch.cat([torch.full((1000,), 0.5), torch.full((1000,), 1e-3)]).to(torch.bfloat16)
    bits = w0.view(torch.int16).clone() + 1  # one ULP everywhere: 2^-8 at 0.5, ~2^-17 at 1e-3
    w1 = bits.view(torch.bfloat16)
    got = elementwise_metrics(w0, w1, opts=ElementwiseOptions(atol=(1e-5,)))
    assert got["n_changed_exact"] == 2000
    assert got["n_changed_atol_1e-05"] == 1000  # only the ones at 0.5 (ULP 2^-8 > 1e-5)
    del g


def test_nan_inf_and_signed_zero() -> None:
    nan = float("nan")
    inf = float("inf")
    w0 = torch.tensor([0.0, -0.0, nan, nan, inf, 1.0, 2.0, inf, 1.0], dtype=torch.float32)
    w1 = torch.tensor([-0.0, 0.0, nan, 1.0, inf, nan, 2.5, -inf, 1.0], dtype=torch.float32)
    got = elementwise_metrics(w0, w1, opts=FULL)
    ref = reference(w0, w1, **KW)
    assert_matches(got, ref, rtol=1e-12)
    # +0/-0 equal; same-bits NaN unchanged; NaN->1, 1->NaN, 2->2.5, inf->-inf changed
    assert got["n_changed_exact"] == 4
    assert got["nan_w0"] == 2 and got["nan_w1"] == 2 and got["inf_w0"] == 2 and got["inf_w1"] == 2
    assert got["energy"] == 0.25  # only the finite pair contributes


def test_nan_payloads_differ() -> None:
    a = torch.tensor([0x7FC0, 0x7FC1], dtype=torch.int16).view(torch.bfloat16)  # two different NaNs
    b = torch.tensor([0x7FC0, 0x7FC0], dtype=torch.int16).view(torch.bfloat16)
    got = elementwise_metrics(a, b)
    assert got["n_changed_exact"] == 1


def test_zero_norm_source_gives_nan_relative_metrics() -> None:
    w0 = torch.zeros(100, dtype=torch.bfloat16)
    w1 = w0.clone()
    w1[:10] = 0.5
    opts = ElementwiseOptions(rms=(1e-3,))
    got = elementwise_metrics(w0, w1, opts=opts)
    d = derive_elementwise(got, opts)
    assert math.isnan(d["rel_update"]) and math.isnan(d["changed_rms_0.001"]) and math.isnan(d["cosine"])
    assert d["changed_exact"] == 0.1 and not math.isinf(d["rel_update"])


def test_derived_columns_match_numpy() -> None:
    w0, w1, _ = planted((300, 70), 0.2, 1e-3)
    got = elementwise_metrics(w0, w1, opts=FULL)
    d = derive_elementwise(got, FULL)
    a, b = to_f64(w0), to_f64(w1)
    assert d["norm_delta"] == pytest.approx(np.linalg.norm(b - a), rel=1e-7)
    assert d["rel_update"] == pytest.approx(np.linalg.norm(b - a) / np.linalg.norm(a), rel=1e-7)
    # 1 - cos is what carries information near 1: check it to 1e-6 relative
    assert 1 - d["cosine"] == pytest.approx(1 - cosine(w0, w1), rel=1e-6)
    assert d["mean_abs_delta"] == pytest.approx(np.abs(b - a).mean(), rel=1e-7)
    assert d["rms_w0"] == pytest.approx(np.sqrt((a * a).mean()), rel=1e-7)


def test_cosine_keeps_digits_near_one() -> None:
    """1 - cos ~ 5e-11: the textbook float64 formula keeps ~5 digits of it; ours keeps ~all."""
    g = torch.Generator().manual_seed(9)
    a = torch.randn(100_000, generator=g, dtype=torch.float64)
    b = a + 1e-5 * torch.randn(100_000, generator=g, dtype=torch.float64)
    d = derive_elementwise(elementwise_metrics(a, b), ElementwiseOptions())
    an, bn = a.numpy(), b.numpy()
    # independent stable form: 1 - cos = ‖a/‖a‖ - b/‖b‖‖² / 2
    u = an / np.linalg.norm(an) - bn / np.linalg.norm(bn)
    ref = float(u @ u) / 2
    assert 1 - d["cosine"] == pytest.approx(ref, rel=1e-4)


def test_concentration_exact_with_ties_and_chunks() -> None:
    g = torch.Generator().manual_seed(6)
    w0 = torch.zeros(20_000, dtype=torch.float32)
    w1 = torch.randint(0, 4, (20_000,), generator=g).float() * 0.25  # many ties
    for chunk in (10**9, 3333):
        got = elementwise_metrics(w0, w1, opts=FULL, chunk=chunk)
        ref = reference(w0, w1, **KW)
        for q in FULL.concentration:
            k = f"top{q * 100:g}pct_energy"
            assert got[k] == pytest.approx(ref[k], rel=1e-12)


def test_int_and_bool_tensors_equality_only() -> None:
    from deltascope.metrics.elementwise import equality_metrics

    a = torch.arange(100, dtype=torch.int64)
    b = a.clone()
    b[::10] += 1
    assert equality_metrics(a, b) == {"numel": 100, "n_changed_exact": 10}
    m = torch.zeros(50, dtype=torch.bool)
    m2 = m.clone()
    m2[3] = True
    assert equality_metrics(m, m2, chunk=7)["n_changed_exact"] == 1


def test_empty_tensor() -> None:
    got = elementwise_metrics(torch.zeros(0, 5), torch.zeros(0, 5))
    assert got["numel"] == 0 and got["n_changed_exact"] == 0 and math.isnan(got["max_abs_delta"])


def test_options_validation() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        ElementwiseOptions(atol=(-1.0,))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ElementwiseOptions(concentration=(2.0,))
    assert ElementwiseOptions(atol=(1e-5, 1e-8, 1e-5)).atol == (1e-8, 1e-5)
