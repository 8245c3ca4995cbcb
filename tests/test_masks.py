"""Saved masks: exact round trip, ~1 bit per coordinate, atomic writes, validation, CLI."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import deltascope
from conftest import llama_shapes, write_checkpoint
from deltascope import Comparison, IncompatibleCheckpointsError, ResultFormatError
from deltascope.cli import main
from deltascope.masks import MANIFEST, load_masks, save_masks, write_masks
from reference import bits_of, to_f64


def _edit(t: dict) -> dict:
    g = torch.Generator().manual_seed(40)
    for name, w in t.items():
        if w.ndim == 2 and "embed" not in name:
            t[name] = (w.float() + 1e-4 * torch.randn(w.shape, generator=g)).to(torch.bfloat16)
    return t


@pytest.fixture
def pair(make_pair):
    return make_pair(_edit, shapes=llama_shapes(hidden=64, inter=96))


def test_round_trip_is_exact_and_one_bit_per_coordinate(pair, tmp_path: Path) -> None:
    b, t, base, tuned = pair
    cmp = deltascope.compare(b, t)
    out = save_masks(cmp, tmp_path / "m")
    ms = load_masks(out)
    assert set(ms) == set(base) and ms.rule == "exact"
    for name in base:
        want = bits_of(base[name]) != bits_of(tuned[name])  # independent: stored bits differ (no ±0 here)
        got = ms[name]
        assert got.dtype == torch.bool and tuple(got.shape) == tuple(base[name].shape)
        np.testing.assert_array_equal(got.reshape(-1).numpy(), want)
        assert ms.info(name)["n_changed"] == want.sum()
    numel = sum(v.numel() for v in base.values())
    packed = sum(math.ceil(v.numel() / 8) for v in base.values())
    shard_bytes = sum(p.stat().st_size for p in out.glob("masks-*.safetensors"))
    # the packed bits plus one small header (~100 bytes a tensor): about numel / 8 bytes
    assert packed <= shard_bytes <= packed + 8 + 150 * len(base)
    m = ms.manifest
    assert m["numel"] == numel and m["deltascope_version"] == deltascope.__version__
    assert m["sources"]["base"]["spec"] == str(b) and m["tolerance"] == {"kind": "exact", "value": None}
    assert "model.layers" in repr(ms) or "MaskSet" in repr(ms)
    ms.close()


def test_large_tensor_takes_one_bit_per_coordinate(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(41)
    w0 = torch.randn(1000, 1003, generator=g)
    w1 = torch.where(torch.rand(w0.shape, generator=g) < 0.3, w0 + 1, w0)
    name = "model.layers.0.mlp.up_proj.weight"
    b = write_checkpoint(tmp_path / "b", {name: w0})
    t = write_checkpoint(tmp_path / "t", {name: w1})
    out = write_masks(b, t, tmp_path / "m")
    size = (out / "masks-00001.safetensors").stat().st_size
    assert math.ceil(w0.numel() / 8) <= size <= math.ceil(w0.numel() / 8) + 256  # bits + one small header
    with load_masks(out) as ms:
        np.testing.assert_array_equal(ms[name].numpy(), (w1 != w0).numpy())


def test_rules_selection_and_shards(pair, tmp_path: Path) -> None:
    b, t, base, tuned = pair
    cmp = deltascope.compare(b, t, blocks="mlp", atol=[1e-4])
    out = save_masks(cmp, tmp_path / "m", "atol_0.0001", shard_bytes=500)
    with load_masks(out) as ms:
        assert set(ms) == {n for n in base if ".mlp." in n}
        assert len(ms.manifest["files"]) > 1  # one shard per ~500 bytes
        for name in ms:
            d = np.abs(to_f64(tuned[name]) - to_f64(base[name]))
            np.testing.assert_array_equal(ms[name].reshape(-1).numpy(), d > np.float32(1e-4))
    # saving again with one big shard removes the stale ones
    save_masks(cmp, out, "atol_0.0001")
    assert sorted(p.name for p in out.glob("masks-*")) == ["masks-00001.safetensors"]
    assert load_masks(out).manifest["rule"] == "atol_0.0001"


def test_manifest_is_written_last_and_atomically(pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b, t, *_ = pair
    cmp = deltascope.compare(b, t, blocks="mlp")
    order: list[str] = []
    real = os.replace

    def spy(src, dst):
        order.append(Path(dst).name)
        assert Path(src).name.endswith(".partial")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    save_masks(cmp, tmp_path / "m", shard_bytes=2000)
    assert order[-1] == MANIFEST and len(order) > 2
    assert not list((tmp_path / "m").glob("*.partial"))


def test_failed_save_leaves_no_manifest(pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b, t, *_ = pair
    cmp = deltascope.compare(b, t, blocks="mlp")
    out = save_masks(cmp, tmp_path / "m")
    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_masks(cmp, out)
    with pytest.raises(ResultFormatError, match=r"no masks\.json"):
        load_masks(out)


def test_from_json_comparison_and_moved_checkpoints(pair, tmp_path: Path) -> None:
    b, t, *_ = pair
    cmp = Comparison.from_json(deltascope.compare(b, t, layers="1").to_json())
    out = save_masks(cmp, tmp_path / "m", base=str(b), tuned=str(t))
    assert all(".layers.1." in n for n in load_masks(out))


def test_checkpoint_changed_since_comparison(pair, tmp_path: Path) -> None:
    b, t, _, tuned = pair
    cmp = deltascope.compare(b, t, blocks="mlp")
    other = {k: v.clone() for k, v in tuned.items()}
    w = other["model.layers.0.mlp.up_proj.weight"].reshape(-1).view(torch.int16)
    w[:10] += 3
    write_checkpoint(tmp_path / "tuned2", other)
    with pytest.raises(IncompatibleCheckpointsError, match="changed since"):
        save_masks(cmp, tmp_path / "m", tuned=tmp_path / "tuned2")


def _corrupt(folder: Path, edit) -> None:
    p = folder / MANIFEST
    m = json.loads(p.read_text())
    edit(m)
    p.write_text(json.dumps(m))


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: m.update(format="other"), "not a deltascope masks manifest"),
        (lambda m: m.update(version=99), "newer"),
        (lambda m: m.update(rule="close"), "Unknown sparsity rule"),
        (lambda m: next(iter(m["tensors"].values())).update(shape=[3, 3]), "numel"),
        (lambda m: next(iter(m["tensors"].values())).update(nbytes=1), "bytes cannot hold"),
        (lambda m: next(iter(m["tensors"].values())).update(n_changed=-1), "changed count"),
        (lambda m: next(iter(m["tensors"].values())).update(file="other.safetensors"), "not among"),
        (lambda m: m.update(files=["../masks-00001.safetensors"]), "unexpected shard names"),
        (lambda m: m["packing"].update(bitorder="big"), "bitorder"),
    ],
)
def test_load_validates_the_manifest(pair, tmp_path: Path, edit, match: str) -> None:
    b, t, *_ = pair
    out = write_masks(b, t, tmp_path / "m")
    _corrupt(out, edit)
    with pytest.raises(ResultFormatError, match=match):
        load_masks(out)


def test_load_validates_shards_and_bits(pair, tmp_path: Path) -> None:
    b, t, *_ = pair
    out = write_masks(b, t, tmp_path / "m", include="model.layers.0.mlp.*")
    name = "model.layers.0.mlp.up_proj.weight"
    with load_masks(out) as ms:
        packed = {n: ms.packed(n).clone() for n in ms}
    shard = out / "masks-00001.safetensors"
    # one flipped bit: the count no longer matches the manifest
    bad = dict(packed)
    bad[name] = packed[name].clone()
    bad[name][0] ^= 1
    save_file(bad, str(shard))
    with load_masks(out) as ms, pytest.raises(ResultFormatError, match="set bits"):
        ms[name]
    # a tensor stored with the wrong dtype
    save_file({**packed, name: packed[name].to(torch.int16)}, str(shard))
    with pytest.raises(ResultFormatError, match="expected U8"):
        load_masks(out)
    # a shard that is gone
    shard.unlink()
    with pytest.raises(ResultFormatError, match="missing"):
        load_masks(out)
    with pytest.raises(ResultFormatError, match=r"no masks\.json"):
        load_masks(tmp_path / "nowhere")


def test_padding_bits_must_be_zero(tmp_path: Path) -> None:
    base = {"model.layers.0.mlp.up_proj.weight": torch.zeros(3, 5)}
    tuned = {"model.layers.0.mlp.up_proj.weight": torch.ones(3, 5)}
    b, t = write_checkpoint(tmp_path / "b", base), write_checkpoint(tmp_path / "t", tuned)
    out = write_masks(b, t, tmp_path / "m")
    name = "model.layers.0.mlp.up_proj.weight"
    with load_masks(out) as ms:
        assert ms[name].all() and ms.packed(name).tolist() == [255, 127]  # 15 bits, little order
        packed = ms.packed(name).clone()
    packed[1] = 255
    save_file({name: packed}, str(out / "masks-00001.safetensors"))
    _corrupt(out, lambda m: m["tensors"][name].update(n_changed=16))
    with pytest.raises(ResultFormatError, match="changed count"):
        load_masks(out)
    _corrupt(out, lambda m: m["tensors"][name].update(n_changed=15))
    with load_masks(out) as ms, pytest.raises(ResultFormatError, match="padding"):
        ms[name]


def test_cli_masks(pair, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    b, t, *_ = pair
    cmp = deltascope.compare(b, t, blocks="attention")
    cmp.to_json(tmp_path / "run" / "comparison.json")
    assert main(["masks", str(tmp_path / "run"), "-o", str(tmp_path / "m1"), "--format", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rule"] == "exact" and info["n_tensors"] == 8
    assert main(["masks", str(b), str(t), "-o", str(tmp_path / "m2"), "--blocks", "mlp", "--rule", "atol_1e-4"]) == 0
    assert "6 masks" in capsys.readouterr().out
    assert main(["masks", str(b), str(t), "-o", str(tmp_path / "m3"), "--rule", "close"]) == 2
    assert "Unknown sparsity rule" in capsys.readouterr().err


def test_hub_specs_are_pinned_to_the_resolved_commit() -> None:
    from types import SimpleNamespace

    from deltascope.masks import _spec_of

    meta = {
        "base": {"spec": "hf://org/base@main", "kind": "hub", "revision": "a" * 40},
        "tuned": {"spec": "/local/tuned", "kind": "safetensors", "revision": None},
    }
    cmp = SimpleNamespace(metadata=meta)
    assert _spec_of(cmp, "base") == "hf://org/base@" + "a" * 40
    assert _spec_of(cmp, "tuned") == "/local/tuned"
    with pytest.raises(ResultFormatError, match="names no base"):
        _spec_of(SimpleNamespace(metadata={}), "base")
