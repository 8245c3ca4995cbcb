"""Local checkpoints: safetensors files and folders, and the dispatch to pickle sources.

Accepted layouts (first match wins)::

    model.safetensors                       a single file
    folder/  *.safetensors.index.json       sharded, the index's weight_map names the shards
    folder/  model.safetensors              single file in a folder
    folder/  a.safetensors b.safetensors    several files, tensor names unique across them
    folder/  model_world_size_W_rank_R.pt   verl FSDP shards (also folder/actor/...)
    folder/  pytorch_model.bin[.index.json] PyTorch pickles, read with weights_only=True

Tensor bytes are read through a copy-on-write memory map: zero-copy views, and
:meth:`SafetensorsCheckpoint.release` drops the pages of a finished tensor so resident
memory stays bounded by the tensors in flight.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from ..errors import CheckpointNotFoundError, CorruptCheckpointError, NoWeightsError, UnsafeCheckpointError
from .base import Checkpoint, SourceFile, TensorInfo
from .safetensors_format import (
    SafetensorsHeader,
    assemble_tensors,
    parse_header,
    parse_weight_map,
    read_header_length,
)

__all__ = ["SafetensorsCheckpoint", "open_local", "read_safetensors_header", "safe_child"]

_PAGE = mmap.PAGESIZE
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


def read_safetensors_header(path: Path, *, file: str | None = None) -> SafetensorsHeader:
    """Read and validate the header of one local safetensors file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        n = read_header_length(prefix, file_size=size, source=str(path))
        raw = f.read(n)
    return parse_header(raw, header_len=n, file_size=size, file=file or path.name, source=str(path))


def safe_child(root: Path, name: str, *, index: Path) -> Path:
    """Resolve shard ``name`` from an index inside ``root``; refuse anything that leaves it.

    Absolute paths, ``..`` components and symlinks pointing outside the (resolved) root
    are refused with :class:`UnsafeCheckpointError`; the one exception is the Hugging
    Face cache, whose ``snapshots/<sha>/`` files link into the repository's ``blobs/``.
    """
    if not isinstance(name, str) or not name or "\x00" in name:
        raise CorruptCheckpointError(f"Index {str(index)!r} names an invalid shard {name!r}.", path=str(index))
    candidate = Path(name)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise UnsafeCheckpointError(
            f"Index {str(index)!r} names shard {name!r}, a path outside the checkpoint folder. "
            "deltascope only reads shards inside the folder of their index; fix the weight_map.",
            path=str(index),
        )
    real_root = root.resolve()
    resolved = (root / candidate).resolve()
    if resolved != real_root and real_root not in resolved.parents and not _in_hf_cache_blobs(real_root, resolved):
        raise UnsafeCheckpointError(
            f"Index {str(index)!r}: shard {name!r} resolves to {str(resolved)!r}, outside the checkpoint "
            f"folder {str(real_root)!r} (a symlink?). Copy the shard into the folder instead.",
            path=str(index),
        )
    return resolved


def _in_hf_cache_blobs(root: Path, resolved: Path) -> bool:
    """True for the Hugging Face cache layout, where ``snapshots/<sha>/<file>`` is a
    symlink into the same repository's ``blobs/`` folder."""
    if root.parent.name != "snapshots":
        return False
    blobs = root.parent.parent / "blobs"
    return resolved.parent == blobs


