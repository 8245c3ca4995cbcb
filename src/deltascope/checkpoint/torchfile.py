"""PyTorch pickle checkpoints (``pytorch_model.bin``, ``*.pt``), read safely.

These are Python pickles. A pickle can run arbitrary code while it is loaded, so
deltascope only ever reads them with ``torch.load(weights_only=True)``: torch's restricted
unpickler, which builds tensors, containers and numbers and refuses every other global
unless it is explicitly allowlisted. A file that needs anything else is refused with
:class:`~deltascope.errors.UnsafeCheckpointError`; it is never loaded with
``weights_only=False``.

Formats
-------
**PyTorch state dict** (:class:`TorchCheckpoint`): one or more files written by
``torch.save(state_dict, path)``: ``pytorch_model.bin``, the shards named by
``pytorch_model.bin.index.json``, or any ``*.pt`` / ``*.pth``. Since torch 1.6 the file
is a zip archive (``archive/data.pkl`` plus one entry per storage); it is opened with
``mmap=True`` so the tensors are views of a memory map and cost only page cache. Files in
the legacy (pre-1.6, non-zip) format cannot be memory-mapped: they are read into memory,
and at most one such file is kept loaded at a time. The top-level object may be the state
dict itself or a training checkpoint wrapping it (see :func:`_unwrap_state_dict`).

verl FSDP sharded checkpoints live in :mod:`deltascope.checkpoint.verl`, which reuses the
safe loading defined here.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch

from ..dtypes import dtype_from_torch
from ..errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    DeltascopeWarning,
    NoWeightsError,
    UnsafeCheckpointError,
)
from .base import Checkpoint, SourceFile, TensorInfo

__all__ = ["TorchCheckpoint", "STATE_DICT_WRAPPER_KEYS"]

#: Keys under which training checkpoints commonly nest the model's state dict, in the
#: order they are tried: PyTorch Lightning (``state_dict``), generic training loops
#: (``model``), DeepSpeed (``module``).
STATE_DICT_WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model", "module")

#: Name of a verl FSDP model shard: ``model_world_size_{W}_rank_{R}.pt``.
VERL_RANK_FILE_RE = re.compile(r"^model_world_size_(\d+)_rank_(\d+)\.pt$")

_ZIP_MAGIC = b"PK\x03\x04"
_MAX_WRAPPER_DEPTH = 4
# The allowlist is process-wide state inside torch; serialise our loads so that two of our
# own threads never add/remove entries under each other.
_LOAD_LOCK = threading.RLock()

_UNSAFE_MARKERS = (
    "unsupported global",
    "whose module",
    "reduce for unrecognized function",
    "can only build",
    "can only create new object",
    "must be imported to load",
)


# ----------------------------------------------------------------------------------------
# Safe loading
# ----------------------------------------------------------------------------------------
def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == _ZIP_MAGIC


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.name if path.parent == root else path.as_posix()


def _unsafe_error(path: Path, detail: str, needed: list[str]) -> UnsafeCheckpointError:
    what = ", ".join(needed) if needed else "Python objects other than tensors"
    if any("torch.distributed" in g for g in needed) or "must be imported to load DTensors" in detail:
        hint = (
            "It holds sharded tensors (DTensor / ShardedTensor) from a distributed training run: "
            "open the folder holding all model_world_size_*_rank_*.pt files as a verl checkpoint "
            "instead of opening one rank file."
        )
        if VERL_RANK_FILE_RE.match(path.name) is None:
            hint += " deltascope reads only the DTensor/ShardedTensor layouts verl writes."
        return UnsafeCheckpointError(
            f"{path}: cannot be read as a plain state dict: its pickle needs {what}. {hint}",
            path=str(path),
        )
    return UnsafeCheckpointError(
        f"{path}: this file needs unsafe unpickling: its pickle refers to {what}, which "
        "torch.load(weights_only=True) does not allow. Loading it any other way would let the "
        "file run arbitrary code, and deltascope refuses to run code from a checkpoint.\n"
        "Fix: if (and only if) you trust this file, convert it to safetensors once, in a trusted "
        "and isolated environment, and compare the .safetensors file instead:\n"
        "    import torch, safetensors.torch\n"
        f"    obj = torch.load({str(path)!r}, weights_only=False)  # runs the pickle's code\n"
        "    sd = obj.get('state_dict', obj)\n"
        "    safetensors.torch.save_file({k: v.detach().clone().contiguous() for k, v in sd.items()\n"
        "                                 if isinstance(v, torch.Tensor)}, 'model.safetensors')\n"
        f"(torch's own message: {detail.strip()})",
        path=str(path),
    )


def _needed_globals(path: Path, detail: str) -> list[str]:
    """The globals a pickle needs beyond the allowlist, without running it."""
    found: list[str] = []
    # Parses the pickle's opcodes only; never imports or calls anything. Fails on legacy
    # or truncated files: then fall back to the names in torch's message.
    with suppress(Exception):
        found = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    if not found:
        found = sorted(set(re.findall(r"GLOBAL ([\w.]+)", detail)))
    return found


def _classify_load_error(path: Path, e: BaseException) -> Exception:
    """Turn what ``torch.load(weights_only=True)`` raised into a deltascope error."""
    detail = str(e.__context__ or e) if isinstance(e, pickle.UnpicklingError) else str(e)
    if isinstance(e, pickle.UnpicklingError):
        low = (str(e) + " " + detail).lower()
        if any(m in low for m in _UNSAFE_MARKERS):
            return _unsafe_error(path, detail, _needed_globals(path, detail))
    reason = f"{type(e).__name__}: {detail}".strip()
    if len(reason) > 600:
        reason = reason[:600] + " ..."
    return CorruptCheckpointError(
        f"{path}: cannot be read as a PyTorch checkpoint ({reason}). The file is probably "
        "truncated or corrupt (an interrupted download or save): download or save it again. "
        "If it is intact, it may use a pickle feature torch.load(weights_only=True) does not "
        "support; convert it to safetensors in a trusted environment.",
        path=str(path),
    )


@contextmanager
def _allowlisted(extra: list[Any]) -> Iterator[None]:
    """Allow ``extra`` globals for the loads inside the block only.

    ``torch.serialization.safe_globals`` removes its entries on exit even if they were
    allowlisted before (importing ``torch.distributed.tensor`` registers the DTensor
    classes process-wide), so only the entries not already present are passed to it: the
    user's process-wide allowlist is the same after the block as before.
    """
    if not extra:
        yield
        return
    with _LOAD_LOCK:
        present = set(torch.serialization.get_safe_globals())
        missing = [g for g in extra if g not in present]
        if not missing:
            yield
            return
        with torch.serialization.safe_globals(missing):
            yield


class _DropMeshPGWarning(logging.Filter):
    """Unpickling a DeviceMesh outside the saving job logs that its process groups cannot
    be found. deltascope never communicates, so that warning is noise here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "unpickling of the DeviceMesh" not in record.getMessage()


