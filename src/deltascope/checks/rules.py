"""Evaluate a policy on a :class:`~deltascope.Comparison`: every rule gives a
:class:`RuleResult`, every failure a :class:`Violation` -- data, never an exception.

Group values (``scope = "aggregate"``, ``by = [...]``) are computed by
:meth:`Comparison.by` itself, so they carry the comparison's own weighting
(numel-weighted fractions, ``sqrt(Σ‖Δ‖²)/sqrt(Σ‖W0‖²)``, shares of the whole
comparison's energy): the selected rows are marked in a spare key column of a copy of
the table and grouped on that key too (:func:`group_values`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..comparison import Comparison, jsonable
from ..display import fmt_number
from ..errors import ResultFormatError
from ..naming import Role, RoleMapper, Rule
from ..pairing import canonical_name
from ..selection import Selection
from .policy import FORBIDDEN_MISMATCHES, Policy, PolicyRule, load_policy

__all__ = ["check", "CheckResult", "RuleResult", "Violation", "group_values", "MAX_OFFENDERS"]

#: Tensors named as responsible for one aggregate violation (the worst first).
MAX_OFFENDERS = 5

Source = Comparison | str | os.PathLike[str] | tuple[Any, Any]


@dataclass(frozen=True)
class Violation:
    """One failed assertion.

    Attributes:
        rule: the rule's name; kind: its kind; severity: ``"error"`` or ``"warning"``.
        subject: what failed: a tensor name, a group label (``"layer=3"``), ``"selection"``,
            or a mismatch's tensor name.
        metric: the column checked (``None`` for structure rules).
        observed: the value found (a number, or a mismatch kind).
        bound: the bound in words (``"<= 0.6"``, ``"|Δ| <= 0.01"``).
        message: one line saying what failed.
        offenders: ``(tensor, value)`` pairs responsible, the worst first.
        baseline: the baseline's value (baseline rules).
        excess: how far past the bound (for ordering; NaN when not a number).
        line: the rule's line in the policy file, when known.
    """

    rule: str
    kind: str
    severity: str
    subject: str
    metric: str | None
    observed: Any
    bound: str
    message: str
    offenders: tuple[tuple[str, float], ...] = ()
    baseline: float | None = None
    excess: float = math.nan
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "kind": self.kind,
            "severity": self.severity,
            "subject": self.subject,
            "metric": self.metric,
            "observed": jsonable(self.observed),
            "baseline": jsonable(self.baseline),
            "bound": self.bound,
            "message": self.message,
            "offenders": [{"name": n, "value": jsonable(v)} for n, v in self.offenders],
            "line": self.line,
        }


@dataclass
class RuleResult:
    """The outcome of one rule: ``status`` is ``"pass"``, ``"fail"`` or ``"skip"``;
    ``summary`` one line of what was checked and observed; ``notes`` information that
    does not fail the rule (renamed tensors, new groups ...)."""

    rule: PolicyRule
    status: str
    summary: str
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: int = 0

    def to_dict(self) -> dict[str, Any]:
        r = self.rule
        return {
            "name": r.name,
            "kind": r.kind,
            "severity": r.severity,
            "status": self.status,
            "summary": self.summary,
            "description": r.description,
            "metrics": list(r.metrics),
            "scope": r.scope_text() if r.kind in ("bound", "baseline") else None,
            "bound": r.bound_text(),
            "line": r.line,
            "checked": self.checked,
            "n_violations": len(self.violations),
            "violations": [v.to_dict() for v in self.violations],
            "notes": list(self.notes),
        }


@dataclass
class CheckResult:
    """The result of :func:`check`.

    Attributes:
        ok: no violation of severity ``"error"`` (warnings do not fail a check).
        violations: every violation, rule by rule, the worst first within a rule.
        rules: one :class:`RuleResult` per rule, in policy order.
        policy: the validated :class:`~deltascope.checks.policy.Policy`.
        comparison: the :class:`~deltascope.Comparison` that was checked (save it with
            ``to_json`` to make it the next release's baseline).
        baseline: where the baseline came from, if one was used.
    """

    policy: Policy
    rules: list[RuleResult]
    comparison: Comparison
    baseline: str | None = None
    source: str | None = None

    @property
    def violations(self) -> list[Violation]:
        return [v for r in self.rules for v in r.violations]

    @property
    def ok(self) -> bool:
        return not any(v.severity == "error" for v in self.violations)

    @property
    def failed(self) -> list[RuleResult]:
        """Rules with at least one violation of severity ``"error"``."""
        return [r for r in self.rules if any(v.severity == "error" for v in r.violations)]

    def counts(self) -> dict[str, int]:
        """Rules passed / failed / warned / skipped, and violations."""
        out = {"rules": len(self.rules), "passed": 0, "failed": 0, "warned": 0, "skipped": 0}
        for r in self.rules:
            if r.status == "skip":
                out["skipped"] += 1
            elif r.status == "fail":
                out["failed" if r.rule.severity == "error" else "warned"] += 1
            else:
                out["passed"] += 1
        out["violations"] = len(self.violations)
        return out

    def to_dict(self) -> dict[str, Any]:
        meta = self.comparison.metadata
        return {
            "ok": self.ok,
            "policy": self.policy.to_dict(),
            "base": meta.get("base", {}).get("spec"),
            "tuned": meta.get("tuned", {}).get("spec"),
            "source": self.source,
            "baseline": self.baseline,
            "counts": self.counts(),
            "rules": [r.to_dict() for r in self.rules],
        }

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int | None = 2) -> str:
        """The result as JSON (NaN as ``null``); written to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    def text(self, *, limit: int = 10) -> str:
        """Human-readable report (see :func:`deltascope.checks.outputs.to_text`)."""
        from .outputs import to_text

        return to_text(self, limit=limit)

    def junit(self) -> str:
        """JUnit XML, one testcase per rule (see :func:`deltascope.checks.outputs.to_junit`)."""
        from .outputs import to_junit

        return to_junit(self)

    def github(self) -> str:
        """GitHub Actions annotations (see :func:`deltascope.checks.outputs.to_github`)."""
        from .outputs import to_github

        return to_github(self)

    def __repr__(self) -> str:
        c = self.counts()
        return (
            f"<CheckResult {self.policy.name!r}: {'ok' if self.ok else 'FAILED'}; {c['passed']} passed, "
            f"{c['failed']} failed, {c['warned']} warned, {c['skipped']} skipped>"
        )


# -- the entry point --------------------------------------------------------------------
def check(
    source: Source,
    policy: Policy | Mapping[str, Any] | str | os.PathLike[str],
    *,
    baseline: Comparison | str | os.PathLike[str] | None = None,
    **compare_options: Any,
) -> CheckResult:
    """Check a comparison against a policy.

    Args:
        source: a :class:`~deltascope.Comparison`, the path of a saved one (JSON), or a
            ``(base, tuned)`` pair of checkpoint specs -- then :func:`deltascope.compare`
            runs with only what the policy needs (no SVD unless a rule names a spectral
            column, the policy's ``[select]`` filter ...).
        policy: a TOML or JSON file, a dict of the same schema (``docs/check.md``), or a
            loaded :class:`~deltascope.checks.policy.Policy`.
        baseline: a previous release's saved result (or :class:`Comparison`) for
            ``baseline`` rules; defaults to the policy's ``[baseline].path``. Without one,
            baseline rules are skipped.
        **compare_options: passed to :func:`deltascope.compare` for a pair (``device``,
            ``progress``, ``token`` ...).

    Returns:
        A :class:`CheckResult`; ``result.ok`` and ``result.violations`` say what failed.

    Raises:
        PolicyError: the policy is malformed.
        ResultFormatError: a saved result cannot be read or lacks a column the policy needs.

    Example:
        >>> import deltascope
        >>> policy = {"rules": [
        ...     {"name": "frozen", "kind": "identical", "blocks": ["embedding", "norm", "lm_head"]},
        ...     {"name": "mlp-sparse", "metric": "changed_exact", "blocks": ["mlp"], "scope": "aggregate", "max": 0.3},
        ... ]}
        >>> result = deltascope.check(deltascope.demo_pair(), policy, progress=False)
        >>> result.ok, [v.rule for v in result.violations]
        (False, ['mlp-sparse'])
    """
    pol = load_policy(policy)
    if compare_options and not isinstance(source, (tuple, list)):
        raise ValueError(f"compare options {sorted(compare_options)} apply only when checking a (base, tuned) pair.")
    # the baseline first: a bad path should fail before a long comparison runs
    base_cmp, base_label = None, None
    ref = baseline if baseline is not None else pol.baseline
    if ref is not None:
        base_cmp = ref if isinstance(ref, Comparison) else _load_result(ref, "baseline")
        base_label = "(Comparison object)" if isinstance(ref, Comparison) else str(ref)
        _require_columns(base_cmp, pol, f"The baseline {base_label}", kinds=("baseline",))
    label: str | None
    if isinstance(source, Comparison):
        cmp, label = source, None
    elif isinstance(source, (tuple, list)):
        if len(source) != 2:
            raise ValueError(f"check() takes a (base, tuned) pair, got {len(source)} items.")
        from ..api import compare

        cmp = compare(source[0], source[1], **{**pol.compare_options(), **compare_options})
        label = None
    else:
        cmp, label = _load_result(source, "result"), str(source)
    _require_columns(cmp, pol, label or "the comparison")
    ctx = _Context(cmp, pol, base_cmp)
    results = [_EVALUATORS[r.kind](r, ctx) for r in pol.rules]
    return CheckResult(pol, results, cmp, base_label, label)


def _load_result(source: str | os.PathLike[str], what: str) -> Comparison:
    path = Path(source)
    if path.is_dir():
        raise ResultFormatError(
            f"{str(path)!r} is a folder, not a saved result. To check two checkpoints pass both "
            "('deltascope check BASE TUNED --policy P' or check((base, tuned), policy)); "
            f"a {what} is a JSON file written by 'deltascope compare -o' or Comparison.to_json."
        )
    return Comparison.from_json(path)


def _require_columns(cmp: Comparison, pol: Policy, label: str, kinds: tuple[str, ...] = ("bound", "baseline")) -> None:
    """Raise :class:`ResultFormatError` naming the rule (key and line) when ``cmp`` lacks a
    column the rules of ``kinds`` need."""
    have = set(cmp.tensors.columns)
    hint = (
        "Save a new baseline from a run that has it, or drop the metric from the rule."
        if kinds == ("baseline",)
        else "Re-run the comparison with the metrics the policy names, or check the two checkpoints directly "
        "so that the policy picks them."
    )
    for r in pol.rules:
        for m in r.metrics if r.kind in kinds else ():
            if m not in have:
                key = "metrics" if pol.lines and pol.lines.lines.get(("rules", r.index, "metrics")) else "metric"
                raise ResultFormatError(
                    f"{label} has no column {m!r}, needed by {pol.where(('rules', r.index, key))} "
                    f"(rule {r.name!r}). {hint}"
                )


# -- what each rule sees ----------------------------------------------------------------
def _norm(v: Any) -> Any:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, np.integer):
        return int(v)
    return v