class SafetensorsCheckpoint(Checkpoint):
    """One or more local safetensors files, opened lazily.

    Args:
        spec: what the user passed.
        root: folder the files are relative to.
        files: the safetensors files.
        weight_map: for sharded checkpoints, tensor name -> file name (from the index);
            only these tensors are exposed and each must be in the shard it names.
        index_file: the index the weight_map came from, for messages.

    Example:
        >>> import tempfile, torch, safetensors.torch as st, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> st.save_file({"w": torch.ones(2, 3)}, d / "model.safetensors")
        >>> with SafetensorsCheckpoint(str(d), d, [d / "model.safetensors"]) as ck:
        ...     ck.read("w").sum().item()
        6.0
    """

    kind = "safetensors"

    def __init__(
        self,
        spec: str,
        root: Path,
        files: list[Path],
        *,
        weight_map: dict[str, str] | None = None,
        index_file: Path | None = None,
    ) -> None:
        super().__init__(spec)
        self.root = str(root)
        self._paths: dict[str, Path] = {}
        self._maps: dict[str, mmap.mmap] = {}
        headers: dict[str, SafetensorsHeader] = {}
        for path in files:
            rel = os.path.relpath(path, root) if path != root else path.name
            rel = Path(rel).as_posix()
            headers[rel] = read_safetensors_header(path, file=rel)
            self._paths[rel] = path
            self.files.append(SourceFile(rel, path.stat().st_size))
        for h in headers.values():
            self.metadata.update(h.metadata)

        if weight_map is not None:
            weight_map = {name: PurePosixPath(shard).as_posix() for name, shard in weight_map.items()}
        where = repr(str(index_file)) if index_file is not None else repr(self.root)
        self.tensors = assemble_tensors(headers, weight_map, where=where, fix="re-download the checkpoint")
        self.config = _load_config(root)

    # -- reading ---------------------------------------------------------------------
    def _map(self, rel: str) -> mmap.mmap:
        m = self._maps.get(rel)
        if m is None:
            with open(self._paths[rel], "rb") as f:
                # ACCESS_COPY: private, writable view (no torch warning), backed by the page
                # cache until written to, which we never do.
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            self._maps[rel] = m
        return m

    def _read(self, info: TensorInfo) -> torch.Tensor:
        dt = info.dtype_info
        m = self._map(info.file)
        size = min(len(m), self._paths[info.file].stat().st_size)  # a shrunk file would SIGBUS a map read
        if info.end > size:
            raise CorruptCheckpointError(
                f"Tensor {info.name!r} spans bytes {info.start}..{info.end} but {info.file!r} now has "
                f"{size} bytes: the file changed or was truncated after it was opened.",
                path=info.file,
                tensor=info.name,
            )
        if dt.torch is None:  # packed sub-byte formats: raw bytes
            return (
                torch.frombuffer(m, dtype=torch.uint8, count=info.nbytes, offset=info.start)
                if info.nbytes
                else (torch.empty(0, dtype=torch.uint8))
            )
        if info.numel == 0:
            return torch.empty(info.shape, dtype=dt.torch)
        itemsize = dt.bits // 8
        if info.start % itemsize:
            # Misaligned data (old writers): copy into an aligned buffer.
            t = torch.frombuffer(bytearray(m[info.start : info.end]), dtype=dt.torch)
        else:
            t = torch.frombuffer(m, dtype=dt.torch, count=info.numel, offset=info.start)
        if sys.byteorder == "big":  # pragma: no cover - safetensors is little-endian
            t = torch.from_numpy(t.numpy().byteswap())
        return t.view(info.shape)

    def _advise(self, name: str, option: int | None) -> None:
        info = self.tensors.get(name)
        if option is None or info is None or info.file not in self._maps or info.nbytes == 0:
            return
        start = info.start - info.start % _PAGE
        with contextlib.suppress(OSError, ValueError):  # advisory only
            self._maps[info.file].madvise(option, start, info.end - start)

    def release(self, name: str) -> None:
        self._advise(name, getattr(mmap, "MADV_DONTNEED", None))

    def prefetch(self, name: str) -> None:
        info = self.tensors.get(name)
        if info is not None and info.nbytes:
            self._map(info.file)
        self._advise(name, getattr(mmap, "MADV_WILLNEED", None))

    def close(self) -> None:
        for m in self._maps.values():
            with contextlib.suppress(BufferError):  # a tensor view is still alive; the GC closes it later
                m.close()
        self._maps.clear()


def _load_config(root: Path) -> dict[str, Any] | None:
    path = root / "config.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def _read_index(index: Path) -> dict[str, str]:
    try:
        body = index.read_bytes()
    except OSError as e:
        raise CorruptCheckpointError(f"Cannot read index {str(index)!r}: {e}", path=str(index)) from e
    return parse_weight_map(body, where=str(index))


