"""Tests for deltascope.checkpoint.torchfile: PyTorch pickles and verl FSDP checkpoints.

Every fixture is built here, in tmp_path. The verl fixtures are real FSDP checkpoints: a
helper script spawns 2 processes with a gloo process group on 127.0.0.1, shards a tiny
model with FSDP2 (``fully_shard``), HSDP, FSDP1 with a device mesh (DTensor) and FSDP1
without one (ShardedTensor), and saves each rank's ``state_dict()`` the way verl's
``FSDPCheckpointManager`` does.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from deltascope.checkpoint.torchfile import TorchCheckpoint
from deltascope.checkpoint.verl import VerlCheckpoint, find_verl_rank_files
from deltascope.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    NoWeightsError,
    UnsafeCheckpointError,
)


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (NaN-safe)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a8 = a.detach().reshape(-1).contiguous().view(torch.uint8)
    b8 = b.detach().reshape(-1).contiguous().view(torch.uint8)
    return torch.equal(a8, b8)


def sample_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, generator=g)
    w[0, 0] = float("nan")
    return {
        "f32": w,
        "bf16": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "f16": torch.randn(7, generator=g).to(torch.float16),
        "i64": torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "transposed": torch.randn(4, 3, generator=g).t(),
        "param": torch.nn.Parameter(torch.ones(2, 2)),
    }


def assert_matches(ckpt, ref: dict[str, torch.Tensor]) -> None:
    assert set(ckpt.tensors) == set(ref)
    for name, want in ref.items():
        got = ckpt.read(name)
        assert bits_equal(got, want), name
        assert ckpt.tensors[name].shape == tuple(want.shape)


# ----------------------------------------------------------------------------------------
# TorchCheckpoint
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("zipfmt", [True, False], ids=["zip", "legacy"])
def test_bin_round_trip(tmp_path: Path, zipfmt: bool) -> None:
    ref = sample_state_dict()
    path = tmp_path / "pytorch_model.bin"
    torch.save({**ref, "step": 7, "note": "hello"}, path, _use_new_zipfile_serialization=zipfmt)
    with TorchCheckpoint(str(path), tmp_path, [path]) as ck:
        assert ck.kind == "torch"
        assert_matches(ck, ref)
        info = ck.tensors["bf16"]
        assert (info.dtype, info.file, info.start, info.end) == ("BF16", "pytorch_model.bin", -1, -1)
        assert {n: ck.tensors[n].dtype for n in ("f16", "i64", "bool", "f32")} == {
            "f16": "F16",
            "i64": "I64",
            "bool": "BOOL",
            "f32": "F32",
        }
        assert ck.files[0].size == path.stat().st_size
        assert ck.files[0].extra["format"] == ("zip" if zipfmt else "legacy")
        assert ck.files[0].extra["skipped"] == 2
        assert not ck.read("param").requires_grad
        # release then read again still works (legacy files are reloaded on demand)
        ck.release("f32")
        assert bits_equal(ck.read("f32"), ref["f32"])


def test_sharded_bin(tmp_path: Path) -> None:
    ref = sample_state_dict()
    names = list(ref)
    a, b = tmp_path / "pytorch_model-00001-of-00002.bin", tmp_path / "pytorch_model-00002-of-00002.bin"
    torch.save({n: ref[n] for n in names[:3]}, a)
    torch.save({n: ref[n] for n in names[3:]}, b, _use_new_zipfile_serialization=False)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "tiny"}))
    ck = TorchCheckpoint(str(tmp_path), tmp_path, [a, b])
    assert_matches(ck, ref)
    assert ck.tensors[names[0]].file == a.name
    assert ck.tensors[names[-1]].file == b.name
    assert [f.path for f in ck.files] == [a.name, b.name]
    assert ck.config == {"model_type": "tiny"}


def test_duplicate_tensor_across_shards(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    torch.save({"x": torch.zeros(2), "y": torch.ones(1)}, a)
    torch.save({"x": torch.zeros(2)}, b)
    with pytest.raises(CorruptCheckpointError, match=r"'x' is also in a\.bin") as ei:
        TorchCheckpoint(str(tmp_path), tmp_path, [a, b])
    assert ei.value.tensor == "x"


@pytest.mark.parametrize(
    "wrap, used",
    [
        (lambda sd: {"state_dict": sd, "epoch": 3, "global_step": 10}, "state_dict"),
        (lambda sd: {"model": sd, "optimizer": {"state": {}}, "best_loss": torch.tensor(0.1)}, "model"),
        (lambda sd: {"module": sd, "buffer_names": ["a"]}, "module"),
        (lambda sd: {"model": {"module": sd}}, "model.module"),
    ],
    ids=["lightning", "model", "deepspeed", "nested"],
)
def test_wrappers(tmp_path: Path, wrap, used: str) -> None:
    ref = {"w": torch.randn(3, 3), "b": torch.zeros(3, dtype=torch.bfloat16)}
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(ref), path)
    ck = TorchCheckpoint(str(path), tmp_path, [path])
    assert_matches(ck, ref)
    assert ck.files[0].extra["wrapper"] == used


def test_no_tensors(tmp_path: Path) -> None:
    path = tmp_path / "optim.pt"
    torch.save({"state": {0: {"step": 1}}, "param_groups": [{"lr": 0.1}]}, path)
    with pytest.raises(CorruptCheckpointError, match=r"holds no tensors.*'param_groups'"):
        TorchCheckpoint(str(path), tmp_path, [path])
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CorruptCheckpointError, match="holds a list, not a state dict"):
        TorchCheckpoint(str(path), tmp_path, [path])


class _SystemPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _ExecPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


class _EvilOrderedDict(collections.OrderedDict):
    marker = ""

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


class _Custom:
    def __init__(self) -> None:
        self.value = 1


def _evil_objects(marker: Path) -> dict[str, object]:
    od = _EvilOrderedDict(w=torch.ones(2))
    od.marker = str(marker)
    return {
        "os.system": {"w": torch.ones(2), "x": _SystemPayload(marker)},
        "exec": {"w": torch.ones(2), "x": _ExecPayload(marker)},
        "OrderedDict subclass": od,
        "custom class": {"w": torch.ones(2), "x": _Custom()},
    }


@pytest.mark.parametrize("zipfmt", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("kind", ["os.system", "exec", "OrderedDict subclass", "custom class"])
def test_unsafe_pickle_is_refused(tmp_path: Path, kind: str, zipfmt: bool) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.bin"
    torch.save(_evil_objects(marker)[kind], path, _use_new_zipfile_serialization=zipfmt)
    with pytest.raises(UnsafeCheckpointError) as ei:
        TorchCheckpoint(str(path), tmp_path, [path])
    msg = str(ei.value)
    assert "needs unsafe unpickling" in msg
    assert "refuses to run code" in msg
    assert "safetensors.torch.save_file" in msg and "weights_only=False" in msg
    assert ei.value.path == str(path)
    assert ei.value.__cause__ is not None
    assert not marker.exists(), "the pickle's payload ran"


def test_unsafe_message_names_the_global(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"x": _Custom()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"_Custom"):
        TorchCheckpoint(str(path), tmp_path, [path])


@pytest.mark.parametrize("zipfmt", [True, False], ids=["zip", "legacy"])
def test_truncated_file(tmp_path: Path, zipfmt: bool) -> None:
    path = tmp_path / "model.pt"
    torch.save({"w": torch.randn(256, 64)}, path, _use_new_zipfile_serialization=zipfmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupt") as ei:
        TorchCheckpoint(str(path), tmp_path, [path])
    assert ei.value.path == str(path)
    assert ei.value.__cause__ is not None


def test_empty_and_garbage_files(tmp_path: Path) -> None:
    empty, garbage = tmp_path / "empty.pt", tmp_path / "garbage.pt"
    empty.write_bytes(b"")
    garbage.write_bytes(bytes(range(256)) * 4)
    for path in (empty, garbage):
        with pytest.raises(CorruptCheckpointError):
            TorchCheckpoint(str(path), tmp_path, [path])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError):
        TorchCheckpoint("x", tmp_path, [tmp_path / "nope.bin"])


# ----------------------------------------------------------------------------------------
# verl: rank files (no process group needed)
# ----------------------------------------------------------------------------------------
def _touch_ranks(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        torch.save({"w": torch.zeros(1)}, folder / n)


def test_find_rank_files(tmp_path: Path) -> None:
    assert find_verl_rank_files(tmp_path) is None
    names = [f"model_world_size_3_rank_{r}.pt" for r in (2, 0, 1)]
    _touch_ranks(tmp_path, [*names, "optim_world_size_3_rank_0.pt", "extra_state_world_size_3_rank_0.pt"])
    got = find_verl_rank_files(tmp_path)
    assert [p.name for p in got] == sorted(names)


def test_missing_rank(tmp_path: Path) -> None:
    _touch_ranks(tmp_path, ["model_world_size_4_rank_0.pt", "model_world_size_4_rank_2.pt"])
    with pytest.raises(CorruptCheckpointError, match=r"present ranks 0, 2; missing ranks 1, 3"):
        find_verl_rank_files(tmp_path)
    with pytest.raises(CorruptCheckpointError, match="missing ranks"):
        VerlCheckpoint(str(tmp_path), tmp_path)


def test_mismatched_world_size(tmp_path: Path) -> None:
    _touch_ranks(
        tmp_path,
        ["model_world_size_2_rank_0.pt", "model_world_size_2_rank_1.pt", "model_world_size_3_rank_0.pt"],
    )
    with pytest.raises(CorruptCheckpointError, match=r"different world sizes.*world size 2.*world size 3"):
        find_verl_rank_files(tmp_path)


def test_duplicated_rank(tmp_path: Path) -> None:
    _touch_ranks(tmp_path, ["model_world_size_2_rank_0.pt", "model_world_size_2_rank_1.pt"])
    _touch_ranks(tmp_path, ["model_world_size_2_rank_01.pt"])
    with pytest.raises(CorruptCheckpointError, match="duplicated ranks 1"):
        find_verl_rank_files(tmp_path)


def test_not_a_verl_folder(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(NoWeightsError) as ei:
        VerlCheckpoint(str(tmp_path), tmp_path)
    assert ei.value.found == ["model.safetensors"]


def _save_ranks(folder: Path, dicts: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for r, d in enumerate(dicts):
        torch.save(d, folder / f"model_world_size_{len(dicts)}_rank_{r}.pt")


def test_plain_replicated_rank_files_and_config(tmp_path: Path) -> None:
    buf = torch.arange(5)
    _save_ranks(tmp_path, [{"buf": buf, "step": 3}, {"buf": buf.clone(), "step": 3}])
    (tmp_path / "huggingface").mkdir()
    (tmp_path / "huggingface" / "config.json").write_text(json.dumps({"architectures": ["X"]}))
    (tmp_path / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 2}))
    ck = VerlCheckpoint(str(tmp_path), tmp_path)
    assert ck.kind == "verl-fsdp"
    assert ck.config == {"architectures": ["X"]}
    assert ck.fsdp_config == {"FSDP_version": 2, "world_size": 2}
    assert ck.world_size == 2
    assert [f.extra["rank"] for f in ck.files] == [0, 1]
    assert ck.tensors["buf"].file == "model_world_size_2_rank_0.pt"
    assert bits_equal(ck.read("buf"), buf)


def test_fsdp_config_world_size_mismatch(tmp_path: Path) -> None:
    _save_ranks(tmp_path, [{"b": torch.ones(1)}, {"b": torch.ones(1)}])
    (tmp_path / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 4}))
    with pytest.raises(CorruptCheckpointError, match="world_size 4"):
        VerlCheckpoint(str(tmp_path), tmp_path)


def test_plain_copies_that_differ(tmp_path: Path) -> None:
    _save_ranks(tmp_path, [{"b": torch.zeros(3)}, {"b": torch.ones(3)}])
    ck = VerlCheckpoint(str(tmp_path), tmp_path)
    with pytest.raises(CorruptCheckpointError, match="copies differ between rank 0 and rank 1") as ei:
        ck.read("b")
    assert ei.value.tensor == "b"


def test_plain_shapes_that_differ(tmp_path: Path) -> None:
    _save_ranks(tmp_path, [{"b": torch.zeros(3)}, {"b": torch.zeros(2)}])
    with pytest.raises(CorruptCheckpointError, match=r"'b' is a plain .* shape \[3\] in rank 0 but \[2\]"):
        VerlCheckpoint(str(tmp_path), tmp_path)


def test_tensor_missing_from_a_rank(tmp_path: Path) -> None:
    _save_ranks(tmp_path, [{"a": torch.zeros(1), "b": torch.zeros(1)}, {"a": torch.zeros(1)}])
    with pytest.raises(CorruptCheckpointError, match="'b' is missing from rank file\\(s\\) 1"):
        VerlCheckpoint(str(tmp_path), tmp_path)


def test_unsafe_rank_file(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    _save_ranks(tmp_path, [{"a": torch.zeros(1)}, {"a": torch.zeros(1), "x": _SystemPayload(marker)}])
    with pytest.raises(UnsafeCheckpointError, match="needs unsafe unpickling"):
        VerlCheckpoint(str(tmp_path), tmp_path)
    assert not marker.exists()


def test_truncated_rank_file(tmp_path: Path) -> None:
    _save_ranks(tmp_path, [{"a": torch.zeros(64)}, {"a": torch.zeros(64)}])
    p = tmp_path / "model_world_size_2_rank_1.pt"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(CorruptCheckpointError, match=r"rank_1\.pt"):
        VerlCheckpoint(str(tmp_path), tmp_path)


# ----------------------------------------------------------------------------------------
# verl: real FSDP checkpoints from 2 gloo processes
# ----------------------------------------------------------------------------------------
def _gloo_available() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_gloo_available()


needs_gloo = pytest.mark.skipif(
    not _gloo_available(),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)

WORLD = 2

_GENERATOR = textwrap.dedent(
    r'''
    """Writes verl-style FSDP checkpoints of a tiny model with 2 gloo processes."""
    import os
    import socket
    import sys

    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    import torch.nn as nn


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(7, 4)                                   # 7 rows: 4 + 3
            self.l1 = nn.Linear(4, 5)                                       # 5 rows: 3 + 2
            self.l2 = nn.Linear(5, 3, bias=False).to(torch.bfloat16)
            self.norm = nn.LayerNorm(3).to(torch.float16)                   # 3 rows: 2 + 1
            self.register_buffer("steps", torch.arange(3, dtype=torch.int64))
            self.register_buffer("mask", torch.tensor([True, False, True]))


    def model():
        torch.manual_seed(0)
        return Tiny()


    def work(rank, world, port, out):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import ShardedStateDictConfig, StateDictType, fully_shard
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy
        from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
        from torch.distributed.tensor.placement_types import _StridedShard

        def save(tag, sd):
            os.makedirs(os.path.join(out, tag), exist_ok=True)
            torch.save(sd, os.path.join(out, tag, f"model_world_size_{world}_rank_{rank}.pt"))

        if rank == 0:
            torch.save(model().state_dict(), os.path.join(out, "reference.pt"))
        # FSDP2 on a 1-D ("fsdp",) mesh, and HSDP on a 2-D ("ddp", "fsdp") mesh.
        for tag, shape, names in [("fsdp2", (world,), ("fsdp",)), ("hsdp", (world, 1), ("ddp", "fsdp"))]:
            m = model()
            mesh = init_device_mesh("cpu", shape, mesh_dim_names=names)
            for sub in (m.emb, m.l1, m.l2, m.norm):
                fully_shard(sub, mesh=mesh)
            fully_shard(m, mesh=mesh)
            save(tag, m.state_dict())
        # FSDP1 SHARDED_STATE_DICT: DTensor with a device mesh, ShardedTensor without.
        policy = ModuleWrapPolicy({nn.Linear, nn.Embedding, nn.LayerNorm})
        variants = [("fsdp1", {"device_mesh": init_device_mesh("cpu", (world,))}), ("sharded_tensor", {})]
        for tag, kw in variants:
            m = FSDP(model(), auto_wrap_policy=policy, device_id=torch.device("cpu"),
                     use_orig_params=True, **kw)
            with FSDP.state_dict_type(m, StateDictType.SHARDED_STATE_DICT, ShardedStateDictConfig()):
                save(tag, m.state_dict())
        # Hand-built DTensors: Shard(1) uneven, Replicate, and placements deltascope refuses.
        mesh = init_device_mesh("cpu", (world,))
        g = torch.Generator().manual_seed(1)
        full = {"col": torch.randn(3, 5, generator=g).to(torch.bfloat16),
                "rep": torch.randn(2, 2, generator=g)}
        if rank == 0:
            torch.save(full, os.path.join(out, "manual_reference.pt"))
        col = full["col"].chunk(world, dim=1)[rank].clone()
        save("manual", {
            "col": DTensor.from_local(col, mesh, [Shard(1)], run_check=False, shape=(3, 5), stride=(5, 1)),
            "rep": DTensor.from_local(full["rep"].clone(), mesh, [Replicate()], run_check=False),
        })
        for tag, placement in [("partial", Partial()), ("strided", _StridedShard(0, split_factor=2))]:
            local = torch.ones(2, 2)
            shape = (2, 2) if tag == "partial" else (4, 2)
            save(tag, {"bad": DTensor.from_local(local, mesh, [placement], run_check=False,
                                                 shape=shape, stride=(2, 1))})
        dist.barrier()
        dist.destroy_process_group()


    if __name__ == "__main__":
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        mp.spawn(work, args=(int(sys.argv[2]), port, sys.argv[1]), nprocs=int(sys.argv[2]))
    '''
)


@pytest.fixture(scope="module")
def fsdp_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folders fsdp2/, hsdp/, fsdp1/, sharded_tensor/, manual/, partial/, strided/ and the
    reference state dicts, written by 2 real gloo processes."""
    out = tmp_path_factory.mktemp("fsdp")
    script = out / "make_fsdp_checkpoints.py"
    script.write_text(_GENERATOR)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(script), str(out), str(WORLD)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    if proc.returncode != 0:
        pytest.fail(f"could not create FSDP checkpoints:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return out


@needs_gloo
@pytest.mark.parametrize("tag", ["fsdp2", "hsdp", "fsdp1", "sharded_tensor"])
def test_verl_fsdp_reassembles_exactly(fsdp_checkpoints: Path, tag: str) -> None:
    ref = torch.load(fsdp_checkpoints / "reference.pt", weights_only=True)
    folder = fsdp_checkpoints / tag
    with VerlCheckpoint(str(folder), folder) as ck:
        assert_matches(ck, ref)
        assert ck.tensors["emb.weight"].shape == (7, 4)
        assert ck.tensors["l2.weight"].dtype == "BF16"
        assert ck.tensors["norm.weight"].dtype == "F16"
        assert ck.tensors["steps"].dtype == "I64"
        assert ck.tensors["mask"].dtype == "BOOL"
        assert ck.nbytes == sum(t.numel() * t.element_size() for t in ref.values())


@needs_gloo
def test_verl_shard_dim1_and_replicate(fsdp_checkpoints: Path) -> None:
    ref = torch.load(fsdp_checkpoints / "manual_reference.pt", weights_only=True)
    folder = fsdp_checkpoints / "manual"
    assert_matches(VerlCheckpoint(str(folder), folder), ref)


@needs_gloo
@pytest.mark.parametrize("tag, placement", [("partial", "Partial"), ("strided", "_StridedShard")])
def test_verl_unsupported_placement(fsdp_checkpoints: Path, tag: str, placement: str) -> None:
    folder = fsdp_checkpoints / tag
    with pytest.raises(CorruptCheckpointError, match=f"'bad' uses a sharding .*{placement}") as ei:
        VerlCheckpoint(str(folder), folder)
    assert ei.value.tensor == "bad"


@needs_gloo
def test_verl_inconsistent_ranks(fsdp_checkpoints: Path, tmp_path: Path) -> None:
    # rank 0 from an FSDP run, rank 1 from an HSDP run: the placements disagree.
    shutil.copy(fsdp_checkpoints / "fsdp2" / "model_world_size_2_rank_0.pt", tmp_path)
    shutil.copy(fsdp_checkpoints / "hsdp" / "model_world_size_2_rank_1.pt", tmp_path)
    with pytest.raises(CorruptCheckpointError, match=r"has layout .* in rank 0 but .* in rank 1"):
        VerlCheckpoint(str(tmp_path), tmp_path)
    # both ranks claim to be rank 0 of the mesh: the shards cover the wrong elements.
    dup = tmp_path / "dup"
    dup.mkdir()
    src = fsdp_checkpoints / "fsdp2" / "model_world_size_2_rank_0.pt"
    shutil.copy(src, dup / "model_world_size_2_rank_0.pt")
    shutil.copy(src, dup / "model_world_size_2_rank_1.pt")
    with pytest.raises(CorruptCheckpointError, match="covered by"):
        VerlCheckpoint(str(dup), dup)


@needs_gloo
def test_verl_leaves_global_allowlist_alone(fsdp_checkpoints: Path) -> None:
    import torch.distributed.tensor  # registers torch's own DTensor globals, process-wide

    before = set(torch.serialization.get_safe_globals())
    folder = fsdp_checkpoints / "sharded_tensor"
    VerlCheckpoint(str(folder), folder)
    folder = fsdp_checkpoints / "fsdp2"
    VerlCheckpoint(str(folder), folder)
    assert set(torch.serialization.get_safe_globals()) == before


@needs_gloo
def test_single_rank_file_as_plain_checkpoint(fsdp_checkpoints: Path) -> None:
    for tag in ("fsdp2", "sharded_tensor"):
        path = fsdp_checkpoints / tag / "model_world_size_2_rank_0.pt"
        with pytest.raises((CorruptCheckpointError, UnsafeCheckpointError), match="verl checkpoint"):
            TorchCheckpoint(str(path), path.parent, [path])


def test_legacy_shards_held_one_at_a_time(tmp_path: Path) -> None:
    files = []
    for i in range(3):
        files.append(tmp_path / f"shard{i}.bin")
        torch.save({f"w{i}": torch.full((4,), float(i))}, files[-1], _use_new_zipfile_serialization=False)
    ck = TorchCheckpoint(str(tmp_path), tmp_path, files)
    for i in (0, 2, 1, 0):
        assert bits_equal(ck.read(f"w{i}"), torch.full((4,), float(i)))
        assert list(ck._cache) == [f"shard{i}.bin"]
