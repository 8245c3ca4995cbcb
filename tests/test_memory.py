"""Peak memory of a streaming run stays far below the model size.

Builds Llama-shaped bf16 pairs of two sizes (~160 MB and ~520 MB on disk, largest
tensor 16 MB) and measures the peak resident memory (VmHWM) of a subprocess that runs
compare(), minus that of a subprocess that only imports deltascope. Reading the files
whole would cost their size; the streaming pass costs its chunk buffers and a few
tensors, the same at both sizes. No timing is asserted. (benchmarks/bench_core.py does
the same at 1.1 and 1.9 GB per side.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from synth import llama_config, write_pair

PROBE = r"""
import json, sys
from pathlib import Path
import deltascope
if sys.argv[1] == "run":
    cmp = deltascope.compare(sys.argv[2], sys.argv[3], progress=False)
    assert cmp.metadata["n_errors"] == 0
hwm = next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:"))
print(json.dumps({"hwm_kib": hwm}))
"""


def _hwm(*args: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["hwm_kib"] * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for VmHWM")
def test_peak_memory_does_not_grow_with_model_size(tmp_path: Path) -> None:
    floor = _hwm("floor")
    extra, size = {}, {}
    for layers in (2, 10):
        cfg = llama_config(layers=layers, hidden=1024, inter=2816, vocab=8192, kv=256)
        base, tuned, nbytes = write_pair(tmp_path / f"{layers}L", cfg)
        size[layers] = 2 * nbytes  # both sides
        extra[layers] = _hwm("run", str(base), str(tuned)) - floor
    msg = {k: (round(extra[k] / 2**20, 1), round(size[k] / 2**20, 1)) for k in extra}  # MiB: (extra, model)
    # 10 layers is ~3x the bytes of 2 layers; the streaming pass's extra memory must not follow.
    print("memory (extra MiB, model MiB):", msg)
    assert extra[10] - extra[2] < 0.05 * (size[10] - size[2]), msg
    assert extra[10] < 0.25 * size[10], msg
