"""What every checkpoint source provides: a lazy index of :class:`TensorInfo` and reads
of one tensor at a time.

A source never loads a whole model. ``Checkpoint.tensors`` is built from headers only;
``Checkpoint.read(name)`` returns one tensor in its *stored* dtype (a zero-copy view of
a memory map where possible) and ``Checkpoint.release(name)`` tells the source the
caller is done with it, so resident memory stays bounded by the tensors in flight.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..dtypes import DType, dtype_from_name

__all__ = ["TensorInfo", "SourceFile", "Checkpoint"]


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, from the header alone.

    Attributes:
        name: tensor name as stored.
        dtype: safetensors dtype name (``"BF16"``).
        shape: the shape.
        file: the file holding it, relative to the checkpoint root (a local folder or a
            Hub repository), e.g. ``"model-00001-of-00002.safetensors"``.
        start: absolute byte offset of the first byte in ``file`` (``-1`` when the
            source has no byte layout, e.g. a pickle).
        end: absolute byte offset one past the last byte.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    start: int = -1
    end: int = -1

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        if self.start >= 0:
            return self.end - self.start
        return self.dtype_info.nbytes(self.numel)

    @property
    def dtype_info(self) -> DType:
        return dtype_from_name(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class SourceFile:
    """One file a checkpoint is made of, for the run's metadata."""

    path: str
    size: int
    sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Checkpoint:
    """A checkpoint opened lazily. Subclasses fill ``tensors`` and implement ``_read``.

    Attributes:
        spec: what the user passed (path or Hub spec), as a string.
        kind: ``"safetensors"``, ``"torch"``, ``"verl-fsdp"`` or ``"hub"``.
        root: the folder (or repository) the tensor files are relative to.
        tensors: name -> :class:`TensorInfo`, in storage order.
        files: the files read, with sizes.
        metadata: ``__metadata__`` of the safetensors files, merged.
        config: the ``config.json`` next to the weights, when there is one.
        revision: the resolved commit sha (Hub), else ``None``.

    Use as a context manager, or call :meth:`close`.
    """

    kind: str = "abstract"
    #: How many tensors ahead the engine should announce through :meth:`prefetch` when the
    #: caller does not say (local files: a little readahead; remote sources: enough
    #: requests in flight to hide latency).
    prefetch_depth: int = 2

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.root: str = spec
        self.tensors: dict[str, TensorInfo] = {}
        self.files: list[SourceFile] = []
        self.metadata: dict[str, str] = {}
        self.config: dict[str, Any] | None = None
        self.revision: str | None = None

    # -- reading ---------------------------------------------------------------------
    def read(self, name: str) -> torch.Tensor:
        """Tensor ``name`` in its stored dtype and shape, on the CPU.

        Raises:
            KeyError: no such tensor.
            CorruptCheckpointError: its bytes cannot be read as declared.
        """
        info = self.tensors[name]
        return self._read(info)

    def _read(self, info: TensorInfo) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def release(self, name: str) -> None:
        """Hint that the caller is done with tensor ``name`` (drops resident pages)."""

    def prefetch(self, name: str) -> None:
        """Hint that tensor ``name`` will be read soon (e.g. start paging it in)."""

    def close(self) -> None:
        """Release files, maps and connections."""

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- description -----------------------------------------------------------------
    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data (headers excluded)."""
        return sum(t.nbytes for t in self.tensors.values())

    def describe(self) -> dict[str, Any]:
        """Metadata for a result: spec, kind, resolved files, sizes, revision."""
        return {
            "spec": self.spec,
            "kind": self.kind,
            "root": self.root,
            "revision": self.revision,
            "n_tensors": len(self.tensors),
            "tensor_bytes": self.nbytes,
            "files": [asdict(f) for f in self.files],
        }

    def __repr__(self) -> str:
        gib = self.nbytes / 2**30
        return f"<{type(self).__name__} {self.spec!r}: {len(self.tensors)} tensors, {gib:.3f} GiB>"
