"""The strict safetensors header parser: agreement with the safetensors library on good
files, and a clear CorruptCheckpointError for each kind of broken file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import raw_safetensors
from deltascope.checkpoint.local import read_safetensors_header
from deltascope.checkpoint.safetensors_format import parse_header, read_header_length
from deltascope.errors import CorruptCheckpointError

ALL_DTYPES = [
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


def test_header_matches_safetensors_library(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {f"t{i}": torch.randn(3, 5, generator=g).to(dt) for i, dt in enumerate(ALL_DTYPES)}
    tensors["scalar"] = torch.tensor(3.0)
    tensors["empty"] = torch.zeros(0, 4)
    path = tmp_path / "m.safetensors"
    save_file(tensors, path, metadata={"format": "pt", "note": "x"})
    h = read_safetensors_header(path)
    assert h.metadata == {"format": "pt", "note": "x"}
    by_name = {t.name: t for t in h.tensors}
    with safe_open(path, "pt") as f:
        assert set(f.keys()) == set(by_name)
        for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            ref = f.get_tensor(name)
            info = by_name[name]
            assert info.shape == tuple(ref.shape)
            assert info.nbytes == ref.numel() * ref.element_size()
            raw = path.read_bytes()[info.start : info.end]
            assert raw == ref.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def _expect(path: Path, *fragments: str) -> CorruptCheckpointError:
    with pytest.raises(CorruptCheckpointError) as ei:
        read_safetensors_header(path)
    msg = str(ei.value)
    for frag in fragments:
        assert frag in msg, msg
    assert str(path) in msg
    return ei.value


GOOD = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}


def test_short_file(tmp_path: Path) -> None:
    p = tmp_path / "short.safetensors"
    p.write_bytes(b"\x01\x02")
    _expect(p, "shorter than the 8-byte header length")


def test_header_length_beyond_file(tmp_path: Path) -> None:
    p = raw_safetensors(tmp_path / "x.safetensors", GOOD, b"\0" * 16, length=10_000)
    _expect(p, "runs past the end")


def test_header_length_over_cap() -> None:
    with pytest.raises(CorruptCheckpointError, match="exceeds the cap"):
        read_header_length(struct.pack("<Q", 2**40), file_size=2**41, source="big", max_header=100_000_000)


def test_non_json_header(tmp_path: Path) -> None:
    p = raw_safetensors(tmp_path / "x.safetensors", b"{not json at all}", b"")
    _expect(p, "not valid JSON")


def test_header_not_an_object(tmp_path: Path) -> None:
    p = raw_safetensors(tmp_path / "x.safetensors", b"[1, 2, 3]", b"")
    _expect(p, "JSON object")


def test_non_utf8_header(tmp_path: Path) -> None:
    p = raw_safetensors(tmp_path / "x.safetensors", b'{"\xff": 1}', b"")
    _expect(p, "UTF-8")


def test_duplicate_keys(tmp_path: Path) -> None:
    entry = json.dumps(GOOD["w"])
    body = f'{{"w": {entry}, "w": {entry}}}'.encode()
    p = raw_safetensors(tmp_path / "x.safetensors", body, b"\0" * 16)
    _expect(p, "duplicate key")


def test_unknown_dtype(tmp_path: Path) -> None:
    p = raw_safetensors(
        tmp_path / "x.safetensors", {"w": {"dtype": "F17", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8
    )
    e = _expect(p, "unknown dtype 'F17'")
    assert e.tensor == "w"


def test_span_does_not_match_shape(tmp_path: Path) -> None:
    p = raw_safetensors(
        tmp_path / "x.safetensors", {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}}, b"\0" * 16
    )
    _expect(p, "does not match shape [2, 3] x F32 = 24 bytes")


def test_offsets_outside_data(tmp_path: Path) -> None:
    p = raw_safetensors(
        tmp_path / "x.safetensors", {"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, b"\0" * 16
    )
    _expect(p, "run past the data area")


def test_truncated_data(tmp_path: Path) -> None:
    path = tmp_path / "good.safetensors"
    save_file({"a": torch.ones(100), "b": torch.ones(100)}, path)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-50])
    _expect(cut, "truncated")


def test_overlapping_spans(tmp_path: Path) -> None:
    hdr = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    }
    p = raw_safetensors(tmp_path / "x.safetensors", hdr, b"\0" * 24)
    _expect(p, "overlaps")


@pytest.mark.parametrize(
    "entry, fragment",
    [
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}, "non-negative integers"),
        ({"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}, "non-negative integers"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, "0 <= begin <= end"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0]}, "pair of integers"),
        ({"dtype": "F32", "shape": [2]}, "lacks ['data_offsets']"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "extra": 1}, "unknown fields"),
        ("not an object", "not a JSON object"),
    ],
)
def test_malformed_entries(tmp_path: Path, entry: object, fragment: str) -> None:
    p = raw_safetensors(tmp_path / "x.safetensors", {"w": entry}, b"\0" * 8)
    _expect(p, fragment)


def test_bad_metadata(tmp_path: Path) -> None:
    p = raw_safetensors(tmp_path / "x.safetensors", {"__metadata__": {"a": 1}, **GOOD}, b"\0" * 16)
    _expect(p, "__metadata__")


def test_nan_constant_rejected(tmp_path: Path) -> None:
    p = raw_safetensors(tmp_path / "x.safetensors", b'{"__metadata__": {"a": NaN}}', b"")
    _expect(p, "not valid JSON")


def test_parse_header_works_on_bytes_alone() -> None:
    """The Hub path feeds bytes from range reads, not files."""
    body = json.dumps(GOOD).encode()
    h = parse_header(body, header_len=len(body), file_size=8 + len(body) + 16, file="remote.safetensors")
    assert h.tensors[0].start == 8 + len(body) and h.tensors[0].end == 8 + len(body) + 16
    with pytest.raises(CorruptCheckpointError, match="expected"):
        parse_header(body[:-3], header_len=len(body), file_size=10**6, file="remote.safetensors")


def test_sub_byte_dtype_spans(tmp_path: Path) -> None:
    # F4 packs two elements per byte: 6 elements take 3 bytes; 5 elements are invalid.
    p = raw_safetensors(
        tmp_path / "x.safetensors", {"w": {"dtype": "F4", "shape": [2, 3], "data_offsets": [0, 3]}}, b"\0" * 3
    )
    assert read_safetensors_header(p).tensors[0].nbytes == 3
    q = raw_safetensors(
        tmp_path / "y.safetensors", {"w": {"dtype": "F4", "shape": [5], "data_offsets": [0, 3]}}, b"\0" * 3
    )
    _expect(q, "whole number of bytes")
