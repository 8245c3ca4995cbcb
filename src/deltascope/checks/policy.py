"""Check policies: what a release must satisfy, read from TOML (or a dict) and validated.

A policy is a list of rules. Each rule selects tensors (name globs or ``re:`` regexes,
layers, blocks, modules, towers: the same filter as :class:`~deltascope.selection.Selection`)
and asserts something about them: a bound on a metric column per tensor or over the
selection, bit-identity, no NaN/Inf, no structural drift, or no drift against a previous
release's saved result. The schema, with examples, is in ``docs/check.md``.

Line numbers. ``tomllib`` reports no positions for values, so :class:`LineIndex` scans the
source text once: it tracks the current table (``[t]``, ``[[rules]]`` with a running
index, ``[rules.x]`` under the last array element) and records the first line of every
``key =`` (dotted keys and the keys of single-line inline tables included; the inside of
multi-line strings and arrays is skipped). A validation error looks its key path up, falling back to the
nearest enclosing key or table header. Keys inside arrays of inline tables resolve to the
array's own line -- write rules as ``[[rules]]`` tables to get exact lines.

TOML needs :mod:`tomllib` (Python >= 3.11). On Python 3.10 ``tomli`` is used when it is
installed; otherwise reading a ``.toml`` file raises a :class:`PolicyError` saying so, and
a dict or a ``.json`` policy file (same schema) works everywhere.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..columns import IDENTITY_COLUMNS, ColumnSpec
from ..comparison import GROUP_KEYS
from ..display import fmt_number
from ..errors import PolicyError
from ..families import FAMILIES, ElementwiseFamily, Family, family_class
from ..metrics.elementwise import ElementwiseOptions, fmt_threshold
from ..pairing import MISMATCH_KINDS
from ..selection import Selection

__all__ = [
    "Policy",
    "PolicyRule",
    "ColumnInfo",
    "LineIndex",
    "load_policy",
    "resolve_column",
    "RULE_KINDS",
    "MISMATCH_KINDS",
    "FORBIDDEN_MISMATCHES",
]

#: Rule kinds, in the order docs/check.md describes them.
RULE_KINDS = ("bound", "identical", "finite", "structure", "baseline")
#: Mismatch kinds a ``structure`` rule fails on unless listed in ``allow``.
FORBIDDEN_MISMATCHES = ("missing_in_tuned", "extra_in_tuned", "shape_changed", "dtype_changed", "ambiguous")

SELECT_KEYS = ("include", "exclude", "layers", "blocks", "modules", "towers")
_TOP_KEYS = ("policy", "select", "compute", "baseline", "rules")
_POLICY_KEYS = ("name", "description", "version")
_COMPUTE_KEYS = ("atol", "rms", "rel", "concentration", "ulp", "spectral", "coords")
_BASELINE_KEYS = ("path",)
_COMMON_RULE_KEYS = ("name", "kind", "description", "severity", "allow_empty", *SELECT_KEYS)
_KIND_KEYS: dict[str, tuple[str, ...]] = {
    "bound": ("metric", "min", "max", "scope", "by", "on_nan"),
    "identical": (),
    "finite": ("sides",),
    "structure": ("allow",),
    "baseline": (
        "metric",
        "metrics",
        "scope",
        "by",
        "abs_tol",
        "rel_tol",
        "direction",
        "on_nan",
        "allow_missing",
        "allow_new",
    ),
}
POLICY_VERSION = 1


# -- line numbers -----------------------------------------------------------------------
_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r"\"(?:[^\"\\]|\\.)*\"|'[^']*'"
_KEY = rf"(?:{_BARE}|{_QUOTED})(?:\s*\.\s*(?:{_BARE}|{_QUOTED}))*"
_KEY_RX = re.compile(rf"^\s*({_KEY})\s*=")
_ARRAY_RX = re.compile(rf"^\s*\[\[\s*({_KEY})\s*\]\]")
_TABLE_RX = re.compile(rf"^\s*\[\s*({_KEY})\s*\]")
_INLINE_KEY_RX = re.compile(rf"[{{,]\s*({_KEY})\s*=")
_PART_RX = re.compile(rf"{_BARE}|{_QUOTED}")


def _split_key(text: str) -> tuple[str, ...]:
    parts = []
    for p in _PART_RX.findall(text):
        if p[:1] in "\"'":
            p = json.loads(p) if p[0] == '"' else p[1:-1]
        parts.append(p)
    return tuple(parts)


class LineIndex:
    """First source line of each key path and table of a TOML text (see the module doc).

    Paths are tuples such as ``("rules", 2, "max")`` (array elements by index).

    Example:
        >>> idx = LineIndex('[policy]\\nname = "x"\\n\\n[[rules]]\\nkind = "finite"\\n[[rules]]\\nmax = 1\\n')
        >>> idx.line(("rules", 1, "max")), idx.line(("rules", 0, "min")), idx.line(("policy", "name"))
        (7, 4, 2)
    """

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[Any, ...], int] = {}
        arrays: dict[tuple[Any, ...], int] = {}
        current: tuple[Any, ...] = ()
        in_string: str | None = None
        depth = 0  # open brackets of a multi-line array value

        def resolve(path: tuple[str, ...]) -> tuple[Any, ...]:
            out: list[Any] = []
            for part in path:
                out.append(part)
                if tuple(out) in arrays:
                    out.append(arrays[tuple(out)])
            return tuple(out)

        for lineno, line in enumerate(text.splitlines(), 1):
            if in_string is not None:
                if line.count(in_string) % 2 == 1:
                    in_string = None
                continue
            if depth > 0:  # inside a multi-line array: no keys or headers here
                depth += _bracket_balance(line)
                continue
            if m := _ARRAY_RX.match(line):
                path = _split_key(m.group(1))
                parent = (*resolve(path[:-1]), path[-1])
                arrays[parent] = arrays.get(parent, -1) + 1
                current = (*parent, arrays[parent])
                self.lines.setdefault(current, lineno)
                continue
            if m := _TABLE_RX.match(line):
                current = resolve(_split_key(m.group(1)))
                self.lines.setdefault(current, lineno)
                continue
            if m := _KEY_RX.match(line):
                key = current + _split_key(m.group(1))
                self.lines.setdefault(key, lineno)
                rest = line[m.end() :]
                for inner in _INLINE_KEY_RX.finditer(rest):
                    self.lines.setdefault(key + _split_key(inner.group(1)), lineno)
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        in_string = quote
                        break
                else:
                    depth = max(0, _bracket_balance(rest))

    def line(self, path: tuple[Any, ...]) -> int | None:
        """The line of ``path``, else of its nearest enclosing key or table, else ``None``."""
        for n in range(len(path), 0, -1):
            hit = self.lines.get(tuple(path[:n]))
            if hit is not None:
                return hit
        return None


_STRING_RX = re.compile(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'')


def _bracket_balance(text: str) -> int:
    """Opened minus closed brackets of a TOML value fragment (strings and comments removed)."""
    text = _STRING_RX.sub("", text).split("#", 1)[0]
    return text.count("[") + text.count("{") - text.count("]") - text.count("}")


def key_text(path: tuple[Any, ...]) -> str:
    """``("rules", 2, "max")`` -> ``"rules[2].max"``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# -- columns and the metric families that provide them ---------------------------------
