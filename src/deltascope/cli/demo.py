"""``deltascope demo``: the whole pipeline on the built-in synthetic pair, offline."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .compare import add_report_flag, check_report_flag, finish
from .options import (
    add_metrics,
    add_output,
    add_run,
    add_selection,
    metrics_kwargs,
    plain_help,
    run_kwargs,
    selection_kwargs,
)

EXAMPLES = """examples:
  deltascope demo
  deltascope demo -o demo-out/ --metrics full

The pair is synthetic (a tiny Llama-shaped bf16 model with a planted, OPD-like update:
see deltascope.demo); it is generated on first use into ~/.cache/deltascope."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run on the built-in synthetic pair (no network)",
        description=plain_help(__doc__),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic pair")
    add_selection(p)
    add_metrics(p)
    add_run(p)
    add_output(p, out_help="write tables and the full result into DIR")
    add_report_flag(p)
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from ..api import compare
    from ..demo import demo_pair

    check_report_flag(a)
    base, tuned = demo_pair(seed=a.seed)
    print(f"Built-in synthetic pair (not a real model): {base} -> {tuned}", file=sys.stderr)
    cmp = compare(base, tuned, **selection_kwargs(a), **metrics_kwargs(a), **run_kwargs(a))
    return finish(cmp, a)
