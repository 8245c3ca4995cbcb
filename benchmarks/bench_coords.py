"""Cost of ``coords=True`` over the core pass, on a generated bf16 Llama-shaped pair.

Writes a pair with :mod:`synth` (dense small updates on attention and MLP, frozen
embeddings, head and norms) and times, in one run on a warm page cache, alternating:

  (a) deltascope.compare(base, tuned)                      -- the core pass
  (b) deltascope.compare(base, tuned, coords=True)         -- + the coords family
  (c) optionally coords={"svd": "exact"} (full SVD of W0 for the principal mask)

Each variant runs ``--repeat`` times in its own subprocess (peak RSS is its own); the
best time of each is compared, and the ratio b/a is printed with the absolute figures.

    python benchmarks/bench_coords.py                    # 2 layers, hidden 1024: ~40M parameters
    python benchmarks/bench_coords.py --layers 4 --hidden 2048 --inter 5632 --vocab 32000
    python benchmarks/bench_coords.py --exact             # also time the exact-SVD principal mask
    python benchmarks/bench_coords.py --threads 1         # steadier figures on a shared machine
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

VARIANTS = {
    "core": {},
    "coords": {"coords": True},
    "coords_exact_svd": {"coords": {"svd": "exact"}},
}


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def variant(name: str, base: str, tuned: str, repeat: int, threads: int) -> dict:
    import torch

    import deltascope

    if threads:
        torch.set_num_threads(threads)

    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        cmp = deltascope.compare(base, tuned, progress=False, **VARIANTS[name])
        times.append(time.perf_counter() - t0)
        assert cmp.metadata["n_errors"] == 0, cmp.errors
    return {"name": name, "best_s": min(times), "times_s": times, "peak_rss_mib": _rss_mib()}


def run_variant(name: str, base: Path, tuned: Path, repeat: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--variant", name, str(base), str(tuned), "--repeat", str(repeat)]
    cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--inter", type=int, default=2816)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--kv", type=int, default=256)
    p.add_argument("--repeat", type=int, default=2, help="runs per variant; the best counts")
    p.add_argument("--exact", action="store_true", help="also time coords with the exact SVD")
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: torch's default; 1 is steadier on a busy machine)"
    )
    p.add_argument("--keep", type=Path, default=None, help="keep the generated pair in this folder")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.variant:
        print(json.dumps(variant(a.variant, a.paths[0], a.paths[1], a.repeat, a.threads)))
        return

    sys.path.insert(0, str(HERE))
    from synth import llama_config, write_pair

    cfg = llama_config(a.layers, hidden=a.hidden, inter=a.inter, vocab=a.vocab, kv=a.kv)
    folder = a.keep or Path(tempfile.mkdtemp(prefix="bench-coords-"))
    try:
        t0 = time.perf_counter()
        base, tuned, nbytes = write_pair(folder, cfg)
        print(f"pair: {cfg}, {nbytes / 2**20:.0f} MiB per side (bf16), written in {time.perf_counter() - t0:.1f} s")
        print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
        names = ["core", "coords"] + (["coords_exact_svd"] if a.exact else [])
        # warm the page cache once, then run the variants
        run_variant("core", base, tuned, 1, a.threads)
        results = {n: run_variant(n, base, tuned, a.repeat, a.threads) for n in names}
        core = results["core"]["best_s"]
        print(f"{'variant':<18}{'best s':>9}{'x core':>9}{'peak RSS MiB':>14}   all runs (s)")
        for n, r in results.items():
            runs = ", ".join(f"{t:.2f}" for t in r["times_s"])
            print(f"{n:<18}{r['best_s']:>9.2f}{r['best_s'] / core:>9.2f}{r['peak_rss_mib']:>14.0f}   {runs}")
        params = nbytes / 2
        print(f"coords cost: {(results['coords']['best_s'] - core) / params * 1e9:.1f} s per 1e9 parameters (here)")
    finally:
        if a.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
