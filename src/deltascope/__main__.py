"""``python -m deltascope`` = the ``deltascope`` command."""

from .cli import run

run()