def _role(row: Mapping[str, Any]) -> Role:
    layer = _norm(row.get("layer"))
    return Role(
        tower=_norm(row.get("tower")) or "language",
        layer=None if layer is None else int(layer),
        block=_norm(row.get("block")) or "other",
        module=_norm(row.get("module")) or "other",
        expert=_norm(row.get("expert")),
        param=_norm(row.get("param")) or "weight",
    )


def _mapper(cmp: Comparison) -> RoleMapper:
    saved = cmp.metadata.get("options", {}).get("naming_rules", []) or []
    try:
        return RoleMapper([Rule(**d) for d in saved])
    except (TypeError, ValueError):
        return RoleMapper()


class _Frame:
    """A comparison's rows with their roles, and masks for selections."""

    def __init__(self, cmp: Comparison, global_sel: Selection) -> None:
        self.cmp = cmp
        t = cmp.tensors
        self.names = [str(n) for n in t["name"]]
        self.roles = [_role(r) for r in t[["tower", "layer", "block", "module", "expert", "param"]].to_dict("records")]
        self.ok = (t["status"] == "ok").to_numpy()
        self.error = (t["status"] == "error").to_numpy()
        self.base_mask = self.mask(global_sel, use_global=False)

    def mask(self, sel: Selection, *, use_global: bool = True) -> np.ndarray:
        m = (
            np.ones(len(self.names), dtype=bool)
            if sel.is_everything
            else np.array([sel.accepts(n, r) for n, r in zip(self.names, self.roles)], dtype=bool)
        )
        return m & self.base_mask if use_global else m


