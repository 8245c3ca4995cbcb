"""The one streaming loop: read a pair, run every metric family on it, emit a row.

Peak memory is a few tensor pairs in flight (the pair being computed plus the sources'
prefetch window) and the chunk buffers of the metrics -- never the model. Each pair's
pages are released as soon as its row is written. A failure on one tensor becomes a row
with ``status="error"`` and the reason; the run goes on.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import torch

from ._version import __version__
from .checkpoint.base import Checkpoint
from .columns import IDENTITY_COLUMNS, ColumnSpec
from .constants import CHUNK_ELEMENTS, NO_PROGRESS
from .errors import IncompatibleCheckpointsError
from .families import Family, PairContext
from .metrics.elementwise import common_dtype_note, release_workspaces
from .naming import RoleMapper
from .pairing import TensorPair, pair_tensors
from .selection import Selection

__all__ = ["RunPlan", "run", "family_tables", "column_specs", "build_frame", "shares", "as_float"]


@dataclass
class RunPlan:
    """Everything a run needs besides the two checkpoints."""

    families: list[Family]
    selection: Selection = field(default_factory=Selection)
    device: str = "cpu"
    chunk: int = CHUNK_ELEMENTS
    progress: bool | None = None
    prefetch: int | None = None
    mapper: RoleMapper = field(default_factory=RoleMapper)

    def options(self) -> dict[str, Any]:
        return {
            "families": {f.name: f.options() for f in self.families},
            "selection": self.selection.to_dict(),
            "device": self.device,
            "chunk": self.chunk,
            "naming_rules": [r.__dict__ for r in self.mapper.rules],
        }


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, or ``"auto"`` (cuda when present)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch sees no CUDA device; use device='cpu'.")
    return dev


def _progress_bar(total_bytes: int, enabled: bool | None, n: int) -> Any:
    if enabled is None:
        enabled = (not NO_PROGRESS) and sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total_bytes,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"comparing {n} tensors",
        file=sys.stderr,
        dynamic_ncols=True,
    )


def _identity_row(pair: TensorPair) -> dict[str, Any]:
    r = pair.role
    return {
        "name": pair.name,
        "tuned_name": pair.tuned.name,
        "tower": r.tower,
        "layer": r.layer,
        "block": r.block,
        "module": r.module,
        "expert": None if r.expert is None else str(r.expert),
        "param": r.param,
        "shape": list(pair.base.shape),
        "dtype_base": pair.base.dtype,
        "dtype_tuned": pair.tuned.dtype,
        "status": "ok",
        "reason": common_dtype_note(pair.base.dtype_info, pair.tuned.dtype_info),
    }


def versions() -> dict[str, str]:
    """Library versions recorded in a result."""
    import safetensors

    return {
        "deltascope": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "safetensors": safetensors.__version__,
    }


def run(base: Checkpoint, tuned: Checkpoint, plan: RunPlan) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Compare two opened checkpoints. Returns (tensor rows, mismatches, metadata).

    ``deltascope.compare`` wraps this and builds the :class:`~deltascope.Comparison`.
    """
    t0 = time.perf_counter()
    device = resolve_device(plan.device)
    pairing = pair_tensors(
        base.tensors, tuned.tensors, mapper=plan.mapper, base_config=base.config, tuned_config=tuned.config
    )
    if not pairing.pairs and base.tensors and tuned.tensors:
        raise IncompatibleCheckpointsError(
            f"No tensor of {base.spec!r} pairs with one of {tuned.spec!r} (compared names directly and "
            f"through aliases; e.g. base has {next(iter(base.tensors))!r}, tuned has {next(iter(tuned.tensors))!r}). "
            "Are these checkpoints of the same model?"
        )
    selected = [p for p in pairing.pairs if plan.selection.accepts(p.name, p.role)]
    rows: list[dict[str, Any]] = []
    total_bytes = sum(p.base.nbytes + p.tuned.nbytes for p in selected)
    bar = _progress_bar(total_bytes, plan.progress, len(selected))
    n_errors = 0
    prefetched = 0
    depth = plan.prefetch if plan.prefetch is not None else max(base.prefetch_depth, tuned.prefetch_depth)
    for fam in plan.families:
        fam.start()
    try:
        for i, pair in enumerate(selected):
            # Prefetch hints for the next pairs (local: readahead; Hub: start the fetches).
            while prefetched < min(len(selected), i + 1 + max(0, depth)):
                nxt = selected[prefetched]
                base.prefetch(nxt.base.name)
                tuned.prefetch(nxt.tuned.name)
                prefetched += 1
            row = _identity_row(pair)
            ctx = None
            try:
                w0 = base.read(pair.base.name)
                w1 = tuned.read(pair.tuned.name)
                ctx = PairContext(
                    pair.name, pair.role, pair.base, pair.tuned, w0, w1, device, plan.chunk, config=base.config
                )
                for fam in plan.families:
                    row.update(fam.compute(ctx))
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # one bad tensor must not abort a long run
                n_errors += 1
                row["status"] = "error"
                row["reason"] = f"{type(e).__name__}: {e}"
            finally:
                if ctx is not None:
                    ctx.clear()
                ctx = w0 = w1 = None
                base.release(pair.base.name)
                tuned.release(pair.tuned.name)
            rows.append(row)
            if bar is not None:
                bar.update(pair.base.nbytes + pair.tuned.nbytes)
    finally:
        if bar is not None:
            bar.close()
        release_workspaces()

    specs = column_specs(plan.families)
    df = build_frame(rows, specs, plan.families)
    meta = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base": base.describe(),
        "tuned": tuned.describe(),
        "options": plan.options(),
        "versions": versions(),
        "elapsed_s": time.perf_counter() - t0,
        "device": str(device),
        "n_pairs": len(pairing.pairs),
        "n_selected": len(selected),
        "n_errors": n_errors,
        "bytes_compared": {
            "base": sum(p.base.nbytes for p in selected),
            "tuned": sum(p.tuned.nbytes for p in selected),
        },
        "complete": True,
    }
    return df, pairing.mismatches, meta


