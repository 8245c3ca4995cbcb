"""verl FSDP sharded training checkpoints, assembled one tensor at a time.

Rank files are pickles: they are read with the safe loader of
:mod:`deltascope.checkpoint.torchfile` (``weights_only=True`` plus an explicit allowlist of
the DTensor classes, ``mmap=True``).

**verl FSDP checkpoint** (:class:`VerlCheckpoint`): the folder verl's
``FSDPCheckpointManager.save_checkpoint`` writes (``verl/utils/checkpoint/
fsdp_checkpoint_manager.py``)::

    global_step_100/actor/
        model_world_size_8_rank_0.pt ... model_world_size_8_rank_7.pt
        optim_world_size_8_rank_*.pt, extra_state_world_size_8_rank_*.pt   (ignored)
        fsdp_config.json      {"FSDP_version": 2, "world_size": 8}        (optional)
        huggingface/config.json, tokenizer files, maybe a full HF model   (optional)

Each rank file is ``torch.save(model.state_dict())`` of that rank: with FSDP1 under
``StateDictType.SHARDED_STATE_DICT`` or with FSDP2 (``fully_shard``) directly. Parameters
are ``DTensor`` objects holding the rank's *local* slice plus its placement on the device
mesh (``Shard(0)`` for FSDP, ``(Replicate(), Shard(0))`` for HSDP on a ``("ddp",
"fsdp")`` mesh); FSDP1 without a device mesh writes ``ShardedTensor`` objects instead,
with explicit shard offsets. Buffers are plain tensors, replicated on every rank. Local
slices follow ``torch.chunk`` along the shard dim: ``ceil(n / world)`` rows per rank, the
last ranks get fewer (possibly zero) rows, and the slices are stored *unpadded*.
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CorruptCheckpointError, DeltascopeWarning, NoWeightsError
from .base import Checkpoint, SourceFile, TensorInfo
from .torchfile import (
    VERL_RANK_FILE_RE,
    _check_plain_tensor,
    _dtype_name,
    _load_json_config,
    _relative,
    _safe_load,
)

__all__ = ["VerlCheckpoint", "find_verl_rank_files", "VERL_RANK_FILE_RE"]


# ----------------------------------------------------------------------------------------
# verl FSDP checkpoints: rank files
# ----------------------------------------------------------------------------------------
def _ranges(numbers: list[int]) -> str:
    if not numbers:
        return "none"
    out: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(out)


def find_verl_rank_files(folder: Path) -> list[Path] | None:
    """The model rank files of a verl FSDP checkpoint folder, in rank order.

    Looks for ``model_world_size_{W}_rank_{R}.pt`` directly in ``folder`` (optimizer and
    extra-state files are ignored).

    Returns:
        ``[rank_0, ..., rank_{W-1}]``, or ``None`` if ``folder`` holds no such file (it
        is not a verl checkpoint).

    Raises:
        CorruptCheckpointError: the files disagree on the world size, or ranks are
            missing, duplicated (``rank_1`` and ``rank_01``) or out of range.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found: dict[int, dict[int, list[Path]]] = {}
    for p in sorted(folder.iterdir()):
        m = VERL_RANK_FILE_RE.match(p.name)
        if m and p.is_file():
            found.setdefault(int(m.group(1)), {}).setdefault(int(m.group(2)), []).append(p)
    if not found:
        return None
    if len(found) > 1:
        parts = "; ".join(
            f"world size {w}: {len(ranks)} file(s), ranks {_ranges(sorted(ranks))}"
            for w, ranks in sorted(found.items())
        )
        raise CorruptCheckpointError(
            f"{folder}: model rank files from different world sizes are mixed ({parts}). A verl "
            "checkpoint folder holds the files of one save: remove the files of the other run(s).",
            path=str(folder),
        )
    ((world, ranks),) = found.items()
    present = sorted(ranks)
    missing = [r for r in range(world) if r not in ranks]
    extra = [r for r in present if r >= world]
    dup = {r: ps for r, ps in ranks.items() if len(ps) > 1}
    if missing or extra or dup or world == 0:
        problems = []
        if missing:
            problems.append(f"missing ranks {_ranges(missing)}")
        if extra:
            problems.append(f"ranks {_ranges(extra)} out of range")
        if dup:
            dups = ", ".join(f"{r} ({', '.join(p.name for p in ps)})" for r, ps in dup.items())
            problems.append(f"duplicated ranks {dups}")
        if world == 0:
            problems.append("world size 0")
        raise CorruptCheckpointError(
            f"{folder}: incomplete verl checkpoint for world size {world}: present ranks "
            f"{_ranges(present)}; {'; '.join(problems)}. Every rank's "
            f"model_world_size_{world}_rank_<R>.pt (R = 0..{world - 1}) is needed to rebuild the "
            "weights: copy the missing files from the training run's output.",
            path=str(folder),
        )
    return [ranks[r][0] for r in range(world)]


