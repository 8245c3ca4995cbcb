"""``deltascope masks``: save the changed masks of an update (bit-packed, ~1 bit per coordinate)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .options import add_selection, emit_json, plain_help, selection_kwargs

EXAMPLES = """examples:
  deltascope masks out/comparison.json -o opd-masks/          # the comparison's checkpoints and selection
  deltascope masks base/ tuned/ -o opd-masks/ --blocks mlp     # straight from two checkpoints
  deltascope masks base/ tuned/ -o masks-atol/ --rule atol_1e-05

The folder gets masks-00001.safetensors ... (U8 tensors named like the base tensors,
numpy.packbits little bit order) and masks.json, written last; read them back with
deltascope.load_masks(folder) or use them in 'deltascope overlap'."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "masks",
        help="save the changed masks of an update",
        description=plain_help(__doc__),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="comparison.json of a run (or its -o folder), or the base checkpoint")
    p.add_argument("tuned", nargs="?", help="tuned checkpoint (when SOURCE is the base checkpoint)")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="DIR", help="folder for the masks")
    p.add_argument("--rule", default="exact", help="sparsity rule: exact (default), atol_<t>, rms_<t>, rel_<t>")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--token", default=None, help="Hugging Face token for Hub checkpoints")
    p.add_argument("--format", choices=["text", "json"], default="text", help="what goes to stdout")
    add_selection(p)
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from ..masks import load_masks, save_masks, write_masks
    from ..selection import Selection

    hub = {"token": a.token} if a.token else {}
    sel = selection_kwargs(a)
    if a.tuned is None:
        from ..comparison import Comparison

        src = Path(a.source)
        path = src / "comparison.json" if src.is_dir() else src
        if any(v for v in sel.values()):
            raise ValueError("Selection options apply to 'masks BASE TUNED'; a comparison keeps its own selection.")
        save_masks(Comparison.from_json(path), a.out, a.rule, device=a.device, **hub)
    else:
        write_masks(a.source, a.tuned, a.out, a.rule, selection=Selection.make(**sel), device=a.device, **hub)
    with load_masks(a.out) as ms:
        m = ms.manifest
        if a.format == "json":
            keep = ("rule", "n_tensors", "numel", "n_changed", "files", "skipped")
            emit_json({"folder": str(a.out), **{k: m[k] for k in keep}})
        else:
            frac = m["n_changed"] / m["numel"] if m["numel"] else float("nan")
            print(f"{m['n_tensors']} masks, {m['numel']:,} coordinates, {frac:.4%} changed under rule {m['rule']}")
            for name, why in m["skipped"].items():
                print(f"  skipped {name}: {why}", file=sys.stderr)
            print(f"Wrote the masks to {a.out}/", file=sys.stderr)
    return 0
