"""deltascope.check: policies, each rule kind passing and failing on pairs built for it,
validation errors with keys and lines, baselines, outputs, and what a run computes.

Expected values come from float64 numpy on the stored tensors (tests/reference.py), or
from the planted counts themselves -- never from deltascope's own output."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

import deltascope
from conftest import llama_shapes
from deltascope import Comparison
from deltascope.checks import CheckResult, Policy, Violation, check, load_policy
from deltascope.checks.policy import LineIndex, policy_from_toml, resolve_column
from deltascope.checks.rules import group_values
from deltascope.errors import PolicyError, ResultFormatError
from reference import to_f64

ROOT = Path(__file__).resolve().parent.parent

VISION = {
    "visual.blocks.0.attn.qkv.weight": (48, 16),
    "visual.blocks.0.mlp.fc1.weight": (32, 16),
    "visual.blocks.0.norm1.weight": (16,),
}


def vlm_shapes() -> dict[str, tuple]:
    return {**VISION, **llama_shapes()}


def bump(t: torch.Tensor, k: int, *, seed: int = 1, ulps: int = 4) -> torch.Tensor:
    """``t`` with exactly ``k`` coordinates moved by ``ulps`` bf16 steps (always visible)."""
    g = torch.Generator().manual_seed(seed)
    bits = t.reshape(-1).view(torch.int16).clone()
    idx = torch.randperm(t.numel(), generator=g)[:k]
    bits[idx] += ulps
    return bits.view(torch.bfloat16).reshape(t.shape)


def n_changed(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((to_f64(a) != to_f64(b)).sum())


def names_of(result: CheckResult, rule: str) -> list[str]:
    return [v.subject for v in result.violations if v.rule == rule]


def rule_result(result: CheckResult, name: str):
    return next(r for r in result.rules if r.rule.name == name)


@pytest.fixture
def frozen_vlm(make_pair):
    """A VLM-shaped pair where only the language MLPs (and one attention tensor) move."""

    def edit(t):
        for i, n in enumerate(sorted(t)):
            if n.startswith("model.layers.") and ".mlp." in n:
                t[n] = bump(t[n], t[n].numel() // (8 + i), seed=i)
        t["model.layers.1.self_attn.q_proj.weight"] = bump(t["model.layers.1.self_attn.q_proj.weight"], 50)
        return t

    b, t, base, tuned = make_pair(edit, shapes=vlm_shapes())
    return deltascope.compare(b, t, progress=False), base, tuned


# -- identical --------------------------------------------------------------------------
def test_identical_passes_on_frozen_tensors_and_fails_on_a_moved_one(make_pair) -> None:
    def edit(t):
        t["visual.blocks.0.mlp.fc1.weight"] = bump(t["visual.blocks.0.mlp.fc1.weight"], 7)
        return t

    b, t, base, tuned = make_pair(edit, shapes=vlm_shapes())
    policy = {
        "rules": [
            {"name": "vision", "kind": "identical", "towers": ["vision"]},
            {"name": "embeddings", "kind": "identical", "blocks": ["embedding"]},
        ]
    }
    res = check((b, t), policy, progress=False)
    assert not res.ok
    assert names_of(res, "vision") == ["visual.blocks.0.mlp.fc1.weight"]
    assert names_of(res, "embeddings") == []
    v = res.violations[0]
    n = n_changed(base["visual.blocks.0.mlp.fc1.weight"], tuned["visual.blocks.0.mlp.fc1.weight"])
    assert n == 7 and v.observed == pytest.approx(7 / (32 * 16))
    assert "7 of 512 coordinates changed" in v.message
    assert rule_result(res, "vision").checked == len(VISION)


# -- bound, per tensor --------------------------------------------------------------------
def test_bound_per_tensor_rel_update_against_numpy(frozen_vlm) -> None:
    cmp, base, tuned = frozen_vlm
    mlp = [n for n in base if n.startswith("model.layers.") and ".mlp." in n]
    ref = {n: np.linalg.norm(to_f64(tuned[n]) - to_f64(base[n])) / np.linalg.norm(to_f64(base[n])) for n in mlp}
    worst = max(ref, key=ref.__getitem__)
    second = sorted(ref.values())[-2]
    cut = (ref[worst] + second) / 2
    res = check(cmp, {"rules": [{"name": "size", "metric": "rel_update", "blocks": "mlp", "max": cut}]})
    assert names_of(res, "size") == [worst]
    assert res.violations[0].observed == pytest.approx(ref[worst], rel=1e-6)
    ok = check(cmp, {"rules": [{"name": "size", "metric": "rel_update", "blocks": "mlp", "max": ref[worst] * 1.01}]})
    assert ok.ok and ok.violations == []


def test_bound_min_per_tensor_catches_frozen_tensors(frozen_vlm) -> None:
    cmp, *_ = frozen_vlm
    policy = {
        "rules": [
            {"name": "moved", "metric": "changed_exact", "blocks": "attention", "towers": "language", "min": 1e-3}
        ]
    }
    res = check(cmp, policy)
    # 8 language attention tensors; only layer 1's q_proj moved
    assert len(names_of(res, "moved")) == 7
    assert "model.layers.1.self_attn.q_proj.weight" not in names_of(res, "moved")


# -- bound, aggregate -----------------------------------------------------------------------
def test_bound_aggregate_changed_fraction_is_numel_weighted(frozen_vlm) -> None:
    cmp, base, tuned = frozen_vlm
    mlp = [n for n in base if n.startswith("model.layers.") and ".mlp." in n]
    expected = sum(n_changed(base[n], tuned[n]) for n in mlp) / sum(base[n].numel() for n in mlp)
    rule = {"name": "sparsity", "metric": "changed_exact", "blocks": "mlp", "towers": "language", "scope": "aggregate"}
    fail = check(cmp, {"rules": [{**rule, "max": expected * 0.99}]})
    assert [v.subject for v in fail.violations] == ["selection"]
    v = fail.violations[0]
    assert v.observed == pytest.approx(expected, rel=1e-12)
    fracs = {n: n_changed(base[n], tuned[n]) / base[n].numel() for n in mlp}
    assert v.offenders[0][0] == max(fracs, key=fracs.__getitem__)  # the worst tensor is named first
    assert check(cmp, {"rules": [{**rule, "max": expected * 1.01}]}).ok


def test_bound_per_group_flags_only_the_bad_layer(make_pair) -> None:
    def edit(t):
        for n in list(t):
            if ".mlp." in n:
                frac = 0.30 if "layers.1." in n else 0.05
                t[n] = bump(t[n], int(frac * t[n].numel()), seed=3)
        return t

    b, t, *_ = make_pair(edit)
    res = check(
        (b, t),
        {"rules": [{"name": "per-layer", "metric": "changed_exact", "blocks": "mlp", "by": "layer", "max": 0.2}]},
        progress=False,
    )
    assert names_of(res, "per-layer") == ["layer=1"]
    assert res.violations[0].observed == pytest.approx(0.30, abs=1e-3)
    assert all("layers.1." in n for n, _ in res.violations[0].offenders)


def test_energy_share_min_and_max(frozen_vlm) -> None:
    cmp, base, tuned = frozen_vlm
    energy = {n: float(((to_f64(tuned[n]) - to_f64(base[n])) ** 2).sum()) for n in base}
    share = sum(e for n, e in energy.items() if ".self_attn." in n) / sum(energy.values())
    assert 0 < share < 0.5
    rule = {"name": "attn-share", "metric": "energy_share", "blocks": "attention", "scope": "aggregate"}
    assert not check(cmp, {"rules": [{**rule, "max": share * 0.9}]}).ok
    low = check(cmp, {"rules": [{**rule, "min": share * 1.1}]})
    assert not low.ok and low.violations[0].observed == pytest.approx(share, rel=1e-9)
    assert check(cmp, {"rules": [{**rule, "min": share * 0.9, "max": share * 1.1}]}).ok


def test_group_values_reuse_comparison_weighting(frozen_vlm) -> None:
    cmp, *_ = frozen_vlm
    mask = (cmp.tensors["block"] == "mlp").to_numpy()
    mine = group_values(cmp, mask, ("layer",))
    theirs = cmp.by("block", "layer").xs("mlp", level="block")
    for col in ("changed_exact", "rel_update", "energy_share", "norm_delta"):
        np.testing.assert_allclose(mine[col].to_numpy(float), theirs[col].to_numpy(float), rtol=0, atol=0)


def test_nan_metric_fails_unless_ignored(make_pair) -> None:
    def edit(t):
        t["model.layers.0.mlp.up_proj.weight"] = torch.full_like(t["model.layers.0.mlp.up_proj.weight"], 0.01)
        return t

    b, t, base, _ = make_pair(edit)
    from safetensors.torch import save_file

    base["model.layers.0.mlp.up_proj.weight"] = torch.zeros_like(base["model.layers.0.mlp.up_proj.weight"])
    save_file(base, b / "model.safetensors")  # ‖W0‖ = 0: rel_update is undefined (NaN)
    cmp = deltascope.compare(b, t, progress=False)
    rule = {"name": "size", "metric": "rel_update", "blocks": "mlp", "max": 1.0}
    res = check(cmp, {"rules": [rule]})
    assert names_of(res, "size") == ["model.layers.0.mlp.up_proj.weight"] and "NaN" in res.violations[0].message
    assert check(cmp, {"rules": [{**rule, "on_nan": "ignore"}]}).ok


def test_empty_selection_fails_unless_allowed(frozen_vlm) -> None:
    cmp, *_ = frozen_vlm
    rule = {"name": "typo", "kind": "identical", "include": "model.layrs.*"}
    res = check(cmp, {"rules": [rule]})
    assert not res.ok and "selected no tensors" in res.violations[0].message
    assert check(cmp, {"rules": [{**rule, "allow_empty": True}]}).ok


def test_warning_severity_reports_without_failing(frozen_vlm) -> None:
    cmp, *_ = frozen_vlm
    res = check(cmp, {"rules": [{"name": "w", "kind": "identical", "blocks": "mlp", "severity": "warning"}]})
    assert res.ok and len(res.violations) == 6 and res.counts()["warned"] == 1
    assert all(v.severity == "warning" for v in res.violations)


# -- finite ---------------------------------------------------------------------------------
def test_finite_catches_nan_and_inf_in_tuned(make_pair) -> None:
    def edit(t):
        w = t["model.layers.1.mlp.down_proj.weight"].clone()
        w.view(-1)[:3] = float("nan")
        w.view(-1)[3] = float("inf")
        t["model.layers.1.mlp.down_proj.weight"] = w
        return t

    b, t, *_ = make_pair(edit)
    res = check((b, t), {"rules": [{"name": "finite", "kind": "finite"}]}, progress=False)
    assert names_of(res, "finite") == ["model.layers.1.mlp.down_proj.weight"]
    assert res.violations[0].observed == 4 and "3 NaN and 1 Inf" in res.violations[0].message
    b2, t2, *_ = make_pair(None, seed=5)
    assert check((b2, t2), {"rules": [{"kind": "finite"}]}, progress=False).ok


# -- structure -------------------------------------------------------------------------------
def test_structure_reports_missing_extra_shape_and_dtype(make_pair) -> None:
    def edit(t):
        del t["model.layers.1.mlp.up_proj.weight"]
        t["model.extra.weight"] = torch.zeros(4, 4, dtype=torch.bfloat16)
        t["model.layers.0.mlp.up_proj.weight"] = torch.zeros(8, 8, dtype=torch.bfloat16)
        t["model.norm.weight"] = t["model.norm.weight"].float()
        return t

    b, t, *_ = make_pair(edit)
    cmp = deltascope.compare(b, t, progress=False)
    res = check(cmp, {"rules": [{"name": "s", "kind": "structure"}]})
    found = {v.subject: v.observed for v in res.violations}
    assert found == {
        "model.layers.1.mlp.up_proj.weight": "missing_in_tuned",
        "model.extra.weight": "extra_in_tuned",
        "model.layers.0.mlp.up_proj.weight": "shape_changed",
        "model.norm.weight": "dtype_changed",
    }
    allowed = check(cmp, {"rules": [{"name": "s", "kind": "structure", "allow": ["dtype_changed", "extra_in_tuned"]}]})
    assert {v.observed for v in allowed.violations} == {"missing_in_tuned", "shape_changed"}
    scoped = check(cmp, {"rules": [{"name": "s", "kind": "structure", "blocks": "norm"}]})
    assert [v.subject for v in scoped.violations] == ["model.norm.weight"]
    same = check(deltascope.compare(*deltascope.demo_pair(), progress=False), {"rules": [{"kind": "structure"}]})
    assert same.ok


# -- what a run computes ------------------------------------------------------------------
def test_policy_computes_only_the_named_columns(make_pair, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_svd(*a, **k):
        raise AssertionError("an SVD ran although no rule names a spectral column")

    for name in ("svd", "svdvals"):
        monkeypatch.setattr(torch.linalg, name, no_svd)
    monkeypatch.setattr(torch, "svd_lowrank", no_svd)
    b, t, base, tuned = make_pair(lambda t: {k: (v * 1.001).to(v.dtype) if ".mlp." in k else v for k, v in t.items()})
    policy = load_policy({"rules": [{"name": "a", "metric": "changed_atol_1e-6", "scope": "aggregate", "max": 1.0}]})
    opts = policy.compare_options()
    assert (opts["metrics"].atol, opts["metrics"].rel, opts["metrics"].ulp) == ((1e-6,), (), False)
    assert opts["spectral"] is False and opts["coords"] is False
    res = check((b, t), policy, progress=False)
    cmp = res.comparison
    assert [f.name for f in cmp.families] == ["elementwise"]
    assert "changed_atol_1e-06" in cmp.tensors and "ulp1_share" not in cmp.tensors
    n = "model.layers.0.mlp.up_proj.weight"
    expected = float((np.abs(to_f64(tuned[n]) - to_f64(base[n])) > 1e-6).mean())
    row = cmp.tensors.set_index("name").loc[n]
    assert row["changed_atol_1e-06"] == pytest.approx(expected, abs=1e-12)


def test_columns_map_to_families_through_their_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    from deltascope.columns import ColumnSpec
    from deltascope.families import FAMILIES, Family

    class Fake(Family):
        name = "spectral"

        def __init__(self, arg=True):
            self.arg = arg

        @classmethod
        def from_user(cls, arg):
            return cls(arg)

        def specs(self):
            cols = ["stable_rank"] + (["special_col"] if isinstance(self.arg, dict) else [])
            return [ColumnSpec(c, "tensor", "x", "spectral") for c in cols]

    monkeypatch.setitem(FAMILIES, "spectral", Fake)
    info = resolve_column("stable_rank")
    assert (info.family, info.agg) == ("spectral", "tensor")
    p = load_policy({"rules": [{"metric": "stable_rank", "max": 2.0}]})
    assert p.compare_options()["spectral"] is True
    with pytest.raises(PolicyError, match="special_col"):
        load_policy({"rules": [{"metric": "special_col", "max": 2.0}]})
    p = load_policy({"compute": {"spectral": {"k": 1}}, "rules": [{"metric": "special_col", "max": 2.0}]})
    assert p.compare_options()["spectral"] == {"k": 1}
    with pytest.raises(PolicyError, match="per-tensor column") as e:
        load_policy({"rules": [{"metric": "stable_rank", "scope": "aggregate", "max": 2.0}]})
    assert e.value.key == "rules[0].metric"


@pytest.mark.parametrize(
    ("name", "canonical", "needs"),
    [
        ("changed_atol_1e-6", "changed_atol_1e-06", (("atol", 1e-6),)),
        ("changed_rel_0.001", "changed_rel_0.001", (("rel", 1e-3),)),
        ("n_changed_rms_1e-3", "n_changed_rms_0.001", (("rms", 1e-3),)),
        ("top1pct_energy", "top1pct_energy", (("concentration", 0.01),)),
        ("ulp2_share", "ulp2_share", (("ulp", 1.0),)),
        ("rel_update", "rel_update", ()),
    ],
)
def test_elementwise_columns_resolve_with_their_options(name: str, canonical: str, needs: tuple) -> None:
    info = resolve_column(name)
    assert (info.name, info.family, info.needs) == (canonical, "elementwise", needs)


def test_coords_column_turns_on_the_coords_family() -> None:
    pytest.importorskip("deltascope.family_coords")
    p = load_policy({"rules": [{"metric": "spearman_absdelta_absw0", "scope": "aggregate", "max": 1.0}]})
    opts = p.compare_options()
    assert opts["coords"] is True and opts["spectral"] is False


def test_select_table_restricts_the_run(make_pair) -> None:
    b, t, *_ = make_pair(lambda t: {k: bump(v, 3) if v.dim() == 2 else v for k, v in t.items()})
    policy = {"select": {"blocks": ["mlp"], "layers": "1"}, "rules": [{"name": "x", "kind": "identical"}]}
    res = check((b, t), policy, progress=False)
    assert sorted(res.comparison.tensors["name"]) == sorted(
        f"model.layers.1.mlp.{m}_proj.weight" for m in ("gate", "up", "down")
    )
    assert len(res.violations) == 3


# -- validation errors: key and line --------------------------------------------------------
GOOD = """\
[policy]
name = "p"

