"""Local checkpoint layouts, bit-exact reads of every dtype, and the safety checks on
folders and indexes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import llama_shapes, random_state, raw_safetensors, write_checkpoint
from deltascope import open_checkpoint
from deltascope.errors import CheckpointNotFoundError, CorruptCheckpointError, NoWeightsError, UnsafeCheckpointError

DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]


def _bits(t: torch.Tensor) -> bytes:
    return t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def test_every_dtype_reads_bit_exact(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    tensors = {f"t_{str(dt).split('.')[-1]}": (torch.randn(7, 9, generator=g) * 10).to(dt) for dt in DTYPES}
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 3)
    path = tmp_path / "all.safetensors"
    save_file(tensors, path)
    with open_checkpoint(path) as ck:
        assert ck.kind == "safetensors"
        assert set(ck.tensors) == set(tensors)
        for name, ref in tensors.items():
            got = ck.read(name)
            assert got.dtype == ref.dtype and got.shape == ref.shape
            assert _bits(got) == _bits(ref)


@pytest.mark.parametrize("layout", ["file", "folder", "sharded", "several"])
def test_layouts(tmp_path: Path, layout: str) -> None:
    tensors = random_state(llama_shapes(layers=2))
    root = tmp_path / "ck"
    if layout == "file":
        root.mkdir()
        save_file(tensors, root / "weights.safetensors")
        spec = root / "weights.safetensors"
    elif layout == "folder":
        write_checkpoint(root, tensors)
        spec = root
    elif layout == "sharded":
        write_checkpoint(root, tensors, shards=3)
        spec = root
    else:
        root.mkdir()
        names = sorted(tensors)
        save_file({n: tensors[n] for n in names[:5]}, root / "a.safetensors")
        save_file({n: tensors[n] for n in names[5:]}, root / "b.safetensors")
        spec = root
    with open_checkpoint(spec) as ck:
        assert set(ck.tensors) == set(tensors)
        for name, ref in tensors.items():
            assert torch.equal(ck.read(name), ref)
        desc = ck.describe()
        assert desc["n_tensors"] == len(tensors)
        assert desc["tensor_bytes"] == sum(t.numel() * t.element_size() for t in tensors.values())
        assert {f["path"] for f in desc["files"]} == {p.name for p in Path(desc["root"]).glob("*.safetensors")}


def test_index_file_itself_is_a_spec(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "ck", random_state(llama_shapes(layers=1)), shards=2)
    with open_checkpoint(tmp_path / "ck" / "model.safetensors.index.json") as ck:
        assert len(ck) == len(llama_shapes(layers=1))


def test_config_is_read(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "ck", random_state(llama_shapes(layers=1)), config={"tie_word_embeddings": True})
    assert open_checkpoint(tmp_path / "ck").config == {"tie_word_embeddings": True}


def test_missing_path() -> None:
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        open_checkpoint("/nonexistent/place/ckpt")
    with pytest.raises(FileNotFoundError):  # builtin parent works too
        open_checkpoint("./no-such-relative-dir")


def test_folder_without_weights_lists_files(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("hi")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(NoWeightsError) as ei:
        open_checkpoint(tmp_path)
    assert "README.md" in str(ei.value) and "config.json" in str(ei.value)
    assert ei.value.found == ["README.md", "config.json"]


def test_unknown_file_type(tmp_path: Path) -> None:
    p = tmp_path / "weights.npz"
    p.write_bytes(b"x")
    with pytest.raises(NoWeightsError, match="not a weight file"):
        open_checkpoint(p)


def _index(root: Path, weight_map: dict) -> None:
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.mark.parametrize("shard", ["../evil.safetensors", "/etc/evil.safetensors", "sub/../../evil.safetensors"])
def test_index_shard_outside_folder_is_refused(tmp_path: Path, shard: str) -> None:
    root = tmp_path / "ck"
    root.mkdir()
    save_file({"w": torch.ones(2)}, tmp_path / "evil.safetensors")
    _index(root, {"w": shard})
    with pytest.raises(UnsafeCheckpointError, match="outside the checkpoint folder"):
        open_checkpoint(root)


def test_index_symlink_escaping_folder_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    root.mkdir()
    save_file({"w": torch.ones(2)}, tmp_path / "evil.safetensors")
    os.symlink(tmp_path / "evil.safetensors", root / "shard.safetensors")
    _index(root, {"w": "shard.safetensors"})
    with pytest.raises(UnsafeCheckpointError, match="symlink"):
        open_checkpoint(root)


def test_index_names_missing_shard(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    root.mkdir()
    _index(root, {"w": "model-00001-of-00002.safetensors"})
    with pytest.raises(CorruptCheckpointError, match="not in"):
        open_checkpoint(root)


def test_index_maps_tensor_absent_from_shard(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    root.mkdir()
    save_file({"a": torch.ones(2)}, root / "s1.safetensors")
    _index(root, {"a": "s1.safetensors", "b": "s1.safetensors"})
    with pytest.raises(CorruptCheckpointError, match="does not contain it"):
        open_checkpoint(root)


def test_index_not_json(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    root.mkdir()
    (root / "model.safetensors.index.json").write_text("{oops")
    with pytest.raises(CorruptCheckpointError, match="not valid JSON"):
        open_checkpoint(root)


def test_index_without_weight_map(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    root.mkdir()
    (root / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(CorruptCheckpointError, match="weight_map"):
        open_checkpoint(root)


def test_tensor_in_two_files_without_index(tmp_path: Path) -> None:
    save_file({"w": torch.ones(2)}, tmp_path / "a.safetensors")
    save_file({"w": torch.ones(2)}, tmp_path / "b.safetensors")
    with pytest.raises(CorruptCheckpointError, match="stored twice"):
        open_checkpoint(tmp_path)


def test_misaligned_offsets_still_read(tmp_path: Path) -> None:
    """Old writers did not pad headers; data may start at an odd offset."""
    payload = torch.arange(6, dtype=torch.float32)
    hdr = {"w": {"dtype": "F32", "shape": [6], "data_offsets": [1, 25]}}
    p = raw_safetensors(tmp_path / "odd.safetensors", hdr, b"\0" + _bits(payload))
    with open_checkpoint(p) as ck:
        assert torch.equal(ck.read("w"), payload)


def test_file_truncated_after_open_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(1000), "b": torch.ones(1000)}, p)
    ck = open_checkpoint(p)
    ck.read("a")  # the file is now memory-mapped: a read past its new end would be SIGBUS
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size - 2000)
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        ck.read(max(ck.tensors.values(), key=lambda t: t.end).name)
    ck.close()


def test_release_and_prefetch_are_harmless(tmp_path: Path) -> None:
    tensors = random_state(llama_shapes(layers=1))
    write_checkpoint(tmp_path / "ck", tensors)
    with open_checkpoint(tmp_path / "ck") as ck:
        for name in ck:
            ck.prefetch(name)
            x = ck.read(name).clone()
            ck.release(name)
            assert torch.equal(ck.read(name), x)  # pages come back after release


def test_pickle_layouts_dispatch(tmp_path: Path) -> None:
    tensors = random_state(llama_shapes(layers=1))
    single = tmp_path / "single"
    single.mkdir()
    torch.save(tensors, single / "pytorch_model.bin")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    names = sorted(tensors)
    torch.save({n: tensors[n] for n in names[:4]}, sharded / "pytorch_model-00001-of-00002.bin")
    torch.save({n: tensors[n] for n in names[4:]}, sharded / "pytorch_model-00002-of-00002.bin")
    wm = {n: f"pytorch_model-0000{1 if i < 4 else 2}-of-00002.bin" for i, n in enumerate(names)}
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": wm}))
    for spec in (single, single / "pytorch_model.bin", sharded):
        with open_checkpoint(spec) as ck:
            assert ck.kind == "torch"
            assert set(ck.tensors) == set(tensors)
            for n, ref in tensors.items():
                assert torch.equal(ck.read(n), ref)


def test_bin_index_shard_outside_folder_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    root.mkdir()
    torch.save({"w": torch.ones(2)}, tmp_path / "evil.bin")
    (root / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"w": "../evil.bin"}}))
    with pytest.raises(UnsafeCheckpointError):
        open_checkpoint(root)


def test_safetensors_preferred_over_bin(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, {"w": torch.ones(3)})
    torch.save({"w": torch.zeros(3)}, tmp_path / "pytorch_model.bin")
    with open_checkpoint(tmp_path) as ck:
        assert ck.kind == "safetensors"


def test_verl_step_folder_finds_actor(tmp_path: Path) -> None:
    actor = tmp_path / "global_step_10" / "actor"
    actor.mkdir(parents=True)
    tensors = {"model.norm.weight": torch.ones(4), "model.embed_tokens.weight": torch.randn(6, 4)}
    for r in range(2):
        torch.save(tensors, actor / f"model_world_size_2_rank_{r}.pt")
    with open_checkpoint(tmp_path / "global_step_10") as ck:
        assert ck.kind == "verl-fsdp"
        assert torch.equal(ck.read("model.embed_tokens.weight"), tensors["model.embed_tokens.weight"])


def test_hf_cache_snapshot_symlinks_are_allowed(tmp_path: Path) -> None:
    """snapshot_download layout: snapshots/<sha>/* are symlinks into ../../blobs."""
    repo = tmp_path / "models--org--name"
    blobs, snap = repo / "blobs", repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    tensors = random_state(llama_shapes(layers=1))
    names = sorted(tensors)
    wm = {}
    for i, part in enumerate((names[:4], names[4:])):
        save_file({n: tensors[n] for n in part}, blobs / f"blob{i}")
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        os.symlink(Path("../../blobs") / f"blob{i}", snap / fname)
        wm.update(dict.fromkeys(part, fname))
    _index(snap, wm)
    with open_checkpoint(snap) as ck:
        assert set(ck.tensors) == set(tensors)
    # ... but a link to anything else outside stays refused
    save_file({"w": torch.ones(2)}, repo / "elsewhere.safetensors")
    os.remove(snap / "model-00001-of-00002.safetensors")
    os.symlink(repo / "elsewhere.safetensors", snap / "model-00001-of-00002.safetensors")
    with pytest.raises(UnsafeCheckpointError):
        open_checkpoint(snap)