def family_tables(families: Sequence[Family]) -> dict[str, pd.DataFrame]:
    """Extra tables of every family after a run, by name."""
    out: dict[str, pd.DataFrame] = {}
    for fam in families:
        out.update(fam.tables())
    return out


def column_specs(families: Sequence[Family]) -> list[ColumnSpec]:
    """Identity columns, then each family's columns in order."""
    specs = list(IDENTITY_COLUMNS)
    for f in families:
        specs.extend(f.specs())
    return specs


def build_frame(rows: list[dict[str, Any]], specs: list[ColumnSpec], families: Sequence[Family]) -> pd.DataFrame:
    """The per-tensor DataFrame: identity, raw columns, then derived columns, in spec order."""
    raw = pd.DataFrame(rows)
    cols: dict[str, Any] = {c: raw[c] for c in raw.columns}
    n = len(raw)
    for s in specs:
        if s.name not in cols and s.agg != "derived":
            cols[s.name] = [None] * n if s.agg == "key" else np.full(n, np.nan)
    ok = (raw["status"] == "ok").to_numpy(dtype=bool) if n else np.zeros(0, dtype=bool)
    keys = {s.name for s in specs if s.agg == "key"}
    for f in families:
        fam_raw = {
            c: np.asarray(cols[c], dtype=object) if c in keys else as_float(cols[c])
            for c in f.raw_columns()
            if c in cols
        }
        for k, v in f.derive(fam_raw).items():
            cols[k] = np.where(ok, v, np.nan) if n else np.zeros(0)
    if "energy" in cols:
        energy, numel = as_float(cols["energy"]), as_float(cols["numel"])
        for k, v in shares(energy, numel, float(energy[ok].sum()), float(numel[ok].sum())).items():
            cols[k] = np.where(ok, v, np.nan)
    order = [s.name for s in specs if s.name in cols]
    order += [c for c in cols if c not in order]
    return normalize_dtypes(pd.DataFrame({c: cols[c] for c in order}, index=raw.index), specs)


def as_float(values: Any) -> np.ndarray:
    """float64 array of a column that may hold None / pd.NA (they become NaN)."""
    if isinstance(values, (pd.Series, pd.api.extensions.ExtensionArray)):
        return pd.Series(values).to_numpy(dtype=float, na_value=np.nan)
    return np.array([np.nan if _missing(v) else v for v in values], dtype=float)


def shares(energy: np.ndarray, numel: np.ndarray, total_energy: float, total_numel: float) -> dict[str, np.ndarray]:
    """``energy_share`` and ``numel_share`` of rows (or groups) in a comparison's totals."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "energy_share": energy / total_energy if total_energy > 0 else np.full(len(energy), np.nan),
            "numel_share": numel / total_numel if total_numel > 0 else np.full(len(numel), np.nan),
        }


def normalize_dtypes(df: pd.DataFrame, specs: list[ColumnSpec]) -> pd.DataFrame:
    """Fixed dtypes: keys as object/Int64, counts as Int64, the rest float64."""
    kinds = {s.name: s.agg for s in specs}
    out: dict[str, Any] = {}
    for c in df.columns:
        kind = kinds.get(c)
        if c == "layer" or c == "numel" or c.startswith(("n_", "nan_", "inf_")):
            out[c] = pd.array([None if _missing(v) else int(v) for v in df[c]], dtype="Int64")
        elif kind == "key":
            out[c] = pd.Series([None if _missing(v) else v for v in df[c]], index=df.index, dtype=object)
        else:
            out[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    return pd.DataFrame(out, index=df.index, columns=list(df.columns))


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))
