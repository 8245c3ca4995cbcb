"""``deltascope report RESULT -o DIR``: tables, plots and a self-contained HTML report
from a saved result (``comparison.json``), without recomputing anything."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..comparison import Comparison
from .options import emit_json, plain_help

EXAMPLES = """examples:
  deltascope report out/comparison.json -o report/
  deltascope report out/ -o out/                  # a run folder: reads out/comparison.json
  deltascope report run.json -o report/ --images svg --top 50
  deltascope report run.json -o report/ --format json

outputs in DIR: report.html (one self-contained file: images embedded, no external
links), report.md, plots/*.png and plots/*.svg, top_energy.csv, top_rel_update.csv, and
the tables 'deltascope compare -o' writes (comparison.json, tensors.csv, by_*.csv,
mismatches.csv, summary.json). Nothing is recomputed; only the spectrum plot re-reads
one tensor pair from the recorded sources, when both are local paths that still exist
(--no-spectrum skips it).

exit codes: 0 written; 2 bad input (not a deltascope result, unreadable file) or error."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="write tables, plots and an HTML report from a saved result",
        description=plain_help(__doc__),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("result", type=Path, help="comparison.json written by 'deltascope compare -o DIR' (or DIR)")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="DIR", help="folder to write the report into")
    p.add_argument("--format", choices=["text", "json"], default="text", help="what goes to stdout")
    add_report_options(p)
    p.set_defaults(func=run)


def add_report_options(p: argparse.ArgumentParser) -> None:
    """Options of the report's content (shared by ``report`` and ``compare --report``)."""
    g = p.add_argument_group("report")
    g.add_argument(
        "--images",
        default="png,svg",
        metavar="LIST",
        help="image formats of the plots written to DIR/plots: png, svg, pdf (default: png,svg)",
    )
    g.add_argument("--top", type=int, default=20, metavar="N", help="rows of the top-N tensor tables (default 20)")
    g.add_argument("--title", default=None, help="title of the HTML report")
    g.add_argument("--no-plots", action="store_true", help="tables only")
    g.add_argument("--no-spectrum", action="store_true", help="do not re-read a tensor pair for the spectrum plot")
    g.add_argument("--parquet", action="store_true", help="also write Parquet tables (needs pyarrow)")


def use_agg() -> None:
    """Render with matplotlib's Agg backend (no display needed), as every CLI command does."""
    import matplotlib

    matplotlib.use("Agg", force=True)


def image_formats(a: argparse.Namespace) -> list[str]:
    """The ``--images`` list, checked (before anything is written)."""
    images = [x.strip().lower() for x in str(getattr(a, "images", "png,svg")).split(",") if x.strip()]
    bad = [x for x in images if x not in ("png", "svg", "pdf")]
    if bad or not images:
        raise ValueError(f"--images {getattr(a, 'images', '')!r}: choose from png, svg, pdf (comma-separated).")
    return images


def write_everything(cmp: Comparison, a: argparse.Namespace) -> dict[str, list[Path]]:
    """The report's files into ``a.out`` (plots, top-N tables, report.md, report.html)."""
    from ..report.html import write_report_folder

    use_agg()
    images = image_formats(a)
    return write_report_folder(
        cmp,
        a.out,
        images=images,
        title=getattr(a, "title", None),
        plots=not getattr(a, "no_plots", False),
        top=int(getattr(a, "top", 20)),
        spectra=None if getattr(a, "no_spectrum", False) else "auto",
    )


def print_written(written: dict[str, list[Path]], fmt: str, extra: dict[str, Any] | None = None) -> None:
    if fmt == "json":
        emit_json({**(extra or {}), **{k: [str(p) for p in v] for k, v in written.items()}})
        return
    report = written.get("report") or []
    if report:
        print(f"report: {report[0]}")
    for kind in ("markdown", "plots", "tables"):
        paths = written.get(kind) or []
        if paths:
            print(f"{kind}: {len(paths)} file(s) in {paths[0].parent}")


def run(a: argparse.Namespace) -> int:
    from .compare import write_outputs

    if a.top < 1:
        raise ValueError("--top must be at least 1.")
    image_formats(a)
    source = a.result / "comparison.json" if a.result.is_dir() else a.result
    cmp = Comparison.from_json(source)
    write_outputs(cmp, a.out, parquet=a.parquet)
    written = write_everything(cmp, a)
    print_written(written, a.format, {"result": str(source), "out": str(a.out)})
    if a.format != "json":
        print(f"Wrote the report of {source} to {a.out}/", file=sys.stderr)
    return 0