[[rules]]
name = "frozen"
kind = "identical"
blocks = ["embedding"]

[[rules]]
name = "bounded"
metric = "changed_exact"
max = 0.5
"""


def line_of(text: str, needle: str, nth: int = 1) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return hits[nth - 1]


@pytest.mark.parametrize(
    ("old", "new", "key", "needle", "match"),
    [
        ("max = 0.5", 'max = "half"', "rules[1].max", "max =", "finite number"),
        ("max = 0.5", "max = 0.5\nmin = 0.9", "rules[1].min", "min =", "above max"),
        ("max = 0.5", "mx = 0.5", "rules[1].mx", "mx =", "did you mean 'max'"),
        ('metric = "changed_exact"', 'metric = "changed_exactt"', "rules[1].metric", "metric =", "changed_exact"),
        ('kind = "identical"', 'kind = "identicl"', "rules[0].kind", "kind =", "not one of"),
        ('blocks = ["embedding"]', 'blocks = ["embeding"]', "rules[0].blocks", "blocks =", "Unknown block"),
        ('blocks = ["embedding"]', 'layers = "3-1"', "rules[0].layers", "layers =", "ends before"),
        ('name = "bounded"', 'name = "frozen"', "rules[1].name", 'name = "frozen"', "also used"),
        ('name = "p"', 'name = "p"\nowner = "me"', "policy.owner", "owner =", "unknown key"),
        ("max = 0.5", 'max = 0.5\nby = ["layr"]', "rules[1].by", "by =", "not one of"),
        ("max = 0.5", 'max = 0.5\nseverity = "fatal"', "rules[1].severity", "severity", "not one of"),
    ],
)
def test_malformed_policy_names_key_and_line(old: str, new: str, key: str, needle: str, match: str) -> None:
    text = GOOD.replace(old, new)
    assert text != GOOD
    nth = 2 if needle == 'name = "frozen"' else 1
    with pytest.raises(PolicyError, match=match) as e:
        policy_from_toml(text, source="release.toml")
    assert e.value.key == key
    assert e.value.line == line_of(text, needle, nth)
    assert f"release.toml:{e.value.line}: {key}" in str(e.value)


def test_toml_syntax_error_gives_its_line() -> None:
    text = GOOD.replace("max = 0.5", "max = = 0.5")
    with pytest.raises(PolicyError, match="not valid TOML") as e:
        policy_from_toml(text, source="release.toml")
    assert e.value.line == line_of(text, "max = =")


@pytest.mark.parametrize(
    ("policy", "key", "match"),
    [
        ({}, "rules", "at least one rule"),
        ({"rules": [{"name": "x"}]}, "rules[0]", "set kind"),
        ({"rules": [{"kind": "baseline", "metric": "rel_update"}]}, "rules[0]", "tolerance"),
        ({"rules": [{"kind": "bound", "metric": "rel_update"}]}, "rules[0]", "min, max or both"),
        ({"rules": [{"metric": "top1pct_energy", "scope": "aggregate", "max": 1}]}, "rules[0].metric", "per-tensor"),
        ({"rules": [{"metric": "name", "max": 1}]}, "rules[0].metric", "identity column"),
        ({"rules": [{"metric": "rel_update", "by": "layer", "scope": "tensor", "max": 1}]}, "rules[0].by", "aggregate"),
        ({"rules": [{"kind": "structure", "allow": ["renamed"]}]}, "rules[0].allow", "not one of"),
        ({"compute": {"atol": [-1]}, "rules": [{"kind": "finite"}]}, "compute.atol", "non-negative"),
        ({"policy": {"version": 2}, "rules": [{"kind": "finite"}]}, "policy.version", "version"),
        ({"rulez": []}, "rulez", "did you mean 'rules'"),
    ],
)
def test_malformed_dict_policy_names_the_key(policy: dict, key: str, match: str) -> None:
    with pytest.raises(PolicyError, match=match) as e:
        load_policy(policy)
    assert e.value.key == key and e.value.line is None


def test_line_index_finds_keys_in_tables_inline_tables_and_dotted_keys() -> None:
    text = (
        "# comment\n"  # 1
        "[select]\n"  # 2
        'include = ["a.*"]\n'  # 3
        "[[rules]]\n"  # 4
        'description = """\n'  # 5
        "max = 1 inside a string\n"  # 6
        '"""\n'  # 7
        "limits = { max = 2, min = 1 }\n"  # 8
        "a.b = 3\n"  # 9
        "[rules.extra]\n"  # 10
        "c = 4\n"  # 11
        "[[rules]]\n"  # 12
        "max = 5\n"  # 13
        "include = [  # a comment ]\n"  # 14
        '  ["x"],\n'  # 15: looks like a table header, but is inside the array
        "]\n"  # 16
        "min = 1\n"  # 17
    )
    idx = LineIndex(text)
    assert idx.line(("select", "include")) == 3
    assert idx.line(("rules", 0, "max")) == 4  # the string's "max =" is not a key: falls back to the table
    assert idx.line(("rules", 0, "limits", "min")) == 8
    assert idx.line(("rules", 0, "a", "b")) == 9
    assert idx.line(("rules", 0, "extra", "c")) == 11
    assert idx.line(("rules", 1, "max")) == 13
    assert idx.line(("rules", 1, "min")) == 17 and ("x",) not in idx.lines
    assert idx.line(("nowhere",)) is None


