"""Spectral family: ``exact`` vs ``fast`` vs a plain ``torch.linalg.svd`` of Δ, per tensor,
on Llama-like shapes. Prints time ratios and fast's errors against exact, measured in one
run (the machine is shared and noisy: compare ratios, not seconds).

Each tensor pair is bf16 like a checkpoint: W0 = Gaussian (σ = 0.02) plus 32 strong
directions (a heavy top of the spectrum, as in trained weights); W1 = W0 + a dense small
update (rel. 1e-3) + a rank-8 part partly inside W0's top subspace, rounded to bf16.

    python benchmarks/bench_spectral.py            # 2048x2048, 2048x5632, 4096x4096
    python benchmarks/bench_spectral.py --quick    # 512x512, 512x1376, 1024x2816
    python benchmarks/bench_spectral.py --device cuda
    python benchmarks/bench_spectral.py --quick --repeat 3 --threads 1   # steadier on a busy machine

Columns: seconds per tensor for ``svd(Δ)`` (LAPACK, float64, U/S/Vh of Δ only), the
family in ``exact`` and ``fast`` mode (all default columns: ranks, projections at 1/5/10/20 %,
rotation, drift, intruders), ``lowrank20``: ``torch.svd_lowrank`` of W0 at k = 20 % (what
a randomized range finder costs, and its projection error, shown to justify fast's choice
of Gram eigen-decompositions); then exact/fast and svd/fast ratios and fast's largest
errors: absolute on projection shares, relative on effective/stable rank, drift and
rotation, and whether numerical ranks and intruder counts agree.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from deltascope.checkpoint.base import TensorInfo
from deltascope.families import PairContext
from deltascope.family_spectral import SpectralFamily
from deltascope.metrics.spectral import SpectralOptions, derive_spectral, rank_for
from deltascope.naming import role_of

FULL = [(2048, 2048), (2048, 5632), (4096, 4096)]
QUICK = [(512, 512), (512, 1376), (1024, 2816)]


def make_pair(m: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    strong = torch.randn(m, 32, generator=g)  # the column space of W0's heavy top
    w0 = 0.02 * torch.randn(m, n, generator=g)
    w0 += (strong * torch.logspace(0, -1, 32) * 0.05) @ torch.randn(32, n, generator=g) / 8
    w0 = w0.to(torch.bfloat16)
    left = torch.linalg.qr(strong[:, :4])[0]  # half of the low-rank update lies in W0's top
    left = torch.cat([left, torch.linalg.qr(torch.randn(m, 4, generator=g))[0]], dim=1)
    upd = 2e-5 * torch.randn(m, n, generator=g) + 1e-3 * left @ torch.randn(8, n, generator=g) / math.sqrt(n)
    w1 = (w0.float() + upd).to(torch.bfloat16)
    return w0, w1


def ctx_for(w0: torch.Tensor, w1: torch.Tensor, device: torch.device) -> PairContext:
    name = "model.layers.0.mlp.up_proj.weight"
    info = TensorInfo(name, "BF16", tuple(w0.shape), "f")
    return PairContext(name, role_of(name), info, info, w0, w1, device, 1 << 23)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def family_row(mode: str, w0: torch.Tensor, w1: torch.Tensor, device: torch.device) -> tuple[float, dict]:
    fam = SpectralFamily(SpectralOptions(mode=mode))
    ctx = ctx_for(w0, w1, device)
    secs, raw = timed(lambda: fam.compute(ctx), device)
    assert isinstance(raw, dict)
    cols = {k: np.array(v, dtype=float) for k, v in raw.items() if k != "spectral_note"}
    out = {k: float(v) for k, v in derive_spectral(cols, fam.opts).items()}
    out["spectral_note"] = raw["spectral_note"]
    return secs, out


def errors(exact: dict, fast: dict) -> dict[str, float | bool]:
    proj = [k for k in exact if k.startswith(("proj", "sv_energy")) and "enrichment" not in k]
    rel = lambda k: abs(fast[k] - exact[k]) / abs(exact[k]) if exact[k] else abs(fast[k])  # noqa: E731
    rot = [k for k in exact if k.startswith("rot_sin_mean")]
    return {
        "proj_abs": max(abs(fast[k] - exact[k]) for k in proj),
        "erank_rel": rel("effective_rank"),
        "srank_rel": rel("stable_rank"),
        "drift_rel": rel("spectral_drift"),
        "rot_rel": max(rel(k) for k in rot),
        "nrank_same": all(fast[k] == exact[k] for k in exact if k.startswith("numerical_rank")),
        "intr_same": fast["intruder_frac"] == exact["intruder_frac"],
    }


def lowrank_row(w0: torch.Tensor, w1: torch.Tensor, device: torch.device) -> tuple[float, float]:
    """Time of a rank-20 % randomized SVD of W0 and its worst proj2/left error vs exact."""
    a = w0.to(device, torch.float64)
    d = w1.to(device, torch.float64) - a
    k = rank_for(0.2, min(a.shape))
    torch.manual_seed(0)
    secs, (u, _, v) = timed(lambda: torch.svd_lowrank(a, q=k + 10, niter=4), device)
    U, _, Vh = torch.linalg.svd(a, full_matrices=False)
    e = float((d * d).sum())
    approx = float(((u[:, :k].T @ d @ v[:, :k]) ** 2).sum()) / e
    exact = float(((U[:, :k].T @ d @ Vh[:k].T) ** 2).sum()) / e
    approx_l = float(((u[:, :k].T @ d) ** 2).sum()) / e
    exact_l = float(((U[:, :k].T @ d) ** 2).sum()) / e
    return secs, max(abs(approx - exact), abs(approx_l - exact_l))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (CI-sized)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-lowrank", action="store_true", help="skip the randomized-SVD comparison row")
    ap.add_argument("--repeat", type=int, default=1, help="time each method this many times, interleaved; keep the min")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = QUICK if args.quick else FULL
    print(f"torch {torch.__version__}, device {device}, intra-op threads {torch.get_num_threads()}")
    head = (
        f"{'shape':>11} {'svd(Δ) s':>9} {'exact s':>8} {'fast s':>7} {'lowrank20 s':>11} "
        f"{'exact/fast':>10} {'svd/fast':>8} {'proj abs':>9} {'erank rel':>9} {'srank rel':>9} "
        f"{'drift rel':>9} {'rot rel':>8} {'nrank=':>6} {'intr=':>5} {'lowrank20 proj abs':>18}"
    )
    print(head)
    ratios = []
    for m, n in shapes:
        w0, w1 = make_pair(m, n)
        d64 = w1.to(device, torch.float64) - w0.to(device, torch.float64)
        # warm-up (first LAPACK/cuSOLVER call per size allocates workspaces)
        family_row("fast", w0[:64, :64].clone(), w1[:64, :64].clone(), device)
        t_svd = t_exact = t_fast = t_lr = math.inf
        for _ in range(max(1, args.repeat)):  # interleaved, so a noisy spell hits all methods alike
            t_svd = min(t_svd, timed(lambda d=d64: torch.linalg.svd(d, full_matrices=False), device)[0])
            t, exact = family_row("exact", w0, w1, device)
            t_exact = min(t_exact, t)
            t, fast = family_row("fast", w0, w1, device)
            t_fast = min(t_fast, t)
            if not args.no_lowrank:
                t, lr_err = lowrank_row(w0, w1, device)
                t_lr = min(t_lr, t)
        if args.no_lowrank:
            t_lr = lr_err = math.nan
        err = errors(exact, fast)
        ratios.append(t_exact / t_fast)
        print(
            f"{m:>5}x{n:<5} {t_svd:9.2f} {t_exact:8.2f} {t_fast:7.2f} {t_lr:11.2f} "
            f"{t_exact / t_fast:10.1f} {t_svd / t_fast:8.1f} {err['proj_abs']:9.1e} {err['erank_rel']:9.1e} "
            f"{err['srank_rel']:9.1e} {err['drift_rel']:9.1e} {err['rot_rel']:8.1e} "
            f"{'yes' if err['nrank_same'] else 'NO':>6} {'yes' if err['intr_same'] else 'NO':>5} {lr_err:18.1e}",
            flush=True,
        )
        print(
            f"{'':>11} exact: effective_rank_frac {exact['effective_rank_frac']:.4f}, "
            f"proj2_10pct_enrichment {exact['proj2_10pct_enrichment']:.3f}, "
            f"rot_sin_mean_10pct {exact['rot_sin_mean_10pct']:.2e}, spectral_drift {exact['spectral_drift']:.2e}",
            flush=True,
        )
    print(f"exact/fast: min {min(ratios):.1f}x, geometric mean {math.exp(np.mean(np.log(ratios))):.1f}x")


if __name__ == "__main__":
    main()