class _Context:
    def __init__(self, cmp: Comparison, policy: Policy, baseline: Comparison | None) -> None:
        self.policy = policy
        self.global_sel = policy.selection
        self.current = _Frame(cmp, self.global_sel)
        self.baseline = _Frame(baseline, self.global_sel) if baseline is not None else None

    @property
    def cmp(self) -> Comparison:
        return self.current.cmp


def group_values(cmp: Comparison, mask: np.ndarray, keys: Iterable[str] = ()) -> pd.DataFrame:
    """``cmp.by(*keys)`` restricted to the rows in ``mask``, with the weighting and the
    shares exactly as :meth:`Comparison.by` computes them (shares stay relative to the
    whole comparison). Without keys: one row labelled ``"selection"``.

    Example:
        >>> import deltascope, numpy as np
        >>> cmp = deltascope.compare(*deltascope.demo_pair(), progress=False)
        >>> mlp = (cmp.tensors["block"] == "mlp").to_numpy()
        >>> g = group_values(cmp, mlp)
        >>> bool(np.isclose(g["energy_share"].iloc[0], cmp.by("block").loc["mlp", "energy_share"]))
        True
    """
    keys = tuple(keys)
    table = cmp.by(*keys, where=mask)
    if not keys:
        table.index = pd.Index(["selection"], name="scope")
        if table["n_tensors"].iloc[0] == 0:
            return table.iloc[:0]
    return table