def test_policy_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="Cannot read policy file"):
        load_policy(tmp_path / "missing.toml")
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"rules": [{"name": "f", "kind": "finite"}], "baseline": {"path": "old.json"}}))
    pol = load_policy(p)
    assert isinstance(pol, Policy) and pol.rules[0].name == "f"
    assert pol.baseline == str(tmp_path / "old.json")  # relative to the policy file


# -- saved results ---------------------------------------------------------------------------
def test_saved_result_checks_like_the_live_one(frozen_vlm, tmp_path: Path) -> None:
    cmp, *_ = frozen_vlm
    path = tmp_path / "run.json"
    cmp.to_json(path)
    policy = {"rules": [{"name": "s", "metric": "changed_exact", "blocks": "mlp", "by": "layer", "max": 0.05}]}
    live, saved = check(cmp, policy), check(path, policy)
    assert [(v.subject, v.observed) for v in live.violations] == [(v.subject, v.observed) for v in saved.violations]
    assert saved.source == str(path)
    text = GOOD.replace('metric = "changed_exact"', 'metric = "changed_atol_1e-7"')
    with pytest.raises(ResultFormatError, match=r"changed_atol_1e-07.*release\.toml:\d+: rules\[1\]\.metric"):
        check(path, policy_from_toml(text, source="release.toml"))
    with pytest.raises(ResultFormatError, match="is a folder"):
        check(tmp_path, policy)


