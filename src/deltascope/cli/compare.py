"""``deltascope compare BASE TUNED``: run a comparison, print a summary, write tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..comparison import Comparison, atomic_write_text, records
from .options import (
    add_metrics,
    add_output,
    add_run,
    add_selection,
    emit_json,
    metrics_kwargs,
    plain_help,
    run_kwargs,
    selection_kwargs,
)

EXAMPLES = """examples:
  deltascope compare ckpts/base ckpts/opd -o out/
  deltascope compare base.safetensors tuned.safetensors --blocks mlp --layers 0-7
  deltascope compare Qwen/Qwen3-8B someorg/qwen3-8b-opd@v1 --include 'model.layers.1[0-5].*' -o out/
  deltascope compare base/ tuned/ --metrics full --format json > summary.json
  deltascope compare base/ tuned/ -o out/ --report     # + plots and a self-contained report.html

outputs (with -o DIR): comparison.json (the full result, reloadable), tensors.csv,
by_block.csv, by_module.csv, by_layer.csv, by_tower.csv, by_layer_module.csv,
mismatches.csv, and summary.json, written last: a folder without summary.json is not
a finished run."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="compare a base and a tuned checkpoint",
        description=plain_help(__doc__),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("base", help="base checkpoint: file, folder, or Hub id org/name[@rev]")
    p.add_argument("tuned", help="tuned checkpoint: file, folder, or Hub id org/name[@rev]")
    add_selection(p)
    add_metrics(p)
    add_run(p)
    add_output(p, out_help="write tables and the full result into DIR")
    add_report_flag(p)
    p.set_defaults(func=run)


def add_report_flag(p: argparse.ArgumentParser) -> None:
    """``--report``: also write plots (PNG/SVG), report.md and a self-contained report.html into -o DIR."""
    p.add_argument(
        "--report",
        action="store_true",
        help="also write plots (PNG and SVG), report.md and a self-contained report.html into DIR (needs -o)",
    )


def check_report_flag(a: argparse.Namespace) -> None:
    if getattr(a, "report", False) and a.out is None:
        raise ValueError("--report writes files: give the folder with -o DIR.")


def summary_dict(cmp: Comparison) -> dict[str, Any]:
    """The model-level summary and run facts, JSON-ready (NaN becomes null)."""
    meta = cmp.metadata
    return {
        "base": meta.get("base", {}).get("spec"),
        "tuned": meta.get("tuned", {}).get("spec"),
        "complete": meta.get("complete", False),
        "n_errors": int((cmp.tensors["status"] == "error").sum()),
        "summary": records(cmp.summary())["model"],
        "by_block": records(cmp.by("block")),
        "metadata": meta,
    }


#: Spectral / coordinate columns shown in the text summary when the run computed them.
GEOMETRY_COLUMNS = [
    "effective_rank_frac",
    "stable_rank",
    "proj2_10pct",
    "proj2_10pct_enrichment",
    "spearman_absdelta_absw0",
    "lowmag_10pct_enrichment",
    "principal_10pct_enrichment",
]


def print_text(cmp: Comparison) -> None:
    from ..display import SHOW_COLUMNS, text_table

    print(repr(cmp))
    print()
    by_block = cmp.by("block")
    print(text_table(by_block, SHOW_COLUMNS))
    extra = [c for c in GEOMETRY_COLUMNS if c in by_block.columns]
    if extra:
        print()
        print(text_table(by_block, ["n_tensors", *extra]))
    errs = cmp.errors
    if len(errs):
        print(f"\n{len(errs)} tensor(s) could not be compared:")
        for _, r in errs.head(10).iterrows():
            print(f"  {r['name']}: {r['reason']}")


def write_outputs(cmp: Comparison, out: Path, *, parquet: bool = False) -> None:
    """Write every table, then summary.json last (its presence marks a finished run)."""
    out.mkdir(parents=True, exist_ok=True)
    done = out / "summary.json"
    if done.exists():
        done.unlink()  # an older run's marker must not vouch for this one's files
    cmp.to_json(out / "comparison.json")
    cmp.to_csv(out)
    if parquet:
        cmp.to_parquet(out)
    import json

    atomic_write_text(done, json.dumps(summary_dict(cmp), indent=2, allow_nan=False, default=str))


def finish(cmp: Comparison, a: argparse.Namespace) -> int:
    if a.out is not None:
        write_outputs(cmp, a.out, parquet=a.parquet)
    written = None
    if getattr(a, "report", False):
        from .report import write_everything

        check_report_flag(a)
        written = write_everything(cmp, a)
    if a.format == "json":
        extra = {"written": {k: [str(p) for p in v] for k, v in written.items()}} if written else {}
        emit_json({**summary_dict(cmp), **extra})
    else:
        print_text(cmp)
        if a.out is not None:
            print(f"\nWrote tables and the full result to {a.out}/", file=sys.stderr)
        if written:
            print(f"Wrote the report to {written['report'][0]}", file=sys.stderr)
    n_err = int((cmp.tensors["status"] == "error").sum())
    if n_err:
        print(f"Warning: {n_err} tensor(s) failed; their rows have status 'error' and a reason.", file=sys.stderr)
        return 1
    return 0


def run(a: argparse.Namespace) -> int:
    from ..api import compare

    check_report_flag(a)  # before a long run, not after it
    cmp = compare(a.base, a.tuned, **selection_kwargs(a), **metrics_kwargs(a), **run_kwargs(a))
    return finish(cmp, a)
