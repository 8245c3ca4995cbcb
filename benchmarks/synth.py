"""Write large synthetic Llama-shaped checkpoint pairs without holding them in memory.

Used by the benchmarks (and the memory test): each tensor is generated from its own seed,
written straight to disk, and forgotten, so a 2 GB pair costs a few tensors of RAM.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from deltascope.demo import llama_shapes as _llama_shapes

__all__ = ["llama_config", "llama_shapes", "write_pair"]


def llama_config(layers: int, hidden: int = 2048, inter: int = 5632, vocab: int = 32000, kv: int = 512) -> dict:
    return {"layers": layers, "hidden": hidden, "inter": inter, "vocab": vocab, "kv": kv}


def llama_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    return _llama_shapes(cfg["layers"], cfg["hidden"], cfg["inter"], cfg["vocab"], cfg["kv"])


def _tensor_pair(name: str, shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if len(shape) == 1:
        w0 = (1.0 + 0.05 * torch.randn(shape, generator=g)).to(torch.bfloat16)
        return w0, w0
    w0 = (0.02 * torch.randn(shape, generator=g)).to(torch.bfloat16)
    if ".mlp." in name or ".self_attn." in name:
        scale = 4e-5 if ".mlp." in name else 1e-5
        w1 = (w0.float() + scale * torch.randn(shape, generator=g)).to(torch.bfloat16)
    else:
        w1 = w0
    return w0, w1


def write_pair(folder: Path, cfg: dict, *, seed: int = 0) -> tuple[Path, Path, int]:
    """Write ``folder/base/model.safetensors`` and ``folder/tuned/model.safetensors``.

    Returns both folders and the bytes of tensor data per side.
    """
    shapes = llama_shapes(cfg)
    header: dict[str, dict] = {}
    offset = 0
    for name, shape in shapes.items():
        n = 2
        for s in shape:
            n *= s
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    paths = []
    files = []
    for side in ("base", "tuned"):
        d = folder / side
        d.mkdir(parents=True, exist_ok=True)
        f = open(d / "model.safetensors", "wb")  # noqa: SIM115 - closed below
        f.write(struct.pack("<Q", len(body)) + body)
        files.append(f)
        paths.append(d)
    try:
        for i, (name, shape) in enumerate(shapes.items()):
            w0, w1 = _tensor_pair(name, shape, seed * 100_003 + i)
            for f, t in zip(files, (w0, w1)):
                f.write(t.reshape(-1).view(torch.int16).numpy().tobytes())
    finally:
        for f in files:
            f.close()
    return paths[0], paths[1], offset