def _label(keys: tuple[str, ...], idx: Any) -> str:
    if not keys:
        return "selection"
    vals = idx if isinstance(idx, tuple) else (idx,)
    return ", ".join(f"{k}={'–' if _norm(v) is None else _norm(v)}" for k, v in zip(keys, vals))


def _members(frame: _Frame, mask: np.ndarray, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Row positions of each group label among the ok rows in ``mask``."""
    rows = np.flatnonzero(mask & frame.ok)
    if not keys:
        return {"selection": rows}
    t = frame.cmp.tensors
    out: dict[str, list[int]] = {}
    cols = [t[k].tolist() for k in keys]
    for i in rows:
        out.setdefault(_label(keys, tuple(c[i] for c in cols)), []).append(int(i))
    return {k: np.asarray(v, dtype=int) for k, v in out.items()}


def _subject_values(frame: _Frame, rule: PolicyRule, metric: str, mask: np.ndarray) -> dict[str, float]:
    """Values of ``metric`` by subject: tensor names (tensor scope) or group labels."""
    if rule.scope == "tensor":
        rows = np.flatnonzero(mask & frame.ok)
        vals = _column(frame, metric)
        return {frame.names[i]: float(vals[i]) for i in rows}
    g = group_values(frame.cmp, mask & frame.ok, rule.by)
    vals = g[metric].to_numpy(dtype=float, na_value=np.nan)
    return {_label(rule.by, idx): float(v) for idx, v in zip(g.index, vals)}


def _not_computed(rule: PolicyRule, frame: _Frame, mask: np.ndarray) -> list[Violation]:
    t = frame.cmp.tensors
    out = []
    for i in np.flatnonzero(mask & frame.error):
        out.append(
            _violation(
                rule,
                frame.names[i],
                None,
                "error",
                f"{frame.names[i]}: not computed ({t['reason'].iloc[i]}), so the rule cannot be verified",
            )
        )
    return out


def _violation(rule: PolicyRule, subject: str, metric: str | None, observed: Any, message: str, **kw: Any) -> Violation:
    return Violation(
        rule.name, rule.kind, rule.severity, subject, metric, observed, rule.bound_text(), message, line=rule.line, **kw
    )


def _empty(rule: PolicyRule, what: str = "tensors") -> RuleResult:
    if rule.allow_empty:
        return RuleResult(rule, "pass", f"selected no {what} (allowed)")
    v = _violation(
        rule,
        "selection",
        None,
        0,
        f"the rule selected no {what}: check its patterns (set allow_empty = true if that is expected)",
    )
    return RuleResult(rule, "fail", f"selected no {what}", [v])


def _finish(rule: PolicyRule, summary: str, violations: list[Violation], checked: int, notes=()) -> RuleResult:
    violations = sorted(violations, key=lambda v: -v.excess if not math.isnan(v.excess) else -math.inf)
    return RuleResult(rule, "fail" if violations else "pass", summary, violations, list(notes), checked)


def _out_of_bounds(v: float, lo: float | None, hi: float | None) -> float:
    """How far ``v`` lies outside [lo, hi] (0 inside; NaN for NaN)."""
    if math.isnan(v):
        return math.nan
    if lo is not None and v < lo:
        return lo - v
    if hi is not None and v > hi:
        return v - hi
    return 0.0


def _worst(frame: _Frame, rows: np.ndarray, metric: str, largest: bool) -> tuple[tuple[str, float], ...]:
    vals = _column(frame, metric)[rows]
    order = np.argsort(-vals if largest else vals, kind="stable")
    order = [i for i in order if not math.isnan(vals[i])][:MAX_OFFENDERS]
    return tuple((frame.names[rows[i]], float(vals[i])) for i in order)


# -- rule kinds -------------------------------------------------------------------------
def _selected(rule: PolicyRule, ctx: _Context) -> tuple[_Frame, np.ndarray, np.ndarray] | RuleResult:
    """(frame, the rule's row mask, positions of its computed rows), or the failed/passed
    result of a rule that selected nothing."""
    frame = ctx.current
    mask = frame.mask(rule.selection)
    if not mask.any():
        return _empty(rule)
    return frame, mask, np.flatnonzero(mask & frame.ok)


def _column(frame: _Frame, name: str) -> np.ndarray:
    return frame.cmp.tensors[name].to_numpy(dtype=float, na_value=np.nan)


def _eval_bound(rule: PolicyRule, ctx: _Context) -> RuleResult:
    selected = _selected(rule, ctx)
    if isinstance(selected, RuleResult):
        return selected
    frame, mask, _ = selected
    metric = rule.metrics[0]
    errors = _not_computed(rule, frame, mask)
    values = _subject_values(frame, rule, metric, mask)
    members = _members(frame, mask, rule.by) if rule.scope == "aggregate" else {}
    out: list[Violation] = []
    for subject, v in values.items():
        excess = _out_of_bounds(v, rule.min, rule.max)
        if excess == 0 or (math.isnan(excess) and rule.on_nan == "ignore"):
            continue
        offenders: tuple[tuple[str, float], ...] = ()
        if subject in members:
            offenders = _worst(frame, members[subject], metric, largest=not (rule.min is not None and v < rule.min))
        shown = fmt_number(v, metric)
        msg = (
            f"{subject}: {metric} = {shown}, bound {rule.bound_text()}"
            if not math.isnan(v)
            else (f"{subject}: {metric} is NaN (undefined), bound {rule.bound_text()}")
        )
        out.append(_violation(rule, subject, metric, v, msg, offenders=offenders, excess=excess))
    finite = {k: v for k, v in values.items() if not math.isnan(v)}
    what = f"{len(values)} tensor(s)" if rule.scope == "tensor" else f"{len(values)} group(s)"
    if len(values) == 1 and rule.scope == "aggregate":
        ((_, v),) = values.items()
        summary = f"{metric} {rule.scope_text()} = {fmt_number(v, metric)} (bound {rule.bound_text()})"
    elif finite:
        hi = max(finite, key=finite.__getitem__)
        lo = min(finite, key=finite.__getitem__)
        summary = (
            f"{metric} {rule.scope_text()} over {what}: max {fmt_number(finite[hi], metric)} ({hi}), "
            f"min {fmt_number(finite[lo], metric)} ({lo}); bound {rule.bound_text()}"
        )
    else:
        summary = f"{metric} {rule.scope_text()} over {what}: no finite value"
    if out:
        summary = f"{len(out)} of {what} out of bounds; " + summary
    return _finish(rule, summary, out + errors, len(values))


def _eval_identical(rule: PolicyRule, ctx: _Context) -> RuleResult:
    selected = _selected(rule, ctx)
    if isinstance(selected, RuleResult):
        return selected
    frame, mask, rows = selected
    changed, numel = _column(frame, "n_changed_exact"), _column(frame, "numel")
    out = []
    for i in rows:
        n = changed[i]
        if n == 0:
            continue
        frac = n / numel[i] if numel[i] else math.nan
        shown = fmt_number(frac, "changed_exact")
        msg = (
            f"{frame.names[i]}: {int(n):,} of {int(numel[i]):,} coordinates changed ({shown})"
            if not math.isnan(n)
            else f"{frame.names[i]}: changed coordinates unknown"
        )
        out.append(_violation(rule, frame.names[i], "changed_exact", frac, msg, excess=frac))
    total = len(rows)
    summary = f"{len(out)} of {total} tensor(s) changed" if out else f"{total} tensor(s) bit-identical"
    return _finish(rule, summary, out + _not_computed(rule, frame, mask), total)


def _eval_finite(rule: PolicyRule, ctx: _Context) -> RuleResult:
    selected = _selected(rule, ctx)
    if isinstance(selected, RuleResult):
        return selected
    frame, mask, rows = selected
    suffix = {"base": "w0", "tuned": "w1"}
    out = []
    for side in rule.sides:
        nan, inf = _column(frame, f"nan_{suffix[side]}"), _column(frame, f"inf_{suffix[side]}")
        for i in rows:
            n_nan = 0.0 if math.isnan(nan[i]) else nan[i]  # NaN count: a non-float tensor, cannot hold NaN
            n_inf = 0.0 if math.isnan(inf[i]) else inf[i]
            if n_nan or n_inf:
                msg = f"{frame.names[i]}: {int(n_nan):,} NaN and {int(n_inf):,} Inf coordinates in {side}"
                out.append(
                    _violation(rule, frame.names[i], f"nan_{suffix[side]}", n_nan + n_inf, msg, excess=n_nan + n_inf)
                )
    summary = f"{len(out)} tensor(s) hold NaN/Inf" if out else f"no NaN/Inf in {len(rows)} tensor(s)"
    return _finish(rule, summary, out + _not_computed(rule, frame, mask), len(rows))


def _eval_structure(rule: PolicyRule, ctx: _Context) -> RuleResult:
    cmp = ctx.cmp
    mm = cmp.mismatches
    mapper = _mapper(cmp)
    forbidden = [k for k in FORBIDDEN_MISMATCHES if k not in rule.allow]
    out, seen = [], 0
    allowed_counts: dict[str, int] = {}
    for row in mm.to_dict("records"):
        name = str(row["name"])
        role = mapper(name)
        if not (ctx.global_sel.accepts(name, role) and rule.selection.accepts(name, role)):
            continue
        seen += 1
        kind = row["kind"]
        if kind in forbidden:
            msg = f"{name}: {kind} ({row.get('detail') or ''})".rstrip(" ()")
            out.append(_violation(rule, name, None, kind, msg))
        else:
            allowed_counts[kind] = allowed_counts.get(kind, 0) + 1
    notes = [f"{n} {k} (allowed)" for k, n in sorted(allowed_counts.items())]
    summary = (
        f"{len(out)} forbidden mismatch(es): "
        + ", ".join(f"{k} {sum(v.observed == k for v in out)}" for k in forbidden if any(v.observed == k for v in out))
        if out
        else "no forbidden mismatches" + (f" ({', '.join(notes)})" if notes else "")
    )
    return _finish(rule, summary, out, seen, notes)


def _eval_baseline(rule: PolicyRule, ctx: _Context) -> RuleResult:
    if ctx.baseline is None:
        return RuleResult(rule, "skip", "no baseline given (--baseline or [baseline].path)")
    cur, old = ctx.current, ctx.baseline
    mask_c, mask_b = cur.mask(rule.selection), old.mask(rule.selection)
    if not mask_c.any() and not mask_b.any():
        return _empty(rule)
    errors = _not_computed(rule, cur, mask_c)
    notes: list[str] = []
    out: list[Violation] = []
    members = _members(cur, mask_c, rule.by) if rule.scope == "aggregate" else {}
    rename: dict[str, str] = {}
    compared = 0
    worst: tuple[float, str] | None = None
    for metric in rule.metrics:
        now = _subject_values(cur, rule, metric, mask_c)
        then = _subject_values(old, rule, metric, mask_b)
        if not rename:
            rename = _renames(now, then) if rule.scope == "tensor" else {}
        for new, was in rename.items():
            then[new] = then.pop(was)
        missing = [s for s in then if s not in now]
        new_subjects = [s for s in now if s not in then]
        if metric == rule.metrics[0]:
            notes += [f"renamed: {was} -> {new}" for new, was in rename.items()]
            what = "tensor" if rule.scope == "tensor" else "group"
            for s in missing:
                msg = f"{s}: {what} in the baseline is missing now"
                if rule.allow_missing:
                    notes.append(msg + " (allowed)")
                else:
                    out.append(_violation(rule, s, None, "missing", msg))
            for s in new_subjects:
                msg = f"{s}: new {what}, not in the baseline"
                if rule.allow_new:
                    notes.append(msg)
                else:
                    out.append(_violation(rule, s, None, "new", msg))
            if missing and new_subjects and rule.scope == "aggregate":
                notes.append("missing and new groups together may be renamed groups")
        old_tensor = _tensor_values(old, metric) if members else {}
        for s, v in now.items():
            if s not in then:
                continue
            compared += 1
            b = then[s]
            excess, delta = _drift(v, b, rule)
            if not (math.isnan(delta) and math.isnan(excess)) and (worst is None or abs(delta) > worst[0]):
                worst = (abs(delta), f"{metric} {s}: {fmt_number(b, metric)} -> {fmt_number(v, metric)}")
            if excess <= 0 or (math.isnan(excess) and rule.on_nan == "ignore"):
                continue
            offenders = _drift_offenders(cur, members.get(s), metric, old_tensor, rename) if members else ()
            msg = (
                f"{s}: {metric} moved {fmt_number(b, metric)} -> {fmt_number(v, metric)} "
                f"(Δ {delta:+.3g}), bound {rule.bound_text()}"
                if not math.isnan(delta)
                else f"{s}: {metric} was {fmt_number(b, metric)}, now {fmt_number(v, metric)} (one side NaN)"
            )
            out.append(
                _violation(rule, s, metric, v, msg, offenders=offenders, baseline=b, excess=excess if excess > 0 else 0)
            )
    summary = f"{len(rule.metrics)} metric(s) {rule.scope_text()}, {compared} comparison(s) with the baseline"
    if worst is not None:
        summary += f"; largest move {worst[1]}"
    if out:
        summary = f"{len(out)} drift violation(s); " + summary
    return _finish(rule, summary, out + errors, compared, notes)


def _drift(v: float, b: float, rule: PolicyRule) -> tuple[float, float]:
    """(excess over the allowed move, Δ = v − b); excess is NaN when exactly one side is NaN."""
    if math.isnan(v) and math.isnan(b):
        return 0.0, 0.0
    if math.isnan(v) or math.isnan(b):
        return math.nan, math.nan
    delta = v - b
    allowed = rule.abs_tol + rule.rel_tol * abs(b)
    moved = {"both": abs(delta), "increase": delta, "decrease": -delta}[rule.direction]
    return moved - allowed, delta


def _tensor_values(frame: _Frame, metric: str) -> dict[str, float]:
    vals = _column(frame, metric)
    return {frame.names[i]: float(vals[i]) for i in np.flatnonzero(frame.ok)}


def _drift_offenders(
    frame: _Frame, rows: np.ndarray | None, metric: str, old: dict[str, float], rename: dict[str, str]
) -> tuple[tuple[str, float], ...]:
    """Tensors of a group whose own value moved most against the baseline (value: Δ)."""
    if rows is None or not len(rows):
        return ()
    now = _column(frame, metric)
    canon_old = {canonical_name(n): n for n in old}
    moves = []
    for i in rows:
        name = frame.names[i]
        was = old.get(rename.get(name, name), old.get(canon_old.get(canonical_name(name), ""), math.nan))
        d = now[i] - was
        if not math.isnan(d):
            moves.append((abs(d), name, d))
    moves.sort(key=lambda m: -m[0])
    return tuple((n, d) for _, n, d in moves[:MAX_OFFENDERS])


def _renames(now: Mapping[str, float], then: Mapping[str, float]) -> dict[str, str]:
    """Tensors present under a new name: new name -> baseline name, matched through the
    pairing aliases (``model.language_model.X`` <-> ``model.X`` ...), one-to-one only."""
    new = [s for s in now if s not in then]
    gone = [s for s in then if s not in now]
    by_key: dict[str, list[str]] = {}
    for s in gone:
        by_key.setdefault(canonical_name(s), []).append(s)
    out = {}
    for s in new:
        hits = by_key.get(canonical_name(s), [])
        if len(hits) == 1:
            out[s] = hits[0]
    return out


_EVALUATORS = {
    "bound": _eval_bound,
    "identical": _eval_identical,
    "finite": _eval_finite,
    "structure": _eval_structure,
    "baseline": _eval_baseline,
}