@dataclass(frozen=True)
class ColumnInfo:
    """A metric column named by a policy: its canonical name, the family that computes it,
    its aggregation kind (see :mod:`deltascope.columns`) and the family options it needs."""

    name: str
    family: str
    agg: str
    needs: tuple[tuple[str, float], ...] = ()


_PARAM_RX = re.compile(r"^(n_)?changed_(atol|rms|rel)_(.+)$")
_CONC_RX = re.compile(r"^top(.+)pct_energy$")
_ULP_COLUMNS = ("ulp1_share", "ulp2_share", "ulp3plus_share", "n_ulp1", "n_ulp2", "n_ulp3plus")


def _elementwise_column(name: str) -> ColumnInfo | None:
    """The elementwise column ``name`` (thresholds normalised: ``changed_atol_1e-6`` ->
    ``changed_atol_1e-06``), or ``None`` if the elementwise family has no such column."""
    needs: tuple[tuple[str, float], ...] = ()
    canonical = name
    if m := _PARAM_RX.match(name):
        try:
            t = float(m.group(3))
        except ValueError:
            return None
        if not math.isfinite(t) or t < 0:
            return None
        canonical = f"{m.group(1) or ''}changed_{m.group(2)}_{fmt_threshold(t)}"
        needs = ((m.group(2), t),)
    elif m := _CONC_RX.match(name):
        try:
            q = float(m.group(1)) / 100
        except ValueError:
            return None
        if not 0 < q <= 1:
            return None
        opts = ElementwiseOptions(concentration=(q,))
        canonical = next(s.name for s in ElementwiseFamily(opts).specs() if s.agg == "tensor")
        needs = (("concentration", q),)
    elif name in _ULP_COLUMNS:
        needs = (("ulp", 1.0),)
    opts = ElementwiseOptions(atol=(), rms=(), rel=(), ulp=True, concentration=())
    for kind, value in needs:
        if kind != "ulp":
            opts = ElementwiseOptions(**{**_opts_kwargs(opts), kind: (value,)})
    spec = next((s for s in ElementwiseFamily(opts).specs() if s.name == canonical), None)
    if spec is None:
        return None
    return ColumnInfo(canonical, "elementwise", spec.agg, needs)


