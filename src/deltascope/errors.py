"""Every error and warning deltascope raises, in one place.

Each error inherits :class:`DeltascopeError` *and* the builtin it refines, so
``except FileNotFoundError`` keeps working for callers who do not know deltascope.
Messages say what failed, where, and how to fix it; the cause is chained with
``raise ... from e``.

A problem with *one tensor* during a long run is not an exception: it is recorded in
the result (``Comparison.tensors.status == "error"`` with the message in ``reason``),
so a 2-hour streaming run is never lost to one bad tensor.
"""

from __future__ import annotations

__all__ = [
    "DeltascopeError",
    "CheckpointNotFoundError",
    "NoWeightsError",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "IncompatibleCheckpointsError",
    "ResultFormatError",
    "HubError",
    "RepoNotFoundError",
    "RevisionNotFoundError",
    "EntryNotFoundError",
    "GatedRepoError",
    "HubConnectionError",
    "OfflineModeError",
    "PolicyError",
    "DeltascopeWarning",
    "DegenerateMetricWarning",
]


class DeltascopeError(Exception):
    """Base class of every error deltascope raises on purpose."""


class CheckpointNotFoundError(DeltascopeError, FileNotFoundError):
    """Raised when a checkpoint spec names a path that does not exist.

    Attributes:
        path: the path that was looked for.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class NoWeightsError(DeltascopeError, FileNotFoundError):
    """Raised when a folder or repository exists but holds no weight files we can read.

    Attributes:
        path: the folder (or repository id) that was searched.
        found: names of the files that *were* there, to help the user pick.
    """

    def __init__(self, message: str, *, path: str | None = None, found: list[str] | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.found = list(found or [])


class CorruptCheckpointError(DeltascopeError, ValueError):
    """Raised when a weight file's header or layout is invalid (truncated, non-JSON,
    unknown dtype, byte spans that do not match shape x dtype, overlapping or
    out-of-range offsets, an index that names a missing shard ...).

    Attributes:
        path: the file at fault.
        tensor: the tensor at fault, when one is.
    """

    def __init__(self, message: str, *, path: str | None = None, tensor: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.tensor = tensor


class UnsafeCheckpointError(DeltascopeError, ValueError):
    """Raised when reading a checkpoint would be unsafe: a pickle that needs arbitrary
    code to load (deltascope only ever uses ``torch.load(weights_only=True)``), or an
    index whose shard paths leave the checkpoint folder.

    Attributes:
        path: the file at fault.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class IncompatibleCheckpointsError(DeltascopeError, ValueError):
    """Raised when base and tuned checkpoints cannot be compared at all (no tensor in
    common after aliasing). Partial mismatches are *not* errors: they are reported in
    ``Comparison.mismatches``."""


class ResultFormatError(DeltascopeError, ValueError):
    """Raised when a saved result (JSON) is not a deltascope result, or was written by an
    incompatible format version."""


class HubError(DeltascopeError, OSError):
    """Base class for errors talking to the Hugging Face Hub (or a compatible server).

    Attributes:
        repo_id: the repository, when known.
        revision: the revision asked for, when known.
    """

    def __init__(self, message: str, *, repo_id: str | None = None, revision: str | None = None) -> None:
        super().__init__(message)
        self.repo_id = repo_id
        self.revision = revision


class RepoNotFoundError(HubError, FileNotFoundError):
    """Raised when the Hub answers that a repository does not exist (or is private and no
    valid token was sent)."""


class RevisionNotFoundError(HubError, FileNotFoundError):
    """Raised when the repository exists but the branch, tag or commit does not."""


class EntryNotFoundError(HubError, FileNotFoundError):
    """Raised when a file is missing from a repository revision."""


class GatedRepoError(HubError, PermissionError):
    """Raised on HTTP 401/403: the repository is gated or private. Pass ``token=`` or set
    ``HF_TOKEN`` (or run ``hf auth login``) with an account that has access."""


class HubConnectionError(HubError, ConnectionError):
    """Raised when the Hub could not be reached or kept failing after all retries."""


class OfflineModeError(HubError, FileNotFoundError):
    """Raised when ``HF_HUB_OFFLINE=1`` is set and the data asked for is not cached."""


class PolicyError(DeltascopeError, ValueError):
    """Raised when a check policy (TOML or dict) is malformed.

    Attributes:
        key: the dotted key at fault, e.g. ``rules[2].max``.
        line: the line in the policy file, when known.
    """

    def __init__(self, message: str, *, key: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.line = line


class DeltascopeWarning(UserWarning):
    """Base class of deltascope's warnings."""


class DegenerateMetricWarning(DeltascopeWarning):
    """A metric is undefined for this input (zero-norm source weight, a 1-D tensor for a
    spectral metric, NaN weights ...) and was reported as NaN with a reason."""