@contextmanager
def _quiet_device_mesh() -> Iterator[None]:
    logger = logging.getLogger("torch.distributed.device_mesh")
    flt = _DropMeshPGWarning()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


def _safe_load(path: Path, *, extra_globals: list[Any] | None = None) -> tuple[Any, bool]:
    """``torch.load`` one file safely.

    Returns:
        The unpickled object and whether it is memory-mapped (zip format).

    Raises:
        CheckpointNotFoundError: the file does not exist.
        UnsafeCheckpointError: the pickle needs globals outside the allowlist.
        CorruptCheckpointError: the file is truncated, not a torch file, or unreadable.
    """
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: no such file.", path=str(path))
    try:
        mmap = _is_zip(path)
    except OSError as e:
        raise CorruptCheckpointError(f"{path}: cannot be opened ({e}).", path=str(path)) from e
    with _allowlisted(list(extra_globals or [])), _quiet_device_mesh():
        try:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as e:
                if not (mmap and "mmap" in str(e)):
                    raise
                # A zip written by an old torch whose storages cannot be memory-mapped.
                mmap = False
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
        except Exception as e:
            raise _classify_load_error(path, e) from e
    return obj, mmap


# ----------------------------------------------------------------------------------------
# State dicts
# ----------------------------------------------------------------------------------------
def _holds_tensors(d: Mapping[Any, Any]) -> bool:
    return any(isinstance(v, torch.Tensor) for v in d.values())


def _reaches_tensors(d: Any, depth: int) -> bool:
    """``d`` is a dict holding tensors, or leads to one through wrapper keys."""
    if not isinstance(d, Mapping) or depth <= 0:
        return False
    if _holds_tensors(d):
        return True
    return any(_reaches_tensors(d.get(k), depth - 1) for k in STATE_DICT_WRAPPER_KEYS)