def _opts_kwargs(o: ElementwiseOptions) -> dict[str, Any]:
    return {"atol": o.atol, "rms": o.rms, "rel": o.rel, "ulp": o.ulp, "concentration": o.concentration}


class _FamilyCatalog:
    """Column specs of the optional families, from a default instance of each
    (``from_user(True)``, or the policy's ``[compute]`` argument for that family); each
    family is imported only when a column is not found among the elementwise ones."""

    def __init__(self, compute: Mapping[str, Any]) -> None:
        self.compute = compute
        self._specs: dict[str, list[ColumnSpec]] = {}
        self.unavailable: dict[str, str] = {}

    def instance(self, name: str) -> Family:
        arg = self.compute.get(name, True)
        if arg is None or arg is False or arg == "off":
            arg = True
        return family_class(name).from_user(arg)  # type: ignore[attr-defined]

    def specs(self, name: str) -> list[ColumnSpec]:
        if name not in self._specs and name not in self.unavailable:
            try:
                self._specs[name] = list(self.instance(name).specs())
            except (ImportError, AttributeError, NotImplementedError) as e:
                self.unavailable[name] = f"{type(e).__name__}: {e}"
        return self._specs.get(name, [])

    def optional_families(self) -> list[str]:
        return [f for f in FAMILIES if f != "elementwise"]

    def find(self, name: str) -> ColumnInfo | None:
        for fam in self.optional_families():
            spec = next((s for s in self.specs(fam) if s.name == name), None)
            if spec is not None:
                return ColumnInfo(name, fam, spec.agg)
        return None

    def known(self) -> list[str]:
        names = [s.name for s in ElementwiseFamily(ElementwiseOptions.full()).specs()]
        for fam in self.optional_families():
            names += [s.name for s in self.specs(fam)]
        return names


_IDENTITY = {s.name for s in IDENTITY_COLUMNS}


