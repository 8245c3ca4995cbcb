"""Render a :class:`~deltascope.checks.rules.CheckResult`: human text, JSON, JUnit XML and
GitHub Actions annotations. Numbers are rounded here, on display only."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from ..display import fmt_number

if TYPE_CHECKING:
    from .rules import CheckResult, RuleResult, Violation

__all__ = ["to_text", "to_json", "to_junit", "to_github", "render", "FORMATS"]

#: Output formats by name, as ``deltascope check --format`` accepts them.
FORMATS = ("text", "json", "junit", "github")

_STATUS = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}


def _status(r: RuleResult) -> str:
    if r.status == "fail" and r.rule.severity == "warning":
        return "WARN"
    return _STATUS[r.status]


def _offenders(v: Violation) -> str:
    if not v.offenders:
        return ""
    col = v.metric or ""
    if v.kind == "baseline":
        parts = [f"{n} (Δ {d:+.3g})" for n, d in v.offenders]
    else:
        parts = [f"{n} ({fmt_number(x, col)})" for n, x in v.offenders]
    return "worst: " + ", ".join(parts)


def _violation_lines(r: RuleResult, limit: int) -> list[str]:
    lines = []
    for v in r.violations[:limit]:
        lines.append(v.message)
        off = _offenders(v)
        if off:
            lines.append("    " + off)
    if len(r.violations) > limit:
        lines.append(f"... and {len(r.violations) - limit} more")
    return lines


def _header(res: CheckResult) -> list[str]:
    p = res.policy
    meta = res.comparison.metadata
    out = [f"deltascope check: policy {p.name!r}" + (f" ({p.source})" if p.source else "")]
    if res.source:
        out.append(f"  result:   {res.source}")
    for side in ("base", "tuned"):
        spec = meta.get(side, {}).get("spec")
        if spec:
            out.append(f"  {side}:{' ' * (9 - len(side))}{spec}")
    if res.baseline:
        out.append(f"  baseline: {res.baseline}")
    return out


def to_text(res: CheckResult, *, limit: int = 10) -> str:
    """What failed, the observed value, the bound and the tensors responsible (the worst
    ``limit`` violations of each rule), one block per rule, then a verdict line."""
    lines = [*_header(res), ""]
    for r in res.rules:
        rule = r.rule
        scope = f", {', '.join(rule.metrics)} {rule.scope_text()}" if rule.metrics else ""
        lines.append(f"{_status(r)}  {rule.name}  [{rule.kind}{scope}]")
        lines.append(f"      {r.summary}")
        lines += [
            f"      - {x}" if not x.startswith("    ") else f"        {x.strip()}" for x in _violation_lines(r, limit)
        ]
        lines += [f"      note: {n}" for n in r.notes[:limit]]
    c = res.counts()
    verdict = "PASSED" if res.ok else "FAILED"
    lines.append("")
    lines.append(
        f"{verdict}: {c['rules']} rule(s): {c['passed']} passed, {c['failed']} failed, {c['warned']} warned, "
        f"{c['skipped']} skipped; {c['violations']} violation(s)."
    )
    return "\n".join(lines) + "\n"


def to_json(res: CheckResult) -> str:
    """:meth:`CheckResult.to_dict` as JSON (NaN as ``null``)."""
    return res.to_json(indent=2) + "\n"


def to_junit(res: CheckResult) -> str:
    """JUnit XML: one ``<testsuite>`` for the policy, one ``<testcase>`` per rule; a
    failed rule carries a ``<failure>`` with its violations (warnings go to
    ``<system-out>``, skipped rules get ``<skipped>``).

    Example:
        >>> import deltascope, xml.etree.ElementTree as ET
        >>> cmp = deltascope.compare(*deltascope.demo_pair(), progress=False)
        >>> res = deltascope.check(cmp, {"rules": [{"name": "frozen", "kind": "identical", "blocks": "norm"}]})
        >>> ET.fromstring(res.junit()).find("testsuite/testcase").get("name")
        'frozen'
    """
    c = res.counts()
    suites = ET.Element("testsuites", name="deltascope check", tests=str(c["rules"]), failures=str(c["failed"]))
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"deltascope check: {res.policy.name}",
        tests=str(c["rules"]),
        failures=str(c["failed"]),
        errors="0",
        skipped=str(c["skipped"]),
    )
    props = ET.SubElement(suite, "properties")
    meta = res.comparison.metadata
    for key, value in (
        ("policy", res.policy.source or res.policy.name),
        ("base", meta.get("base", {}).get("spec")),
        ("tuned", meta.get("tuned", {}).get("spec")),
        ("baseline", res.baseline),
    ):
        if value:
            ET.SubElement(props, "property", name=key, value=str(value))
    for r in res.rules:
        case = ET.SubElement(suite, "testcase", classname=f"deltascope.check.{res.policy.name}", name=r.rule.name)
        details = "\n".join([r.summary, *_violation_lines(r, 50), *(f"note: {n}" for n in r.notes)])
        if r.status == "skip":
            ET.SubElement(case, "skipped", message=r.summary)
        elif r.status == "fail" and r.rule.severity == "error":
            first = r.violations[0].message if r.violations else r.summary
            fail = ET.SubElement(
                case, "failure", message=f"{len(r.violations)} violation(s): {first}", type=r.rule.kind
            )
            fail.text = details
        else:
            out = ET.SubElement(case, "system-out")
            out.text = ("WARNING (severity = 'warning')\n" if r.status == "fail" else "") + details
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _escape_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_prop(s: str) -> str:
    return _escape_data(s).replace(":", "%3A").replace(",", "%2C")


def to_github(res: CheckResult, *, limit: int = 10) -> str:
    """GitHub Actions workflow commands: one ``::error`` (``::warning`` for rules of
    severity ``"warning"``) per failed rule, pointing at the rule's line in the policy
    file, with its violations in the message; then a plain verdict line."""
    lines = []
    for r in res.rules:
        if r.status != "fail":
            continue
        level = "warning" if r.rule.severity == "warning" else "error"
        props = []
        if res.policy.source:
            props.append(f"file={_escape_prop(res.policy.source)}")
            if r.rule.line:
                props.append(f"line={r.rule.line}")
        props.append(f"title={_escape_prop(f'deltascope check: {r.rule.name}')}")
        message = "\n".join([r.summary, *_violation_lines(r, limit)])
        lines.append(f"::{level} {','.join(props)}::{_escape_data(message)}")
    c = res.counts()
    lines.append(
        f"deltascope check {'passed' if res.ok else 'FAILED'}: {c['passed']} passed, {c['failed']} failed, "
        f"{c['warned']} warned, {c['skipped']} skipped ({res.policy.name})"
    )
    return "\n".join(lines) + "\n"


def render(res: CheckResult, fmt: str, *, limit: int = 10) -> str:
    """The result in one of :data:`FORMATS`."""
    if fmt == "text":
        return to_text(res, limit=limit)
    if fmt == "json":
        return to_json(res)
    if fmt == "junit":
        return to_junit(res)
    if fmt == "github":
        return to_github(res, limit=limit)
    raise ValueError(f"Unknown format {fmt!r}; choose from {', '.join(FORMATS)}.")
