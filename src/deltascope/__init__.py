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

__all__ = [
    "__version__",
    "compare",
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
