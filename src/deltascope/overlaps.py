"""Do two updates of the same base change the same coordinates, more than chance?

``overlap(base, a, b, ...)`` streams the base and every tuned checkpoint in one pass,
tensor by tensor (memory: one base tensor, one tensor and one mask per update), or reads
masks saved with :func:`deltascope.save_masks` (``overlap(load_masks(x), load_masks(y))``;
saved masks and checkpoints also mix, after the base). For each pair of updates and each
tensor it counts |A|, |B|, |A∩B| and the independent-random expectation n_a·n_b/n; the
statistics (Jaccard of changed and unchanged sets, coverage each way, random baselines,
observed/random ratios: :func:`deltascope.metrics.coords.derive_overlap`) are derived from
those counts, so group rows (``ov.by("block")``) are exact.

The group baseline sums the per-tensor expectations (masks independent *within* each
tensor); with one tensor it is the design's p_a·p_b/(p_a + p_b − p_a·p_b). Pooling the
densities of a group first would count two updates that both favour the same tensors as
"overlapping" even if their coordinates within each tensor were independent.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .checkpoint import Checkpoint
from .errors import DeltascopeWarning
from .masks import MaskSet, opened, selected_pairs
from .metrics.coords import changed_mask, derive_overlap, overlap_counts, parse_rule
from .naming import Role, RoleMapper, Rule
from .pairing import TensorPair
from .selection import LayerSpec, Selection

__all__ = ["Overlap", "overlap", "OVERLAP_KEYS", "RAW_COLUMNS", "DERIVED_COLUMNS"]

#: Columns ``Overlap.by`` accepts as keys (the update pair is always part of the index).
OVERLAP_KEYS = ("tower", "layer", "block", "module", "expert", "param", "name")
#: Raw counts per tensor and pair (they sum over groups).
RAW_COLUMNS = ("numel", "n_a", "n_b", "n_both", "expected_both")
#: Derived columns, in display order.
DERIVED_COLUMNS = (
    "p_a",
    "p_b",
    "jaccard_changed",
    "jaccard_changed_random",
    "jaccard_changed_ratio",
    "jaccard_unchanged",
    "jaccard_unchanged_random",
    "jaccard_unchanged_ratio",
    "coverage_a_by_b",
    "coverage_a_by_b_random",
    "coverage_b_by_a",
    "coverage_b_by_a_random",
    "intersection_lift",
)
_PAIR = ["update_a", "update_b"]


class Overlap:
    """Overlap between the changed masks of several updates of one base.

    Attributes:
        tensors: one row per tensor and pair of updates (``update_a``, ``update_b``):
            identity, raw counts (:data:`RAW_COLUMNS`), derived statistics.
        updates: the updates' labels, in order.
        skipped: tensors not compared, with the reason.
        metadata: sources, rules, selection, timing.
    """

    def __init__(
        self, tensors: pd.DataFrame, updates: list[str], skipped: pd.DataFrame, metadata: dict[str, Any]
    ) -> None:
        self.tensors = tensors
        self.updates = updates
        self.skipped = skipped
        self.metadata = metadata

    def by(self, *keys: str, dropna: bool = False) -> pd.DataFrame:
        """Aggregate over groups of tensors (any of :data:`OVERLAP_KEYS`) for each pair of
        updates: counts are summed and the statistics recomputed from the sums. No keys
        gives one row per pair for the whole model."""
        bad = [k for k in keys if k not in OVERLAP_KEYS]
        if bad:
            raise ValueError(f"Cannot group by {bad}; choose from {list(OVERLAP_KEYS)}.")
        g = self.tensors.groupby([*keys, *_PAIR], dropna=dropna, sort=True)
        agg = g[list(RAW_COLUMNS)].sum()
        agg.insert(0, "n_tensors", g.size())
        for k, v in derive_overlap({c: agg[c].to_numpy(dtype=float) for c in RAW_COLUMNS}).items():
            agg[k] = v
        return agg[["n_tensors", *DERIVED_COLUMNS, *RAW_COLUMNS]]

    def summary(self) -> pd.DataFrame:
        """One row per pair of updates, for the whole model."""
        return self.by()

    def __repr__(self) -> str:
        lines = [f"<Overlap of {len(self.updates)} updates: {', '.join(self.updates)}>"]
        if len(self.tensors):
            for (a, b), row in self.summary().iterrows():
                lines.append(
                    f"  {a} ~ {b}: Jaccard {row['jaccard_changed']:.4f} "
                    f"(random {row['jaccard_changed_random']:.4f}, x{row['jaccard_changed_ratio']:.2f}), "
                    f"coverage {row['coverage_a_by_b']:.3f} / {row['coverage_b_by_a']:.3f}"
                )
        if len(self.skipped):
            lines.append(f"  {len(self.skipped)} tensor(s) skipped: see .skipped")
        return "\n".join(lines)


def _label(src: Any) -> str:
    if isinstance(src, MaskSet):
        return src.label
    spec = src.spec if isinstance(src, Checkpoint) else os.fspath(src)
    text = str(spec).rstrip("/")
    return Path(text).name or text


def _labels(sources: Sequence[Any], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        out = [str(n) for n in names]
        if len(out) != len(sources) or len(set(out)) != len(out):
            raise ValueError(f"names={list(names)!r}: give one distinct name per update ({len(sources)}).")
        return out
    out = []
    for i, src in enumerate(sources):
        label = _label(src)
        out.append(label if label not in out else f"{label}#{i + 1}")
    return out


def overlap(
    base: Any,
    *updates: Any,
    rule: str = "exact",
    names: Sequence[str] | None = None,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    layers: LayerSpec = None,
    blocks: str | Iterable[str] | None = None,
    modules: str | Iterable[str] | None = None,
    towers: str | Iterable[str] | None = None,
    naming_rules: Iterable[Rule] = (),
    device: str = "cpu",
    **source_options: Any,
) -> Overlap:
    """Overlap of the changed masks of two or more updates of one base.

    Args:
        base: the base checkpoint (spec or opened), or the first :class:`MaskSet` when
            every update is given as saved masks.
        *updates: tuned checkpoints (specs or opened) or saved :class:`MaskSet`s.
        rule: sparsity rule of the masks computed from checkpoints (saved masks carry
            their own; a mix of rules is warned about).
        names: labels of the updates (default: folder or file names).
        include, exclude, layers, blocks, modules, towers: which tensors, as in
            :func:`deltascope.compare`.
        naming_rules: extra :class:`~deltascope.naming.Rule` objects.
        device: where masks are computed.
        **source_options: for Hub specs (``token``, ``endpoint`` ...).

    Returns:
        An :class:`Overlap`: ``ov.tensors``, ``ov.by("block")``, ``ov.summary()``.

    Example:
        >>> import deltascope
        >>> base, tuned = deltascope.demo_pair()
        >>> ov = deltascope.overlap(base, tuned, tuned, names=["run1", "run2"], blocks="mlp", layers=0)
        >>> float(ov.summary()["jaccard_changed"].iloc[0])       # an update with itself
        1.0
    """
    t0 = time.perf_counter()
    _, _, rule = parse_rule(rule)
    masks_only = isinstance(base, MaskSet)
    sources = [base, *updates] if masks_only else list(updates)
    if len(sources) < 2:
        raise ValueError("overlap() needs at least two updates: overlap(base, tuned_a, tuned_b, ...).")
    if masks_only and not all(isinstance(s, MaskSet) for s in sources):
        raise ValueError("overlap(): when the first argument is a MaskSet, pass every update as a MaskSet.")
    labels = _labels(sources, names)
    selection = Selection.make(include, exclude, layers, blocks, modules, towers)
    rules = list(naming_rules)
    if masks_only and not rules:
        rules = [Rule(**r) for r in base.manifest.get("naming_rules", [])]
    mapper = RoleMapper(rules)
    rule_of = [s.rule if isinstance(s, MaskSet) else rule for s in sources]
    if len(set(rule_of)) > 1:
        warnings.warn(
            f"overlap(): the updates' masks use different rules {dict(zip(labels, rule_of))}; "
            "their overlap mixes definitions of 'changed'.",
            DeltascopeWarning,
            stacklevel=2,
        )
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    with contextlib.ExitStack() as stack:

        def open_(spec: Any) -> Checkpoint:
            return stack.enter_context(opened(spec, **source_options))

        b = None if masks_only else open_(base)
        tuned = [s if isinstance(s, MaskSet) else open_(s) for s in sources]
        plan = _plan(b, tuned, labels, selection, mapper, skipped)
        for name, role, shape, per_source in plan:
            try:
                masks = _masks(b, tuned, name, per_source, rule, device)
            except (ValueError, KeyError, NotImplementedError, RuntimeError, OSError) as e:
                skipped.append({"name": name, "reason": f"{type(e).__name__}: {e}"})
                continue
            ident = {
                "name": name,
                "tower": role.tower,
                "layer": role.layer,
                "block": role.block,
                "module": role.module,
                "expert": None if role.expert is None else str(role.expert),
                "param": role.param,
                "shape": list(shape),
            }
            for i, j in itertools.combinations(range(len(masks)), 2):
                rows.append(
                    {**ident, "update_a": labels[i], "update_b": labels[j], **overlap_counts(masks[i], masks[j])}
                )
    tensors = _frame(rows)
    meta = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base": None if masks_only else {"spec": str(base.spec if isinstance(base, Checkpoint) else base)},
        "updates": [
            {
                "label": label,
                "kind": "masks" if isinstance(s, MaskSet) else "checkpoint",
                "source": str(s.folder) if isinstance(s, MaskSet) else str(s.spec if isinstance(s, Checkpoint) else s),
                "rule": r,
            }
            for label, s, r in zip(labels, sources, rule_of)
        ],
        "selection": selection.to_dict(),
        "elapsed_s": time.perf_counter() - t0,
    }
    return Overlap(tensors, labels, pd.DataFrame(skipped, columns=["name", "reason"]), meta)


def _plan(
    b: Checkpoint | None,
    tuned: list[Any],
    labels: list[str],
    selection: Selection,
    mapper: RoleMapper,
    skipped: list[dict[str, str]],
) -> list[tuple[str, Role, tuple[int, ...], list[Any]]]:
    """The tensors every source has, in base order: (name, role, shape, per-source
    TensorPair or None for saved masks). What only some have goes to ``skipped``."""
    if b is None:  # saved masks only: names and shapes come from the first set
        first: MaskSet = tuned[0]
        candidates = {n: (mapper(n), tuple(first.info(n)["shape"])) for n in first}
    else:
        candidates = {n: (mapper(n), tuple(i.shape)) for n, i in b.tensors.items()}
    candidates = {n: v for n, v in candidates.items() if selection.accepts(n, v[0])}
    pairs: list[dict[str, TensorPair] | None] = []
    for src in tuned:
        if isinstance(src, MaskSet):
            pairs.append(None)
        else:
            assert b is not None
            sel, _ = selected_pairs(b, src, selection=selection, mapper=mapper)
            pairs.append({p.name: p for p in sel})
    plan = []
    for name, (role, shape) in candidates.items():
        per_source: list[Any] = []
        why = ""
        for label, src, by_name in zip(labels, tuned, pairs):
            if by_name is not None:
                pair = by_name.get(name)
                if pair is None:
                    why = f"not paired in {label!r} (missing, or shape changed)"
                    break
                per_source.append(pair)
                role = pair.role
            elif name not in src:
                why = f"no saved mask in {label!r}"
                break
            elif tuple(src.info(name)["shape"]) != shape:
                why = f"saved mask of {label!r} has shape {src.info(name)['shape']}, expected {list(shape)}"
                break
            else:
                per_source.append(None)
        if why:
            skipped.append({"name": name, "reason": why})
        else:
            plan.append((name, role, shape, per_source))
    return plan


def _masks(
    b: Checkpoint | None, tuned: list[Any], name: str, per_source: list[Any], rule: str, device: str
) -> list[torch.Tensor]:
    """Flat changed masks of tensor ``name`` in every source (one read of the base)."""
    w0 = None
    out = []
    try:
        for src, pair in zip(tuned, per_source):
            if pair is None:
                out.append(src[name].reshape(-1))
                continue
            if pair.base.dtype_info.torch is None or pair.tuned.dtype_info.torch is None:
                raise ValueError(f"dtype {pair.base.dtype}/{pair.tuned.dtype} packs elements across bytes")
            if w0 is None:
                assert b is not None
                w0 = b.read(name)
            w1 = src.read(pair.tuned.name)
            try:
                m = changed_mask(
                    w0, w1, rule, base_dtype=pair.base.dtype_info, tuned_dtype=pair.tuned.dtype_info, device=device
                )
            finally:
                src.release(pair.tuned.name)
            out.append(m.reshape(-1))
    finally:
        if w0 is not None and b is not None:
            b.release(name)
    return out


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    ident = ["name", "tower", "layer", "block", "module", "expert", "param", "shape", *_PAIR]
    df = pd.DataFrame(rows, columns=[*ident, *RAW_COLUMNS])
    df["layer"] = pd.array([None if v is None or v != v else int(v) for v in df["layer"]], dtype="Int64")
    for c in ("numel", "n_a", "n_b", "n_both"):
        df[c] = df[c].astype("int64")
    df["expected_both"] = df["expected_both"].astype("float64")
    for k, v in derive_overlap({c: df[c].to_numpy(dtype=float) for c in RAW_COLUMNS}).items():
        df[k] = v
    return df[[*ident, *DERIVED_COLUMNS, *RAW_COLUMNS]]
