"""Command-line options shared by several commands, defined once."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "add_selection",
    "add_metrics",
    "add_run",
    "add_output",
    "selection_kwargs",
    "metrics_kwargs",
    "run_kwargs",
    "emit_json",
]


def plain_help(doc: str | None) -> str:
    """A module docstring as plain help text (no reStructuredText double backticks)."""
    return (doc or "").replace("``", "")


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from e


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_selection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("which tensors")
    g.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help="analyse only names matching this glob (repeatable; 're:<regex>' for a regex)",
    )
    g.add_argument("--exclude", action="append", metavar="GLOB", help="skip names matching this glob (repeatable)")
    g.add_argument("--layers", metavar="RANGES", help="layers to analyse, e.g. '0-3,7'")
    g.add_argument(
        "--blocks",
        type=_csv,
        metavar="LIST",
        help="blocks to analyse: attention,mlp,embedding,lm_head,norm,router,projector,other",
    )
    g.add_argument("--modules", type=_csv, metavar="LIST", help="canonical modules, e.g. up_proj,down_proj")
    g.add_argument("--towers", type=_csv, metavar="LIST", help="towers: language,vision,audio,projector")


def add_metrics(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("metrics")
    g.add_argument(
        "--metrics",
        choices=["default", "full"],
        default="default",
        help="elementwise preset: default (exact, atol 1e-5, ULP counts, norms) or full (every rule)",
    )
    g.add_argument("--atol", type=_floats, metavar="LIST", help="absolute tolerances, e.g. 1e-8,1e-5")
    g.add_argument("--rms", type=_floats, metavar="LIST", help="RMS(W0)-relative tolerances, e.g. 1e-3")
    g.add_argument("--rel", type=_floats, metavar="LIST", help="bf16-aware relative tolerances η, e.g. 1e-3")
    g.add_argument(
        "--concentration",
        type=_floats,
        metavar="LIST",
        help="fractions of coordinates for the energy-concentration columns, e.g. 0.001,0.01",
    )
    g.add_argument("--no-ulp", action="store_true", help="skip the ULP counts")
    g.add_argument(
        "--spectral",
        nargs="?",
        const="exact",
        choices=["exact", "fast"],
        default=None,
        help="spectral geometry of 2-D updates: ranks, principal-subspace projection, rotation (exact SVD, or fast)",
    )
    g.add_argument(
        "--coords",
        action="store_true",
        help="which coordinates move: |delta| vs |W0|, magnitude profile, low-magnitude/principal masks",
    )


def add_run(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    g.add_argument("--chunk", type=int, default=None, metavar="N", help="elements per chunk (memory vs speed)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--progress", action="store_true", help="progress bar even when stderr is not a terminal")
    g.add_argument("--token", default=None, help="Hugging Face token (default: HF_TOKEN or your saved login)")


def add_output(p: argparse.ArgumentParser, *, out_help: str) -> None:
    g = p.add_argument_group("output")
    g.add_argument("-o", "--out", type=Path, default=None, metavar="DIR", help=out_help)
    g.add_argument("--format", choices=["text", "json"], default="text", help="what goes to stdout")
    g.add_argument("--parquet", action="store_true", help="also write Parquet tables (needs pyarrow)")


def selection_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    return {
        "include": a.include,
        "exclude": a.exclude,
        "layers": a.layers,
        "blocks": a.blocks,
        "modules": a.modules,
        "towers": a.towers,
    }


def metrics_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    return {
        "metrics": a.metrics,
        "atol": a.atol,
        "rms": a.rms,
        "rel": a.rel,
        "concentration": a.concentration,
        "ulp": False if a.no_ulp else None,
        "spectral": a.spectral or False,
        "coords": a.coords,
    }


def run_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {"device": a.device, "progress": True if a.progress else (False if a.no_progress else None)}
    if a.chunk:
        kw["chunk"] = a.chunk
    if a.token:
        kw["token"] = a.token
    return kw


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, allow_nan=False, default=str) + "\n")
