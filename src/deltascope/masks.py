"""The changed subnetwork of an update, saved as bit-packed masks, and read back lazily.

``save_masks(cmp, folder)`` streams the comparison's two checkpoints again (tensor by
tensor, honouring the comparison's selection), computes each tensor's changed mask under
a sparsity rule (:func:`deltascope.metrics.coords.changed_mask`) and writes it with
``numpy.packbits(mask.ravel(), bitorder="little")`` -- one bit per coordinate, in
row-major order, the padding bits of the last byte zero -- as a ``U8`` tensor named like
the base tensor, into ``masks-00001.safetensors``, ``masks-00002.safetensors`` ... (a new
file every ``shard_bytes``). ``masks.json``, the manifest, is written last: it records
the rule and tolerance, the sources, each tensor's shape, numel, changed count, file and
byte count, and the deltascope version. Every file is written to a temporary name and
renamed, so a folder with a manifest is always complete.

``load_masks(folder)`` validates the manifest and the shard headers up front and returns
a :class:`MaskSet`, a read-only mapping from tensor name to a bool tensor, unpacked on
access (and checked against the manifest's count).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ._version import __version__
from .checkpoint import Checkpoint, is_hub_spec, open_checkpoint
from .checkpoint.local import SafetensorsCheckpoint, safe_child
from .comparison import atomic_write_text
from .errors import DeltascopeError, IncompatibleCheckpointsError, ResultFormatError
from .metrics.coords import changed_mask, parse_rule
from .naming import Role, RoleMapper, Rule
from .pairing import TensorPair, pair_tensors
from .selection import Selection

__all__ = ["MaskSet", "save_masks", "write_masks", "load_masks", "selected_pairs", "opened", "MANIFEST", "MASKS_FORMAT"]

#: Name of the manifest inside a masks folder, and its format tag and version.
MANIFEST = "masks.json"
MASKS_FORMAT = "deltascope.masks"
MASKS_VERSION = 1
#: Packed bytes per shard file before a new one is started (1 GiB = 8.6e9 coordinates).
SHARD_BYTES = 1 << 30
_SHARD = re.compile(r"^masks-\d{5}\.safetensors$")


@contextlib.contextmanager
def opened(spec: Any, **source_options: Any) -> Iterator[Checkpoint]:
    """A checkpoint opened for the duration of a ``with`` block; one passed in already
    opened stays open (its owner closes it)."""
    ck = open_checkpoint(spec, **source_options)
    try:
        yield ck
    finally:
        if ck is not spec:
            ck.close()


def selected_pairs(
    base: Checkpoint, tuned: Checkpoint, *, selection: Selection | None = None, mapper: RoleMapper | None = None
) -> tuple[list[TensorPair], Any]:
    """Pairs of ``base`` x ``tuned`` (the core's pairing: exact names, then aliases) that
    ``selection`` accepts, in base storage order, and the mismatch report."""
    selection = selection or Selection()
    pairing = pair_tensors(
        base.tensors, tuned.tensors, mapper=mapper or RoleMapper(), base_config=base.config, tuned_config=tuned.config
    )
    return [p for p in pairing.pairs if selection.accepts(p.name, p.role)], pairing.mismatches


def _run_setup(cmp: Any) -> tuple[Selection, RoleMapper]:
    opts = cmp.metadata.get("options", {})
    sel = opts.get("selection") or {}
    selection = Selection.make(
        sel.get("include") or None,
        sel.get("exclude") or None,
        sel.get("layers"),
        sel.get("blocks"),
        sel.get("modules"),
        sel.get("towers"),
    )
    return selection, RoleMapper([Rule(**r) for r in opts.get("naming_rules", [])])


def _spec_of(cmp: Any, side: str) -> str:
    """The spec a comparison read ``side`` from; a Hub spec pinned to the commit it resolved
    to, so a branch that moved since is not read instead."""
    desc = cmp.metadata.get(side) or {}
    spec = desc.get("spec")
    if not spec:
        raise ResultFormatError(f"The comparison's metadata names no {side} checkpoint; pass {side}= explicitly.")
    revision = desc.get("revision")
    if revision and desc.get("kind") == "hub" and is_hub_spec(str(spec)):
        return f"{str(spec).split('@')[0]}@{revision}"
    return str(spec)


def save_masks(
    cmp: Any,
    folder: str | os.PathLike[str],
    rule: str = "exact",
    *,
    base: Any = None,
    tuned: Any = None,
    shard_bytes: int = SHARD_BYTES,
    device: str = "cpu",
    **source_options: Any,
) -> Path:
    """Save the changed masks of a comparison's update into ``folder``.

    Re-streams the comparison's checkpoints (``cmp.metadata["base"]["spec"]`` and
    ``["tuned"]["spec"]``, or ``base=``/``tuned=`` where they moved), over the same
    selection and naming rules. Where the comparison holds ``n_changed_<rule>``, each
    mask's count is checked against it, so masks never silently describe other files.

    Args:
        cmp: a :class:`~deltascope.Comparison` (or one loaded with ``from_json``).
        folder: output folder (created; an older manifest in it is removed first).
        rule: ``exact`` (default), ``atol_<t>``, ``rms_<t>`` or ``rel_<t>``.
        base, tuned: override the checkpoint specs of the comparison.
        shard_bytes: packed bytes per shard file.
        device: where masks are computed.
        **source_options: for Hub specs (``token``, ``endpoint`` ...).

    Returns:
        The folder.

    Example:
        >>> import deltascope, tempfile
        >>> b, t = deltascope.demo_pair()
        >>> cmp = deltascope.compare(b, t, blocks="mlp", layers=0, progress=False)
        >>> ms = deltascope.load_masks(deltascope.save_masks(cmp, tempfile.mkdtemp()))
        >>> name = "model.layers.0.mlp.up_proj.weight"
        >>> int(ms[name].sum()) == int(cmp.tensors.set_index("name").loc[name, "n_changed_exact"])
        True
    """
    selection, mapper = _run_setup(cmp)
    expected: dict[str, int] = {}
    _, _, rule_name = parse_rule(rule)
    col = f"n_changed_{rule_name}"
    if col in cmp.tensors.columns:
        ok = cmp.tensors[cmp.tensors["status"] == "ok"]
        expected = {n: int(v) for n, v in zip(ok["name"], ok[col]) if not pd.isna(v)}
    return write_masks(
        base if base is not None else _spec_of(cmp, "base"),
        tuned if tuned is not None else _spec_of(cmp, "tuned"),
        folder,
        rule,
        selection=selection,
        mapper=mapper,
        shard_bytes=shard_bytes,
        device=device,
        expected=expected,
        comparison={"created": cmp.metadata.get("created")},
        **source_options,
    )


def write_masks(
    base: Any,
    tuned: Any,
    folder: str | os.PathLike[str],
    rule: str = "exact",
    *,
    selection: Selection | None = None,
    mapper: RoleMapper | None = None,
    shard_bytes: int = SHARD_BYTES,
    device: str = "cpu",
    expected: Mapping[str, int] | None = None,
    comparison: dict[str, Any] | None = None,
    **source_options: Any,
) -> Path:
    """:func:`save_masks` from two checkpoint specs directly (no comparison needed)."""
    kind, tol, rule_name = parse_rule(rule)
    if shard_bytes < 1:
        raise ValueError(f"shard_bytes must be positive, got {shard_bytes}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        manifest_path.unlink()  # an older manifest must not vouch for the files below
    mapper = mapper or RoleMapper()
    with opened(base, **source_options) as b, opened(tuned, **source_options) as t:
        pairs, _ = selected_pairs(b, t, selection=selection, mapper=mapper)
        entries, skipped, files = _stream_masks(b, t, pairs, rule_name, out, shard_bytes, device, expected or {})
        sources = {"base": b.describe(), "tuned": t.describe()}
    manifest = {
        "format": MASKS_FORMAT,
        "version": MASKS_VERSION,
        "deltascope_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rule": rule_name,
        "tolerance": {"kind": kind, "value": tol},
        "packing": {"bitorder": "little", "order": "row-major", "dtype": "U8", "padding": "zero"},
        "sources": sources,
        "comparison": comparison or {},
        "selection": (selection or Selection()).to_dict(),
        "naming_rules": [r.__dict__ for r in mapper.rules],
        "n_tensors": len(entries),
        "numel": sum(e["numel"] for e in entries.values()),
        "n_changed": sum(e["n_changed"] for e in entries.values()),
        "files": files,
        "tensors": entries,
        "skipped": skipped,
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1, allow_nan=False))
    for stale in out.iterdir():  # shards of an older, larger save
        if _SHARD.match(stale.name) and stale.name not in files:
            stale.unlink()
    return out


def _stream_masks(
    b: Checkpoint,
    t: Checkpoint,
    pairs: list[TensorPair],
    rule: str,
    out: Path,
    shard_bytes: int,
    device: str,
    expected: Mapping[str, int],
) -> tuple[dict[str, dict[str, Any]], dict[str, str], list[str]]:
    from safetensors.torch import save_file

    entries: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    files: list[str] = []
    shard: dict[str, torch.Tensor] = {}
    size = 0

    def flush() -> None:
        nonlocal shard, size
        if not shard:
            return
        name = f"masks-{len(files) + 1:05d}.safetensors"
        tmp = out / (name + ".partial")
        save_file(shard, str(tmp), metadata={"format": MASKS_FORMAT, "bitorder": "little"})
        os.replace(tmp, out / name)
        for key in shard:
            entries[key]["file"] = name
        files.append(name)
        shard, size = {}, 0

    for pair in pairs:
        if pair.base.dtype_info.torch is None or pair.tuned.dtype_info.torch is None:
            skipped[pair.name] = f"dtype {pair.base.dtype}/{pair.tuned.dtype} packs elements across bytes"
            continue
        try:
            w0 = b.read(pair.base.name)
            w1 = t.read(pair.tuned.name)
            mask = changed_mask(
                w0,
                w1,
                rule,
                base_dtype=pair.base.dtype_info,
                tuned_dtype=pair.tuned.dtype_info,
                device=device,
            )
        except (ValueError, KeyError, NotImplementedError, TypeError) as e:
            skipped[pair.name] = f"{type(e).__name__}: {e}"
            continue
        finally:
            b.release(pair.base.name)
            t.release(pair.tuned.name)
        flat = mask.reshape(-1).cpu().numpy()
        count = int(flat.sum())
        want = expected.get(pair.name)
        if want is not None and want != count:
            raise IncompatibleCheckpointsError(
                f"Tensor {pair.name!r}: {count} coordinates changed under rule {rule!r} now, {want} in the "
                "comparison. The checkpoints changed since the comparison ran; pass base=/tuned= with the "
                "files it compared, or run the comparison again."
            )
        packed = np.packbits(flat, bitorder="little")
        entries[pair.name] = {
            "file": None,
            "shape": list(pair.base.shape),
            "numel": int(flat.size),
            "n_changed": count,
            "nbytes": int(packed.size),
            "tuned_name": pair.tuned.name,
            "dtype_base": pair.base.dtype,
            "dtype_tuned": pair.tuned.dtype,
        }
        shard[pair.name] = torch.from_numpy(packed)
        size += packed.size
        if size >= shard_bytes:
            flush()
    flush()
    return entries, skipped, files


# -- reading ---------------------------------------------------------------------------
class MaskSet(Mapping[str, torch.Tensor]):
    """Saved masks of one update, read lazily: ``ms[name]`` is a bool tensor shaped like
    the base tensor. Attributes: ``folder``, ``manifest``, ``rule``, ``sources``.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], shards: dict[str, SafetensorsCheckpoint]) -> None:
        self.folder = folder
        self.manifest = manifest
        self.rule: str = manifest["rule"]
        self.sources: dict[str, Any] = manifest.get("sources", {})
        self._entries: dict[str, dict[str, Any]] = manifest["tensors"]
        self._shards = shards
        self._mapper = RoleMapper([Rule(**r) for r in manifest.get("naming_rules", [])])

    @property
    def label(self) -> str:
        """A short name for the update: the tuned checkpoint's folder or file name."""
        spec = str(self.sources.get("tuned", {}).get("spec") or self.folder)
        return Path(spec.rstrip("/")).name or spec

    def __getitem__(self, name: str) -> torch.Tensor:
        e = self._entries[name]
        packed = self.packed(name).numpy()
        bits = np.unpackbits(packed, bitorder="little")
        numel = e["numel"]
        if bits[numel:].any():
            raise ResultFormatError(f"Mask {name!r} in {str(self.folder)!r} has non-zero padding bits: corrupt file.")
        flat = bits[:numel].astype(bool)
        count = int(flat.sum())
        if count != e["n_changed"]:
            raise ResultFormatError(
                f"Mask {name!r} in {str(self.folder)!r} has {count} set bits but the manifest says "
                f"{e['n_changed']}: the shard and the manifest do not belong together. Save the masks again."
            )
        return torch.from_numpy(flat).reshape(e["shape"])

    def packed(self, name: str) -> torch.Tensor:
        """The stored bytes of ``name`` (uint8, 1-D)."""
        e = self._entries[name]
        return self._shards[e["file"]].read(name)

    def info(self, name: str) -> dict[str, Any]:
        """Manifest entry of ``name`` (shape, numel, n_changed, file ...)."""
        return dict(self._entries[name])

    def role(self, name: str) -> Role:
        return self._mapper(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def close(self) -> None:
        for s in self._shards.values():
            s.close()

    def __enter__(self) -> MaskSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        n = self.manifest.get("numel", 0)
        c = self.manifest.get("n_changed", 0)
        frac = c / n if n else math.nan
        return f"<MaskSet {str(self.folder)!r}: {len(self)} tensors, rule {self.rule}, {frac:.4%} changed>"


def _bad(folder: Path, what: str) -> ResultFormatError:
    return ResultFormatError(
        f"Masks folder {str(folder)!r}: {what}. Save the masks again with deltascope.save_masks(...)."
    )


def _check_entry(folder: Path, name: Any, e: Any, files: set[str]) -> None:
    if not isinstance(name, str) or not isinstance(e, dict):
        raise _bad(folder, f"manifest entry {name!r} is not an object")
    shape = e.get("shape")
    if not isinstance(shape, list) or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in shape):
        raise _bad(folder, f"tensor {name!r} has an invalid shape {shape!r}")
    numel = math.prod(shape)
    if e.get("numel") != numel:
        raise _bad(folder, f"tensor {name!r}: numel {e.get('numel')!r} does not match shape {shape}")
    if e.get("nbytes") != (numel + 7) // 8:
        raise _bad(folder, f"tensor {name!r}: {e.get('nbytes')!r} bytes cannot hold {numel} bits")
    c = e.get("n_changed")
    if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c <= numel:
        raise _bad(folder, f"tensor {name!r}: changed count {c!r} is not in 0..{numel}")
    if e.get("file") not in files:
        raise _bad(folder, f"tensor {name!r} names file {e.get('file')!r}, which is not among {sorted(files)}")


