"""Reporting: plots (Agg), tables, the self-contained HTML report, findings, the
``report`` command and ``compare --report``.

Comparisons used: the built-in demo pair (small) and a synthetic MoE + VLM pair with 80
layers x 8 experts and a vision tower of tiny matrices (many layers, still fast), both
with spectral-family columns of known values added by :func:`with_spectral_columns` (so
plotted values can be checked against planted answers); and a tiny Llama-shaped pair
run with the real ``spectral=True, coords=True`` families, which checks that plots,
sections and findings read those families' actual columns.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import deltascope
from conftest import llama_shapes, random_state, write_checkpoint
from deltascope import Comparison
from deltascope.cli import main
from deltascope.columns import ColumnSpec
from deltascope.demo import make_demo_pair
from deltascope.display import fmt_number
from deltascope.errors import CheckpointNotFoundError
from deltascope.report import tables
from deltascope.report.figures import report_figures
from deltascope.report.html import SECTIONS, headline_findings, write_report, write_report_folder
from deltascope.report.plots import compare_runs

R_PCT = (1, 5, 10, 20)
#: Planted enrichment (observed / random expectation) of the fake projection, per module.
ENRICH = {"q_proj": 0.25, "k_proj": 0.5, "v_proj": 0.5, "o_proj": 2.0, "qkv_proj": 1.5}
ENRICH_DEFAULT = 0.4


# -- fixtures -------------------------------------------------------------------------------
def moe_vlm_state(
    layers: int = 80, experts: int = 8, vision_layers: int = 12, h: int = 16, inter: int = 8, seed: int = 0
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A Qwen-MoE-like language tower (router + experts; every 4th expert frozen, update
    growing with depth) plus a Qwen2-VL-like vision tower (last 4 blocks updated) and
    merger, all tiny, stored in bf16."""
    g = torch.Generator().manual_seed(seed)
    base: dict[str, torch.Tensor] = {}
    tuned: dict[str, torch.Tensor] = {}

    def add(name: str, shape: tuple[int, ...], scale: float) -> None:
        w0 = (
            (1.0 + 0.05 * torch.randn(shape, generator=g))
            if len(shape) == 1
            else 0.02 * torch.randn(shape, generator=g)
        )
        d = torch.zeros(shape)
        if scale:
            d = scale * torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < 0.3)
        base[name] = w0.to(torch.bfloat16)
        tuned[name] = (w0 + d).to(torch.bfloat16)

    add("model.embed_tokens.weight", (64, h), 0)
    for i in range(layers):
        depth = (i + 1) / layers
        p = f"model.layers.{i}."
        for m, shape in (("q_proj", (h, h)), ("k_proj", (h // 2, h)), ("v_proj", (h // 2, h)), ("o_proj", (h, h))):
            add(p + f"self_attn.{m}.weight", shape, 2e-4 * depth)
        add(p + "mlp.gate.weight", (experts, h), 1e-3)
        for e in range(experts):
            s = 0.0 if e % 4 == 3 else 5e-4 * (1 + depth) * (1 + e / experts)
            for m, shape in (("gate_proj", (inter, h)), ("up_proj", (inter, h)), ("down_proj", (h, inter))):
                add(p + f"mlp.experts.{e}.{m}.weight", shape, s)
        add(p + "input_layernorm.weight", (h,), 0)
        add(p + "post_attention_layernorm.weight", (h,), 0)
    add("model.norm.weight", (h,), 0)
    add("lm_head.weight", (64, h), 0)
    add("visual.patch_embed.proj.weight", (h, 12), 0)
    for j in range(vision_layers):
        p = f"visual.blocks.{j}."
        s = 3e-4 if j >= vision_layers - 4 else 0.0
        add(p + "attn.qkv.weight", (3 * h, h), s)
        add(p + "attn.proj.weight", (h, h), s)
        add(p + "mlp.fc1.weight", (inter, h), s)
        add(p + "mlp.fc2.weight", (h, inter), s)
        add(p + "norm1.weight", (h,), 0)
        add(p + "norm2.weight", (h,), 0)
    add("visual.merger.ln_q.weight", (h,), 0)
    add("visual.merger.mlp.0.weight", (4 * h, 4 * h), 1e-3)
    add("visual.merger.mlp.2.weight", (h, 4 * h), 1e-3)
    return base, tuned


def with_spectral_columns(cmp: Comparison, seed: int = 0) -> Comparison:
    """A copy of ``cmp`` with spectral-family columns of known values on every 2-D tensor
    with a non-zero update: ``proj2_<r>pct_expected`` = k²/(mn) with k = max(1, ⌊r·min(m,n)⌋)
    (the random-direction expectation), ``proj2_<r>pct`` = ENRICH[module] x expected,
    their ratio as ``_enrichment``, and a seeded ``effective_rank_frac`` in (0, 1]."""
    t = cmp.tensors.copy()
    rng = np.random.default_rng(seed)
    specs = []
    is_2d = np.array([isinstance(s, list) and len(s) == 2 for s in t["shape"]], dtype=bool)
    live = is_2d & (t["status"] == "ok").to_numpy() & (t["energy"].fillna(0) > 0).to_numpy()
    for r in R_PCT:
        obs, exp = np.full(len(t), np.nan), np.full(len(t), np.nan)
        for i in np.flatnonzero(live):
            m, n = t["shape"].iloc[i]
            k = max(1, math.floor(r / 100 * min(m, n)))
            exp[i] = k * k / (m * n)
            obs[i] = ENRICH.get(t["module"].iloc[i], ENRICH_DEFAULT) * exp[i]
        base = f"proj2_{r}pct"
        t[base], t[f"{base}_expected"], t[f"{base}_enrichment"] = obs, exp, obs / exp
        specs += [ColumnSpec(c, "tensor", f"test column {c}", "spectral") for c in (base, f"{base}_expected")]
        specs.append(ColumnSpec(f"{base}_enrichment", "tensor", "test enrichment", "spectral"))
    t["effective_rank_frac"] = np.where(live, rng.uniform(0.05, 1.0, len(t)), np.nan)
    specs.append(ColumnSpec("effective_rank_frac", "tensor", "test effective rank fraction", "spectral"))
    return Comparison(t, cmp.mismatches, cmp.metadata, [*cmp.columns, *specs], cmp.families, cmp.extras)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Comparison:
    b, t = make_demo_pair(tmp_path_factory.mktemp("demo"))
    return with_spectral_columns(deltascope.compare(b, t, progress=False))


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny Llama-shaped bf16 pair: dense MLP update, everything else frozen."""
    folder = tmp_path_factory.mktemp("small")
    base = random_state(llama_shapes(), seed=3)
    g = torch.Generator().manual_seed(4)
    tuned = {
        k: (v.float() + 2e-3 * torch.randn(v.shape, generator=g)).bfloat16() if ".mlp." in k else v
        for k, v in base.items()
    }
    return write_checkpoint(folder / "base", base), write_checkpoint(folder / "tuned", tuned)


@pytest.fixture(scope="module")
def small(small_pair: tuple[Path, Path]) -> Comparison:
    """The tiny pair with the real spectral and coords families."""
    return deltascope.compare(*small_pair, spectral=True, coords=True, progress=False)


@pytest.fixture(scope="module")
def moe(tmp_path_factory: pytest.TempPathFactory) -> Comparison:
    folder = tmp_path_factory.mktemp("moe")
    base, tuned = moe_vlm_state()
    b, t = write_checkpoint(folder / "base", base), write_checkpoint(folder / "tuned", tuned)
    return with_spectral_columns(deltascope.compare(b, t, progress=False))


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# -- plots ----------------------------------------------------------------------------------
def _check_readable(obj) -> None:
    """Every panel is labelled and the figure has a title."""
    fig = obj if hasattr(obj, "savefig") else obj.figure
    axes = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert axes
    titled = bool(fig._suptitle and fig._suptitle.get_text()) or any(a.get_title() for a in axes)
    assert titled
    for a in axes:
        assert any(s.get_xlabel() for s in a.get_shared_x_axes().get_siblings(a)), a.get_title()
        assert a.get_ylabel() or not any(t.get_text() for t in a.get_yticklabels()), a.get_title()
    # (every figure is also rendered to PNG by the Agg backend in the report tests)


PLOTS = {
    "layer_profile": (lambda p, c: p.layer_profile(), "figure"),
    "heatmap_energy": (lambda p, c: p.heatmap("energy_share"), "axes"),
    "heatmap_changed": (lambda p, c: p.heatmap("changed_exact"), "axes"),
    "block_bars": (lambda p, c: p.block_bars(), "axes"),
    "module_bars": (lambda p, c: p.module_bars(), "axes"),
    "sparsity_rules": (lambda p, c: p.sparsity_rules(), "axes"),
    "ulp_shares": (lambda p, c: p.ulp_shares(), "axes"),
    "projection": (lambda p, c: p.projection(), "axes"),
    "effective_rank": (lambda p, c: p.effective_rank(), "axes"),
    "spectrum": (lambda p, c: p.spectrum(c.top(1)["name"].iloc[0]), "axes"),
}


@pytest.mark.parametrize("which", ["demo", "moe"])
@pytest.mark.parametrize("plot", sorted(PLOTS))
def test_every_plot_renders(request, which: str, plot: str) -> None:
    cmp = request.getfixturevalue(which)
    draw, kind = PLOTS[plot]
    obj = draw(cmp.plot, cmp)
    assert (kind == "figure") == hasattr(obj, "savefig")
    _check_readable(obj)


def test_moe_specific_plots(moe: Comparison) -> None:
    assert moe.plot.layer_towers() == ["language", "vision"]
    ax = moe.plot.heatmap("energy_share", rows="expert")
    assert ax.get_ylabel() == "expert"
    assert ax.collections[0].get_array().shape == (8, 80)
    _check_readable(moe.plot.layer_profile(tower="vision"))
    _check_readable(moe.plot.heatmap("rel_update", tower="vision"))
    with pytest.raises(ValueError, match="towers with layers"):
        moe.plot.layer_profile(tower="audio")


def test_magnitude_profile_plot_matches_the_profile(small: Comparison) -> None:
    fig = small.plot.magnitude_profile()
    _check_readable(fig)
    prof = small.magnitude_profile(by="block")
    rate = fig.axes[0]
    mlp = next(line for line in rate.get_lines() if line.get_label() == "mlp")
    expected = prof.loc["mlp"].sort_values("mean_abs_w0")
    np.testing.assert_allclose(mlp.get_xdata(), expected["mean_abs_w0"].to_numpy())
    np.testing.assert_allclose(mlp.get_ydata(), expected["change_rate_exact"].to_numpy())
    assert "unchanged, not shown: attention, embedding, lm_head, norm" in fig._suptitle.get_text()
    _check_readable(small.plot.magnitude_profile(by=None))


def test_layer_profile_matches_an_independent_aggregation(moe: Comparison) -> None:
    fig = moe.plot.layer_profile()
    t = moe.tensors
    mlp = t[(t["tower"] == "language") & (t["block"] == "mlp")]
    g = mlp.groupby("layer")
    changed = (g["n_changed_exact"].sum() / g["numel"].sum()).to_numpy(dtype=float)
    rel = np.sqrt(g["energy"].sum().to_numpy(dtype=float) / g["sumsq_w0"].sum().to_numpy(dtype=float))
    for ax, want in zip(fig.axes, (changed, rel)):
        line = next(ln for ln in ax.get_lines() if ln.get_label() == "mlp")
        np.testing.assert_array_equal(line.get_xdata(), np.arange(80))
        np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-12)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "norm (0 in every layer)" in labels


def test_heatmap_matches_an_independent_pivot(moe: Comparison) -> None:
    ax = moe.plot.heatmap("energy_share")
    t = moe.tensors
    lang = t[(t["tower"] == "language") & t["layer"].notna()]
    want = lang.groupby(["module", "layer"])["energy"].sum().unstack("layer") / t["energy"].sum()
    rows = [lab.get_text() for lab in ax.get_yticklabels()]
    assert rows[:4] == ["q_proj", "k_proj", "v_proj", "o_proj"]  # reading order, not alphabetical
    mesh = ax.collections[0]
    got = np.ma.filled(mesh.get_array(), np.nan).reshape(len(rows), 80)
    want = want.reindex(rows).to_numpy(dtype=float)
    pos = want > 0
    np.testing.assert_allclose(got[pos], want[pos], rtol=1e-12)
    assert (got[want == 0] < mesh.norm.vmin).all()  # exact zeros drawn in the "under" colour (white)
    assert "white = exactly 0" in ax.get_title()


def test_projection_shows_the_planted_enrichment(moe: Comparison) -> None:
    ax = moe.plot.projection()
    modules = [lab.get_text() for lab in ax.get_yticklabels()]
    assert len(ax.collections) == len(R_PCT)
    for dots in ax.collections:
        x = dots.get_offsets()[:, 0]
        want = [ENRICH.get(m, ENRICH_DEFAULT) for m in modules]
        np.testing.assert_allclose(x, want, rtol=1e-12)


def test_spectrum_equals_numpy_svd(demo: Comparison) -> None:
    name = "model.layers.1.mlp.down_proj.weight"
    ax = demo.plot.spectrum(name)
    meta = demo.metadata
    w0 = load_file(Path(meta["base"]["spec"]) / "model.safetensors")[name].double().numpy()
    w1 = load_file(Path(meta["tuned"]["spec"]) / "model.safetensors")[name].double().numpy()
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    for label, m in (("W0 (base)", w0), ("W1 (tuned)", w1), ("Δ = W1 − W0", w1 - w0)):
        want = np.linalg.svd(m, compute_uv=False)
        np.testing.assert_allclose(lines[label].get_ydata(), want, rtol=1e-9, atol=1e-14)


def test_spectrum_when_sources_moved(make_pair, tmp_path: Path) -> None:
    def edit(t):
        t["model.layers.0.mlp.up_proj.weight"] = (t["model.layers.0.mlp.up_proj.weight"].float() * 1.01).bfloat16()
        return t

    b, t, *_ = make_pair(edit)
    cmp = deltascope.compare(b, t, progress=False)
    name = "model.layers.0.mlp.up_proj.weight"
    moved = tmp_path / "moved"
    moved.mkdir()
    b.rename(moved / "base")
    with pytest.raises(CheckpointNotFoundError, match=r"not available.*base="):
        cmp.plot.spectrum(name)
    ax = cmp.plot.spectrum(name, base=moved / "base")
    assert len(ax.get_lines()[0].get_ydata()) == 32
    with pytest.raises(ValueError, match="No tensor 'nope'"):
        cmp.plot.spectrum("nope", base=moved / "base")
    with pytest.raises(ValueError, match="needs a 2-D tensor"):
        cmp.plot.spectrum("model.norm.weight", base=moved / "base")


def test_optional_plots_name_the_option(make_pair) -> None:
    b, t, *_ = make_pair()
    cmp = deltascope.compare(b, t, progress=False)
    with pytest.raises(ValueError, match=r"spectral=True"):
        cmp.plot.projection()
    with pytest.raises(ValueError, match=r"spectral=True"):
        cmp.plot.effective_rank()
    with pytest.raises(ValueError, match=r"coords=True"):
        cmp.plot.magnitude_profile()
    with pytest.raises(ValueError, match="No coordinate changed"):
        cmp.plot.ulp_shares()
    with pytest.raises(ValueError, match="No column 'nope'"):
        cmp.plot.heatmap("nope")


def test_plots_draw_into_given_axes(demo: Comparison) -> None:
    fig, axes = plt.subplots(2, 2)
    assert demo.plot.heatmap("changed_exact", ax=axes[0, 0]) is axes[0, 0]
    assert demo.plot.block_bars(ax=axes[0, 1]) is axes[0, 1]
    assert demo.plot.layer_profile(ax=axes[1]) is fig
    with pytest.raises(ValueError, match="2 panels"):
        demo.plot.layer_profile(ax=axes[0, 0])


def test_compare_runs(demo: Comparison, moe: Comparison) -> None:
    mlp_only = Comparison(
        demo.tensors[demo.tensors["block"] == "mlp"], demo.mismatches, demo.metadata, demo.columns, demo.families
    )
    fig = compare_runs([demo, mlp_only, moe], labels=["OPD", "SFT", "RL"])
    _check_readable(fig)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["OPD", "SFT", "RL"]
    layer_panel = fig.axes[-1]
    assert len(layer_panel.get_lines()) == 3
    with pytest.raises(ValueError, match="at least two"):
        compare_runs([demo])
    with pytest.raises(ValueError, match="2 labels for 3"):
        compare_runs([demo, mlp_only, moe], labels=["a", "b"])


# -- HTML report ----------------------------------------------------------------------------
class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str, str]] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            self.attrs.append((tag, k, v or ""))
            if k == "id" and tag == "section":
                self.ids.append(v or "")


def _assert_self_contained(text: str) -> _Collect:
    p = _Collect()
    p.feed(text)
    assert "http://" not in text and "https://" not in text
    assert not {"script", "link", "iframe", "object", "embed"} & set(p.tags)
    assert "url(" not in text and "@import" not in text
    for tag, k, v in p.attrs:
        if k in ("src", "href", "srcset", "action", "data", "poster"):
            assert v.startswith(("data:", "#")), (tag, k, v[:60])
            assert not v.startswith("//")
    return p


@pytest.mark.parametrize("which", ["demo", "moe"])
def test_report_is_self_contained_and_complete(request, which: str, tmp_path: Path) -> None:
    import base64

    cmp = request.getfixturevalue(which)
    written = write_report_folder(cmp, tmp_path, images=("png",))
    text = written["report"][0].read_text(encoding="utf-8")
    p = _assert_self_contained(text)
    optional = {"experts": which == "moe", "spectral": True, "coords": False}
    want = [sid for sid, _ in SECTIONS if optional.get(sid, True)]
    assert p.ids == want
    assert "Could not draw" not in text
    specs, _ = report_figures(cmp)
    keys = {s.key for s in specs}
    assert {f"layer_profile_{t}" for t in cmp.plot.layer_towers()} <= keys
    assert {"block_bars", "projection", "effective_rank", "sparsity_rules"} <= keys
    assert ("heatmap_experts_language" in keys) == (which == "moe")
    assert "magnitude_profile" not in keys
    assert any(k.startswith("spectrum_") for k in keys)
    imgs = [v for tag, k, v in p.attrs if tag == "img" and k == "src"]
    assert len(imgs) == len(keys)
    for uri in imgs:
        assert uri.startswith("data:image/png;base64,")
        assert base64.b64decode(uri.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for key in keys:
        png = tmp_path / "plots" / f"{key}.png"
        assert png.is_file() and png.stat().st_size < 300_000
    for name in ("report.md", "top_energy.csv", "top_rel_update.csv"):
        assert (tmp_path / name).is_file()


def test_report_without_plots_and_empty_sections(make_pair, tmp_path: Path) -> None:
    b, t, *_ = make_pair()  # identical checkpoints
    cmp = deltascope.compare(b, t, progress=False)
    out = write_report(cmp, tmp_path / "r.html", plots=False)
    text = out.read_text(encoding="utf-8")
    p = _assert_self_contained(text)
    assert p.ids == [sid for sid, _ in SECTIONS if sid not in ("experts", "spectral", "coords")]
    assert "No coordinate changed" in text
    assert "None: every tensor of the base paired" in text and "None: every selected tensor pair" in text
    with pytest.raises(ValueError, match="image_format"):
        write_report(cmp, tmp_path / "x.html", image_format="gif")


def test_report_lists_mismatches_and_errors(make_pair, tmp_path: Path) -> None:
    def edit(t):
        del t["model.layers.1.mlp.up_proj.weight"]
        return t

    b, t, *_ = make_pair(edit)
    cmp = deltascope.compare(b, t, progress=False)
    broken = cmp.tensors.copy()
    broken.loc[0, ["status", "reason"]] = ["error", "RuntimeError: planted failure"]
    cmp = Comparison(broken, cmp.mismatches, cmp.metadata, cmp.columns, cmp.families)
    text = write_report(cmp, tmp_path / "r.html", plots=False).read_text(encoding="utf-8")
    assert "model.layers.1.mlp.up_proj.weight" in text and "missing_in_tuned" in text
    assert "planted failure" in text
    found = headline_findings(cmp)
    assert "1 tensor(s) could not be compared; their rows carry the reason (see Errors)." in found
    assert "Pairing: 1 missing in tuned." in found


def test_report_with_the_real_spectral_and_coords_families(small: Comparison, tmp_path: Path) -> None:
    """The plots, sections and findings read the families' actual column names."""
    cmp = small
    ax = cmp.plot.projection()
    by = cmp.by("module")
    modules = [lab.get_text() for lab in ax.get_yticklabels()]
    dots = ax.collections[[c.get_label() for c in ax.collections].index("top 10%")]
    want = (by["proj2_10pct"] / by["proj2_10pct_expected"]).reindex(modules).to_numpy(dtype=float)
    np.testing.assert_allclose(dots.get_offsets()[:, 0], want, rtol=1e-12)
    _check_readable(cmp.plot.projection(side="left"))
    _check_readable(cmp.plot.effective_rank())
    _check_readable(cmp.plot.magnitude_profile(by="module"))
    written = write_report_folder(cmp, tmp_path, images=("png",), spectra=None)
    text = written["report"][0].read_text(encoding="utf-8")
    p = _assert_self_contained(text)
    assert p.ids == [sid for sid, _ in SECTIONS if sid != "experts"]
    assert "Could not draw" not in text
    assert {"projection", "effective_rank", "magnitude_profile"} <= {f.stem for f in (tmp_path / "plots").iterdir()}
    assert "lowmag_10pct_enrichment" in text and "proj2_10pct_enrichment" in text
    s = cmp.summary().iloc[0]
    ratio = s["proj2_10pct"] / s["proj2_10pct_expected"]
    found = headline_findings(cmp)
    assert any("principal subspace of W0" in f and f"({ratio:.2f}× random" in f for f in found)
    assert any(f.startswith("|Δ| vs |W0|: Spearman ρ = ") for f in found)
    lowmag = s["lowmag_10pct_enrichment"]
    assert f"Changed coordinates are {lowmag:.2f}× as frequent among the 10% smallest |W0| as chance" in " ".join(found)
    prof = cmp.magnitude_profile()
    first = prof.iloc[0]
    assert any(
        f.startswith("Against the rounding null")
        and f"smallest-|W0| bin {fmt_number(first['change_rate_exact'], 'changed_')} changed" in f
        for f in found
    )


def test_report_when_every_tensor_failed(demo: Comparison, tmp_path: Path) -> None:
    failed = demo.tensors.assign(status="error", reason="OSError: planted read failure")
    cmp = Comparison(failed, demo.mismatches, demo.metadata, demo.columns, demo.families)
    text = write_report(cmp, tmp_path / "r.html").read_text(encoding="utf-8")
    p = _assert_self_contained(text)
    assert p.ids == [sid for sid, _ in SECTIONS if sid not in ("experts", "spectral", "coords")]
    assert "<img" not in text and "planted read failure" in text
    assert headline_findings(cmp)[0] == f"No tensor pair could be compared ({len(failed)} failed; see Errors)."


# -- findings -------------------------------------------------------------------------------
def test_findings_are_computed_from_the_numbers(demo: Comparison) -> None:
    t = demo.tensors
    unchanged = 1 - t["n_changed_exact"].sum() / t["numel"].sum()
    mlp_energy = t.loc[t["block"] == "mlp", "energy"].sum() / t["energy"].sum()
    found = headline_findings(demo)
    assert found[0].startswith(f"{fmt_number(unchanged, 'changed_')} of the ")
    assert any(f.startswith(f"{fmt_number(mlp_energy, 'changed_')} of the update energy") for f in found)
    assert "Bit-identical (frozen) blocks: embedding, LM-head, norm." in found
    live = t["proj2_10pct"].notna()
    e = t.loc[live, "energy"]
    ratio = (e * t.loc[live, "proj2_10pct"]).sum() / (e * t.loc[live, "proj2_10pct_expected"]).sum()
    assert ratio < 0.8
    assert any(f.startswith(f"Updates avoid the top-10% principal subspace of W0 ({ratio:.2f}× random") for f in found)
    assert not any("|W0|" in f for f in found)  # no coords sentence without coords=True


def test_findings_only_state_numbers_that_exist(moe: Comparison, make_pair) -> None:
    b, t, *_ = make_pair(lambda s: {k: (v.float() + 1e-3).bfloat16() if ".mlp." in k else v for k, v in s.items()})
    plain = headline_findings(deltascope.compare(b, t, progress=False))
    assert not any("principal subspace" in f or "|W0|" in f or "MoE" in f or "tower" in f for f in plain)
    found = headline_findings(moe)
    assert "MoE: 160 of 640 (layer, expert) pairs are bit-identical (experts the tuning never updated)." in found
    assert any(f.startswith("The vision tower holds") for f in found)
    assert any(f.startswith("The relative update ‖Δ‖/‖W0‖ is largest in layer") for f in found)


# -- tables ---------------------------------------------------------------------------------
def test_tables_round_only_on_display(demo: Comparison, tmp_path: Path) -> None:
    by = demo.by("block")
    md = tables.to_markdown(by, ["changed_exact", "rel_update"])
    assert f"| mlp | {fmt_number(by.loc['mlp', 'changed_exact'], 'changed_exact')} |" in md
    html_text = tables.to_html(by, ["changed_exact"])
    assert f'title="{float(by.loc["mlp", "changed_exact"])!r}"' in html_text  # full value on hover
    csv = tables.write_table(by, tmp_path / "by.csv")
    back = pd.read_csv(csv, index_col=0)
    np.testing.assert_array_equal(back["rel_update"].to_numpy(), by["rel_update"].to_numpy())
    pq = tables.write_table(by, tmp_path / "by.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(pq), by)
    assert tables.write_table(by, tmp_path / "by.md").read_text().startswith("| block |")
    assert "<table" in tables.write_table(by, tmp_path / "by.html").read_text()
    with pytest.raises(ValueError, match=r"\.xlsx"):
        tables.write_table(by, tmp_path / "by.xlsx")


def test_standard_tables_and_table_display(demo: Comparison) -> None:
    std = tables.standard_tables(demo, top=5)
    assert set(std) >= {"summary", "block", "module", "layer", "tower", "layer_module", "top_energy", "top_rel_update"}
    assert std["layer"].index.names == ["tower", "layer"]
    assert list(std["top_energy"]["energy"]) == sorted(demo.ok["energy"], reverse=True)[:5]
    tab = tables.Table(std["block"], "by block", ["changed_exact"])
    assert "<b>by block</b>" in tab._repr_html_() and "by block" in repr(tab)


def test_comparison_repr_html(demo: Comparison) -> None:
    text = demo._repr_html_()
    assert "bit-identical" in text and "<table" in text and "mlp" in text and ".report(" in text


def test_import_stays_cheap() -> None:
    code = (
        "import sys, deltascope, deltascope.report, deltascope.report.tables, deltascope.report.html\n"
        "print('matplotlib' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False", r.stderr


# -- command line ---------------------------------------------------------------------------
def test_cli_report_round_trip(small_pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b, t = small_pair
    live_dir, again_dir = tmp_path / "live", tmp_path / "again"
    assert main(["compare", str(b), str(t), "-o", str(live_dir), "--report", "--no-progress"]) == 0
    capsys.readouterr()
    args = ["report", str(live_dir / "comparison.json"), "-o", str(again_dir), "--format", "json", "--images", "png"]
    assert main(args) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["report"] == [str(again_dir / "report.html")]
    for paths in (listed["plots"], listed["tables"], listed["markdown"]):
        assert paths and all(Path(p).is_file() for p in paths)
    csvs = sorted(p.name for p in live_dir.glob("*.csv"))
    assert "top_energy.csv" in csvs and "by_layer_module.csv" in csvs
    assert csvs == sorted(p.name for p in again_dir.glob("*.csv"))
    for name in csvs:
        assert (live_dir / name).read_text() == (again_dir / name).read_text(), name
    assert (live_dir / "report.md").read_text() == (again_dir / "report.md").read_text()
    live_plots = sorted(p.stem for p in (live_dir / "plots").glob("*.svg"))
    assert live_plots and live_plots == sorted(p.stem for p in (again_dir / "plots").glob("*.png"))
    live = deltascope.compare(b, t, progress=False)
    loaded = Comparison.from_json(again_dir / "comparison.json")
    for name, frame in tables.standard_tables(live).items():
        pd.testing.assert_frame_equal(frame, tables.standard_tables(loaded)[name], obj=name)
    _assert_self_contained((again_dir / "report.html").read_text(encoding="utf-8"))


def test_cli_report_from_a_folder_text_output(small_pair, tmp_path: Path, capsys) -> None:
    b, t = small_pair
    assert main(["compare", str(b), str(t), "-o", str(tmp_path / "run"), "--no-progress"]) == 0
    capsys.readouterr()
    rc = main(["report", str(tmp_path / "run"), "-o", str(tmp_path / "rep"), "--no-plots", "--images", "svg"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.startswith(f"report: {tmp_path / 'rep' / 'report.html'}")
    assert not (tmp_path / "rep" / "plots").exists()


def test_cli_report_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "other.json").write_text('{"hello": 1}')
    assert main(["report", str(tmp_path / "other.json"), "-o", str(tmp_path / "o")]) == 2
    assert "not a deltascope result" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing.json"), "-o", str(tmp_path / "o")]) == 2
    assert "Cannot read saved result" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "other.json")]) == 2  # -o is required
    assert main(["report", str(tmp_path / "other.json"), "-o", str(tmp_path / "o"), "--images", "gif"]) == 2
    assert "choose from png, svg, pdf" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before writing anything
    assert main(["demo", "--report"]) == 2
    assert "give the folder with -o DIR" in capsys.readouterr().err
    assert main(["report", "--help"]) == 0
    assert "examples:" in capsys.readouterr().out
