"""Overlap between updates of one base: self-overlap, the independent-random baseline,
exact group sums, one streaming pass, saved masks, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import deltascope
from conftest import write_checkpoint
from deltascope.checkpoint.base import Checkpoint, TensorInfo
from deltascope.checkpoint.local import open_local
from deltascope.cli import main
from deltascope.errors import DeltascopeWarning
from deltascope.masks import load_masks, write_masks
from deltascope.metrics.coords import overlap_counts

SHAPES = {
    "model.layers.0.mlp.up_proj.weight": (256, 256),
    "model.layers.0.self_attn.q_proj.weight": (128, 256),
    "model.layers.1.mlp.up_proj.weight": (192, 256),
}


@pytest.fixture
def runs(tmp_path: Path):
    """A base and three updates that change independent Bernoulli(p) sets of coordinates."""
    g = torch.Generator().manual_seed(50)
    base = {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}
    write_checkpoint(tmp_path / "base", base)
    planted: dict[str, dict[str, np.ndarray]] = {}
    for label, p in (("a", 0.3), ("b", 0.2), ("c", 0.05)):
        tuned, masks = {}, {}
        for n, w in base.items():
            m = torch.rand(w.shape, generator=g) < p
            tuned[n] = torch.where(m, w + 1.0, w)
            masks[n] = m.reshape(-1).numpy()
        write_checkpoint(tmp_path / label, tuned)
        planted[label] = masks
    return tmp_path, planted


def test_self_overlap_is_one(runs) -> None:
    root, _ = runs
    ov = deltascope.overlap(root / "base", root / "a", root / "a", names=["x", "y"])
    for col in ("jaccard_changed", "jaccard_unchanged", "coverage_a_by_b", "coverage_b_by_a"):
        assert (ov.tensors[col] == 1.0).all(), col
        assert ov.summary()[col].iloc[0] == 1.0


def test_independent_masks_match_the_random_baseline(runs) -> None:
    """|A∩B| of independent masks is hypergeometric given n_a, n_b: mean n_a·n_b/n, variance
    n_a (n_b/n)(1 − n_b/n)(n − n_a)/(n − 1). Allow 4 standard deviations; the Jaccard ratio
    must lie in the band those counts give."""
    root, planted = runs
    ov = deltascope.overlap(root / "base", root / "a", root / "b")
    assert ov.updates == ["a", "b"]
    for _, r in ov.tensors.iterrows():
        ma, mb = planted["a"][r["name"]], planted["b"][r["name"]]
        n, na, nb = ma.size, int(ma.sum()), int(mb.sum())
        assert (r["numel"], r["n_a"], r["n_b"], r["n_both"]) == (n, na, nb, int((ma & mb).sum()))
        e = na * nb / n
        sd = math.sqrt(na * (nb / n) * (1 - nb / n) * (n - na) / (n - 1))
        assert abs(r["n_both"] - e) <= 4 * sd
        pa, pb = na / n, nb / n
        assert r["jaccard_changed_random"] == pytest.approx(pa * pb / (pa + pb - pa * pb), rel=1e-12)

        def jac(x: float, na: int = na, nb: int = nb) -> float:
            return x / (na + nb - x)

        lo, hi = jac(e - 4 * sd) / jac(e), jac(e + 4 * sd) / jac(e)
        assert lo <= r["jaccard_changed_ratio"] <= hi
        assert r["coverage_a_by_b"] == pytest.approx(r["n_both"] / na) and r["coverage_b_by_a_random"] == pa
        qa, qb = 1 - pa, 1 - pb
        assert r["jaccard_unchanged_random"] == pytest.approx(qa * qb / (qa + qb - qa * qb), rel=1e-12)
        neither = int((~ma & ~mb).sum())
        assert r["jaccard_unchanged"] == pytest.approx(neither / (n - r["n_both"]), rel=1e-15)


def test_groups_are_sums_of_tensors(runs) -> None:
    root, planted = runs
    ov = deltascope.overlap(root / "base", root / "a", root / "b", root / "c")
    assert sorted(set(zip(ov.tensors["update_a"], ov.tensors["update_b"]))) == [("a", "b"), ("a", "c"), ("b", "c")]
    by = ov.by("block")
    names = [n for n in SHAPES if ".mlp." in n]
    ma = np.concatenate([planted["a"][n] for n in names])
    mc = np.concatenate([planted["c"][n] for n in names])
    row = by.loc[("mlp", "a", "c")]
    assert row["n_tensors"] == 2 and row["n_both"] == (ma & mc).sum()
    e = sum(planted["a"][n].sum() * planted["c"][n].sum() / planted["a"][n].size for n in names)
    assert row["expected_both"] == pytest.approx(e, rel=1e-12)
    assert row["jaccard_changed"] == (ma & mc).sum() / (ma | mc).sum()
    assert row["jaccard_changed_random"] == pytest.approx(e / (ma.sum() + mc.sum() - e), rel=1e-12)
    assert row["intersection_lift"] == pytest.approx((ma & mc).sum() / e, rel=1e-12)
    model = ov.summary().loc[("b", "c")]
    assert model["numel"] == sum(math.prod(s) for s in SHAPES.values())
    assert list(ov.by("layer", "module").index.names) == ["layer", "module", "update_a", "update_b"]
    with pytest.raises(ValueError, match="Cannot group"):
        ov.by("colour")


class CountingSource(Checkpoint):
    """Counts reads and releases, to show the pass reads each tensor once."""

    kind = "counting"

    def __init__(self, inner: Checkpoint) -> None:
        super().__init__(inner.spec)
        self.inner, self.tensors = inner, inner.tensors
        self.reads: dict[str, int] = {}
        self.released: dict[str, int] = {}

    def _read(self, info: TensorInfo) -> torch.Tensor:
        self.reads[info.name] = self.reads.get(info.name, 0) + 1
        return self.inner._read(info)

    def release(self, name: str) -> None:
        self.released[name] = self.released.get(name, 0) + 1


def test_one_streaming_pass(runs) -> None:
    root, _ = runs
    srcs = [CountingSource(open_local(root / x)) for x in ("base", "a", "b", "c")]
    deltascope.overlap(*srcs, names=["a", "b", "c"])
    for s in srcs:
        assert s.reads == dict.fromkeys(SHAPES, 1) == s.released


def test_saved_masks_give_the_same_counts(runs, tmp_path: Path) -> None:
    root, _ = runs
    live = deltascope.overlap(root / "base", root / "a", root / "b")
    ma = load_masks(write_masks(root / "base", root / "a", tmp_path / "ma"))
    mb = load_masks(write_masks(root / "base", root / "b", tmp_path / "mb"))
    saved = deltascope.overlap(ma, mb, names=["a", "b"])
    mixed = deltascope.overlap(root / "base", root / "a", mb, names=["a", "b"])
    cols = ["name", "update_a", "update_b", "numel", "n_a", "n_b", "n_both", "expected_both", "block", "layer"]
    pd.testing.assert_frame_equal(saved.tensors[cols], live.tensors[cols])
    pd.testing.assert_frame_equal(mixed.tensors[cols], live.tensors[cols])
    assert saved.metadata["updates"][0]["kind"] == "masks" and mixed.metadata["updates"][0]["kind"] == "checkpoint"
    assert ma.label == "a"
    with pytest.raises(ValueError, match="every update as a MaskSet"):
        deltascope.overlap(ma, root / "b")


def test_missing_tensors_are_skipped_and_rules_checked(runs, tmp_path: Path) -> None:
    root, _ = runs
    partial = {n: t for n, t in open_local(root / "b").tensors.items() if ".layers.1." not in n}
    ck = open_local(root / "b")
    sub = {n: ck.read(n).clone() for n in partial}
    write_checkpoint(tmp_path / "b_part", sub)
    ov = deltascope.overlap(root / "base", root / "a", tmp_path / "b_part")
    assert list(ov.skipped["name"]) == ["model.layers.1.mlp.up_proj.weight"]
    assert "not paired" in ov.skipped["reason"].iloc[0] and "skipped" in repr(ov)
    assert set(ov.tensors["name"]) == set(SHAPES) - {"model.layers.1.mlp.up_proj.weight"}
    me = load_masks(write_masks(root / "base", root / "a", tmp_path / "me"))
    mt = load_masks(write_masks(root / "base", root / "b", tmp_path / "mt", "atol_0.5"))
    with pytest.warns(DeltascopeWarning, match="different rules"):
        deltascope.overlap(me, mt)
    with pytest.raises(ValueError, match="at least two"):
        deltascope.overlap(root / "base", root / "a")
    with pytest.raises(ValueError, match="one distinct name"):
        deltascope.overlap(root / "base", root / "a", root / "b", names=["x", "x"])


def test_overlap_counts_reference() -> None:
    a = torch.tensor([1, 1, 0, 0, 1], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool)
    assert overlap_counts(a, b) == {"numel": 5, "n_a": 3, "n_b": 3, "n_both": 2, "expected_both": 9 / 5}


def test_cli_overlap(runs, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root, _ = runs
    args = [str(root / x) for x in ("base", "a", "b")]
    assert main(["overlap", *args, "--by", "block", "--format", "json", "-o", str(tmp_path / "o")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["updates"] == ["a", "b"] and "mlp,a,b" in out["table"]
    assert (tmp_path / "o" / "overlap_tensors.csv").is_file() and (tmp_path / "o" / "overlap_by_block.csv").is_file()
    assert main(["masks", args[0], args[1], "-o", str(tmp_path / "ma")]) == 0
    capsys.readouterr()
    assert main(["overlap", str(tmp_path / "ma"), str(tmp_path / "ma"), "--names", "x,y"]) == 0
    assert "x ~ y: Jaccard 1.0000" in capsys.readouterr().out
    assert main(["overlap", args[0], args[1], "--by", "colour"]) == 2
