"""Shared fixtures: tiny checkpoints built by the tests themselves (never downloaded)."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from deltascope import demo

os.environ.setdefault("DELTASCOPE_NO_PROGRESS", "1")


@pytest.fixture(autouse=True)
def _demo_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the demo pair out of the user's cache during tests."""
    monkeypatch.setenv("DELTASCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def llama_shapes(layers: int = 2, hidden: int = 32, inter: int = 48, vocab: int = 64, kv: int = 16) -> dict[str, tuple]:
    return demo.llama_shapes(layers, hidden, inter, vocab, kv)


def random_state(
    shapes: dict[str, tuple], *, seed: int = 0, dtype: torch.dtype = torch.bfloat16, scale: float = 0.02
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        t = (
            (1.0 + 0.1 * torch.randn(shape, generator=g))
            if len(shape) == 1
            else scale * torch.randn(shape, generator=g)
        )
        out[name] = t.to(dtype).contiguous()
    return out


def write_checkpoint(
    folder: Path, tensors: dict[str, torch.Tensor], *, shards: int = 1, config: dict | None = None
) -> Path:
    """Save ``tensors`` as model.safetensors, or as ``shards`` files with an index."""
    folder.mkdir(parents=True, exist_ok=True)
    if shards == 1:
        save_file(tensors, folder / "model.safetensors")
    else:
        names = list(tensors)
        weight_map = {}
        for i in range(shards):
            part = names[i::shards]
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({n: tensors[n] for n in part}, folder / fname)
            weight_map.update(dict.fromkeys(part, fname))
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
        )
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def raw_safetensors(path: Path, header: dict | bytes, data: bytes = b"", *, length: int | None = None) -> Path:
    """Write a safetensors file byte by byte (for broken-file cases)."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(body) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + body + data)
    return path


@pytest.fixture
def make_pair(tmp_path: Path) -> Callable[..., tuple[Path, Path, dict, dict]]:
    """Build a base/tuned pair from a function that edits the base state dict."""

    def _make(
        edit: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
        *,
        shapes: dict[str, tuple] | None = None,
        dtype: torch.dtype = torch.bfloat16,
        shards: int = 1,
        seed: int = 0,
        tuned_shards: int | None = None,
    ) -> tuple[Path, Path, dict, dict]:
        base = random_state(shapes or llama_shapes(), seed=seed, dtype=dtype)
        tuned = {k: v.clone() for k, v in base.items()}
        if edit is not None:
            tuned = edit(tuned)
        b = write_checkpoint(tmp_path / "base", base, shards=shards)
        t = write_checkpoint(tmp_path / "tuned", tuned, shards=tuned_shards or shards)
        return b, t, base, tuned

    return _make
