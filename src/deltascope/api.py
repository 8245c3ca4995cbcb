"""``deltascope.compare``: the one call most users need."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Literal

from .checkpoint import Checkpoint, open_checkpoint
from .comparison import Comparison
from .constants import CHUNK_ELEMENTS
from .engine import RunPlan, column_specs, family_tables, run
from .families import ElementwiseFamily, Family, family_class
from .metrics.elementwise import ElementwiseOptions
from .naming import RoleMapper, Rule
from .selection import LayerSpec, Selection

__all__ = ["compare", "elementwise_options"]

Spec = str | os.PathLike[str] | Checkpoint


def elementwise_options(
    metrics: Literal["default", "full"] | ElementwiseOptions | dict[str, Any] = "default",
    *,
    atol: Iterable[float] | None = None,
    rms: Iterable[float] | None = None,
    rel: Iterable[float] | None = None,
    ulp: bool | None = None,
    concentration: Iterable[float] | None = None,
) -> ElementwiseOptions:
    """Build :class:`ElementwiseOptions` from a preset plus overrides."""
    if isinstance(metrics, ElementwiseOptions):
        opts = metrics
    elif isinstance(metrics, dict):
        opts = ElementwiseOptions.from_dict(metrics)
    elif metrics == "full":
        opts = ElementwiseOptions.full()
    elif metrics == "default":
        opts = ElementwiseOptions()
    else:
        raise ValueError(f"metrics={metrics!r}: use 'default', 'full', a dict or ElementwiseOptions.")
    d = opts.to_dict()
    for key, val in (("atol", atol), ("rms", rms), ("rel", rel), ("concentration", concentration)):
        if val is not None:
            d[key] = [float(v) for v in val]
    if ulp is not None:
        d["ulp"] = bool(ulp)
    return ElementwiseOptions.from_dict(d)


def compare(
    base: Spec,
    tuned: Spec,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    layers: LayerSpec = None,
    blocks: str | Iterable[str] | None = None,
    modules: str | Iterable[str] | None = None,
    towers: str | Iterable[str] | None = None,
    metrics: Literal["default", "full"] | ElementwiseOptions | dict[str, Any] = "default",
    atol: Iterable[float] | None = None,
    rms: Iterable[float] | None = None,
    rel: Iterable[float] | None = None,
    ulp: bool | None = None,
    concentration: Iterable[float] | None = None,
    device: str = "cpu",
    chunk: int = CHUNK_ELEMENTS,
    progress: bool | None = None,
    prefetch: int | None = None,
    spectral: Any = False,
    coords: Any = False,
    naming_rules: Iterable[Rule] = (),
    extra_families: Iterable[Family] = (),
    **source_options: Any,
) -> Comparison:
    """Compare a base and a tuned checkpoint, streaming tensor by tensor.

    Args:
        base, tuned: local files/folders, Hub ids (``org/name@rev``) or opened
            :class:`~deltascope.checkpoint.Checkpoint` objects.
        include, exclude: name globs (``"model.layers.1[0-5].*"``) or ``"re:<regex>"``.
        layers: ``3``, ``"0-3,7"``, a range or a list.
        blocks, modules, towers: keep only these roles (see :mod:`deltascope.naming`).
        metrics: ``"default"`` (exact, atol 1e-5, ULP counts, norms) or
            ``"full"`` (every rule of docs/metrics.md) or :class:`ElementwiseOptions`.
        atol, rms, rel, ulp, concentration: override single parts of ``metrics``.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        chunk: elements per chunk (working memory ~ 5 x chunk x 4-8 bytes).
        progress: progress bar on stderr; ``None`` shows it on a terminal only.
        prefetch: pairs to announce ahead to the sources (default: what the sources ask
            for, e.g. more for the Hub to hide latency).
        spectral: geometry of the update (issue: ranks, principal-subspace projection,
            rotation, drift): ``False`` (default), ``True``/``"exact"``, ``"fast"``, or
            options (see :mod:`deltascope.family_spectral`).
        coords: which coordinates move (magnitude vs source, masks): ``False``
            (default), ``True`` or options (see :mod:`deltascope.family_coords`).
        naming_rules: extra :class:`~deltascope.naming.Rule` objects for unusual names.
        **source_options: for Hub specs: ``token``, ``endpoint``, ``cache_dir`` ...

    Returns:
        A :class:`~deltascope.Comparison`.

    Example:
        >>> import deltascope
        >>> base, tuned = deltascope.demo_pair()
        >>> cmp = deltascope.compare(base, tuned, blocks="mlp", progress=False)
        >>> sorted(cmp.by("module").index)
        ['down_proj', 'gate_proj', 'up_proj']
    """
    opts = elementwise_options(metrics, atol=atol, rms=rms, rel=rel, ulp=ulp, concentration=concentration)
    families: list[Family] = [ElementwiseFamily(opts)]
    for name, user in (("spectral", spectral), ("coords", coords)):
        fam = optional_family(name, user)
        if fam is not None:
            families.append(fam)
    families.extend(extra_families)
    plan = RunPlan(
        families=families,
        selection=Selection.make(include, exclude, layers, blocks, modules, towers),
        device=device,
        chunk=chunk,
        progress=progress,
        prefetch=prefetch,
        mapper=RoleMapper(naming_rules),
    )
    b, t = open_pair(base, tuned, **source_options)
    try:
        tensors, mismatches, meta = run(b, t, plan)
    finally:
        for opened, given in ((b, base), (t, tuned)):
            if opened is not given:
                opened.close()
    return Comparison(tensors, mismatches, meta, column_specs(families), families, family_tables(families))


def open_pair(base: Spec, tuned: Spec, **source_options: Any) -> tuple[Checkpoint, Checkpoint]:
    """Open both checkpoints at once (a Hub source spends its opening in round trips, so
    the two sides overlap); if one fails, the other is closed and the error raised."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="deltascope-open") as pool:
        futures = [pool.submit(open_checkpoint, spec, **source_options) for spec in (base, tuned)]
        opened: list[Checkpoint | None] = []
        error: BaseException | None = None
        for fut in futures:
            try:
                opened.append(fut.result())
            except BaseException as e:  # re-raised below, after cleanup
                opened.append(None)
                error = error or e
    if error is not None:
        for ck, given in zip(opened, (base, tuned)):
            if ck is not None and ck is not given:
                ck.close()
        raise error
    b, t = opened
    assert b is not None and t is not None
    return b, t


def optional_family(name: str, user: Any) -> Family | None:
    """The family ``name`` configured from a user argument (``False``/``None``/``"off"``
    gives ``None``); each family class parses its own argument in ``from_user``."""
    if user is None or user is False or user == "off":
        return None
    return family_class(name).from_user(user)  # type: ignore[attr-defined]
