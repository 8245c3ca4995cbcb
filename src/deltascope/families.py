"""Metric families as the engine sees them: what to compute per pair, which columns that
gives, and how a group's values are derived from its raw sums.

The maths lives in :mod:`deltascope.metrics` (pure functions); a family adapts it to a
:class:`PairContext`, which holds one tensor pair and shares what several families need
(the float copies of W0, W1 and Δ are formed at most once per pair).

A family is rebuilt from its saved options (``family_from_options``), so a result
loaded from JSON aggregates exactly like the live one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from .checkpoint.base import TensorInfo
from .columns import ColumnSpec, elementwise_specs
from .dtypes import DType
from .metrics.elementwise import (
    ElementwiseOptions,
    compute_dtype_for,
    derive_elementwise,
    elementwise_columns,
    elementwise_metrics,
    equality_metrics,
)
from .naming import Role

__all__ = [
    "PairContext",
    "Family",
    "OptionsFamily",
    "ElementwiseFamily",
    "family_from_options",
    "family_class",
    "FAMILIES",
]


@dataclass
class PairContext:
    """One tensor pair in flight.

    Attributes:
        name: base tensor name.
        role: its :class:`Role`.
        base_info, tuned_info: header facts.
        w0, w1: the tensors in their stored dtypes (CPU, possibly memory-mapped views).
        device: where metrics compute.
        chunk: elements per chunk for streaming metrics.
        config: the base checkpoint's ``config.json`` (e.g. head counts for splitting
            fused projections), when there is one.
    """

    name: str
    role: Role
    base_info: TensorInfo
    tuned_info: TensorInfo
    w0: torch.Tensor
    w1: torch.Tensor
    device: torch.device
    chunk: int
    config: Mapping[str, Any] | None = None
    _cache: dict[str, Any] = field(default_factory=dict)

    @property
    def base_dtype(self) -> DType:
        return self.base_info.dtype_info

    @property
    def tuned_dtype(self) -> DType:
        return self.tuned_info.dtype_info

    @property
    def is_float(self) -> bool:
        return (
            self.base_dtype.is_float
            and self.tuned_dtype.is_float
            and self.base_dtype.torch is not None
            and self.tuned_dtype.torch is not None
        )

    def float_pair(self, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W0, W1, Δ) as ``dtype`` tensors on ``device``, shaped like the tensor; computed
        once per pair and dtype, shared by every family that asks."""
        key = f"float_pair:{dtype}"
        if key not in self._cache:
            a = self.w0.to(self.device, dtype)
            b = self.w1.to(self.device, dtype)
            self._cache[key] = (a, b, b - a)
        return self._cache[key]

    def shared(self, key: str, make: Any) -> Any:
        """A value shared by families for this pair (e.g. an SVD of W0), made once."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def clear(self) -> None:
        self._cache.clear()


class Family:
    """Base class of metric families."""

    name: ClassVar[str] = "abstract"

    def specs(self) -> list[ColumnSpec]:  # pragma: no cover - abstract
        raise NotImplementedError

    def raw_columns(self) -> list[str]:
        """The columns :meth:`compute` returns."""
        return [s.name for s in self.specs() if s.agg in ("sum", "max", "tensor")]

    def compute(self, ctx: PairContext) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def derive(self, raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Derived columns from raw sums (per tensor or per group)."""
        return {}

    def options(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Family:  # pragma: no cover - abstract
        raise NotImplementedError

    def start(self) -> None:
        """Called once before the first pair of a run (reset per-run state)."""

    def tables(self) -> dict[str, Any]:
        """Extra tables (name -> DataFrame) the family built during the run; they land in
        ``Comparison.extras`` and travel with the saved result."""
        return {}


class ElementwiseFamily(Family):
    """Sparsity rules, ULP counts, concentration, norms, cosine, NaN/Inf counts."""

    name = "elementwise"

    def __init__(self, opts: ElementwiseOptions | None = None) -> None:
        self.opts = opts or ElementwiseOptions()
        self._conc = [k for k in elementwise_columns(self.opts) if k.startswith("top")]

    def specs(self) -> list[ColumnSpec]:
        return elementwise_specs(self.opts.rule_names(), self.opts.ulp, self._conc)

    def raw_columns(self) -> list[str]:
        return elementwise_columns(self.opts)

    def compute(self, ctx: PairContext) -> dict[str, Any]:
        if not ctx.is_float:
            out: dict[str, Any] = dict.fromkeys(self.raw_columns(), np.nan)
            out.update(_equality(ctx))
            return out
        return elementwise_metrics(
            ctx.w0,
            ctx.w1,
            opts=self.opts,
            base_dtype=ctx.base_dtype,
            tuned_dtype=ctx.tuned_dtype,
            chunk=ctx.chunk,
            device=ctx.device,
        )

    def derive(self, raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return derive_elementwise(raw, self.opts)

    def options(self) -> dict[str, Any]:
        return self.opts.to_dict()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ElementwiseFamily:
        return cls(ElementwiseOptions.from_dict(dict(options)))

    @staticmethod
    def compute_dtype(ctx: PairContext) -> torch.dtype:
        return compute_dtype_for(ctx.base_dtype, ctx.tuned_dtype)


class OptionsFamily(Family):
    """A family configured by a frozen options dataclass (``to_dict``/``from_dict``), with
    the common ``compare(<family>=...)`` argument forms:

    ``True``/``"default"`` (default options), one of :attr:`modes` (sets
    :attr:`mode_field`), a dict of option fields, or an options object. Subclasses set
    the class attributes and implement :meth:`make_specs`.
    """

    options_class: ClassVar[Any]
    mode_field: ClassVar[str]
    modes: ClassVar[tuple[str, ...]] = ("exact", "fast")
    example: ClassVar[str] = ""

    def __init__(self, opts: Any = None) -> None:
        self.opts = opts if opts is not None else self.options_class()
        self._specs = self.make_specs(self.opts)

    def make_specs(self, opts: Any) -> list[ColumnSpec]:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def from_user(cls, arg: Any) -> Family:
        if isinstance(arg, cls.options_class):
            return cls(arg)
        if arg is True or arg == "default":
            return cls()
        if isinstance(arg, str) and arg in cls.modes:
            return cls(cls.options_class(**{cls.mode_field: arg}))
        if isinstance(arg, Mapping):
            return cls(cls.options_class.from_dict(arg))
        modes = ", ".join(repr(m) for m in cls.modes)
        raise ValueError(
            f"{cls.name}={arg!r}: use True, {modes}, a dict of options (e.g. {cls.example}) or "
            f"{cls.options_class.__module__}.{cls.options_class.__name__}."
        )

    def specs(self) -> list[ColumnSpec]:
        return list(self._specs)

    def raw_columns(self) -> list[str]:
        return [s.name for s in self._specs if s.agg in ("sum", "max", "tensor", "key")]

    def options(self) -> dict[str, Any]:
        return self.opts.to_dict()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Family:
        return cls(cls.options_class.from_dict(options))


def _equality(ctx: PairContext) -> dict[str, Any]:
    """Non-float pairs (ints, bool, packed sub-byte floats): count changed coordinates."""
    bd, td = ctx.base_dtype, ctx.tuned_dtype
    if bd.torch is None or td.torch is None:
        if bd.name == td.name and bd.bits == 4:  # F4: two elements per byte, compare nibbles
            x = ctx.w0.reshape(-1) ^ ctx.w1.reshape(-1)
            changed = int(torch.count_nonzero(x & 0x0F)) + int(torch.count_nonzero(x >> 4))
            return {"numel": ctx.base_info.numel, "n_changed_exact": changed}
        raise NotImplementedError(
            f"dtype {bd.name}/{td.name} packs elements across bytes; deltascope cannot compare it element by element"
        )
    a, b = ctx.w0, ctx.w1
    if a.dtype != b.dtype:  # e.g. I32 vs I64, or an int tensor turned float: compare values
        both_int = not a.is_floating_point() and not b.is_floating_point() and a.dtype != torch.bool
        a, b = (a.long(), b.long()) if both_int else (a.double(), b.double())
    return equality_metrics(a, b, chunk=ctx.chunk)


#: Family classes by name (``"module:Class"`` for families imported on first use, so
#: ``import deltascope`` stays cheap), for building runs and rebuilding saved results.
FAMILIES: dict[str, type[Family] | str] = {
    "elementwise": ElementwiseFamily,
    "spectral": "deltascope.family_spectral:SpectralFamily",
    "coords": "deltascope.family_coords:CoordsFamily",
}


def family_class(name: str) -> type[Family]:
    """The class of family ``name``, importing it on first use."""
    try:
        entry = FAMILIES[name]
    except KeyError as e:
        raise KeyError(f"unknown metric family {name!r} (known: {sorted(FAMILIES)})") from e
    if isinstance(entry, str):
        import importlib

        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
        FAMILIES[name] = entry
    return entry


def family_from_options(name: str, options: Mapping[str, Any]) -> Family:
    """Rebuild a family from the options saved in a result."""
    return family_class(name).from_options(options)