def _index_shards(root: Path, index: Path) -> tuple[dict[str, str], list[Path]]:
    wm = _read_index(index)
    shards: dict[str, Path] = {}
    for shard in wm.values():
        if shard not in shards:
            safe_child(root, shard, index=index)
            p = root / shard  # keep the index's name (the file may be a checked link)
            if not p.is_file():
                raise CorruptCheckpointError(
                    f"Index {str(index)!r} names shard {shard!r}, which is not in {str(root)!r}. "
                    "Download the missing shard or fix the index.",
                    path=str(index),
                )
            shards[shard] = p
    return wm, sorted(set(shards.values()))


def open_local(spec: str | os.PathLike[str]) -> Checkpoint:
    """Open a local checkpoint file or folder (see the module docstring for layouts).

    Raises:
        CheckpointNotFoundError: the path does not exist.
        NoWeightsError: a folder with no weights in a layout deltascope reads.
        CorruptCheckpointError, UnsafeCheckpointError: see :mod:`deltascope.errors`.
    """
    path = Path(spec).expanduser()
    text = str(spec)
    if not path.exists():
        raise CheckpointNotFoundError(
            f"Checkpoint {text!r} does not exist. Pass a safetensors file, a checkpoint folder, or a Hub id "
            "such as 'org/name@revision'.",
            path=text,
        )
    if path.is_file():
        return _open_file(text, path)
    return _open_folder(text, path)


def _open_file(text: str, path: Path) -> Checkpoint:
    name = path.name
    root = path.parent
    if name.endswith(".safetensors"):
        return SafetensorsCheckpoint(text, root, [path])
    if name.endswith(".safetensors.index.json"):
        return _sharded(text, root, path)
    if name.endswith(".bin.index.json"):
        from .torchfile import TorchCheckpoint

        _, shards = _index_shards(root, path)
        return TorchCheckpoint(text, root, shards)
    if name.endswith(_PICKLE_SUFFIXES):
        from .torchfile import TorchCheckpoint

        return TorchCheckpoint(text, root, [path])
    raise NoWeightsError(
        f"{text!r} is not a weight file deltascope reads (expected .safetensors, .safetensors.index.json, "
        ".bin, .pt or .pth).",
        path=text,
        found=[name],
    )


def _open_folder(text: str, root: Path) -> Checkpoint:
    indexes = sorted(root.glob("*.safetensors.index.json"))
    if indexes:
        preferred = [p for p in indexes if p.name == "model.safetensors.index.json"]
        if len(indexes) > 1 and not preferred:
            raise NoWeightsError(
                f"Folder {text!r} holds several safetensors indexes ({', '.join(p.name for p in indexes)}); "
                "pass the one to use as the checkpoint path.",
                path=text,
                found=[p.name for p in indexes],
            )
        return _sharded(text, root, (preferred or indexes)[0])
    single = root / "model.safetensors"
    if single.is_file():
        return SafetensorsCheckpoint(text, root, [single])
    files = sorted(p for p in root.glob("*.safetensors") if p.is_file())
    if files:
        return SafetensorsCheckpoint(text, root, files)

    from .torchfile import TorchCheckpoint
    from .verl import VerlCheckpoint, find_verl_rank_files

    for candidate in (root, root / "actor"):
        if candidate.is_dir():
            ranks = find_verl_rank_files(candidate)
            if ranks:
                return VerlCheckpoint(text, candidate, ranks)
    bin_index = root / "pytorch_model.bin.index.json"
    if bin_index.is_file():
        _, shards = _index_shards(root, bin_index)
        return TorchCheckpoint(text, root, shards)
    pickles = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(_PICKLE_SUFFIXES))
    if (root / "pytorch_model.bin").is_file():
        pickles = [root / "pytorch_model.bin"]
    if pickles:
        return TorchCheckpoint(text, root, pickles)
    present = sorted(p.name for p in root.iterdir())
    shown = ", ".join(present[:20]) + (" ..." if len(present) > 20 else "") if present else "nothing"
    raise NoWeightsError(
        f"Folder {text!r} holds no weights deltascope can read (found: {shown}). Expected model.safetensors, "
        "*.safetensors with or without an index, verl model_world_size_*_rank_*.pt, or pytorch_model.bin.",
        path=text,
        found=present,
    )


def _sharded(text: str, root: Path, index: Path) -> SafetensorsCheckpoint:
    wm, shards = _index_shards(root, index)
    return SafetensorsCheckpoint(text, root, shards, weight_map=wm, index_file=index)
