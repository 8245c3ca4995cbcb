"""Pair the tensors of a base and a tuned checkpoint, and report what does not pair.

Names are matched exactly first; names left over are matched through canonical aliases
(``model.language_model.X`` <-> ``model.X``, ``language_model.model.X`` <-> ``model.X``,
``model.visual.X`` <-> ``visual.X`` ...), so a checkpoint saved by a newer transformers
layout still pairs with its base. What cannot be paired becomes a row of the mismatch
report -- never an exception.

Mismatch kinds:

===================  ====================================================================
kind                 meaning
===================  ====================================================================
missing_in_tuned     in base only
extra_in_tuned       in tuned only
shape_changed        paired by name, shapes differ: not compared
dtype_changed        paired, stored dtypes differ: compared after an exact upcast
tied                 ``lm_head`` absent on one side that has tied embeddings: not missing
ambiguous            several names on one side share a canonical alias: not compared
aliased              paired through an alias (information, not a problem)
===================  ====================================================================
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pandas as pd

from .checkpoint.base import TensorInfo
from .naming import Role, RoleMapper

__all__ = ["TensorPair", "PairingResult", "pair_tensors", "canonical_name", "MISMATCH_COLUMNS", "MISMATCH_KINDS"]

# (pattern, replacement) applied in order to both sides' names to form the alias key.
_ALIASES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^model\.language_model\.model\."), "model."),
    (re.compile(r"^model\.language_model\."), "model."),
    (re.compile(r"^language_model\.model\."), "model."),
    (re.compile(r"^language_model\.lm_head\."), "lm_head."),
    (re.compile(r"^language_model\."), "model."),
    (re.compile(r"^model\.visual\."), "visual."),
    (re.compile(r"^model\.vision_tower\."), "vision_tower."),
    (re.compile(r"^model\.vision_model\."), "vision_model."),
    (re.compile(r"^model\.multi_modal_projector\."), "multi_modal_projector."),
    (re.compile(r"^module\."), ""),  # DDP wrappers
    (re.compile(r"^_orig_mod\."), ""),  # torch.compile wrappers
    (re.compile(r"(^|\.)_fsdp_wrapped_module\."), r"\1"),
    (re.compile(r"(^|\.)_checkpoint_wrapped_module\."), r"\1"),
]

#: Every kind of mismatch row, in the order of the table in the module docstring.
MISMATCH_KINDS = (
    "missing_in_tuned",
    "extra_in_tuned",
    "shape_changed",
    "dtype_changed",
    "tied",
    "ambiguous",
    "aliased",
)

MISMATCH_COLUMNS = ["name", "kind", "tuned_name", "base_shape", "tuned_shape", "base_dtype", "tuned_dtype", "detail"]

_TIED_HEADS = ("lm_head.weight", "embed_out.weight", "output.weight")
_EMBEDDINGS = (
    "embed_tokens.weight",
    "wte.weight",
    "word_embeddings.weight",
    "embed_in.weight",
    "tok_embeddings.weight",
)


def canonical_name(name: str) -> str:
    """The alias key of a name.

    >>> canonical_name("model.language_model.layers.0.mlp.up_proj.weight")
    'model.layers.0.mlp.up_proj.weight'
    >>> canonical_name("language_model.lm_head.weight")
    'lm_head.weight'
    """
    for rx, repl in _ALIASES:
        name = rx.sub(repl, name, count=1)
    return name


@dataclass(frozen=True)
class TensorPair:
    """A base tensor and the tuned tensor it is compared with."""

    name: str
    base: TensorInfo
    tuned: TensorInfo
    role: Role

    @property
    def tuned_name(self) -> str:
        return self.tuned.name


@dataclass
class PairingResult:
    """Pairs in base storage order, and the mismatch report."""

    pairs: list[TensorPair]
    mismatches: pd.DataFrame

    def summary(self) -> dict[str, int]:
        counts = self.mismatches["kind"].value_counts().to_dict() if len(self.mismatches) else {}
        return {"pairs": len(self.pairs), **{str(k): int(v) for k, v in counts.items()}}


def _row(
    kind: str, name: str, tuned_name: str | None, b: TensorInfo | None, t: TensorInfo | None, detail: str
) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "tuned_name": tuned_name,
        "base_shape": list(b.shape) if b else None,
        "tuned_shape": list(t.shape) if t else None,
        "base_dtype": b.dtype if b else None,
        "tuned_dtype": t.dtype if t else None,
        "detail": detail,
    }


def _has_tied_embedding(names: set[str], config: dict[str, Any] | None) -> bool:
    if config is not None:
        tie = config.get("tie_word_embeddings")
        text_cfg = config.get("text_config")
        if tie is None and isinstance(text_cfg, dict):
            tie = text_cfg.get("tie_word_embeddings")
        if tie is False:
            return False
    return any(n.endswith(_EMBEDDINGS) for n in names)


def pair_tensors(
    base: dict[str, TensorInfo],
    tuned: dict[str, TensorInfo],
    *,
    mapper: RoleMapper | None = None,
    base_config: dict[str, Any] | None = None,
    tuned_config: dict[str, Any] | None = None,
) -> PairingResult:
    """Pair ``base`` and ``tuned`` tensor indexes (name -> :class:`TensorInfo`).

    Returns pairs in base order (shape-changed and ambiguous ones excluded) and a
    mismatch DataFrame with :data:`MISMATCH_COLUMNS`.

    Example:
        >>> from deltascope.checkpoint.base import TensorInfo
        >>> old, new = "model.layers.0.mlp.up_proj.weight", "model.language_model.layers.0.mlp.up_proj.weight"
        >>> b = {old: TensorInfo(old, "BF16", (4, 2), "a")}
        >>> t = {new: TensorInfo(new, "BF16", (4, 2), "b")}
        >>> r = pair_tensors(b, t)
        >>> len(r.pairs), list(r.mismatches["kind"])
        (1, ['aliased'])
    """
    mapper = mapper or RoleMapper()
    rows: list[dict[str, Any]] = []
    matched: dict[str, str] = {n: n for n in base if n in tuned}

    # Alias pass over what exact matching left.
    left_b = [n for n in base if n not in matched]
    used_t = set(matched.values())
    left_t = [n for n in tuned if n not in used_t]
    if left_b and left_t:
        by_key_b: dict[str, list[str]] = defaultdict(list)
        by_key_t: dict[str, list[str]] = defaultdict(list)
        for n in left_b:
            by_key_b[canonical_name(n)].append(n)
        for n in left_t:
            by_key_t[canonical_name(n)].append(n)
        for key, bnames in by_key_b.items():
            tnames = by_key_t.get(key)
            if not tnames:
                continue
            if len(bnames) == 1 and len(tnames) == 1:
                matched[bnames[0]] = tnames[0]
                rows.append(
                    _row(
                        "aliased",
                        bnames[0],
                        tnames[0],
                        base[bnames[0]],
                        tuned[tnames[0]],
                        f"paired through alias key {key!r}",
                    )
                )
            else:
                for bn in bnames:
                    rows.append(
                        _row(
                            "ambiguous",
                            bn,
                            None,
                            base[bn],
                            None,
                            f"alias key {key!r} matches base {bnames} and tuned {tnames}; not compared",
                        )
                    )
                for tn in tnames:
                    rows.append(
                        _row(
                            "ambiguous",
                            tn,
                            tn,
                            None,
                            tuned[tn],
                            f"alias key {key!r} matches base {bnames} and tuned {tnames}; not compared",
                        )
                    )
                for bn in bnames:
                    matched.setdefault(bn, "")  # consumed, not compared
                used_t.update(tnames)

    used_t.update(v for v in matched.values() if v)
    tuned_names = set(tuned)
    base_names = set(base)
    pairs: list[TensorPair] = []
    for name, info in base.items():
        tname = matched.get(name)
        if tname is None:
            if name.endswith(_TIED_HEADS) and _has_tied_embedding(tuned_names, tuned_config):
                rows.append(
                    _row(
                        "tied",
                        name,
                        None,
                        info,
                        None,
                        "tuned has no separate head: its embedding is tied to the output layer",
                    )
                )
            else:
                rows.append(_row("missing_in_tuned", name, None, info, None, "present in base only"))
            continue
        if tname == "":
            continue
        tinfo = tuned[tname]
        if tinfo.shape != info.shape:
            rows.append(
                _row(
                    "shape_changed",
                    name,
                    tname,
                    info,
                    tinfo,
                    f"shape {list(info.shape)} -> {list(tinfo.shape)}; not compared",
                )
            )
            continue
        if tinfo.dtype != info.dtype:
            rows.append(
                _row(
                    "dtype_changed",
                    name,
                    tname,
                    info,
                    tinfo,
                    f"stored {info.dtype} -> {tinfo.dtype}; compared after an exact upcast",
                )
            )
        pairs.append(TensorPair(name, info, tinfo, mapper(name)))
    for tname, tinfo in tuned.items():
        if tname in used_t:
            continue
        if tname.endswith(_TIED_HEADS) and _has_tied_embedding(base_names, base_config):
            rows.append(
                _row(
                    "tied",
                    tname,
                    tname,
                    None,
                    tinfo,
                    "base has no separate head: its embedding is tied to the output layer",
                )
            )
        else:
            rows.append(_row("extra_in_tuned", tname, tname, None, tinfo, "present in tuned only"))
    df = pd.DataFrame(rows, columns=MISMATCH_COLUMNS)
    return PairingResult(pairs, df)