def resolve_column(name: str, compute: Mapping[str, Any] | None = None) -> ColumnInfo:
    """Which family computes column ``name`` and how it aggregates.

    Elementwise columns are recognised by name (with their thresholds); every other
    column is looked up in the ``specs()`` of a default instance of each optional family
    registered in :data:`deltascope.families.FAMILIES` (``spectral``, ``coords`` ...), so
    no family's column list is hard-coded here.

    Raises:
        KeyError: no family has the column; the message lists close matches.

    Example:
        >>> resolve_column("changed_atol_1e-6")
        ColumnInfo(name='changed_atol_1e-06', family='elementwise', agg='derived', needs=(('atol', 1e-06),))
    """
    if name in _IDENTITY:
        raise KeyError(f"{name!r} is an identity column (a key such as the name or layer), not a metric")
    info = _elementwise_column(name)
    if info is not None:
        return info
    catalog = _FamilyCatalog(compute or {})
    info = catalog.find(name)
    if info is not None and info.agg == "key":
        raise KeyError(f"{name!r} is a note/key column of the {info.family} family, not a metric")
    if info is not None:
        return info
    close = difflib.get_close_matches(name, catalog.known(), n=3, cutoff=0.6)
    msg = f"no metric family computes a column {name!r}"
    if close:
        msg += f"; did you mean {' or '.join(repr(c) for c in close)}?"
    if catalog.unavailable:
        msg += " (not available here: " + "; ".join(f"{k}: {v}" for k, v in catalog.unavailable.items()) + ")"
    msg += ". Columns of non-default family options need them set in [compute] (e.g. compute.spectral = {...})"
    raise KeyError(msg)


# -- the policy -------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyRule:
    """One validated rule (field meanings: ``docs/check.md``)."""

    index: int
    name: str
    kind: str
    selection: Selection = field(default_factory=Selection)
    metrics: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    scope: str = "tensor"
    by: tuple[str, ...] = ()
    on_nan: str = "fail"
    sides: tuple[str, ...] = ("tuned",)
    allow: tuple[str, ...] = ()
    abs_tol: float = 0.0
    rel_tol: float = 0.0
    direction: str = "both"
    allow_missing: bool = False
    allow_new: bool = True
    allow_empty: bool = False
    severity: str = "error"
    description: str = ""
    line: int | None = None

    @property
    def key(self) -> str:
        return f"rules[{self.index}]"

    @property
    def metric(self) -> str | None:
        return self.metrics[0] if self.metrics else None

    def bound_text(self) -> str:
        """The bound in words: ``'<= 0.6'``, ``'in [0.1, 0.6]'``, ``'== 0 changed coordinates'`` ..."""
        if self.kind == "identical":
            return "== 0 changed coordinates"
        if self.kind == "finite":
            return f"no NaN/Inf in {' and '.join(self.sides)}"
        if self.kind == "structure":
            forbidden = [k for k in FORBIDDEN_MISMATCHES if k not in self.allow]
            return "no " + ", ".join(forbidden) if forbidden else "anything allowed"
        if self.kind == "baseline":
            tol = " + ".join(
                t
                for t in (
                    f"{self.abs_tol:g}" if self.abs_tol else "",
                    f"{self.rel_tol:g}·|baseline|" if self.rel_tol else "",
                )
                if t
            )
            lhs = {"both": "|Δ|", "increase": "Δ", "decrease": "−Δ"}[self.direction]
            return f"{lhs} <= {tol or '0'}"
        col = self.metric or ""
        if self.min is not None and self.max is not None:
            return f"in [{fmt_number(self.min, col)}, {fmt_number(self.max, col)}]"
        return f">= {fmt_number(self.min, col)}" if self.min is not None else f"<= {fmt_number(self.max, col)}"

    def scope_text(self) -> str:
        if self.scope == "tensor":
            return "per tensor"
        return "per " + "×".join(self.by) if self.by else "over the selection"