def _unwrap_state_dict(obj: Any, path: Path) -> tuple[Mapping[Any, Any], str | None]:
    """The state dict inside what ``torch.load`` returned.

    Rules, in order:

    1. If one of :data:`STATE_DICT_WRAPPER_KEYS` (``state_dict``, ``model``, ``module``,
       tried in that order) maps to a dict that holds tensors (directly or through more
       wrapper keys), descend into it, repeatedly
       (``{"model": {"module": {...}}}``), at most 4 levels. A wrapper wins over stray
       top-level tensors (a training checkpoint may keep e.g. ``best_loss`` next to
       ``model``); a plain state dict never maps these keys to dicts.
    2. Otherwise the dict itself, if it holds tensors.

    Returns:
        The state dict and the wrapper path used (``"model.module"``), or ``None``.

    Raises:
        CorruptCheckpointError: ``obj`` is not a dict, or holds no tensors either way.
    """
    if not isinstance(obj, Mapping):
        raise CorruptCheckpointError(
            f"{path}: holds a {type(obj).__name__}, not a state dict (a dict of tensor name -> "
            "tensor). Save the model's state_dict() rather than the model or a list.",
            path=str(path),
        )
    current: Mapping[Any, Any] = obj
    used: list[str] = []
    for _ in range(_MAX_WRAPPER_DEPTH):
        for key in STATE_DICT_WRAPPER_KEYS:
            inner = current.get(key)
            if _reaches_tensors(inner, _MAX_WRAPPER_DEPTH):
                current = inner
                used.append(key)
                break
        else:
            break
    if not _holds_tensors(current):
        keys = ", ".join(repr(k) for k in list(obj)[:20]) or "none"
        raise CorruptCheckpointError(
            f"{path}: holds no tensors, neither at the top level nor under "
            f"{'/'.join(STATE_DICT_WRAPPER_KEYS)}; top-level keys: {keys}. Is this an optimizer "
            "or training-state file rather than model weights?",
            path=str(path),
        )
    return current, (".".join(used) or None)


def _dtype_name(dtype: torch.dtype, name: str, path: Path) -> str:
    try:
        return dtype_from_torch(dtype).name
    except KeyError:
        raise CorruptCheckpointError(
            f"{path}: tensor {name!r} has dtype {dtype}, which has no safetensors equivalent; "
            "deltascope cannot compare it. Drop or convert that tensor before comparing.",
            path=str(path),
            tensor=name,
        ) from None


def _check_plain_tensor(value: torch.Tensor, name: str, path: Path) -> None:
    if type(value) not in (torch.Tensor, torch.nn.Parameter):
        raise CorruptCheckpointError(
            f"{path}: tensor {name!r} is a {type(value).__name__}, not a plain tensor. A file "
            "holding DTensor/ShardedTensor values is one rank of a sharded (FSDP) checkpoint: "
            "open the folder with all model_world_size_*_rank_*.pt files as a verl checkpoint.",
            path=str(path),
            tensor=name,
        )
    if value.layout != torch.strided:
        raise CorruptCheckpointError(
            f"{path}: tensor {name!r} has layout {value.layout}; only dense tensors are supported.",
            path=str(path),
            tensor=name,
        )


