"""``deltascope check``: gate a checkpoint (or a saved result) with a policy.

Exit codes: 0 every rule passed; 1 violations (0 with --exit-zero); 2 error (bad policy,
unreadable inputs, usage)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .options import add_run, plain_help, run_kwargs

EXAMPLES = """examples:
  deltascope check base/ tuned/ --policy release.toml
  deltascope check run.json --policy release.toml --baseline last-release.json --format junit > report.xml
  deltascope check base/ org/model@v2 --policy release.toml --save run.json --junit report.xml --format github

A policy lists rules (bounds on metric columns per tensor or per group, bit-identical
tensors, no NaN/Inf, no missing/extra/reshaped tensors, drift against a baseline); see
docs/check.md. Checking two checkpoints computes only the metrics the policy names.
--save writes the comparison as JSON: keep it as the next release's --baseline."""


def add_parser(sub: Any) -> None:
    from ..checks.outputs import FORMATS

    p = sub.add_parser(
        "check",
        help="check a checkpoint pair or a saved result against a policy (exit 1 on violations)",
        description=plain_help(__doc__),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="BASE TUNED checkpoints, or one saved result (JSON)")
    p.add_argument("--policy", "-p", required=True, type=Path, metavar="FILE", help="policy file (.toml or .json)")
    p.add_argument(
        "--baseline", type=Path, metavar="JSON", help="a previous release's saved result, for baseline rules"
    )
    g = p.add_argument_group("output")
    g.add_argument("--format", choices=FORMATS, default="text", help="what goes to stdout (default: text)")
    g.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML to FILE")
    g.add_argument("--json", dest="json_out", type=Path, metavar="FILE", help="also write the JSON result to FILE")
    g.add_argument("--save", type=Path, metavar="FILE", help="write the checked comparison (JSON) to FILE")
    g.add_argument("--limit", type=int, default=10, metavar="N", help="violations shown per rule (default: 10)")
    g.add_argument("--exit-zero", action="store_true", help="exit 0 even when rules fail (errors still exit 2)")
    add_run(p)
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from ..checks import check
    from ..checks.outputs import render
    from ..comparison import atomic_write_text

    if len(a.inputs) > 2:
        raise ValueError(f"check takes BASE TUNED or one saved result, got {len(a.inputs)} inputs.")
    if len(a.inputs) == 2:
        result = check(tuple(a.inputs), a.policy, baseline=a.baseline, **run_kwargs(a))
    else:
        result = check(a.inputs[0], a.policy, baseline=a.baseline)
    if a.save is not None:
        result.comparison.to_json(a.save)
    if a.junit is not None:
        atomic_write_text(a.junit, render(result, "junit"))
    if a.json_out is not None:
        atomic_write_text(a.json_out, render(result, "json"))
    sys.stdout.write(render(result, a.format, limit=a.limit))
    if a.format in ("json", "junit"):  # text and github output end with the verdict themselves
        c = result.counts()
        print(
            f"deltascope check {'passed' if result.ok else 'FAILED'}: {c['failed']} of {c['rules']} rule(s) failed.",
            file=sys.stderr,
        )
    if result.ok or a.exit_zero:
        return 0
    return 1
