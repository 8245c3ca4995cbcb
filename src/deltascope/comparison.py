"""The result of a comparison: one row per tensor pair, the mismatch report, metadata.

Everything downstream (reports, checks, masks, a later run's baseline) reads a
:class:`Comparison` or its JSON form. The JSON is versioned and round-trips exactly:
``Comparison.from_json(c.to_json())`` gives frames equal to the originals, bit for bit.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .columns import ColumnSpec
from .constants import RESULT_FORMAT, RESULT_FORMAT_VERSION
from .engine import as_float, normalize_dtypes, shares
from .errors import ResultFormatError
from .families import Family, family_from_options
from .pairing import MISMATCH_COLUMNS, MISMATCH_KINDS

__all__ = ["Comparison", "GROUP_KEYS", "atomic_write_text", "jsonable", "records"]

#: Columns ``by()`` accepts as keys.
GROUP_KEYS = ("tower", "layer", "block", "module", "expert", "param", "dtype_base", "dtype_tuned", "name")


class Comparison:
    """A finished comparison.

    Attributes:
        tensors: one row per analysed tensor pair (see ``docs/columns.md``), in base
            storage order, full precision. Rows with ``status != "ok"`` carry a reason.
        mismatches: missing / extra / shape- or dtype-changed / tied / aliased tensors.
        metadata: sources, resolved files, sizes, revisions, options, versions, timing.
        columns: the :class:`~deltascope.columns.ColumnSpec` of every column.

    Example:
        >>> import deltascope
        >>> base, tuned = deltascope.demo_pair()           # a small synthetic pair
        >>> cmp = deltascope.compare(base, tuned, progress=False)
        >>> bool(cmp.by("block").loc["mlp", "changed_exact"] > cmp.by("block").loc["attention", "changed_exact"])
        True
    """

    def __init__(
        self,
        tensors: pd.DataFrame,
        mismatches: pd.DataFrame,
        metadata: dict[str, Any],
        columns: Sequence[ColumnSpec],
        families: Sequence[Family],
        extras: dict[str, pd.DataFrame] | None = None,
    ) -> None:
        self.tensors = tensors
        self.mismatches = mismatches
        self.metadata = metadata
        self.columns = list(columns)
        self.families = list(families)
        #: Extra tables a family produced (e.g. the magnitude profile), by name.
        self.extras: dict[str, pd.DataFrame] = dict(extras or {})

    # -- views -----------------------------------------------------------------------
    @property
    def ok(self) -> pd.DataFrame:
        """Rows whose metrics were computed (``status == "ok"``)."""
        return self.tensors[self.tensors["status"] == "ok"]

    @property
    def errors(self) -> pd.DataFrame:
        """Rows that failed, with the reason."""
        return self.tensors.loc[self.tensors["status"] == "error", ["name", "reason"]]

    def _specs_by_kind(self, *kinds: str) -> list[str]:
        return [s.name for s in self.columns if s.agg in kinds and s.name in self.tensors.columns]

    def by(self, *keys: str, dropna: bool = False, where: Any = None) -> pd.DataFrame:
        """Aggregate over groups of tensors, with the right weighting.

        Raw sums and counts are summed over each group and the derived columns recomputed
        from them: fractions are numel-weighted, norms are ``sqrt(Σ‖·‖²)``, ``rel_update``
        is ``sqrt(Σ‖Δ‖²)/sqrt(Σ‖W0‖²)``, ``energy_share`` is the group's share of the whole
        comparison's ‖Δ‖². Per-tensor-only columns (e.g. concentration) are left out.

        Args:
            *keys: any of :data:`GROUP_KEYS`; none gives one row for the whole model.
            dropna: drop groups whose key is missing (e.g. ``layer`` of embeddings).
            where: a boolean mask over ``tensors`` rows: aggregate only those rows (shares
                stay relative to the whole comparison).

        Returns:
            A DataFrame indexed by the keys, with ``n_tensors`` first.
        """
        bad = [k for k in keys if k not in GROUP_KEYS]
        if bad:
            raise ValueError(f"Cannot group by {bad}; choose from {list(GROUP_KEYS)}.")
        ok = self.ok
        if where is not None:
            mask = np.asarray(where, dtype=bool)
            if mask.shape != (len(self.tensors),):
                raise ValueError(f"where= needs one boolean per tensor row ({len(self.tensors)}), got {mask.shape}")
            ok = self.tensors[mask & (self.tensors["status"] == "ok").to_numpy()]
        sums = self._specs_by_kind("sum")
        maxes = self._specs_by_kind("max")
        if keys:
            frame = ok.copy()
            grouped = frame.groupby(list(keys), dropna=dropna, sort=True)
            agg = grouped[sums].sum(min_count=1) if sums else pd.DataFrame(index=grouped.size().index)
            for c in maxes:
                agg[c] = grouped[c].max()
            agg.insert(0, "n_tensors", grouped.size())
        else:
            data: dict[str, Any] = {"n_tensors": [len(ok)]}
            for c in sums:
                data[c] = [ok[c].sum(min_count=1)]
            for c in maxes:
                data[c] = [ok[c].max()]
            agg = pd.DataFrame(data, index=pd.Index(["model"], name="scope"))
        return self._finish_groups(agg)

    def _finish_groups(self, agg: pd.DataFrame) -> pd.DataFrame:
        cols: dict[str, Any] = {c: agg[c] for c in agg.columns}
        raw = {c: as_float(agg[c]) for c in agg.columns}
        for f in self.families:
            fam = {c: raw[c] for c in f.raw_columns() if c in raw}
            if all(c in fam for c in f.raw_columns() if self._kind(c) in ("sum", "max")):
                cols.update(f.derive(fam))
        if "energy" in raw:
            ok = self.ok
            cols.update(
                shares(
                    raw["energy"], raw["numel"], float(as_float(ok["energy"]).sum()), float(as_float(ok["numel"]).sum())
                )
            )
        order = ["n_tensors"] + [s.name for s in self.columns if s.name in cols and s.agg != "key"]
        order += [c for c in cols if c not in order]
        return normalize_dtypes(pd.DataFrame({c: cols[c] for c in order}, index=agg.index), self.columns)

    def _kind(self, name: str) -> str | None:
        for s in self.columns:
            if s.name == name:
                return s.agg
        return None

    def summary(self) -> pd.DataFrame:
        """One row for the whole comparison: the model-level aggregate plus counts of
        pairs, errors and mismatches."""
        s = self.by()
        kinds = self.mismatches["kind"] if len(self.mismatches) else pd.Series([], dtype=object)
        extra = {f"n_{k}": [int((kinds == k).sum())] for k in MISMATCH_KINDS if k not in ("aliased", "ambiguous")}
        errors = pd.DataFrame({"n_errors": [int((self.tensors["status"] == "error").sum())]}, index=s.index)
        return pd.concat([s.iloc[:, :1], errors, s.iloc[:, 1:], pd.DataFrame(extra, index=s.index)], axis=1)

    def top(self, n: int = 10, by: str = "energy") -> pd.DataFrame:
        """The ``n`` tensors with the largest ``by`` (e.g. ``"energy"``, ``"rel_update"``)."""
        if by not in self.tensors.columns:
            raise ValueError(f"No column {by!r}; see Comparison.tensors.columns.")
        return self.ok.sort_values(by, ascending=False, kind="stable").head(n)

    # -- downstream views (each lives in its own module, imported on first use) ------
    @property
    def plot(self) -> Any:
        """Plots of this comparison (matplotlib; each takes ``ax=None`` and returns the
        Axes or Figure): ``cmp.plot.layer_profile()``, ``cmp.plot.heatmap(...)`` ...
        See :mod:`deltascope.report.plots`."""
        from .report.plots import PlotAccessor

        return PlotAccessor(self)

    def report(self, path: str | os.PathLike[str], **options: Any) -> Path:
        """Write a self-contained HTML report to ``path`` and return the path.
        See :func:`deltascope.report.html.write_report`."""
        from .report.html import write_report

        return write_report(self, path, **options)

    def magnitude_profile(self, by: str | Sequence[str] | None = None, **options: Any) -> pd.DataFrame:
        """Change rate, mean |Δ|, mean |Δ|/|W0| and the stored dtype's ULP per |W0|
        quantile bin, aggregated by ``by`` (needs ``compare(..., coords=True)``).
        See :func:`deltascope.family_coords.magnitude_profile`."""
        from .family_coords import magnitude_profile

        return magnitude_profile(self, by, **options)

    # -- display ---------------------------------------------------------------------
    def headline(self) -> dict[str, Any]:
        """The handful of model-level numbers the text and HTML views lead with."""
        s = self.summary().iloc[0]
        return {k: s[k] for k in ("n_tensors", "numel", "changed_exact", "rel_update", "cosine") if k in s}

    def __repr__(self) -> str:
        meta = self.metadata
        lines = [f"<Comparison {meta.get('base', {}).get('spec')!r} -> {meta.get('tuned', {}).get('spec')!r}>"]
        if len(self.ok):
            h = self.headline()
            lines.append(
                f"  {int(h.get('n_tensors', 0))} tensors, {int(h.get('numel', 0)):,} coordinates; "
                f"changed (exact) {h.get('changed_exact', math.nan):.4%}; "
                f"relative update {h.get('rel_update', math.nan):.3e}"
            )
        n_err = int((self.tensors["status"] == "error").sum())
        if n_err:
            lines.append(f"  {n_err} tensor(s) failed: see .errors")
        if len(self.mismatches):
            counts = self.mismatches["kind"].value_counts().to_dict()
            lines.append("  mismatches: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from .display import comparison_html

        return comparison_html(self)

    # -- persistence -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form (see :meth:`to_json`)."""
        return {
            "format": RESULT_FORMAT,
            "version": RESULT_FORMAT_VERSION,
            "metadata": self.metadata,
            "families": {f.name: f.options() for f in self.families},
            "columns": [{"name": s.name, "agg": s.agg, "doc": s.doc, "family": s.family} for s in self.columns],
            "tensors": _frame_to_json(self.tensors),
            "mismatches": _frame_to_json(self.mismatches),
            "extras": {k: _frame_to_json(v, index=True) for k, v in self.extras.items()},
        }

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int | None = None) -> str:
        """Serialise to versioned JSON; write it to ``path`` (atomically) if given.

        Floats are written with ``repr`` precision (exact round trip); NaN and ±Inf as the
        strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` so the file is standard JSON.
        """
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False)
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Comparison:
        if not isinstance(obj, dict) or obj.get("format") != RESULT_FORMAT:
            raise ResultFormatError(
                "This is not a deltascope result (missing 'format': "
                f"{RESULT_FORMAT!r}). Pass a file written by Comparison.to_json or 'deltascope compare -o'."
            )
        version = obj.get("version")
        if not isinstance(version, int) or version > RESULT_FORMAT_VERSION:
            raise ResultFormatError(
                f"Result format version {version!r} is newer than this deltascope understands "
                f"({RESULT_FORMAT_VERSION}); upgrade deltascope to read it."
            )
        try:
            families = [family_from_options(k, v) for k, v in obj["families"].items()]
            columns = [ColumnSpec(**c) for c in obj["columns"]]
            tensors = normalize_dtypes(_frame_from_json(obj["tensors"]), columns)
            mismatches = _frame_from_json(obj["mismatches"])
            extras = {k: _frame_from_json(v) for k, v in obj.get("extras", {}).items()}
        except (KeyError, TypeError, ValueError) as e:
            raise ResultFormatError(f"Saved result is incomplete or corrupt: {e}") from e
        return cls(tensors, mismatches, obj.get("metadata", {}), columns, families, extras)

    @classmethod
    def from_json(cls, source: str | os.PathLike[str]) -> Comparison:
        """Load a result from a JSON file path or a JSON string."""
        text = str(source)
        if not text.lstrip().startswith("{"):
            try:
                text = Path(source).read_text(encoding="utf-8")
            except OSError as e:
                raise ResultFormatError(f"Cannot read saved result {str(source)!r}: {e}") from e
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise ResultFormatError(f"Saved result {str(source)[:80]!r} is not valid JSON: {e}") from e
        return cls.from_dict(obj)

    def to_csv(self, folder: str | os.PathLike[str], *, groups: Sequence[Sequence[str]] | None = None) -> list[Path]:
        """Write ``tensors.csv``, ``mismatches.csv`` and one CSV per grouping into ``folder``."""
        return self._export(Path(folder), "csv", groups)

    def to_parquet(
        self, folder: str | os.PathLike[str], *, groups: Sequence[Sequence[str]] | None = None
    ) -> list[Path]:
        """Like :meth:`to_csv`, in Parquet (needs ``pyarrow``)."""
        return self._export(Path(folder), "parquet", groups)

    def tables(self, groups: Sequence[Sequence[str]] | None = None) -> dict[str, pd.DataFrame]:
        """The standard set of tables by name: tensors, mismatches, summary and groups."""
        groups = groups if groups is not None else DEFAULT_GROUPS
        out = {"tensors": self.tensors, "mismatches": self.mismatches, "summary": self.summary()}
        for g in groups:
            out["by_" + "_".join(g)] = self.by(*g)
        out.update(self.extras)
        return out

    def _export(self, folder: Path, fmt: str, groups: Sequence[Sequence[str]] | None) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for name, df in self.tables(groups).items():
            path = folder / f"{name}.{fmt}"
            flat = _flatten_for_export(df)
            tmp = path.with_name(path.name + ".partial")
            if fmt == "csv":
                flat.to_csv(tmp, index=not isinstance(flat.index, pd.RangeIndex))
            else:
                flat.to_parquet(tmp)
            os.replace(tmp, path)
            written.append(path)
        return written