def _load_json_config(path: Path) -> dict[str, Any] | None:
    """``config.json`` parsed as JSON (never executed); ``None`` with a warning if invalid."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        warnings.warn(f"{path}: ignored, not valid JSON ({e}).", DeltascopeWarning, stacklevel=3)
        return None
    if not isinstance(data, dict):
        warnings.warn(f"{path}: ignored, not a JSON object.", DeltascopeWarning, stacklevel=3)
        return None
    return data


# ----------------------------------------------------------------------------------------
# TorchCheckpoint
# ----------------------------------------------------------------------------------------
class TorchCheckpoint(Checkpoint):
    """One or more PyTorch pickle state-dict files, read safely and lazily.

    Every file is loaded with ``torch.load(path, map_location="cpu", weights_only=True,
    mmap=True)`` (``mmap=False`` for legacy non-zip files) once, at construction, to build
    the index; zip-format files stay memory-mapped, so the tensors cost page cache only.
    Legacy files are held in memory one at a time and reloaded on demand.

    What is indexed: every ``str`` key whose value is a dense tensor, in the state dict
    found by :func:`_unwrap_state_dict` (top level, or under ``state_dict`` / ``model`` /
    ``module``). Other values (step counters, strings, nested optimizer state) are
    skipped; their number is recorded in ``files[i].extra["skipped"]``.

    Args:
        spec: what the user passed, for messages and metadata.
        root: the folder the files are relative to.
        files: the files, in order (shards in the order of their index).

    Raises:
        UnsafeCheckpointError: a file needs unsafe unpickling.
        CorruptCheckpointError: a file is truncated/corrupt, holds no tensors, holds a
            sharded tensor or an unsupported dtype, or a tensor name appears in two files.
        CheckpointNotFoundError: a file does not exist.
    """

    kind = "torch"

    def __init__(self, spec: str, root: Path, files: list[Path]) -> None:
        super().__init__(spec)
        root = Path(root)
        self.root = str(root)
        self._paths: dict[str, Path] = {}
        self._mmapped: dict[str, bool] = {}
        self._cache: dict[str, dict[str, torch.Tensor]] = {}
        if not files:
            raise NoWeightsError(f"{spec}: no PyTorch checkpoint files were given.", path=str(root))
        for path in files:
            path = Path(path)
            rel = _relative(path, root)
            self._evict_in_memory()
            state, mmapped, extra = self._load(path)
            for name, tensor in state.items():
                if name in self.tensors:
                    other = self.tensors[name].file
                    raise CorruptCheckpointError(
                        f"{path}: tensor {name!r} is also in {other}; a tensor may appear in "
                        "only one shard. Check that the shard list (pytorch_model.bin.index.json) "
                        "does not name two different saves.",
                        path=str(path),
                        tensor=name,
                    )
                self.tensors[name] = TensorInfo(
                    name=name,
                    dtype=_dtype_name(tensor.dtype, name, path),
                    shape=tuple(tensor.shape),
                    file=rel,
                )
            self._paths[rel] = path
            self._mmapped[rel] = mmapped
            self.files.append(SourceFile(path=rel, size=path.stat().st_size, extra=extra))
            self._cache[rel] = state
        self.config = _load_json_config(root / "config.json") if root.is_dir() else None

    @staticmethod
    def _load(path: Path) -> tuple[dict[str, torch.Tensor], bool, dict[str, Any]]:
        obj, mmapped = _safe_load(path)
        sd, wrapper = _unwrap_state_dict(obj, path)
        state: dict[str, torch.Tensor] = {}
        skipped = 0
        for name, value in sd.items():
            if not isinstance(name, str) or not isinstance(value, torch.Tensor):
                skipped += 1
                continue
            _check_plain_tensor(value, name, path)
            state[name] = value
        extra: dict[str, Any] = {"format": "zip" if mmapped else "legacy", "skipped": skipped}
        if wrapper is not None:
            extra["wrapper"] = wrapper
        return state, mmapped, extra

    def _evict_in_memory(self) -> None:
        """Forget files read into memory (legacy format) so at most one is held at a time."""
        self._cache = {k: v for k, v in self._cache.items() if self._mmapped.get(k, True)}

    def _state(self, rel: str, name: str) -> dict[str, torch.Tensor]:
        state = self._cache.get(rel)
        if state is None or name not in state:
            self._cache.pop(rel, None)
            self._evict_in_memory()
            state, _, _ = self._load(self._paths[rel])
            self._cache[rel] = state
        if name not in state:
            raise CorruptCheckpointError(
                f"{self._paths[rel]}: tensor {name!r} was indexed but is gone: the file changed "
                "on disk while it was open.",
                path=str(self._paths[rel]),
                tensor=name,
            )
        return state

    def _read(self, info: TensorInfo) -> torch.Tensor:
        tensor = self._state(info.file, info.name)[info.name]
        dtype = _dtype_name(tensor.dtype, info.name, Path(info.file))
        if tuple(tensor.shape) != info.shape or dtype != info.dtype:
            raise CorruptCheckpointError(
                f"{self._paths[info.file]}: tensor {info.name!r} changed on disk since it was "
                f"indexed ({info.dtype}{list(info.shape)} -> {tensor.dtype}{list(tensor.shape)}).",
                path=str(self._paths[info.file]),
                tensor=info.name,
            )
        return tensor.detach()

    def release(self, name: str) -> None:
        """Drop the reference to ``name`` when its file was read into memory (legacy
        format). Memory-mapped tensors cost page cache only; nothing to drop."""
        info = self.tensors.get(name)
        if info is None or self._mmapped.get(info.file, True):
            return
        state = self._cache.get(info.file)
        if state is not None:
            state.pop(name, None)

    def close(self) -> None:
        self._cache.clear()
