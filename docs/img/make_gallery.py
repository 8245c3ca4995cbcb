"""Regenerate the images of docs/gallery.md (offline, synthetic checkpoints only).

    .venv/bin/python docs/img/make_gallery.py

Uses the built-in demo pair (with three synthetic "runs" of its base for the side-by-side
view) and an 80-layer x 8-expert MoE + vision-tower pair built by the test suite's
fixture. Nothing here is a real model.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import torch
from safetensors.torch import load_file, save_file

import deltascope
from deltascope.report.figures import render
from deltascope.report.plots import compare_runs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import write_checkpoint  # noqa: E402
from test_report import moe_vlm_state  # noqa: E402


def variant(base_dir: str, out: Path, *, dense: dict[str, float], sparse: dict[str, tuple[float, float]], seed: int):
    """A synthetic tuned checkpoint of the demo base: dense N(0, σ²) moves and sparse
    (density, σ) moves per name fragment, stored in bf16."""
    g = torch.Generator().manual_seed(seed)
    base = load_file(Path(base_dir) / "model.safetensors")
    tuned = {}
    for name, w in base.items():
        x = w.float()
        for key, sigma in dense.items():
            if key in name and w.ndim == 2:
                x = x + sigma * torch.randn(x.shape, generator=g)
        for key, (density, sigma) in sparse.items():
            if key in name and w.ndim == 2:
                hit = torch.rand(x.shape, generator=g) < density
                x = x + hit * sigma * torch.randn(x.shape, generator=g)
        tuned[name] = x.to(torch.bfloat16).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tuned, out / "model.safetensors")
    return out


def save(name: str, draw) -> None:
    data = render(draw, ["png"], dpi=90)["png"]
    (HERE / f"{name}.png").write_bytes(data)
    print(f"{name}.png {len(data) // 1024} KiB")


def main() -> None:
    warnings.simplefilter("ignore")
    tmp = Path(tempfile.mkdtemp(prefix="deltascope-gallery-"))
    base, tuned = deltascope.demo_pair()
    demo = deltascope.compare(base, tuned, metrics="full", spectral=True, coords=True, progress=False)
    p = demo.plot
    save("block_bars", p.block_bars)
    save("module_bars", p.module_bars)
    save("sparsity_rules", p.sparsity_rules)
    save("ulp_shares", p.ulp_shares)
    save("projection", p.projection)
    save("effective_rank", p.effective_rank)
    save("magnitude_profile", p.magnitude_profile)
    save("spectrum", lambda: p.spectrum("model.layers.2.mlp.down_proj.weight"))

    b, t = moe_vlm_state()
    mb, mt = write_checkpoint(tmp / "moe" / "base", b), write_checkpoint(tmp / "moe" / "tuned", t)
    moe = deltascope.compare(mb, mt, progress=False)
    save("layer_profile", moe.plot.layer_profile)
    save("heatmap", lambda: moe.plot.heatmap("energy_share"))
    save("heatmap_experts", lambda: moe.plot.heatmap("energy_share", rows="expert"))

    sft = variant(base, tmp / "sft", dense={"proj": 2e-4, "embed": 1e-4}, sparse={}, seed=1)
    rl = variant(base, tmp / "rl", dense={}, sparse={".mlp.": (0.03, 1e-3), ".self_attn.": (0.01, 5e-4)}, seed=2)
    runs = [demo] + [deltascope.compare(base, x, progress=False) for x in (sft, rl)]
    save("compare_runs", lambda: compare_runs(runs, labels=["OPD-like", "SFT-like", "RL-like"]))


if __name__ == "__main__":
    main()
