"""Core streaming pass vs a plain read vs the naive approach, with peak memory.

Generates Llama-shaped bf16 checkpoint pairs (hidden 2048, intermediate 5632, vocab
32000) at two sizes and prints, measured in the same run on a warm page cache:

  (a) plain read: numpy sum over a memory map of both files (the memory-bandwidth floor)
  (b) deltascope.compare with default metrics        -- and with metrics="full"
  (c) naive: safetensors.torch.load_file of both, then a torch loop computing the
      same core statistics

Each variant runs in its own subprocess so its peak RSS (ru_maxrss) is its own; the RSS
of a process that only imports torch and deltascope is printed as the floor.

    python benchmarks/bench_core.py                  # 8 and 16 layers: ~1.1 and ~1.9 GB per side
    python benchmarks/bench_core.py --layers 2 4     # quick
    python benchmarks/bench_core.py --keep DIR       # keep the generated pairs in DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _rss_mib() -> float:
    """Peak resident memory of this process (VmHWM). Unlike ru_maxrss it is not
    inherited from the parent across fork+exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def variant(name: str, base: str, tuned: str) -> dict:
    """Run one variant in this process and return its timing and peak RSS."""
    import numpy as np
    import torch

    import deltascope

    t0 = time.perf_counter()
    if name == "floor":
        pass
    elif name == "plain":
        total = 0
        for side in (base, tuned):
            m = np.memmap(Path(side) / "model.safetensors", dtype=np.uint16, mode="r")
            total += int(m.sum(dtype=np.uint64))
            del m
    elif name in ("deltascope", "deltascope_full"):
        cmp = deltascope.compare(
            base, tuned, progress=False, metrics="full" if name == "deltascope_full" else "default"
        )
        assert cmp.metadata["n_errors"] == 0
    elif name == "naive":
        from safetensors.torch import load_file

        a = load_file(Path(base) / "model.safetensors")
        b = load_file(Path(tuned) / "model.safetensors")
        rows = {}
        for k in a:
            x, y = a[k].float(), b[k].float()
            d = y - x
            rows[k] = (
                int((a[k] != b[k]).sum()),
                float((x.double() ** 2).sum()),
                float((y.double() ** 2).sum()),
                float((d.double() ** 2).sum()),
                float(d.abs().max()),
                int((d.abs() > 1e-5).sum()),
            )
    else:
        raise ValueError(name)
    return {
        "variant": name,
        "seconds": time.perf_counter() - t0,
        "peak_rss_mib": _rss_mib(),
        "torch_threads": torch.get_num_threads(),
    }


def run_variant(name: str, base: Path, tuned: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--variant", name, str(base), str(tuned)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--keep", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=2, help="timed repetitions per variant (best is reported)")
    ap.add_argument("--variant", default=None)
    ap.add_argument("paths", nargs="*")
    a = ap.parse_args()
    if a.variant:
        print(json.dumps(variant(a.variant, *a.paths)))
        return

    sys.path.insert(0, str(HERE))
    from synth import llama_config, write_pair

    root = a.keep or Path(tempfile.mkdtemp(prefix="deltascope-bench-"))
    try:
        results = []
        for layers in a.layers:
            folder = root / f"llama-{layers}L"
            cfg = llama_config(layers)
            marker = folder / "DONE"
            if marker.is_file():
                base, tuned, nbytes = folder / "base", folder / "tuned", int(marker.read_text())
            else:
                t0 = time.perf_counter()
                base, tuned, nbytes = write_pair(folder, cfg)
                marker.write_text(str(nbytes))
                print(
                    f"generated {layers}-layer pair, {nbytes / 2**30:.2f} GiB per side "
                    f"in {time.perf_counter() - t0:.1f} s",
                    file=sys.stderr,
                )
            run_variant("plain", base, tuned)  # warm the page cache
            row = {"layers": layers, "gib_per_side": nbytes / 2**30}
            for name in ("floor", "plain", "deltascope", "deltascope_full", "naive"):
                best = min((run_variant(name, base, tuned) for _ in range(a.repeat)), key=lambda r: r["seconds"])
                row[name] = best
            results.append(row)
            _print_row(row)
        _print_summary(results)
    finally:
        if a.keep is None:
            shutil.rmtree(root, ignore_errors=True)


def _print_row(row: dict) -> None:
    plain = row["plain"]["seconds"]
    print(
        f"\n== {row['layers']} layers, {row['gib_per_side']:.2f} GiB per side (bf16), "
        f"{os.cpu_count()} CPUs, torch threads {row['deltascope']['torch_threads']} =="
    )
    print(f"{'variant':18s} {'seconds':>9s} {'x plain':>8s} {'peak RSS MiB':>13s}")
    for name in ("floor", "plain", "deltascope", "deltascope_full", "naive"):
        r = row[name]
        ratio = r["seconds"] / plain if name != "floor" else float("nan")
        print(f"{name:18s} {r['seconds']:9.2f} {ratio:8.2f} {r['peak_rss_mib']:13.0f}")


def _print_summary(results: list[dict]) -> None:
    print("\nsummary (ratios measured in this run):")
    for row in results:
        p = row["plain"]["seconds"]
        print(
            f"  {row['gib_per_side']:.2f} GiB/side: deltascope/plain = {row['deltascope']['seconds'] / p:.2f}, "
            f"full/plain = {row['deltascope_full']['seconds'] / p:.2f}, "
            f"naive/deltascope = {row['naive']['seconds'] / row['deltascope']['seconds']:.2f}, "
            f"peak RSS deltascope {row['deltascope']['peak_rss_mib']:.0f} MiB "
            f"(floor {row['floor']['peak_rss_mib']:.0f}), naive {row['naive']['peak_rss_mib']:.0f} MiB"
        )


if __name__ == "__main__":
    main()