@dataclass
class Policy:
    """A validated check policy. Build it with :func:`load_policy`."""

    rules: list[PolicyRule]
    name: str = "policy"
    description: str = ""
    select: dict[str, Any] = field(default_factory=dict)
    compute: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None
    source: str | None = None
    lines: LineIndex | None = None
    columns: dict[str, ColumnInfo] = field(default_factory=dict)

    @property
    def selection(self) -> Selection:
        """The ``[select]`` filter: what a run reads and what the rules see."""
        return Selection.make(**self.select)

    def where(self, path: tuple[Any, ...]) -> str:
        """``'release.toml:14: rules[2].max'`` for messages."""
        line = self.lines.line(path) if self.lines else None
        loc = f"{self.source}:{line}" if self.source and line else (self.source or "policy")
        return f"{loc}: {key_text(path)}" if path else loc

    def compare_options(self) -> dict[str, Any]:
        """Keyword arguments for :func:`deltascope.compare` computing exactly what the
        rules need: the elementwise thresholds named by the rules (plus ``[compute]``),
        ULP counts and concentration only when named, an optional family (spectral,
        coords ...) only when a rule names one of its columns or ``[compute]`` asks for
        it, and the ``[select]`` filter.

        Example:
            >>> p = load_policy({"rules": [{"kind": "bound", "metric": "changed_atol_1e-6", "max": 0.5}]})
            >>> o = p.compare_options()
            >>> o["metrics"].atol, o["metrics"].ulp, o["spectral"], o["coords"]
            ((1e-06,), False, False, False)
        """
        c = self.compute
        acc: dict[str, set[float]] = {
            k: {float(v) for v in c.get(k, ())} for k in ("atol", "rms", "rel", "concentration")
        }
        ulp = bool(c.get("ulp", False))
        families: dict[str, Any] = {}
        for info in self.columns.values():
            for kind, value in info.needs:
                if kind == "ulp":
                    ulp = True
                else:
                    acc[kind].add(value)
            if info.family != "elementwise":
                families[info.family] = c.get(info.family, True)
        for fam in ("spectral", "coords"):
            if c.get(fam) not in (None, False, "off"):
                families[fam] = c[fam]
        out: dict[str, Any] = {
            "metrics": ElementwiseOptions(
                atol=tuple(acc["atol"]),
                rms=tuple(acc["rms"]),
                rel=tuple(acc["rel"]),
                ulp=ulp,
                concentration=tuple(acc["concentration"]),
            ),
            "spectral": families.pop("spectral", False),
            "coords": families.pop("coords", False),
        }
        if families:  # a family registered beyond spectral/coords
            catalog = _FamilyCatalog(c)
            out["extra_families"] = [catalog.instance(f) for f in families]
        out.update({k: v for k, v in self.select.items() if v is not None})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "source": self.source, "n_rules": len(self.rules)}


# -- loading and validation -------------------------------------------------------------
def load_policy(policy: Policy | Mapping[str, Any] | str | os.PathLike[str]) -> Policy:
    """Read and validate a policy: a TOML file, a JSON file (same schema), a dict, or a
    :class:`Policy` (returned as is).

    Raises:
        PolicyError: the file cannot be read or parsed, or a key is unknown or has a bad
            value; ``key`` is the dotted key (``rules[2].max``) and ``line`` its line in
            the file when known.

    Example:
        >>> p = load_policy({"rules": [{"name": "embeddings-frozen", "kind": "identical", "blocks": ["embedding"]}]})
        >>> p.rules[0].kind, sorted(p.rules[0].selection.blocks)
        ('identical', ['embedding'])
        >>> load_policy({"rules": [{"kind": "bound", "metric": "changed_exact", "mx": 1}]})
        Traceback (most recent call last):
        ...
        deltascope.errors.PolicyError: policy: rules[0].mx: unknown key 'mx' in a bound rule; did you mean 'max'?
    """
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, Mapping):
        return _Validator(dict(policy), None, None, None).policy()
    path = Path(policy)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"Cannot read policy file {str(path)!r}: {e}") from e
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise PolicyError(f"{path}: not valid JSON: {e}", line=getattr(e, "lineno", None)) from e
        if not isinstance(data, dict):
            raise PolicyError(f"{path}: a policy is a JSON object")
        return _Validator(data, str(path), None, path.parent).policy()
    return policy_from_toml(text, source=str(path), base_dir=path.parent)


