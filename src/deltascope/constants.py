"""Constants and every environment variable deltascope reads, in one module.

Units are in the names. Environment variables are read once, at import.
"""

from __future__ import annotations

import os

__all__ = [
    "MAX_HEADER_BYTES",
    "CHUNK_ELEMENTS",
    "SAMPLE_LIMIT",
    "DEFAULT_SEED",
    "RESULT_FORMAT",
    "RESULT_FORMAT_VERSION",
    "NO_PROGRESS",
]


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(f"Environment variable {name}={value!r} is not an integer.") from e


#: Largest safetensors JSON header accepted (the safetensors library's own cap is 100 MB).
MAX_HEADER_BYTES: int = _env_int("DELTASCOPE_MAX_HEADER_BYTES", 100 * 1000 * 1000)

#: Elements processed per chunk of a tensor in the streaming pass. Working memory is five
#: float32 (float64 for 32-bit checkpoints) buffers of this many elements. The default
#: (256K -> 1 MiB per float32 buffer) keeps the working set in cache; measured against
#: 128K ... 2M in docs/performance.md.
CHUNK_ELEMENTS: int = _env_int("DELTASCOPE_CHUNK_ELEMENTS", 256 * 1024)

#: Coordinates above which rank correlations use a seeded uniform sample.
SAMPLE_LIMIT: int = _env_int("DELTASCOPE_SAMPLE_LIMIT", 2_000_000)

#: Seed of every sample deltascope draws, unless a call passes its own.
DEFAULT_SEED: int = 0

#: Tag and version written into every saved result.
RESULT_FORMAT: str = "deltascope.comparison"
RESULT_FORMAT_VERSION: int = 1

#: ``DELTASCOPE_NO_PROGRESS=1`` turns progress bars off everywhere.
NO_PROGRESS: bool = os.environ.get("DELTASCOPE_NO_PROGRESS", "") not in ("", "0", "false", "False")
