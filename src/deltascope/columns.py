"""The documented columns of deltascope's tables, and how each one aggregates.

Every column of ``Comparison.tensors`` is declared by a :class:`ColumnSpec` with a
one-line meaning and an aggregation kind; a run's specs travel with its result
(``Comparison.columns``), so a saved result knows how to aggregate itself:

* ``key``: identity (name, role, shape ...); group keys come from these.
* ``sum`` / ``max``: raw additive statistics; a group's value is the sum (max) of its
  tensors' values.
* ``derived``: recomputed for a group *from the group's raw sums* by the family's
  ``derive`` function -- so every group fraction is numel-weighted and every group norm
  is ``sqrt(Σ‖·‖²)``, never an unweighted mean of ratios.
* ``tensor``: meaningful per tensor only; dropped from group tables.

``docs/columns.md`` is generated from these specs (and a test checks it is current).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ColumnSpec", "IDENTITY_COLUMNS", "elementwise_specs"]

Agg = Literal["key", "sum", "max", "derived", "tensor"]


@dataclass(frozen=True)
class ColumnSpec:
    """One column: its name, aggregation kind, meaning and (optional) unit/formula."""

    name: str
    agg: Agg
    doc: str
    family: str = "core"


IDENTITY_COLUMNS: list[ColumnSpec] = [
    ColumnSpec("name", "key", "Tensor name in the base checkpoint."),
    ColumnSpec("tuned_name", "key", "Tensor name in the tuned checkpoint (differs when paired through an alias)."),
    ColumnSpec("tower", "key", "language / vision / audio / projector."),
    ColumnSpec("layer", "key", "Transformer block index within its tower (missing for non-layer tensors)."),
    ColumnSpec("block", "key", "attention / mlp / embedding / lm_head / norm / router / projector / other."),
    ColumnSpec("module", "key", "Canonical module name (q_proj, down_proj, qkv_proj, embed_tokens ...)."),
    ColumnSpec("expert", "key", "MoE expert index, 'shared' for a shared expert, else missing."),
    ColumnSpec("param", "key", "Parameter suffix: weight, bias, ..."),
    ColumnSpec("shape", "key", "Tensor shape, as a list."),
    ColumnSpec("dtype_base", "key", "Stored dtype of the base tensor (safetensors name)."),
    ColumnSpec("dtype_tuned", "key", "Stored dtype of the tuned tensor."),
    ColumnSpec("status", "key", "ok / error / skipped; rows that are not ok carry the reason."),
    ColumnSpec("reason", "key", "Why a row is not ok, or a note (e.g. a dtype upcast)."),
]


def elementwise_specs(rules: list[str], ulp: bool, concentration: list[str]) -> list[ColumnSpec]:
    """Column specs of the elementwise family for the given rule names and extras."""
    f = "elementwise"
    specs = [ColumnSpec("numel", "sum", "Number of coordinates.", f)]
    for r in rules:
        specs.append(ColumnSpec(f"changed_{r}", "derived", f"Fraction of coordinates changed under rule {r}.", f))
    if ulp:
        specs += [
            ColumnSpec("ulp1_share", "derived", "Share of exact changes with |Δ| ≤ 1 ULP(w0) of the stored dtype.", f),
            ColumnSpec("ulp2_share", "derived", "Share of exact changes with 1 < |Δ|/ULP(w0) ≤ 2.", f),
            ColumnSpec("ulp3plus_share", "derived", "Share of exact changes with |Δ|/ULP(w0) > 2.", f),
        ]
    specs += [
        ColumnSpec("norm_w0", "derived", "‖W0‖_F (finite coordinates).", f),
        ColumnSpec("norm_w1", "derived", "‖W1‖_F (finite coordinates).", f),
        ColumnSpec("norm_delta", "derived", "‖Δ‖_F.", f),
        ColumnSpec("rel_update", "derived", "‖Δ‖_F / ‖W0‖_F (NaN when ‖W0‖ = 0).", f),
        ColumnSpec("rms_w0", "derived", "RMS(W0) = ‖W0‖_F / √n.", f),
        ColumnSpec("rms_delta", "derived", "RMS(Δ) = ‖Δ‖_F / √n.", f),
        ColumnSpec("mean_abs_delta", "derived", "mean |Δ|.", f),
        ColumnSpec("max_abs_delta", "max", "max |Δ|.", f),
        ColumnSpec("cosine", "derived", "cos(W0, W1) = ⟨W0, W1⟩ / (‖W0‖‖W1‖), computed stably near 1.", f),
        ColumnSpec("energy", "sum", "‖Δ‖²_F, the update energy (sums over groups).", f),
        ColumnSpec("energy_share", "derived", "Share of the whole comparison's ‖Δ‖² in this row.", f),
        ColumnSpec("numel_share", "derived", "Share of the whole comparison's coordinates in this row.", f),
    ]
    for c in concentration:
        specs.append(
            ColumnSpec(c, "tensor", f"Share of the tensor's ‖Δ‖² held by its {c[3:-7]} coordinates of largest |Δ|.", f)
        )
    specs += [ColumnSpec(f"n_changed_{r}", "sum", f"Coordinates changed under rule {r}.", f) for r in rules]
    if ulp:
        specs += [
            ColumnSpec("n_ulp1", "sum", "Exact changes with |Δ| ≤ 1 ULP(w0).", f),
            ColumnSpec("n_ulp2", "sum", "Exact changes with 1 < |Δ|/ULP(w0) ≤ 2.", f),
            ColumnSpec("n_ulp3plus", "sum", "Exact changes with |Δ|/ULP(w0) > 2 (and non-finite ones).", f),
        ]
    specs += [
        ColumnSpec("sumsq_w0", "sum", "Σ w0² (raw, for aggregation).", f),
        ColumnSpec("sumsq_w1", "sum", "Σ w1² (raw, for aggregation).", f),
        ColumnSpec("dot_w0_delta", "sum", "Σ w0·Δ (raw, for the stable cosine).", f),
        ColumnSpec("sum_abs_delta", "sum", "Σ |Δ| (raw).", f),
        ColumnSpec("nan_w0", "sum", "NaN coordinates in W0.", f),
        ColumnSpec("inf_w0", "sum", "±Inf coordinates in W0.", f),
        ColumnSpec("nan_w1", "sum", "NaN coordinates in W1.", f),
        ColumnSpec("inf_w1", "sum", "±Inf coordinates in W1.", f),
    ]
    return specs