def _toml_loads(text: str, source: str) -> dict[str, Any]:
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise PolicyError(
                f"Reading the TOML policy {source!r} needs Python >= 3.11 (tomllib) or the 'tomli' package. "
                "On Python 3.10, install tomli, or write the policy as JSON (same schema) or pass a dict."
            ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        line = int(m.group(1)) if m else None
        raise PolicyError(f"{source}{f':{line}' if line else ''}: not valid TOML: {e}", line=line) from e


def policy_from_toml(text: str, *, source: str | None = None, base_dir: str | os.PathLike[str] | None = None) -> Policy:
    """Parse and validate a policy from TOML text (``base_dir``: where a relative
    ``[baseline].path`` is resolved from)."""
    data = _toml_loads(text, source or "policy")
    return _Validator(data, source, LineIndex(text), Path(base_dir) if base_dir is not None else None).policy()


class _Validator:
    """Turns a parsed policy dict into a :class:`Policy`, raising :class:`PolicyError`
    with the key path and line of the first problem."""

    def __init__(self, data: dict[str, Any], source: str | None, lines: LineIndex | None, base_dir: Path | None):
        self.data = data
        self.source = source
        self.lines = lines
        self.base_dir = base_dir

    def fail(self, path: tuple[Any, ...], message: str) -> PolicyError:
        line = self.lines.line(path) if self.lines else None
        loc = f"{self.source}:{line}" if self.source and line else (self.source or "policy")
        where = f"{loc}: {key_text(path)}: " if path else f"{loc}: "
        return PolicyError(where + message, key=key_text(path) or None, line=line)

    # -- small typed readers --------------------------------------------------------
    def keys(self, table: Any, path: tuple[Any, ...], allowed: tuple[str, ...], what: str) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise self.fail(path, f"expected a table, got {type(table).__name__} {table!r}")
        for k in table:
            if k not in allowed:
                close = difflib.get_close_matches(k, allowed, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else f" (allowed: {', '.join(allowed)})"
                raise self.fail((*path, k), f"unknown key {k!r} in {what}{hint}")
        return table

    def number(self, table: dict[str, Any], path: tuple[Any, ...], key: str, *, nonneg: bool = False) -> float | None:
        v = table.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise self.fail((*path, key), f"expected a finite number, got {v!r}")
        if nonneg and v < 0:
            raise self.fail((*path, key), f"must be >= 0, got {v!r}")
        return float(v)

    def string(
        self, table: dict[str, Any], path: tuple[Any, ...], key: str, choices: tuple[str, ...] = ()
    ) -> str | None:
        v = table.get(key)
        if v is None:
            return None
        if not isinstance(v, str):
            raise self.fail((*path, key), f"expected a string, got {v!r}")
        if choices and v not in choices:
            raise self.fail((*path, key), f"{v!r} is not one of {', '.join(repr(c) for c in choices)}")
        return v

    def boolean(self, table: dict[str, Any], path: tuple[Any, ...], key: str, default: bool) -> bool:
        v = table.get(key, default)
        if not isinstance(v, bool):
            raise self.fail((*path, key), f"expected true or false, got {v!r}")
        return v

    def strings(
        self, table: dict[str, Any], path: tuple[Any, ...], key: str, choices: tuple[str, ...] = ()
    ) -> tuple[str, ...] | None:
        v = table.get(key)
        if v is None:
            return None
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise self.fail((*path, key), f"expected a string or a list of strings, got {v!r}")
        for x in items:
            if choices and x not in choices:
                raise self.fail((*path, key), f"{x!r} is not one of {', '.join(choices)}")
        return tuple(items)

    def numbers(self, table: dict[str, Any], path: tuple[Any, ...], key: str) -> tuple[float, ...] | None:
        v = table.get(key)
        if v is None:
            return None
        items = v if isinstance(v, list) else [v]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in items):
            raise self.fail((*path, key), f"expected a non-negative number or a list of them, got {v!r}")
        return tuple(float(x) for x in items)

    def selection(self, table: dict[str, Any], path: tuple[Any, ...]) -> tuple[dict[str, Any], Selection]:
        sel: dict[str, Any] = {}
        for k in SELECT_KEYS:
            if k not in table:
                continue
            v = table[k]
            if k == "layers":
                if isinstance(v, bool) or not isinstance(v, (int, str, list)):
                    raise self.fail((*path, k), f"expected e.g. 3, '0-3,7' or [0, 1], got {v!r}")
                sel[k] = v
            else:
                sel[k] = list(self.strings(table, path, k) or ())
            try:
                Selection.make(**{k: sel[k]})
            except (ValueError, TypeError) as e:
                raise self.fail((*path, k), str(e)) from e
        return sel, Selection.make(**sel)

    # -- the whole policy --------------------------------------------------------------
    def policy(self) -> Policy:
        data = self.keys(self.data, (), _TOP_KEYS, "a policy")
        meta = self.keys(data.get("policy", {}), ("policy",), _POLICY_KEYS, "[policy]")
        version = meta.get("version", POLICY_VERSION)
        if version != POLICY_VERSION:
            raise self.fail(
                ("policy", "version"), f"this deltascope reads policy version {POLICY_VERSION}, got {version!r}"
            )
        name = self.string(meta, ("policy",), "name") or (Path(self.source).stem if self.source else "policy")
        description = self.string(meta, ("policy",), "description") or ""
        select, _ = self.selection(self.keys(data.get("select", {}), ("select",), SELECT_KEYS, "[select]"), ("select",))
        compute = self.compute(self.keys(data.get("compute", {}), ("compute",), _COMPUTE_KEYS, "[compute]"))
        base = self.keys(data.get("baseline", {}), ("baseline",), _BASELINE_KEYS, "[baseline]")
        baseline = self.string(base, ("baseline",), "path")
        if baseline is not None and self.base_dir is not None and not Path(baseline).is_absolute():
            baseline = str(self.base_dir / baseline)
        raw_rules = data.get("rules")
        if raw_rules is None or raw_rules == []:
            raise self.fail(("rules",), "a policy needs at least one rule ([[rules]] table)")
        if not isinstance(raw_rules, list):
            raise self.fail(("rules",), "expected an array of tables ([[rules]])")
        columns: dict[str, ColumnInfo] = {}
        rules = [self.rule(i, r, compute, columns) for i, r in enumerate(raw_rules)]
        seen: dict[str, int] = {}
        for r in rules:
            if r.name in seen:
                raise self.fail(
                    ("rules", r.index, "name"), f"rule name {r.name!r} is also used by rules[{seen[r.name]}]"
                )
            seen[r.name] = r.index
        return Policy(rules, name, description, select, compute, baseline, self.source, self.lines, columns)

    def compute(self, table: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in ("atol", "rms", "rel", "concentration"):
            v = self.numbers(table, ("compute",), k)
            if v is not None:
                out[k] = v
        try:
            ElementwiseOptions(**{k: v for k, v in out.items()})
        except ValueError as e:
            raise self.fail(("compute",), str(e)) from e
        if "ulp" in table:
            out["ulp"] = self.boolean(table, ("compute",), "ulp", False)
        for fam in ("spectral", "coords"):
            if fam not in table:
                continue
            arg = table[fam]
            if arg not in (False, "off"):
                try:
                    family_class(fam).from_user(arg)  # type: ignore[attr-defined]
                except Exception as e:  # the family's own message says what is wrong
                    raise self.fail(("compute", fam), f"{type(e).__name__}: {e}") from e
            out[fam] = arg
        return out

    def rule(self, i: int, raw: Any, compute: dict[str, Any], columns: dict[str, ColumnInfo]) -> PolicyRule:
        path: tuple[Any, ...] = ("rules", i)
        if not isinstance(raw, dict):
            raise self.fail(path, f"expected a table, got {raw!r}")
        kind = self.string(raw, path, "kind", RULE_KINDS)
        if kind is None:
            if "metric" not in raw:
                raise self.fail(path, f"set kind = one of {', '.join(RULE_KINDS)} (or a metric for a bound rule)")
            kind = "bound"
        self.keys(raw, path, _COMMON_RULE_KEYS + _KIND_KEYS[kind], f"a {kind} rule")
        _, selection = self.selection(raw, path)
        f: dict[str, Any] = {
            "index": i,
            "kind": kind,
            "name": self.string(raw, path, "name") or f"rule{i + 1}-{kind}",
            "selection": selection,
            "description": self.string(raw, path, "description") or "",
            "severity": self.string(raw, path, "severity", ("error", "warning")) or "error",
            "allow_empty": self.boolean(raw, path, "allow_empty", kind == "structure"),
            "line": self.lines.line(path) if self.lines else None,
        }
        if kind in ("bound", "baseline"):
            f.update(self.measured(raw, path, kind, compute, columns))
        if kind == "bound":
            f["min"] = self.number(raw, path, "min")
            f["max"] = self.number(raw, path, "max")
            if f["min"] is None and f["max"] is None:
                raise self.fail(path, "a bound rule needs min, max or both")
            if f["min"] is not None and f["max"] is not None and f["min"] > f["max"]:
                raise self.fail((*path, "min"), f"min {f['min']:g} is above max {f['max']:g}")
        elif kind == "finite":
            f["sides"] = self.strings(raw, path, "sides", ("base", "tuned")) or ("tuned",)
        elif kind == "structure":
            f["allow"] = self.strings(raw, path, "allow", MISMATCH_KINDS) or ()
        elif kind == "baseline":
            f["abs_tol"] = self.number(raw, path, "abs_tol", nonneg=True) or 0.0
            f["rel_tol"] = self.number(raw, path, "rel_tol", nonneg=True) or 0.0
            if "abs_tol" not in raw and "rel_tol" not in raw:
                raise self.fail(path, "a baseline rule needs a tolerance: abs_tol, rel_tol or both (0 means exact)")
            f["direction"] = self.string(raw, path, "direction", ("both", "increase", "decrease")) or "both"
            f["allow_missing"] = self.boolean(raw, path, "allow_missing", False)
            f["allow_new"] = self.boolean(raw, path, "allow_new", True)
        return PolicyRule(**f)

    def measured(
        self,
        raw: dict[str, Any],
        path: tuple[Any, ...],
        kind: str,
        compute: dict[str, Any],
        columns: dict[str, ColumnInfo],
    ) -> dict[str, Any]:
        """metric(s), scope, by and on_nan of a bound or baseline rule, with each metric
        checked against the families' columns."""
        if "metric" in raw and "metrics" in raw:
            raise self.fail((*path, "metrics"), "give metric or metrics, not both")
        key = "metrics" if "metrics" in raw else "metric"
        if kind == "bound":
            m = self.string(raw, path, "metric")
            names: tuple[str, ...] = (m,) if m else ()
        else:
            names = self.strings(raw, path, key) or ()
        if not names:
            raise self.fail((*path, "metric"), f"a {kind} rule needs a metric column, e.g. metric = 'changed_exact'")
        by = self.strings(raw, path, "by", GROUP_KEYS) or ()
        default_scope = "aggregate" if by or kind == "baseline" else "tensor"
        scope = self.string(raw, path, "scope", ("tensor", "aggregate")) or default_scope
        if by and scope == "tensor":
            raise self.fail((*path, "by"), "by groups the selection: use it with scope = 'aggregate'")
        resolved = []
        for name in names:
            try:
                info = resolve_column(name, compute)
            except KeyError as e:
                raise self.fail((*path, key), str(e.args[0])) from None
            if scope == "aggregate" and info.agg == "tensor":
                raise self.fail(
                    (*path, key), f"{info.name!r} is a per-tensor column with no group value; use scope = 'tensor'"
                )
            columns.setdefault(info.name, info)
            resolved.append(info.name)
        return {
            "metrics": tuple(resolved),
            "scope": scope,
            "by": by,
            "on_nan": self.string(raw, path, "on_nan", ("fail", "ignore")) or "fail",
        }
