"""Which tensor pairs a run analyses: include/exclude name patterns, layers, blocks,
modules and towers.

Name patterns are shell globs matched against the whole base name
(``"model.layers.1[0-5].*"``); prefix a pattern with ``re:`` for a regular expression
searched anywhere in the name (``"re:mlp\\.(up|down)_proj"``).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .naming import BLOCKS, TOWERS, Role

__all__ = ["Selection", "parse_layers"]

LayerSpec = int | str | range | Iterable[int] | None


def parse_layers(spec: LayerSpec) -> frozenset[int] | None:
    """Layers from ``3``, ``"0-3,7"``, ``range(4)`` or ``[0, 1]``; ``None`` means all.

    >>> sorted(parse_layers("0-2,7"))
    [0, 1, 2, 7]
    """
    if spec is None:
        return None
    if isinstance(spec, int) and not isinstance(spec, bool):
        return frozenset([spec])
    if isinstance(spec, str):
        out: set[int] = set()
        for part in spec.replace(" ", "").split(","):
            if not part:
                continue
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m:
                raise ValueError(f"Cannot read layer range {part!r} in {spec!r}; use e.g. '0-3,7'.")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) else lo
            if hi < lo:
                raise ValueError(f"Layer range {part!r} ends before it starts.")
            out.update(range(lo, hi + 1))
        return frozenset(out)
    try:
        return frozenset(int(x) for x in spec)
    except TypeError as e:
        raise ValueError(f"Cannot read layers from {spec!r}; pass an int, 'a-b,c', a range or a list.") from e


def _as_list(x: str | Iterable[str] | None) -> list[str]:
    if x is None:
        return []
    if isinstance(x, str):
        return [x]
    return [str(v) for v in x]


def _matcher(pattern: str) -> re.Pattern[str]:
    if pattern.startswith("re:"):
        return re.compile(pattern[3:])
    return re.compile(fnmatch.translate(pattern))


@dataclass(frozen=True)
class Selection:
    """A filter over tensor pairs. Every given criterion must hold.

    Example:
        >>> from deltascope.naming import role_of
        >>> sel = Selection.make(include="model.layers.1[0-5].*", blocks=["mlp"])
        >>> n = "model.layers.12.mlp.up_proj.weight"
        >>> sel.accepts(n, role_of(n)), sel.accepts("model.layers.2.mlp.up_proj.weight", role_of(n))
        (True, False)
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    layers: frozenset[int] | None = None
    blocks: frozenset[str] | None = None
    modules: frozenset[str] | None = None
    towers: frozenset[str] | None = None

    @classmethod
    def make(
        cls,
        include: str | Iterable[str] | None = None,
        exclude: str | Iterable[str] | None = None,
        layers: LayerSpec = None,
        blocks: str | Iterable[str] | None = None,
        modules: str | Iterable[str] | None = None,
        towers: str | Iterable[str] | None = None,
    ) -> Selection:
        blk = _as_list(blocks)
        bad = [b for b in blk if b not in BLOCKS]
        if bad:
            raise ValueError(f"Unknown block(s) {bad}; choose from {list(BLOCKS)}.")
        tw = _as_list(towers)
        bad = [t for t in tw if t not in TOWERS]
        if bad:
            raise ValueError(f"Unknown tower(s) {bad}; choose from {list(TOWERS)}.")
        inc, exc = tuple(_as_list(include)), tuple(_as_list(exclude))
        for p in inc + exc:
            try:
                _matcher(p)
            except re.error as e:
                raise ValueError(f"Invalid name pattern {p!r}: {e}") from e
        mods = _as_list(modules)
        return cls(
            include=inc,
            exclude=exc,
            layers=parse_layers(layers),
            blocks=frozenset(blk) if blk else None,
            modules=frozenset(mods) if mods else None,
            towers=frozenset(tw) if tw else None,
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_inc", [_matcher(p) for p in self.include])
        object.__setattr__(self, "_exc", [_matcher(p) for p in self.exclude])

    @property
    def is_everything(self) -> bool:
        return not (self.include or self.exclude or self.layers or self.blocks or self.modules or self.towers)

    def accepts(self, name: str, role: Role) -> bool:
        inc: list[re.Pattern[str]] = self._inc  # type: ignore[attr-defined]
        exc: list[re.Pattern[str]] = self._exc  # type: ignore[attr-defined]
        if inc and not any(_hit(rx, p, name) for rx, p in zip(inc, self.include)):
            return False
        if exc and any(_hit(rx, p, name) for rx, p in zip(exc, self.exclude)):
            return False
        if self.layers is not None and role.layer not in self.layers:
            return False
        if self.blocks is not None and role.block not in self.blocks:
            return False
        if self.modules is not None and role.module not in self.modules:
            return False
        return self.towers is None or role.tower in self.towers

    def to_dict(self) -> dict[str, Any]:
        return {
            "include": list(self.include),
            "exclude": list(self.exclude),
            "layers": sorted(self.layers) if self.layers is not None else None,
            "blocks": sorted(self.blocks) if self.blocks is not None else None,
            "modules": sorted(self.modules) if self.modules is not None else None,
            "towers": sorted(self.towers) if self.towers is not None else None,
        }


def _hit(rx: re.Pattern[str], pattern: str, name: str) -> bool:
    return bool(rx.search(name)) if pattern.startswith("re:") else bool(rx.match(name))
