"""How well the Hub source hides latency: a few hundred tensors served by the loopback
Hub-compatible server (tests/hubserver.py) with 50 ms added to every request.

The server runs in its own process (as the Hub is another machine: it must not share the
client's interpreter lock). Prints, measured in one run on the same machine:

- pipelined run with 50 ms latency vs the same run with no added latency (goal <= 1.3),
  also without the fixed cost of opening both sides;
- the same with ``max_inflight=1``, and with the defaults (``max_inflight=8``; the engine
  then announces the 16 reads ahead the Hub source asks for);
- download-then-compare: ``huggingface_hub.snapshot_download`` of both repos from the same
  server (same 50 ms), then a local compare;
- a local compare of the original files (the compute floor).

The default model (24 layers, hidden 1024: 219 tensors per side, matrices of 1-8 MiB, 0.9 GB in all)
needs about 3 GB in the temporary folder (the files, the server's copy, the downloads).

Usage::

    .venv/bin/python benchmarks/bench_hub.py [--layers 24] [--hidden 1024] [--latency 0.05] [--repeat 5]

Not run by CI. Configurations are interleaved round by round and the median and the best
of each are printed: timings are noisy on shared machines, compare the ratios.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("DELTASCOPE_NO_PROGRESS", "1")
TESTS = str(Path(__file__).resolve().parents[1] / "tests")
sys.path.insert(0, TESTS)


def build(folder: Path, layers: int, hidden: int) -> tuple[Path, Path, int]:
    import torch

    from conftest import llama_shapes, random_state, write_checkpoint

    shapes = llama_shapes(layers=layers, hidden=hidden, inter=2 * hidden, vocab=4 * hidden, kv=hidden // 2)
    base = random_state(shapes, seed=0)
    g = torch.Generator().manual_seed(1)
    tuned = {}
    for k, v in base.items():
        mask = torch.rand(v.shape, generator=g) < 0.2
        tuned[k] = torch.where(mask, v + 0.01 * torch.randn(v.shape, generator=g).to(v.dtype), v).contiguous()
    b = write_checkpoint(folder / "base", base, shards=2)
    t = write_checkpoint(folder / "tuned", tuned, shards=2)
    return b, t, len(shapes)


def serve(root: str, repos: dict[str, str], conn: Any) -> None:
    """Server process: commit the repos, send the endpoint, then obey commands."""
    sys.path.insert(0, TESTS)
    from hubserver import HubServer

    with HubServer(Path(root)) as hub:
        for repo, folder in repos.items():
            hub.commit(repo, Path(folder))
        conn.send(hub.endpoint)
        while True:
            cmd, arg = conn.recv()
            if cmd == "latency":
                hub.latency = arg
                hub.reset_log()
                conn.send(None)
            elif cmd == "requests":
                conn.send(len(hub.records()))
            else:
                conn.send(None)
                return


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=1024, help="1024: matrices of 1-8 MiB; 256: 64-512 KiB")
    ap.add_argument("--latency", type=float, default=0.05, help="seconds added to every request")
    ap.add_argument("--max-inflight", type=int, default=16)
    ap.add_argument("--prefetch", type=int, default=32, help="pairs the engine reads ahead")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved rounds")
    args = ap.parse_args()

    import pandas as pd

    import deltascope
    from deltascope.checkpoint.hub import open_hub

    with tempfile.TemporaryDirectory() as tmp:
        b, t, n = build(Path(tmp), args.layers, args.hidden)
        size = sum(p.stat().st_size for p in (*b.glob("*.safetensors"), *t.glob("*.safetensors")))
        ours, theirs = mp.get_context("spawn").Pipe()
        repos = {"bench/base": str(b), "bench/tuned": str(t)}
        server = mp.get_context("spawn").Process(target=serve, args=(str(Path(tmp, "server")), repos, theirs))
        server.start()
        endpoint = ours.recv()

        def control(cmd: str, arg: object = None) -> Any:
            ours.send((cmd, arg))
            return ours.recv()

        def hub_run(max_inflight: int = args.max_inflight, prefetch: int | None = args.prefetch) -> Any:
            return deltascope.compare(
                "bench/base",
                "bench/tuned",
                endpoint=endpoint,
                progress=False,
                prefetch=prefetch,
                max_inflight=max_inflight,
            )

        def download_then_compare() -> Any:
            from huggingface_hub import snapshot_download

            # local_dir: plain files in one folder per repo.
            with tempfile.TemporaryDirectory(dir=tmp) as dst:
                t0 = time.perf_counter()
                pb = snapshot_download("bench/base", endpoint=endpoint, local_dir=Path(dst, "b"))
                pt = snapshot_download("bench/tuned", endpoint=endpoint, local_dir=Path(dst, "t"))
                times["snapshot_download alone"].append(time.perf_counter() - t0)
                return deltascope.compare(pb, pt, progress=False, prefetch=args.prefetch)

        def open_both() -> None:
            for repo in repos:
                open_hub(repo, endpoint=endpoint).close()

        lat = args.latency
        runs: dict[str, tuple[float, Callable[[], Any]]] = {
            "local compare of the same files": (0.0, lambda: deltascope.compare(b, t, progress=False)),
            "Hub, pipelined, no latency": (0.0, hub_run),
            "Hub, pipelined, latency": (lat, hub_run),
            "Hub, max_inflight=1, latency": (lat, lambda: hub_run(1)),
            "Hub, defaults (8 in flight, engine read-ahead from the source), latency": (lat, lambda: hub_run(8, None)),
            "snapshot_download + local compare, latency": (lat, download_then_compare),
            "open both sides, no latency": (0.0, open_both),
            "open both sides, latency": (lat, open_both),
        }
        times: dict[str, list[float]] = {k: [] for k in [*runs, "snapshot_download alone"]}
        results: dict[str, Any] = {}
        hub_run()  # warm-up: imports, connection pool
        requests = 0
        try:
            for _ in range(args.repeat):
                for key, (latency, fn) in runs.items():
                    control("latency", latency)
                    t0 = time.perf_counter()
                    results[key] = fn()
                    times[key].append(time.perf_counter() - t0)
                    if key == "Hub, pipelined, latency":
                        requests = control("requests")
        finally:
            control("stop")
            server.join()

    ref = results["local compare of the same files"]
    for res in results.values():
        if res is not None:
            pd.testing.assert_frame_equal(res.tensors, ref.tensors)

    ms = f"{args.latency * 1000:.0f} ms"
    print(f"{n} tensors per side, {size / 2**20:.1f} MiB of safetensors in all, 2 shards per side")
    print(f"{requests} requests per Hub run; pipelined: max_inflight={args.max_inflight}, prefetch={args.prefetch}")
    print(f"latency = {ms} added to every request; {args.repeat} interleaved rounds; seconds:")
    print(f"  {'':52s} {'median':>7s} {'best':>7s}")
    for key, v in times.items():
        print(f"  {key:52s} {statistics.median(v):7.2f} {min(v):7.2f}")

    def ratio(a: str, b: str, f: Callable[[list[float]], float]) -> float:
        return f(times[a]) / f(times[b])

    def steady(f: Callable[[list[float]], float]) -> float:
        slow = f(times["Hub, pipelined, latency"]) - f(times["open both sides, latency"])
        fast = f(times["Hub, pipelined, no latency"]) - f(times["open both sides, no latency"])
        return slow / fast

    print(f"ratios (median, best):  [latency = {ms}]")
    rows = [
        ("pipelined, latency / no latency (goal <= 1.3)", "Hub, pipelined, latency", "Hub, pipelined, no latency"),
        ("max_inflight=1 / pipelined", "Hub, max_inflight=1, latency", "Hub, pipelined, latency"),
        (
            "defaults / pipelined",
            "Hub, defaults (8 in flight, engine read-ahead from the source), latency",
            "Hub, pipelined, latency",
        ),
        ("download-then-compare / pipelined", "snapshot_download + local compare, latency", "Hub, pipelined, latency"),
        ("pipelined, latency / local compare", "Hub, pipelined, latency", "local compare of the same files"),
    ]
    for label, a, b_ in rows:
        print(f"  {label:52s} {ratio(a, b_, statistics.median):7.2f} {ratio(a, b_, min):7.2f}")
    label = "same as the first, less the time to open both sides"
    print(f"  {label:52s} {steady(statistics.median):7.2f} {steady(min):7.2f}")


if __name__ == "__main__":
    main()
