"""``deltascope overlap``: do two or more updates of one base change the same coordinates?"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .options import add_selection, emit_json, plain_help, selection_kwargs

EXAMPLES = """examples:
  deltascope overlap base/ opd/ rl/                    # three checkpoints, one streaming pass
  deltascope overlap base/ opd/ rl/ --by block --names opd,rl
  deltascope overlap opd-masks/ rl-masks/               # masks saved with 'deltascope masks'
  deltascope overlap base/ opd/ rl-masks/ --format json

Per pair of updates: Jaccard of the changed (and unchanged) sets, coverage each way,
the independent-random baseline and observed/random ratios. With -o DIR the tensor
table and the grouped table are written as CSV."""

SHOW = [
    "n_tensors",
    "p_a",
    "p_b",
    "jaccard_changed",
    "jaccard_changed_random",
    "jaccard_changed_ratio",
    "jaccard_unchanged_ratio",
    "coverage_a_by_b",
    "coverage_b_by_a",
    "intersection_lift",
]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "overlap",
        help="overlap of the changed coordinates of several updates",
        description=plain_help(__doc__),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("base", help="base checkpoint, or the first masks folder when every update is saved masks")
    p.add_argument("updates", nargs="+", help="tuned checkpoints or masks folders (from 'deltascope masks')")
    p.add_argument("--rule", default="exact", help="rule of masks computed from checkpoints (default: exact)")
    p.add_argument("--names", default=None, metavar="LIST", help="labels of the updates, comma-separated")
    p.add_argument("--by", default=None, metavar="KEYS", help="group rows by these keys, e.g. block or layer,module")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--token", default=None, help="Hugging Face token for Hub checkpoints")
    p.add_argument("--format", choices=["text", "json"], default="text", help="what goes to stdout")
    p.add_argument("-o", "--out", type=Path, default=None, metavar="DIR", help="write overlap CSV tables into DIR")
    add_selection(p)
    p.set_defaults(func=run)


def _source(arg: str) -> Any:
    from ..masks import MANIFEST, load_masks

    return load_masks(arg) if (Path(arg) / MANIFEST).is_file() else arg


def run(a: argparse.Namespace) -> int:
    from ..comparison import records
    from ..display import text_table
    from ..overlaps import overlap

    keys = [k.strip() for k in a.by.split(",") if k.strip()] if a.by else []
    names = [n.strip() for n in a.names.split(",")] if a.names else None
    hub = {"token": a.token} if a.token else {}
    ov = overlap(
        _source(a.base),
        *[_source(u) for u in a.updates],
        rule=a.rule,
        names=names,
        device=a.device,
        **selection_kwargs(a),
        **hub,
    )
    table = ov.by(*keys)
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        ov.tensors.to_csv(a.out / "overlap_tensors.csv", index=False)
        table.to_csv(a.out / ("overlap_by_" + "_".join(keys) + ".csv" if keys else "overlap_summary.csv"))
    if a.format == "json":
        emit_json({"updates": ov.updates, "table": records(table), "skipped": records(ov.skipped.set_index("name"))})
    else:
        print(repr(ov))
        print()
        print(text_table(table, SHOW))
        if a.out is not None:
            print(f"\nWrote the overlap tables to {a.out}/", file=sys.stderr)
    return 0