# ----------------------------------------------------------------------------------------
# verl: what the unpickler may build
# ----------------------------------------------------------------------------------------
class _Opaque:
    """Inert stand-in for a ``torch.distributed._shard`` class: keeps the pickled state as
    attributes and runs nothing (no process group checks, no registry lookups)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Opaque:
        obj = super().__new__(cls)
        obj._args = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)
        elif (
            isinstance(state, tuple)
            and len(state) == 2
            and (state[0] is None or isinstance(state[0], dict))
            and isinstance(state[1], dict)
        ):
            self.__dict__.update(state[0] or {})
            self.__dict__.update(state[1])
        else:
            self._state = state


class _ShardedTensorStub(torch.Tensor):
    """Stand-in for ``ShardedTensor`` (FSDP1 without a device mesh). The real class's
    ``__setstate__`` requires an initialised process group with the saving run's ranks; this
    one only keeps ``(local_shards, metadata, ...)``. It supports no tensor operation."""

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        raise RuntimeError("a ShardedTensor stand-in supports no operation")

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2:
            raise pickle.UnpicklingError("unexpected ShardedTensor state")
        self._local_shards = state[0]
        self._metadata = state[1]


_SHARD = "torch.distributed._shard"
_OPAQUE_NAMES = [
    f"{_SHARD}.sharded_tensor.shard.Shard",
    f"{_SHARD}.metadata.ShardMetadata",
    f"{_SHARD}.sharded_tensor.metadata.ShardedTensorMetadata",
    f"{_SHARD}.sharded_tensor.metadata.TensorProperties",
    f"{_SHARD}.sharded_tensor.metadata.MEM_FORMAT_ENCODING",
    f"{_SHARD}.sharding_spec.chunk_sharding_spec.ChunkShardingSpec",
    "torch.distributed.remote_device._remote_device",
    f"{_SHARD}.sharded_tensor.api.ShardedTensor.ProcessGroupState",
]
_OPAQUE: dict[str, type[_Opaque]] = {
    n: type(n.rsplit(".", 1)[-1], (_Opaque,), {"__module__": __name__}) for n in _OPAQUE_NAMES
}
_PG_STATE = _OPAQUE[f"{_SHARD}.sharded_tensor.api.ShardedTensor.ProcessGroupState"]


def _restricted_getattr(obj: Any, name: str) -> Any:
    """Stand-in for ``builtins.getattr``, which pickles use to reach nested classes. Only
    ``getattr(ShardedTensor, "ProcessGroupState")`` is allowed."""
    if obj is _ShardedTensorStub and name == "ProcessGroupState":
        return _PG_STATE
    raise pickle.UnpicklingError(f"Unsupported global: GLOBAL builtins.getattr on {obj!r}.{name}")


def _sharded_tensor_allowlist() -> list[Any]:
    out: list[Any] = [(stub, name) for name, stub in _OPAQUE.items()]
    out.append((_ShardedTensorStub, f"{_SHARD}.sharded_tensor.api.ShardedTensor"))
    out.append((_restricted_getattr, "builtins.getattr"))
    return out


def _dtensor_classes() -> dict[str, Any]:
    """The real DTensor classes, or ``{}`` where this torch has no ``torch.distributed``."""
    try:
        if not torch.distributed.is_available():
            return {}
        from torch.distributed.device_mesh import DeviceMesh
        from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
        from torch.distributed.tensor import _dtensor_spec as spec_mod
        from torch.distributed.tensor import placement_types as pt
    except ImportError:
        return {}
    classes: dict[str, Any] = {
        "DTensor": DTensor,
        "DeviceMesh": DeviceMesh,
        "DTensorSpec": spec_mod.DTensorSpec,
        "TensorMeta": spec_mod.TensorMeta,
        "Shard": Shard,
        "Replicate": Replicate,
        "Partial": Partial,
    }
    for optional, module in [("ShardOrderEntry", spec_mod), ("_StridedShard", pt)]:
        if hasattr(module, optional):
            classes[optional] = getattr(module, optional)
    try:
        from torch.distributed import _mesh_layout

        classes["_MeshLayout"] = _mesh_layout._MeshLayout
        classes["_FlatLayout"] = _mesh_layout._FlatLayout
    except (ImportError, AttributeError):
        pass
    return classes


def _dtensor_allowlist(classes: dict[str, Any]) -> list[Any]:
    """The DTensor classes themselves, plus aliases for the module paths they had before
    torch 2.5 (``torch.distributed._tensor.*``), so rank files saved by an older torch
    resolve to the same (safe) classes. Placements deltascope cannot assemble (``Partial``,
    ``_StridedShard``) are allowlisted too, so the error names the tensor and placement."""
    if not classes:
        return []
    out: list[Any] = list(classes.values())
    old = "torch.distributed._tensor"
    aliases = {
        f"{old}.api.DTensor": "DTensor",
        f"{old}.device_mesh.DeviceMesh": "DeviceMesh",
        f"{old}.placement_types.Shard": "Shard",
        f"{old}.placement_types.Replicate": "Replicate",
        f"{old}.placement_types._Partial": "Partial",
        f"{old}.placement_types.Partial": "Partial",
        f"{old}.placement_types.DTensorSpec": "DTensorSpec",
        f"{old}.placement_types.TensorMeta": "TensorMeta",
        f"{old}._dtensor_spec.DTensorSpec": "DTensorSpec",
        f"{old}._dtensor_spec.TensorMeta": "TensorMeta",
    }
    out.extend((classes[cls], name) for name, cls in aliases.items())
    return out


# ----------------------------------------------------------------------------------------
# verl: assembling tensors
# ----------------------------------------------------------------------------------------
@dataclass
class _Block:
    """One rank's piece of a tensor: ``tensor`` goes at ``offsets`` (per dim)."""

    rank: int
    offsets: tuple[int, ...]
    tensor: torch.Tensor

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)


