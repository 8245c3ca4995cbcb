"""Storage dtypes: the safetensors names, their torch equivalents and float formats.

A :class:`DType` knows how many bits an element takes, whether it is a float, and for
floats the format facts the metrics need (mantissa bits, exponent bias) to compute the
spacing between neighbouring values (ULP) exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DType", "DTYPES", "dtype_from_name", "dtype_from_torch", "common_dtype"]


@dataclass(frozen=True)
class DType:
    """One storage dtype.

    Attributes:
        name: the safetensors name (``"BF16"``).
        bits: bits per element (4 for ``F4``; packed formats pack several per byte).
        kind: ``"float"``, ``"int"``, ``"uint"``, ``"bool"``, ``"complex"``.
        torch: the torch dtype holding one element, or ``None`` for packed formats that
            torch cannot index element by element (``F4``, ``F6_*``).
        mantissa: explicit mantissa (fraction) bits, floats only.
        exponent_bits: exponent bits, floats only.
    """

    name: str
    bits: int
    kind: str
    torch: torch.dtype | None
    mantissa: int = 0
    exponent_bits: int = 0

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def bias(self) -> int:
        return (1 << (self.exponent_bits - 1)) - 1

    @property
    def min_exponent(self) -> int:
        """Unbiased exponent of the smallest normal number."""
        return 1 - self.bias

    def nbytes(self, numel: int) -> int:
        """Bytes that ``numel`` elements take on disk, or raise if they do not fill whole bytes."""
        total_bits = numel * self.bits
        if total_bits % 8:
            raise ValueError(f"{numel} elements of {self.name} do not fill a whole number of bytes")
        return total_bits // 8

    def ulp_exponent_of(self, exponent: int) -> int:
        """log2 of the spacing between neighbours for a value whose unbiased exponent is ``exponent``."""
        return max(exponent, self.min_exponent) - self.mantissa


def _t(name: str) -> torch.dtype | None:
    return getattr(torch, name, None)


_ALL = [
    DType("F64", 64, "float", torch.float64, 52, 11),
    DType("F32", 32, "float", torch.float32, 23, 8),
    DType("F16", 16, "float", torch.float16, 10, 5),
    DType("BF16", 16, "float", torch.bfloat16, 7, 8),
    DType("F8_E4M3", 8, "float", _t("float8_e4m3fn"), 3, 4),
    DType("F8_E5M2", 8, "float", _t("float8_e5m2"), 2, 5),
    DType("F8_E4M3FNUZ", 8, "float", _t("float8_e4m3fnuz"), 3, 4),
    DType("F8_E5M2FNUZ", 8, "float", _t("float8_e5m2fnuz"), 2, 5),
    DType("F8_E8M0", 8, "float", _t("float8_e8m0fnu"), 0, 8),
    DType("F6_E2M3", 6, "float", None, 3, 2),
    DType("F6_E3M2", 6, "float", None, 2, 3),
    DType("F4", 4, "float", None, 1, 2),
    DType("I64", 64, "int", torch.int64),
    DType("I32", 32, "int", torch.int32),
    DType("I16", 16, "int", torch.int16),
    DType("I8", 8, "int", torch.int8),
    DType("U64", 64, "uint", _t("uint64")),
    DType("U32", 32, "uint", _t("uint32")),
    DType("U16", 16, "uint", _t("uint16")),
    DType("U8", 8, "uint", torch.uint8),
    DType("BOOL", 8, "bool", torch.bool),
    DType("C64", 64, "complex", torch.complex64),
]

#: Every dtype a safetensors header may name, by name.
DTYPES: dict[str, DType] = {d.name: d for d in _ALL}
_BY_TORCH: dict[torch.dtype, DType] = {}
for _d in _ALL:
    if _d.torch is not None:
        _BY_TORCH.setdefault(_d.torch, _d)


def dtype_from_name(name: str) -> DType:
    """The :class:`DType` for a safetensors dtype name; ``KeyError`` if unknown."""
    return DTYPES[name]


def dtype_from_torch(dtype: torch.dtype) -> DType:
    """The :class:`DType` for a torch dtype; ``KeyError`` if safetensors cannot store it."""
    return _BY_TORCH[dtype]


#: Floats that convert to float32 exactly (every value of theirs is a float32 value).
_EXACT_IN_F32 = {"F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0", "F32"}


def common_dtype(a: DType, b: DType) -> DType:
    """The dtype both sides of a pair are compared in for ``exact``: the wider float when
    one side's values are all values of the other (bf16 -> f32 is exact), else float64.

    >>> common_dtype(DTYPES["BF16"], DTYPES["F32"]).name
    'F32'
    >>> common_dtype(DTYPES["F16"], DTYPES["BF16"]).name
    'F32'
    """
    if a == b:
        return a
    if a.is_float and b.is_float:
        if a.name in _EXACT_IN_F32 and b.name in _EXACT_IN_F32:
            return DTYPES["F32"]
        return DTYPES["F64"]
    return DTYPES["F64"]