def load_masks(folder: str | os.PathLike[str]) -> MaskSet:
    """Open a folder written by :func:`save_masks`; validates the manifest and every
    shard header (dtype U8, byte counts) before returning a lazy :class:`MaskSet`.

    Raises:
        ResultFormatError: no manifest, or a manifest or shard that does not hold up.
    """
    root = Path(folder)
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise _bad(root, f"no {MANIFEST} (not a masks folder, or a save that did not finish)") from e
    except (OSError, ValueError) as e:
        raise _bad(root, f"cannot read {MANIFEST}: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != MASKS_FORMAT:
        raise _bad(root, f"{MANIFEST} is not a deltascope masks manifest")
    version = manifest.get("version")
    if not isinstance(version, int) or version > MASKS_VERSION:
        raise ResultFormatError(
            f"Masks folder {str(root)!r} has format version {version!r}, newer than this deltascope reads "
            f"({MASKS_VERSION}); upgrade deltascope."
        )
    try:
        parse_rule(manifest.get("rule", ""))
    except ValueError as e:
        raise _bad(root, str(e)) from e
    if manifest.get("packing", {}).get("bitorder") != "little":
        raise _bad(root, "packing.bitorder must be 'little'")
    files, tensors = manifest.get("files"), manifest.get("tensors")
    if not isinstance(files, list) or not isinstance(tensors, dict):
        raise _bad(root, "'files' must be a list and 'tensors' an object")
    if any(not isinstance(f, str) or not _SHARD.match(f) for f in files):
        raise _bad(root, f"unexpected shard names {files!r}")
    for name, e in tensors.items():
        _check_entry(root, name, e, set(files))
    shards: dict[str, SafetensorsCheckpoint] = {}
    try:
        for f in files:
            p = safe_child(root, f, index=path)
            if not p.is_file():
                raise _bad(root, f"shard {f!r} is missing")
            shards[f] = SafetensorsCheckpoint(str(p), root, [p])
        for name, e in tensors.items():
            info = shards[e["file"]].tensors.get(name)
            if info is None:
                raise _bad(root, f"shard {e['file']!r} holds no tensor {name!r}")
            if info.dtype != "U8" or list(info.shape) != [e["nbytes"]]:
                raise _bad(root, f"{name!r} is stored as {info.dtype}{list(info.shape)}, expected U8[{e['nbytes']}]")
    except DeltascopeError:
        for s in shards.values():
            s.close()
        raise
    return MaskSet(root, manifest, shards)