@dataclass
class _RankPiece:
    """What one rank file says about one tensor."""

    kind: str  # "dtensor", "sharded", "plain"
    dtype: torch.dtype
    shape: tuple[int, ...]
    layout: str  # placements / sharding description, must agree across ranks
    blocks: list[_Block] = field(default_factory=list)


@dataclass
class _Assembly:
    name: str
    kind: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    layout: str
    blocks: list[_Block]
    copies: list[_Block]  # plain tensors: every rank's copy, checked equal on read


def _chunk(size: int, parts: int, index: int) -> tuple[int, int]:
    """``(offset, length)`` of chunk ``index`` of ``size`` rows split in ``parts``, as
    ``torch.chunk`` / DTensor ``Shard`` do: ``ceil(size / parts)`` rows each, the last
    chunks shorter or empty."""
    full = -(-size // parts) if parts else 0
    start = full * index
    if start >= size:
        return size, 0
    return start, min(size, start + full) - start


def _mesh_facts(mesh: Any, rank: int) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """``(mesh shape, this rank's coordinate)`` from an unpickled DeviceMesh, reading
    stored attributes first (they exist in every torch version that writes DTensors)."""
    state = getattr(mesh, "__dict__", {})
    mesh_tensor = state.get("mesh")
    if not isinstance(mesh_tensor, torch.Tensor):
        try:
            mesh_tensor = mesh.mesh  # torch >= 2.9 derives it from its layout
        except Exception:
            mesh_tensor = None
    shape: tuple[int, ...] | None = None
    if isinstance(mesh_tensor, torch.Tensor):
        shape = tuple(int(s) for s in mesh_tensor.shape)
    coord = state.get("_coordinate_on_dim")
    if coord is None and isinstance(mesh_tensor, torch.Tensor):
        hits = (mesh_tensor == rank).nonzero()
        coord = tuple(int(c) for c in hits[0].tolist()) if len(hits) else None
    if shape is None:
        raise ValueError("the DeviceMesh stores neither a mesh tensor nor a readable layout")
    return shape, (tuple(int(c) for c in coord) if coord is not None else None)


def _dtensor_piece(value: Any, name: str, rank: int, classes: dict[str, Any]) -> _RankPiece:
    local = value._local_tensor
    spec = value._spec
    placements = tuple(spec.placements)
    shape = tuple(int(s) for s in value.shape)
    mesh_shape, coord = _mesh_facts(spec.mesh, rank)
    layout = f"placements {placements!r} on mesh {mesh_shape}"
    piece = _RankPiece("dtensor", value.dtype, shape, layout)
    if len(placements) != len(mesh_shape):
        raise ValueError(f"{len(placements)} placements for a {len(mesh_shape)}-D mesh")
    sharded_dims: dict[int, int] = {}
    for i, p in enumerate(placements):
        if type(p) is classes["Shard"]:
            d = p.dim % len(shape) if shape else p.dim
            if d in sharded_dims:
                raise _Unsupported(f"tensor dim {d} is sharded over mesh dims {sharded_dims[d]} and {i}")
            sharded_dims[d] = i
        elif type(p) is not classes["Replicate"]:
            raise _Unsupported(
                f"placement {p!r} ({type(p).__name__}) on mesh dim {i}; only Shard(d) and Replicate() "
                "are supported (Partial holds unreduced sums, _StridedShard an interleaved layout)"
            )
    if coord is None:  # this rank holds no part of the tensor
        return piece
    offsets = [0] * len(shape)
    sizes = list(shape)
    for d, i in sharded_dims.items():
        offsets[d], sizes[d] = _chunk(shape[d], mesh_shape[i], coord[i])
    if tuple(local.shape) != tuple(sizes):
        raise ValueError(
            f"rank {rank} (mesh coordinate {coord}) stores a local shard of shape {list(local.shape)}, "
            f"but {layout} of a {list(shape)} tensor gives it {sizes}"
        )
    if local.dtype != value.dtype:
        raise ValueError(f"local shard dtype {local.dtype} differs from the DTensor's {value.dtype}")
    piece.blocks.append(_Block(rank, tuple(offsets), local))
    return piece


def _sharded_tensor_piece(value: Any, name: str, rank: int) -> _RankPiece:
    shape = tuple(int(s) for s in value.shape)
    meta = value._metadata
    size = getattr(meta, "size", None)
    if size is not None and tuple(int(s) for s in size) != shape:
        raise ValueError(f"metadata size {list(size)} differs from the tensor's {list(shape)}")
    shards_meta = getattr(meta, "shards_metadata", None) or []
    layout = "ShardedTensor shards " + str(sorted((tuple(m.shard_offsets), tuple(m.shard_sizes)) for m in shards_meta))
    piece = _RankPiece("sharded", value.dtype, shape, layout)
    for shard in value._local_shards:
        local = shard.tensor
        offsets = tuple(int(o) for o in shard.metadata.shard_offsets)
        sizes = tuple(int(s) for s in shard.metadata.shard_sizes)
        if tuple(local.shape) != sizes or len(offsets) != len(shape):
            raise ValueError(
                f"rank {rank} stores a local shard of shape {list(local.shape)} where its metadata "
                f"says {list(sizes)} at offsets {list(offsets)}"
            )
        if local.dtype != value.dtype:
            raise ValueError(f"local shard dtype {local.dtype} differs from the tensor's {value.dtype}")
        piece.blocks.append(_Block(rank, offsets, local))
    return piece


class _Unsupported(ValueError):
    """A valid layout deltascope does not assemble."""


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    a8 = a.reshape(-1).contiguous().view(torch.uint8)
    b8 = b.reshape(-1).contiguous().view(torch.uint8)
    return torch.equal(a8, b8)


# ----------------------------------------------------------------------------------------
# VerlCheckpoint
# ----------------------------------------------------------------------------------------
class VerlCheckpoint(Checkpoint):
    """A verl FSDP sharded training checkpoint, reassembled one tensor at a time.

    All rank files are loaded at construction with ``torch.load(weights_only=True,
    mmap=True)``, allowing only the classes that describe sharded tensors:

    * DTensor (FSDP2, and FSDP1 with a device mesh, torch's own classes): ``DTensor``,
      ``DTensorSpec``, ``TensorMeta``, ``ShardOrderEntry``, ``DeviceMesh``,
      ``_MeshLayout``, ``_FlatLayout``, ``Shard``, ``Replicate``, ``Partial``,
      ``_StridedShard``. They hold only numbers, strings, tuples and tensors; the only code
      their unpickling runs is ``DeviceMesh.__setstate__``, which looks process groups up
      by name (none are found outside the training job, which is fine: nothing here
      communicates).
    * ShardedTensor (FSDP1 without a device mesh): replaced by inert stand-ins (the real
      ``ShardedTensor.__setstate__`` demands a live process group of the saving job).

    The index (``tensors``) holds each tensor's *global* shape and dtype. :meth:`read`
    places every rank's local shard at its offset in a new tensor (``Shard(d)``: the
    ``torch.chunk`` layout along ``d``, uneven and empty last shards included; replicated
    mesh dims: one copy). Replicated tensors (``Replicate()`` or plain buffers) are returned
    as rank 0's copy without a copy; plain tensors are first checked to be identical on
    every rank. Only the one tensor being read is materialised; the rank files stay mapped.

    Attributes:
        world_size: number of rank files.
        fsdp_config: ``fsdp_config.json`` when present (``FSDP_version``, ``world_size``).
        config: ``huggingface/config.json`` when present (parsed as JSON, never executed).

    Args:
        spec: what the user passed.
        root: the checkpoint folder (e.g. ``global_step_100/actor``).
        files: the rank files in rank order; default: :func:`find_verl_rank_files`.

    Raises:
        NoWeightsError: ``root`` holds no ``model_world_size_*_rank_*.pt`` file.
        CorruptCheckpointError: ranks missing or inconsistent, a truncated file, a tensor
            missing from some ranks, shapes/dtypes/placements that disagree, or an
            unsupported placement (``Partial``, ``_StridedShard``).
        UnsafeCheckpointError: a rank file needs other globals.
    """

    kind = "verl-fsdp"

    def __init__(self, spec: str, root: Path, files: list[Path] | None = None) -> None:
        super().__init__(spec)
        root = Path(root)
        self.root = str(root)
        if files is None:
            found = find_verl_rank_files(root)
            if found is None:
                names = sorted(p.name for p in root.iterdir())[:50] if root.is_dir() else []
                raise NoWeightsError(
                    f"{root}: not a verl FSDP checkpoint: no model_world_size_<W>_rank_<R>.pt file. "
                    "Point at the folder holding them (e.g. global_step_100/actor).",
                    path=str(root),
                    found=names,
                )
            files = found
        files = [Path(p) for p in files]
        self._check_names(files)
        self.world_size = len(files)
        self.fsdp_config: dict[str, Any] | None = self._fsdp_config(root)
        self.config = _load_json_config(root / "huggingface" / "config.json")
        self._classes = _dtensor_classes()
        self._entries: dict[str, _Assembly] = {}
        self._states: list[Mapping[Any, Any]] = []

        allow = _dtensor_allowlist(self._classes) + _sharded_tensor_allowlist()
        pieces: list[dict[str, _RankPiece]] = []
        for rank, path in enumerate(files):
            obj, mmapped = _safe_load(path, extra_globals=allow)
            if not mmapped:
                warnings.warn(
                    f"{path}: legacy (non-zip) torch file, read into memory: all rank files together "
                    "take as much memory as the model.",
                    DeltascopeWarning,
                    stacklevel=2,
                )
            if not isinstance(obj, Mapping):
                raise CorruptCheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict.", path=str(path))
            self._states.append(obj)
            pieces.append(self._rank_pieces(obj, rank, path))
            self.files.append(
                SourceFile(
                    path=_relative(path, root),
                    size=path.stat().st_size,
                    extra={"rank": rank, "world_size": len(files), "format": "zip" if mmapped else "legacy"},
                )
            )
        self._merge(pieces, files)
        rank0 = _relative(files[0], root)
        for name, entry in self._entries.items():
            self.tensors[name] = TensorInfo(
                name=name, dtype=_dtype_name(entry.dtype, name, files[0]), shape=entry.shape, file=rank0
            )

    # -- construction helpers --------------------------------------------------------
    @staticmethod
    def _check_names(files: list[Path]) -> None:
        if not files:
            raise NoWeightsError("no verl rank files were given.")
        expected = [f"model_world_size_{len(files)}_rank_{r}.pt" for r in range(len(files))]
        got = [p.name for p in files]
        if got != expected:
            raise CorruptCheckpointError(
                f"{files[0].parent}: verl rank files must be model_world_size_{len(files)}_rank_0..."
                f"{len(files) - 1}.pt in rank order; got {', '.join(got)}.",
                path=str(files[0].parent),
            )

    def _fsdp_config(self, root: Path) -> dict[str, Any] | None:
        cfg = _load_json_config(root / "fsdp_config.json")
        saved = cfg.get("world_size") if cfg is not None else None
        if isinstance(saved, int) and saved != self.world_size:
            raise CorruptCheckpointError(
                f"{root}: fsdp_config.json says world_size {saved} but the folder holds "
                f"{self.world_size} model rank files: the folder mixes two saves.",
                path=str(root / "fsdp_config.json"),
            )
        return cfg

    def _rank_pieces(self, state: Mapping[Any, Any], rank: int, path: Path) -> dict[str, _RankPiece]:
        out: dict[str, _RankPiece] = {}
        dtensor = self._classes.get("DTensor")
        for name, value in state.items():
            if not isinstance(name, str) or not isinstance(value, torch.Tensor):
                continue
            try:
                if dtensor is not None and isinstance(value, dtensor):
                    piece = _dtensor_piece(value, name, rank, self._classes)
                elif isinstance(value, _ShardedTensorStub) or hasattr(value, "_local_shards"):
                    piece = _sharded_tensor_piece(value, name, rank)
                else:
                    _check_plain_tensor(value, name, path)
                    shape = tuple(value.shape)
                    piece = _RankPiece("plain", value.dtype, shape, "plain tensor")
                    piece.blocks.append(_Block(rank, (0,) * len(shape), value))
            except _Unsupported as e:
                raise CorruptCheckpointError(
                    f"{path}: tensor {name!r} uses a sharding deltascope cannot reassemble: {e}. "
                    "Merge the checkpoint with verl's model merger (python -m verl.model_merger merge "
                    "--backend fsdp ...) and compare the merged model.",
                    path=str(path),
                    tensor=name,
                ) from e
            except CorruptCheckpointError:
                raise
            except (ValueError, AttributeError, TypeError, IndexError, RuntimeError) as e:
                raise CorruptCheckpointError(
                    f"{path}: tensor {name!r} has an inconsistent or unreadable sharded layout: {e}.",
                    path=str(path),
                    tensor=name,
                ) from e
            out[name] = piece
        return out

    def _merge(self, pieces: list[dict[str, _RankPiece]], files: list[Path]) -> None:
        folder = str(files[0].parent)
        names = list(pieces[0])
        seen = set(names)
        for p in pieces[1:]:
            names.extend(n for n in p if n not in seen)
            seen.update(p)
        for name in names:
            missing = [r for r, p in enumerate(pieces) if name not in p]
            if missing:
                raise CorruptCheckpointError(
                    f"{folder}: tensor {name!r} is missing from rank file(s) {_ranges(missing)} but present "
                    "in the others: the rank files come from different saves or models.",
                    path=str(files[missing[0]]),
                    tensor=name,
                )
            ranked = [p[name] for p in pieces]
            first = ranked[0]
            for r, piece in enumerate(ranked[1:], start=1):
                for what, a, b in [
                    ("kind", first.kind, piece.kind),
                    ("dtype", first.dtype, piece.dtype),
                    ("global shape", list(first.shape), list(piece.shape)),
                    ("layout", first.layout, piece.layout),
                ]:
                    if a != b and not (what == "global shape" and first.kind == "plain"):
                        raise CorruptCheckpointError(
                            f"{folder}: tensor {name!r} has {what} {a} in rank 0 but {b} in rank {r}: the "
                            "rank files do not belong to one save.",
                            path=str(files[r]),
                            tensor=name,
                        )
                if first.kind == "plain" and first.shape != piece.shape:
                    raise CorruptCheckpointError(
                        f"{folder}: tensor {name!r} is a plain (unsharded) tensor of shape "
                        f"{list(first.shape)} in rank 0 but {list(piece.shape)} in rank {r}; deltascope "
                        "cannot tell how it was split. "
                        "Merge the checkpoint with verl's model merger and compare the merged model.",
                        path=str(files[r]),
                        tensor=name,
                    )
            blocks: dict[tuple[tuple[int, ...], tuple[int, ...]], _Block] = {}
            for piece in ranked:
                for b in piece.blocks:
                    if b.tensor.numel() or not b.sizes:
                        blocks.setdefault((b.offsets, b.sizes), b)
            covered = sum(math.prod(k[1]) for k in blocks)
            total = math.prod(first.shape)
            if covered != total:
                raise CorruptCheckpointError(
                    f"{folder}: tensor {name!r} ({list(first.shape)}, {first.layout}) is covered by "
                    f"{covered} elements across the rank files instead of {total}: shards are missing, "
                    "overlap or do not match the placements.",
                    path=folder,
                    tensor=name,
                )
            copies = [b for piece in ranked for b in piece.blocks] if first.kind == "plain" else []
            self._entries[name] = _Assembly(
                name, first.kind, first.dtype, first.shape, first.layout, list(blocks.values()), copies
            )

    # -- reading ---------------------------------------------------------------------
    def _read(self, info: TensorInfo) -> torch.Tensor:
        entry = self._entries[info.name]
        if entry.kind == "plain":
            ref = entry.copies[0]
            for other in entry.copies[1:]:
                if not _bitwise_equal(ref.tensor, other.tensor):
                    raise CorruptCheckpointError(
                        f"{self.root}: tensor {info.name!r} is a plain (unsharded) tensor whose copies "
                        f"differ between rank {ref.rank} and rank {other.rank}; deltascope expects "
                        "unsharded tensors (buffers) to be replicated and cannot tell how this one was "
                        "split.",
                        path=self.root,
                        tensor=info.name,
                    )
            return ref.tensor.detach()
        if len(entry.blocks) == 1 and entry.blocks[0].sizes == entry.shape:
            return entry.blocks[0].tensor.detach()
        out = torch.empty(entry.shape, dtype=entry.dtype)
        for b in entry.blocks:
            index = tuple(slice(o, o + s) for o, s in zip(b.offsets, b.sizes, strict=True))
            out[index].copy_(b.tensor)
        return out

    def close(self) -> None:
        self._entries.clear()
        self._states.clear()