DEFAULT_GROUPS: list[tuple[str, ...]] = [("block",), ("module",), ("layer",), ("tower",), ("layer", "module")]


def jsonable(v: Any) -> Any:
    """A plain-Python, JSON-safe value: NaN/NA -> None, numpy scalars -> int/float/bool."""
    if v is None or v is pd.NA:
        return None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) or math.isinf(v) else float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def records(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Rows of a group table as ``{index label: {column: value}}``, JSON-safe."""
    out: dict[str, dict[str, Any]] = {}
    for idx, row in df.iterrows():
        label = ",".join(str(jsonable(i)) for i in idx) if isinstance(idx, tuple) else str(jsonable(idx))
        out[label] = {k: jsonable(v) for k, v in row.items()}
    return out


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: a reader never sees
    a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _flatten_for_export(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = [json.dumps(v) if isinstance(v, (list, dict)) else v for v in out[c]]
    return out


# -- exact JSON encoding of frames ------------------------------------------------------
def _enc(v: Any) -> Any:
    if v is None or v is pd.NA:
        return None
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return "NaN"
        if math.isinf(f):
            return "Infinity" if f > 0 else "-Infinity"
        return f
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, (list, tuple)):
        return [_enc(x) for x in v]
    return v


_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _frame_to_json(df: pd.DataFrame, index: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "columns": [str(c) for c in df.columns],
        "dtypes": [str(t) for t in df.dtypes],
        "data": [[_enc(v) for v in df[c].tolist()] for c in df.columns],
    }
    if index or not isinstance(df.index, pd.RangeIndex):
        idx = df.index
        out["index"] = {
            "names": [None if n is None else str(n) for n in idx.names],
            "values": [_enc(list(v) if isinstance(v, tuple) else v) for v in idx.tolist()],
        }
    return out


def _frame_from_json(obj: dict[str, Any]) -> pd.DataFrame:
    cols, dtypes, data = obj["columns"], obj["dtypes"], obj["data"]
    frame: dict[str, Any] = {}
    for c, t, vals in zip(cols, dtypes, data):
        if t == "float64":
            frame[c] = np.array(
                [_SPECIAL[v] if isinstance(v, str) else (math.nan if v is None else v) for v in vals], dtype=np.float64
            )
        elif t == "Int64":
            frame[c] = pd.array(vals, dtype="Int64")
        elif t in ("int64", "int32"):
            frame[c] = np.array(vals, dtype=t)
        elif t == "bool":
            frame[c] = np.array(vals, dtype=bool)
        else:
            frame[c] = pd.Series(vals, dtype=object)
    df = pd.DataFrame(frame, columns=cols)
    if "index" in obj:
        names = obj["index"]["names"]
        values = obj["index"]["values"]
        if len(names) > 1:
            df.index = pd.MultiIndex.from_tuples([tuple(v) for v in values], names=names)
        else:
            df.index = pd.Index(values, name=names[0])
    return df


def _empty_mismatches() -> pd.DataFrame:
    return pd.DataFrame(columns=MISMATCH_COLUMNS)
