"""A strict parser for the safetensors header, shared by local files and Hub range reads.

The format: 8 bytes little-endian u64 ``N``, then ``N`` bytes of UTF-8 JSON::

    {"__metadata__": {"format": "pt"},
     "model.embed_tokens.weight": {"dtype": "BF16", "shape": [32000, 4096],
                                   "data_offsets": [0, 262144000]}, ...}

then the data area; ``data_offsets`` are relative to byte ``8 + N``. Everything is
validated before any tensor is read: ``N`` within the file and under a cap, a JSON
object without duplicate keys, known dtypes, non-negative integer shapes,
``numel x itemsize == end - begin``, spans inside the data area and not overlapping.
No byte outside the file is ever addressed, whatever the header says.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from dataclasses import dataclass, field

from ..constants import MAX_HEADER_BYTES
from ..dtypes import DTYPES
from ..errors import CorruptCheckpointError
from .base import TensorInfo

__all__ = ["SafetensorsHeader", "read_header_length", "parse_header", "parse_weight_map", "assemble_tensors"]

_PREFIX = 8


@dataclass
class SafetensorsHeader:
    """A parsed, validated header.

    Attributes:
        header_len: ``N``, the JSON length.
        data_start: absolute offset of the data area, ``8 + N``.
        tensors: one :class:`TensorInfo` per tensor, in header order, with absolute offsets.
        metadata: the ``__metadata__`` dict (str -> str), possibly empty.
    """

    header_len: int
    data_start: int
    tensors: list[TensorInfo] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


def _fail(source: str, reason: str, tensor: str | None = None) -> CorruptCheckpointError:
    where = f" (tensor {tensor!r})" if tensor else ""
    return CorruptCheckpointError(
        f"Failed to parse safetensors header for {source!r}{where}: {reason}. "
        "The file is truncated, corrupt or not a safetensors file; re-download or re-export it.",
        path=source,
        tensor=tensor,
    )


def read_header_length(prefix: bytes, *, file_size: int, source: str, max_header: int = MAX_HEADER_BYTES) -> int:
    """Validate the 8-byte prefix of a safetensors file and return ``N``.

    Args:
        prefix: the first 8 bytes (fewer means the file is too short).
        file_size: the file's total size in bytes.
        source: a file name or URL, for messages.
        max_header: the cap on ``N``.

    Raises:
        CorruptCheckpointError: too short, ``N`` beyond the file or over the cap.
    """
    if file_size < _PREFIX or len(prefix) < _PREFIX:
        raise _fail(source, f"the file is {file_size} bytes long, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", prefix[:_PREFIX])
    if n > max_header:
        raise _fail(source, f"header length {n} exceeds the cap of {max_header} bytes")
    if _PREFIX + n > file_size:
        raise _fail(source, f"header length {n} runs past the end of the {file_size}-byte file")
    if n < 2:
        raise _fail(source, f"header length {n} is too small to hold a JSON object")
    return n


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> object:
    raise ValueError(f"non-standard JSON constant {name}")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_header(
    header: bytes,
    *,
    header_len: int,
    file_size: int,
    file: str,
    source: str | None = None,
) -> SafetensorsHeader:
    """Parse and validate the JSON header of a safetensors file.

    Args:
        header: the ``N`` header bytes (everything after the 8-byte prefix).
        header_len: ``N`` as read by :func:`read_header_length`.
        file_size: the whole file's size, to bound every span.
        file: the file name recorded in each :class:`TensorInfo` (relative to the root).
        source: name used in messages (defaults to ``file``).

    Returns:
        The validated :class:`SafetensorsHeader`.

    Raises:
        CorruptCheckpointError: on any violation, naming the file and the tensor.

    Example:
        >>> import json, struct
        >>> body = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
        >>> h = parse_header(body, header_len=len(body), file_size=8 + len(body) + 8, file="x.safetensors")
        >>> h.tensors[0].shape, h.tensors[0].start - h.data_start
        ((2,), 0)
    """
    source = source or file
    if len(header) != header_len:
        raise _fail(source, f"expected {header_len} header bytes, got {len(header)} (truncated file?)")
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(source, f"header is not valid UTF-8 ({e})") from e
    if not text.lstrip().startswith("{"):
        raise _fail(source, "header does not start with a JSON object")
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise _fail(source, f"header is not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise _fail(source, "header JSON is not an object")

    data_start = _PREFIX + header_len
    data_size = file_size - data_start
    metadata: dict[str, str] = {}
    tensors: list[TensorInfo] = []
    for name, entry in obj.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in entry.items()
            ):
                raise _fail(source, "__metadata__ must map strings to strings")
            metadata = dict(entry)
            continue
        tensors.append(_parse_entry(name, entry, source=source, file=file, data_start=data_start, data_size=data_size))

    # No two spans may share a byte (zero-length spans are harmless).
    spans = sorted((t.start, t.end, t.name) for t in tensors if t.end > t.start)
    for (_, prev_end, prev_name), (start, _, name) in itertools.pairwise(spans):
        if start < prev_end:
            raise _fail(source, f"byte span overlaps that of tensor {prev_name!r}", tensor=name)
    return SafetensorsHeader(header_len=header_len, data_start=data_start, tensors=tensors, metadata=metadata)


def _parse_entry(name: str, entry: object, *, source: str, file: str, data_start: int, data_size: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise _fail(source, "entry is not a JSON object", name)
    extra = set(entry) - {"dtype", "shape", "data_offsets"}
    missing = {"dtype", "shape", "data_offsets"} - set(entry)
    if missing:
        raise _fail(source, f"entry lacks {sorted(missing)}", name)
    if extra:
        raise _fail(source, f"entry has unknown fields {sorted(extra)}", name)
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _fail(source, f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})", name)
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
        raise _fail(source, f"shape {shape!r} is not a list of non-negative integers", name)
    offsets = entry["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise _fail(source, f"data_offsets {offsets!r} is not a pair of integers", name)
    begin, end = offsets
    if not 0 <= begin <= end:
        raise _fail(source, f"data_offsets {offsets} are not 0 <= begin <= end", name)
    if end > data_size:
        raise _fail(
            source, f"data_offsets {offsets} run past the data area of {data_size} bytes (truncated file?)", name
        )
    numel = math.prod(shape)
    try:
        expected = DTYPES[dtype].nbytes(numel)
    except ValueError as e:
        raise _fail(source, str(e), name) from e
    if expected != end - begin:
        raise _fail(
            source,
            f"byte span {end - begin} does not match shape {shape} x {dtype} = {expected} bytes",
            name,
        )
    return TensorInfo(name, dtype, tuple(shape), file, data_start + begin, data_start + end)


def parse_weight_map(body: bytes, *, where: str) -> dict[str, str]:
    """The ``weight_map`` of a ``*.safetensors.index.json`` (tensor name -> shard file),
    validated as an object of strings; shard names are returned as written (callers check
    that they stay inside their folder or repository).

    Raises:
        CorruptCheckpointError: not JSON, or no ``weight_map`` of strings.
    """
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptCheckpointError(f"Index {where!r} is not valid JSON ({e}).", path=where) from e
    wm = obj.get("weight_map") if isinstance(obj, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
        raise CorruptCheckpointError(
            f"Index {where!r} has no 'weight_map' object mapping tensor names to shard files.", path=where
        )
    return wm


def assemble_tensors(
    headers: dict[str, SafetensorsHeader], weight_map: dict[str, str] | None, *, where: str, fix: str
) -> dict[str, TensorInfo]:
    """The tensors of a checkpoint made of several safetensors files, in storage order
    (file, then offset), so reads walk each file forward.

    Args:
        headers: parsed headers by file name (relative to the checkpoint root, posix).
        weight_map: the index's map (values normalised like the ``headers`` keys); without
            one every tensor of every file is exposed and names must be unique.
        where: the checkpoint, for messages.
        fix: what the user should do when index and shards disagree.
    """
    tensors: dict[str, TensorInfo] = {}
    if weight_map is None:
        for file, h in headers.items():
            for info in h.tensors:
                if info.name in tensors:
                    raise CorruptCheckpointError(
                        f"Tensor {info.name!r} is stored twice in {where}, in {tensors[info.name].file!r} and "
                        f"{file!r}. Point deltascope at one file, or add an index.",
                        path=file,
                        tensor=info.name,
                    )
                tensors[info.name] = info
        return tensors
    by_file = {f: {t.name: t for t in h.tensors} for f, h in headers.items()}
    for name, shard in weight_map.items():
        info = by_file.get(shard, {}).get(name)
        if info is None:
            raise CorruptCheckpointError(
                f"The index of {where} maps tensor {name!r} to shard {shard!r}, but that shard does not contain "
                f"it. The index and shards are out of sync; {fix}.",
                path=shard,
                tensor=name,
            )
        tensors[name] = info
    order = {f: i for i, f in enumerate(headers)}
    return dict(sorted(tensors.items(), key=lambda kv: (order[kv[1].file], kv[1].start)))
