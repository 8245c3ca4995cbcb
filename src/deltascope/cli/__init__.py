"""The ``deltascope`` command line.

Exit codes (as ruff): 0 success; 1 finished but something is wrong with the data
(tensors that failed, policy violations); 2 bad input, usage or an internal error.
Data goes to stdout (text or ``--format json``); progress, warnings and errors to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from .._version import __version__
from ..errors import DeltascopeError

__all__ = ["main"]

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


def _commands() -> dict[str, object]:
    from . import check as check_cmd
    from . import compare as compare_cmd
    from . import demo as demo_cmd
    from . import masks as masks_cmd
    from . import overlap as overlap_cmd
    from . import report as report_cmd

    return {
        "compare": compare_cmd,
        "check": check_cmd,
        "demo": demo_cmd,
        "report": report_cmd,
        "masks": masks_cmd,
        "overlap": overlap_cmd,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deltascope",
        description="What did fine-tuning actually change? Stream two checkpoints and measure the update.",
        epilog="Run 'deltascope COMMAND --help' for examples. Set DELTASCOPE_DEBUG=1 or pass --debug for tracebacks.",
    )
    parser.add_argument("--version", action="version", version=f"deltascope {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _commands().values():
        module.add_parser(sub)  # type: ignore[attr-defined]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code instead of exiting (``sys.exit(main())``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors, 0 on --help
        return int(e.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    debug = args.debug or os.environ.get("DELTASCOPE_DEBUG", "") not in ("", "0")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("Interrupted; nothing more was written.", file=sys.stderr)
        return 130
    except (DeltascopeError, OSError, ValueError) as e:
        if debug:
            traceback.print_exc()
        print(f"Error: {e}", file=sys.stderr)
        if not debug:
            print("(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # an internal error: say so plainly
        traceback.print_exc() if debug else None
        print(f"Error: internal error {type(e).__name__}: {e}", file=sys.stderr)
        print("This is a bug in deltascope; please report it with the output of --debug.", file=sys.stderr)
        return EXIT_ERROR


def run() -> None:  # console-script entry
    sys.exit(main())
