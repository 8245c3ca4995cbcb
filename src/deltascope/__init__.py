"""deltascope: what did fine-tuning actually change in this model?

Stream a base and a tuned checkpoint tensor by tensor and measure the update
Δ = W_tuned − W_base: how sparse it is under honest tolerances, where it lands, and
(optionally) its geometry and which coordinates it favours.

    >>> import deltascope
    >>> base, tuned = deltascope.demo_pair()            # built-in synthetic pair
    >>> cmp = deltascope.compare(base, tuned, progress=False)
    >>> list(cmp.by("block").index)
    ['attention', 'embedding', 'lm_head', 'mlp', 'norm']
"""

from ._version import __version__
from .api import compare
from .checkpoint import Checkpoint, TensorInfo, open_checkpoint
from .comparison import Comparison
from .demo import demo_pair
from .errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    DeltascopeError,
    DeltascopeWarning,
    IncompatibleCheckpointsError,
    NoWeightsError,
    ResultFormatError,
    UnsafeCheckpointError,
)
from .metrics.elementwise import ElementwiseOptions
from .naming import Role, Rule, role_of

# Verbs whose modules are imported on first use, so ``import deltascope`` stays cheap.
_LAZY = {
    "check": "deltascope.checks:check",
    "overlap": "deltascope.overlaps:overlap",
    "save_masks": "deltascope.masks:save_masks",
    "load_masks": "deltascope.masks:load_masks",
}


def __getattr__(name: str) -> object:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'deltascope' has no attribute {name!r}")
    import importlib

    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


__all__ = [
    "__version__",
    "compare",
    "check",
    "overlap",
    "save_masks",
    "load_masks",
    "open_checkpoint",
    "demo_pair",
    "Comparison",
    "Checkpoint",
    "TensorInfo",
    "ElementwiseOptions",
    "Role",
    "Rule",
    "role_of",
    "DeltascopeError",
    "CheckpointNotFoundError",
    "NoWeightsError",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "IncompatibleCheckpointsError",
    "ResultFormatError",
    "DeltascopeWarning",
]