# -- baselines --------------------------------------------------------------------------------
@pytest.fixture
def releases(make_pair, tmp_path: Path):
    """v1 and three candidates for v2 of the same base: identical to v1, with noise within
    tolerance, and with a planted regression in one MLP tensor."""
    b, t, base, v1 = make_pair(
        lambda t: {k: bump(v, v.numel() // 10, seed=7) if ".mlp." in k else v for k, v in t.items()}
    )
    from safetensors.torch import save_file

    def release(name: str, edit) -> tuple[Comparison, dict]:
        folder = tmp_path / name
        folder.mkdir()
        tensors = edit({k: v.clone() for k, v in v1.items()})
        save_file(tensors, folder / "model.safetensors")
        return deltascope.compare(b, folder, progress=False), tensors

    old = deltascope.compare(b, t, progress=False)
    old.to_json(tmp_path / "v1.json")
    noisy, _ = release("noisy", lambda s: {k: bump(v, 5, seed=11) if ".mlp." in k else v for k, v in s.items()})
    up = "model.layers.1.mlp.up_proj.weight"
    regressed, v2 = release("regressed", lambda s: {**s, up: bump(s[up], 600, seed=2)})
    # the planted regression in changed coordinates of the MLP block, counted independently
    mlp = [n for n in base if ".mlp." in n]
    jump = (n_changed(base[up], v2[up]) - n_changed(base[up], v1[up])) / sum(base[n].numel() for n in mlp)
    return tmp_path / "v1.json", old, noisy, regressed, jump


DRIFT = {
    "name": "drift",
    "kind": "baseline",
    "metrics": ["changed_exact", "rel_update"],
    "by": ["block"],
    "abs_tol": 0.01,
    "rel_tol": 0.05,
}


def test_baseline_ignores_noise_and_catches_a_planted_regression(releases) -> None:
    path, old, noisy, regressed, jump = releases
    assert check(old, {"rules": [DRIFT]}, baseline=path).ok
    assert check(noisy, {"rules": [DRIFT]}, baseline=path).ok
    res = check(regressed, {"rules": [DRIFT]}, baseline=path)
    assert not res.ok
    by_subject = {(v.subject, v.metric): v for v in res.violations}
    assert ("block=mlp", "changed_exact") in by_subject
    assert all(s == "block=mlp" for s, _ in by_subject)
    v = by_subject[("block=mlp", "changed_exact")]
    assert jump > DRIFT["abs_tol"] + DRIFT["rel_tol"] * v.baseline
    assert v.observed - v.baseline == pytest.approx(jump, rel=1e-9)
    assert v.offenders[0][0] == "model.layers.1.mlp.up_proj.weight"
    assert res.baseline == str(path)


def test_baseline_direction_and_tensor_scope(releases) -> None:
    path, _, _, regressed, _ = releases
    decrease_only = {**DRIFT, "direction": "decrease"}
    assert check(regressed, {"rules": [decrease_only]}, baseline=path).ok
    per_tensor = {**DRIFT, "scope": "tensor", "by": [], "metrics": ["changed_exact"]}
    del per_tensor["by"]
    res = check(regressed, {"rules": [per_tensor]}, baseline=path)
    assert [v.subject for v in res.violations] == ["model.layers.1.mlp.up_proj.weight"]


def test_baseline_reports_missing_new_and_renamed(releases) -> None:
    path, old, _, _, _ = releases
    # a run that analysed less than the baseline's: the norm block is a missing group
    narrow = deltascope.compare(old.metadata["base"]["spec"], old.metadata["tuned"]["spec"], exclude="*norm*")
    rule = {**DRIFT, "metrics": ["changed_exact"]}
    cur = check(narrow, {"rules": [rule]}, baseline=path)
    assert [v.subject for v in cur.violations] == ["block=norm"] and cur.violations[0].observed == "missing"
    allowed = check(narrow, {"rules": [{**rule, "allow_missing": True}]}, baseline=path)
    assert allowed.ok and any("block=norm" in n and "missing" in n for n in allowed.rules[0].notes)
    # ... and the other way round a new group, reported without failing (unless allow_new = false)
    grown = check(old, {"rules": [rule]}, baseline=narrow)
    assert grown.ok and any("block=norm: new group" in n for n in grown.rules[0].notes)
    assert [v.subject for v in check(old, {"rules": [{**rule, "allow_new": False}]}, baseline=narrow).violations] == [
        "block=norm"
    ]
    # the same tensors under a newer transformers prefix: renamed, still compared
    renamed = Comparison.from_json(path)
    renamed.tensors["name"] = [n.replace("model.", "model.language_model.", 1) for n in renamed.tensors["name"]]
    res = check(
        renamed, {"rules": [{**DRIFT, "scope": "tensor", "metrics": ["changed_exact"]} | {"by": []}]}, baseline=path
    )
    assert res.ok
    notes = res.rules[0].notes
    assert any(
        "renamed: model.layers.0.mlp.up_proj.weight -> model.language_model.layers.0.mlp.up_proj.weight" in n
        for n in notes
    )


def test_baseline_rule_skips_without_a_baseline_and_errors_on_missing_column(releases, tmp_path: Path) -> None:
    path, old, *_ = releases
    res = check(old, {"rules": [DRIFT]})
    assert res.ok and res.rules[0].status == "skip"
    with pytest.raises(ResultFormatError, match="Cannot read saved result"):
        check(old, {"rules": [DRIFT]}, baseline=tmp_path / "nope.json")
    rule = {**DRIFT, "metrics": ["changed_atol_1e-07"]}
    with pytest.raises(ResultFormatError, match="has no column 'changed_atol_1e-07'"):
        check(old, {"rules": [rule]}, baseline=path)


# -- outputs -----------------------------------------------------------------------------------
@pytest.fixture
def mixed_result(frozen_vlm) -> CheckResult:
    cmp, *_ = frozen_vlm
    text = GOOD + (
        "\n[[rules]]\n"
        'name = "mlp-per-layer"\n'
        'metric = "changed_exact"\n'
        'blocks = ["mlp"]\n'
        'by = ["layer"]\n'
        "max = 0.03\n"
        "\n[[rules]]\n"
        'name = "drift"\n'
        'kind = "baseline"\n'
        'metric = "rel_update"\n'
        "abs_tol = 0.1\n"
        "\n[[rules]]\n"
        'name = "warn"\n'
        'kind = "identical"\n'
        'blocks = ["attention"]\n'
        'severity = "warning"\n'
    )
    return check(cmp, policy_from_toml(text, source="ci/release.toml"))


def test_junit_parses_with_one_testcase_per_rule(mixed_result: CheckResult) -> None:
    root = ET.fromstring(mixed_result.junit())
    cases = root.findall("testsuite/testcase")
    assert [c.get("name") for c in cases] == ["frozen", "bounded", "mlp-per-layer", "drift", "warn"]
    status = {c.get("name"): [ch.tag for ch in c] for c in cases}
    assert status["mlp-per-layer"] == ["failure"] and status["drift"] == ["skipped"]
    assert status["frozen"] == ["system-out"] and status["warn"] == ["system-out"]
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("5", "1", "1")
    failure = cases[2].find("failure")
    assert "layer=0" in failure.text and "model.layers.0.mlp" in failure.text


def test_json_text_and_github_outputs(mixed_result: CheckResult) -> None:
    data = json.loads(mixed_result.to_json())
    assert data["ok"] is False and data["counts"]["failed"] == 1
    failed = next(r for r in data["rules"] if r["name"] == "mlp-per-layer")
    assert failed["status"] == "fail" and {v["subject"] for v in failed["violations"]} == {"layer=0", "layer=1"}
    assert failed["violations"][0]["offenders"][0]["name"].startswith("model.layers.")

    text = mixed_result.text()
    assert "FAIL  mlp-per-layer" in text and "SKIP  drift" in text and "WARN  warn" in text
    assert "bound <= 3.00%" in text and "worst: model.layers." in text and text.rstrip().endswith("violation(s).")

    gh = mixed_result.github().splitlines()
    errors = [g for g in gh if g.startswith("::error ")]
    warnings = [g for g in gh if g.startswith("::warning ")]
    assert len(errors) == 1 and len(warnings) == 1
    line = mixed_result.policy.rules[2].line
    assert errors[0].startswith(f"::error file=ci/release.toml,line={line},title=deltascope check%3A mlp-per-layer::")
    assert "%0A" in errors[0] and "%25" in errors[0]  # newlines and percent signs escaped
    assert gh[-1].startswith("deltascope check FAILED")


def test_violations_are_data(mixed_result: CheckResult) -> None:
    v = mixed_result.violations[0]
    assert isinstance(v, Violation) and json.dumps(v.to_dict())
    assert repr(mixed_result).startswith("<CheckResult 'p': FAILED")


# -- the package face and the examples ----------------------------------------------------------
def test_deltascope_check_is_callable_after_submodule_imports() -> None:
    """Regression: a package named like the lazy export got bound over it on import."""
    import deltascope.checks.outputs
    import deltascope.overlaps

    assert callable(deltascope.overlap)

    res = deltascope.check(deltascope.compare(*deltascope.demo_pair(), progress=False), {"rules": [{"kind": "finite"}]})
    assert res.ok


def test_example_policy_passes_on_the_demo_pair() -> None:
    policy = load_policy(ROOT / "examples" / "release-policy.toml")
    assert policy.name == "opd-release"
    res = check(deltascope.demo_pair(), policy, progress=False)
    assert res.ok, res.text()
    c = res.counts()
    assert c["failed"] == 0 and c["skipped"] == 1  # the baseline rule, without --baseline
    assert res.comparison.families[0].opts.atol == (1e-6,)
    # against itself as a baseline, the drift rule runs and passes
    again = check(res.comparison, policy, baseline=res.comparison)
    assert again.ok and again.counts()["skipped"] == 0


def test_example_workflow_runs_valid_check_commands() -> None:
    from deltascope.cli import build_parser

    text = (ROOT / "examples" / "github-actions.yml").read_text()
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML comes with huggingface_hub
        yaml = None
    if yaml is not None:
        doc = yaml.safe_load(text)
        assert "check" in doc["jobs"]
    commands = re.findall(r"(deltascope check\b[^\n]*(?:\n\s+--[^\n]*)*)", text)
    assert commands
    for cmd in commands:
        argv = cmd.replace('"', "").split()[1:]
        args = build_parser().parse_args(argv)
        assert args.command == "check" and (ROOT / args.policy).is_file()


def test_spectral_column_runs_the_spectral_family(make_pair) -> None:
    pytest.importorskip("deltascope.family_spectral")
    name = "model.layers.0.mlp.up_proj.weight"
    g = torch.Generator().manual_seed(4)

    def edit(t):
        u, v = torch.randn(48, 1, generator=g), torch.randn(1, 32, generator=g)
        t[name] = t[name] + 0.05 * u @ v  # a rank-1 update: stable rank 1
        return t

    b, t, base, tuned = make_pair(edit, dtype=torch.float32)
    delta = to_f64(tuned[name]).reshape(48, 32) - to_f64(base[name]).reshape(48, 32)
    s = np.linalg.svd(delta, compute_uv=False)
    expected = float((s**2).sum() / s[0] ** 2)
    rule = {"name": "low-rank", "metric": "stable_rank", "include": name}
    policy = load_policy({"rules": [{**rule, "max": 1.5}]})
    assert policy.compare_options()["spectral"] is True
    res = check((b, t), policy, progress=False)
    assert res.ok and "spectral" in [f.name for f in res.comparison.families]
    row = res.comparison.tensors.set_index("name").loc[name]
    assert row["stable_rank"] == pytest.approx(expected, rel=1e-6)
    failing = check(res.comparison, {"rules": [{**rule, "max": 0.5}]})
    assert [v.subject for v in failing.violations] == [name]
    with pytest.raises(PolicyError, match="not a metric"):
        load_policy({"rules": [{"metric": "spectral_note", "max": 1}]})
