"""Checkpoint sources: local safetensors files and folders, PyTorch pickles (read with
``weights_only=True``), verl FSDP shards, and the Hugging Face Hub.

:func:`open_checkpoint` picks the right one from a spec.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import CheckpointNotFoundError
from .base import Checkpoint, SourceFile, TensorInfo
from .local import open_local

__all__ = ["Checkpoint", "TensorInfo", "SourceFile", "open_checkpoint", "is_hub_spec"]

_HUB_ID = re.compile(r"^(?:hf://)?[A-Za-z0-9][\w.\-]*/[\w.\-]+(?:@[\w.\-/]+)?$")


def is_hub_spec(spec: str) -> bool:
    """True for ``org/name``, ``org/name@rev`` and ``hf://org/name@rev`` (when no local
    path of that name exists)."""
    if spec.startswith("hf://"):
        return True
    return bool(_HUB_ID.match(spec)) and not Path(spec.split("@")[0]).expanduser().exists()


def open_checkpoint(spec: str | os.PathLike[str] | Checkpoint, **hub_options: object) -> Checkpoint:
    """Open a checkpoint lazily: only headers are read.

    Args:
        spec: a local file or folder, a Hub id (``org/name``, ``org/name@rev``,
            ``hf://org/name@rev``), or an already opened :class:`Checkpoint`.
        **hub_options: for Hub specs: ``token``, ``endpoint``, ``cache_dir`` ... (see
            :func:`deltascope.checkpoint.hub.open_hub`).

    Example:
        >>> import deltascope
        >>> base, _ = deltascope.demo_pair()
        >>> ck = open_checkpoint(base)
        >>> ck.kind, len(ck) > 10
        ('safetensors', True)
    """
    if isinstance(spec, Checkpoint):
        return spec
    text = os.fspath(spec)
    if Path(text).expanduser().exists() and not text.startswith("hf://"):
        return open_local(text)
    if is_hub_spec(text):
        from .hub import open_hub

        return open_hub(text, **hub_options)  # type: ignore[arg-type]
    raise CheckpointNotFoundError(
        f"Checkpoint {text!r} does not exist locally and is not a Hub id. Pass a safetensors file, a checkpoint "
        "folder, or a Hub id such as 'org/name' or 'org/name@revision'.",
        path=text,
    )
