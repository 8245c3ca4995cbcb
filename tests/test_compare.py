"""End to end: compare() on generated checkpoints, group weighting, filters, errors,
round trips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

import deltascope
from conftest import llama_shapes, raw_safetensors, write_checkpoint
from deltascope import Comparison, IncompatibleCheckpointsError
from deltascope.checkpoint.base import Checkpoint, TensorInfo
from deltascope.checkpoint.local import open_local
from reference import to_f64


def plant(tensors: dict[str, torch.Tensor], densities: dict[str, float], seed: int = 1) -> dict[str, int]:
    """Flip a known number of coordinates per tensor by +4 ULP (always visible). Returns counts."""
    g = torch.Generator().manual_seed(seed)
    counts = {}
    for name, t in tensors.items():
        dens = next((d for key, d in densities.items() if key in name), 0.0)
        k = round(dens * t.numel())
        idx = torch.randperm(t.numel(), generator=g)[:k]
        bits = t.reshape(-1).view(torch.int16).clone()
        bits[idx] += 4
        tensors[name] = bits.view(torch.bfloat16).reshape(t.shape)
        counts[name] = k
    return counts


@pytest.fixture
def planted_pair(make_pair):
    counts = {}

    def edit(t):
        counts.update(plant(t, {".mlp.": 0.25, ".self_attn.": 0.05}))
        return t

    b, t, base, tuned = make_pair(edit)
    return b, t, base, tuned, counts


def test_planted_densities_per_block(planted_pair) -> None:
    b, t, base, _, counts = planted_pair
    cmp = deltascope.compare(b, t)
    rows = cmp.tensors.set_index("name")
    for name, k in counts.items():
        assert rows.loc[name, "n_changed_exact"] == k
    blocks = cmp.by("block")
    for block, key in (("mlp", ".mlp."), ("attention", ".self_attn.")):
        names = [n for n in base if key in n]
        expected = sum(counts[n] for n in names) / sum(base[n].numel() for n in names)
        assert blocks.loc[block, "changed_exact"] == pytest.approx(expected, rel=1e-15)
    for block in ("embedding", "norm", "lm_head"):
        assert blocks.loc[block, "changed_exact"] == 0
        assert blocks.loc[block, "rel_update"] == 0


def test_group_weighting_matches_numpy(planted_pair) -> None:
    b, t, base, tuned, _ = planted_pair
    cmp = deltascope.compare(b, t)
    by = cmp.by("layer", "module")
    for (layer, module), row in by.iterrows():
        names = [n for n in base if f"layers.{layer}." in n and n.split(".")[-2] == module]
        if pd.isna(layer) or not names:
            continue
        d2 = sum(((to_f64(tuned[n]) - to_f64(base[n])) ** 2).sum() for n in names)
        w2 = sum((to_f64(base[n]) ** 2).sum() for n in names)
        assert row["rel_update"] == pytest.approx(math.sqrt(d2) / math.sqrt(w2), rel=1e-6)
        assert row["energy"] == pytest.approx(d2, rel=1e-6)
    # energy shares add up to one, and the model row agrees with the sum of blocks
    assert cmp.by("block")["energy_share"].sum() == pytest.approx(1.0)
    assert cmp.summary()["numel"].iloc[0] == sum(v.numel() for v in base.values())


def test_summary_is_one_row(planted_pair) -> None:
    b, t, *_ = planted_pair
    s = deltascope.compare(b, t).summary()
    assert len(s) == 1 and s.index[0] == "model"
    assert s["n_errors"].iloc[0] == 0 and s["n_tensors"].iloc[0] == len(llama_shapes())


def test_identical_checkpoints_all_zero(make_pair) -> None:
    b, t, *_ = make_pair()
    s = deltascope.compare(b, t, metrics="full").summary().iloc[0]
    for col in (
        "changed_exact",
        "changed_atol_1e-08",
        "changed_rms_0.0001",
        "energy",
        "rel_update",
        "max_abs_delta",
        "n_ulp1",
    ):
        assert s[col] == 0, col
    assert s["cosine"] == 1.0


def test_filters(planted_pair) -> None:
    b, t, *_ = planted_pair
    cmp = deltascope.compare(b, t, include="model.layers.1.*", blocks=["mlp"])
    assert set(cmp.tensors["name"]) == {f"model.layers.1.mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")}
    cmp2 = deltascope.compare(b, t, layers="0", exclude="re:norm")
    assert set(cmp2.tensors["layer"].dropna()) == {0}
    assert not cmp2.tensors["name"].str.contains("norm").any()
    assert cmp2.metadata["n_selected"] == 7 and cmp2.metadata["n_pairs"] == len(llama_shapes())
    with pytest.raises(ValueError, match="Unknown block"):
        deltascope.compare(b, t, blocks="ffn")


def test_sharded_equals_single_file(make_pair, tmp_path: Path) -> None:
    b, t, base, tuned = make_pair(lambda x: (plant(x, {".mlp.": 0.3}), x)[1])
    write_checkpoint(tmp_path / "base3", base, shards=3)
    write_checkpoint(tmp_path / "tuned2", tuned, shards=2)
    one = deltascope.compare(b, t).tensors.set_index("name").sort_index()
    many = deltascope.compare(tmp_path / "base3", tmp_path / "tuned2").tensors.set_index("name").sort_index()
    pd.testing.assert_frame_equal(one, many)


def test_deterministic(planted_pair) -> None:
    b, t, *_ = planted_pair
    pd.testing.assert_frame_equal(
        deltascope.compare(b, t, chunk=1000).tensors, deltascope.compare(b, t, chunk=1000).tensors
    )


def test_chunking_does_not_change_counts(planted_pair) -> None:
    b, t, *_ = planted_pair
    big = deltascope.compare(b, t, metrics="full").tensors
    small = deltascope.compare(b, t, metrics="full", chunk=333).tensors
    counts = [c for c in big.columns if c.startswith("n_")]
    pd.testing.assert_frame_equal(big[counts], small[counts])
    floats = ["energy", "sumsq_w0", "rel_update", "top1pct_energy"]
    np.testing.assert_allclose(big[floats].to_numpy(float), small[floats].to_numpy(float), rtol=1e-6)


def test_json_round_trip_is_exact(planted_pair, tmp_path: Path) -> None:
    b, t, *_ = planted_pair
    cmp = deltascope.compare(b, t, metrics="full")
    path = tmp_path / "run.json"
    cmp.to_json(path)
    back = Comparison.from_json(path)
    pd.testing.assert_frame_equal(back.tensors, cmp.tensors)
    pd.testing.assert_frame_equal(back.mismatches, cmp.mismatches, check_dtype=False)
    for keys in (("block",), ("layer", "module"), ()):
        pd.testing.assert_frame_equal(back.by(*keys), cmp.by(*keys))
    assert back.metadata == json.loads(json.dumps(cmp.metadata))
    assert Comparison.from_json(cmp.to_json()).tensors.equals(cmp.tensors)  # from a string too


def test_json_rejects_foreign_and_future_files(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    p.write_text('{"hello": 1}')
    with pytest.raises(deltascope.ResultFormatError, match="not a deltascope result"):
        Comparison.from_json(p)
    p.write_text('{"format": "deltascope.comparison", "version": 999}')
    with pytest.raises(deltascope.ResultFormatError, match="newer"):
        Comparison.from_json(p)
    p.write_text("{broken")
    with pytest.raises(deltascope.ResultFormatError, match="not valid JSON"):
        Comparison.from_json(p)


def test_csv_and_parquet_export(planted_pair, tmp_path: Path) -> None:
    b, t, *_ = planted_pair
    cmp = deltascope.compare(b, t)
    written = cmp.to_csv(tmp_path / "csv")
    names = {p.name for p in written}
    assert {"tensors.csv", "by_block.csv", "by_layer_module.csv", "mismatches.csv", "summary.csv"} <= names
    back = pd.read_csv(tmp_path / "csv" / "tensors.csv")
    np.testing.assert_array_equal(back["n_changed_exact"], cmp.tensors["n_changed_exact"].to_numpy(int))
    np.testing.assert_allclose(back["energy"], cmp.tensors["energy"], rtol=1e-15)
    cmp.to_parquet(tmp_path / "pq")
    pq = pd.read_parquet(tmp_path / "pq" / "tensors.parquet")
    np.testing.assert_array_equal(pq["energy"].to_numpy(), cmp.tensors["energy"].to_numpy())
    assert not list((tmp_path / "csv").glob("*.partial"))


def test_mismatches_reported_not_raised(make_pair) -> None:
    def edit(t):
        t.pop("model.layers.1.mlp.up_proj.weight")
        t["extra.weight"] = torch.zeros(3)
        t["model.norm.weight"] = t["model.norm.weight"].float()
        return t

    b, t, *_ = make_pair(edit)
    cmp = deltascope.compare(b, t)
    kinds = dict(zip(cmp.mismatches["name"], cmp.mismatches["kind"]))
    assert kinds == {
        "model.layers.1.mlp.up_proj.weight": "missing_in_tuned",
        "extra.weight": "extra_in_tuned",
        "model.norm.weight": "dtype_changed",
    }
    row = cmp.tensors.set_index("name").loc["model.norm.weight"]
    assert row["status"] == "ok" and "upcast" in row["reason"] and row["changed_exact"] == 0
    s = cmp.summary().iloc[0]
    assert (s["n_missing_in_tuned"], s["n_extra_in_tuned"], s["n_dtype_changed"]) == (1, 1, 1)


def test_incompatible_checkpoints(tmp_path: Path) -> None:
    save_file({"a": torch.ones(2)}, tmp_path / "a.safetensors")
    save_file({"b": torch.ones(2)}, tmp_path / "b.safetensors")
    with pytest.raises(IncompatibleCheckpointsError, match="same model"):
        deltascope.compare(tmp_path / "a.safetensors", tmp_path / "b.safetensors")


class FlakySource(Checkpoint):
    """A source that fails on one tensor, as a dropped disk or network read would."""

    kind = "flaky"

    def __init__(self, inner: Checkpoint, bad: str) -> None:
        super().__init__(inner.spec)
        self.inner, self.bad = inner, bad
        self.tensors = inner.tensors

    def _read(self, info: TensorInfo) -> torch.Tensor:
        if info.name == self.bad:
            raise OSError(f"simulated read failure on {info.name}")
        return self.inner._read(info)


def test_one_bad_tensor_does_not_abort_the_run(planted_pair) -> None:
    b, t, base, *_ = planted_pair
    bad = "model.layers.0.mlp.up_proj.weight"
    cmp = deltascope.compare(b, FlakySource(open_local(t), bad))
    assert len(cmp.tensors) == len(base)
    errs = cmp.errors
    assert list(errs["name"]) == [bad] and "simulated read failure" in errs["reason"].iloc[0]
    assert cmp.metadata["n_errors"] == 1
    assert math.isnan(cmp.tensors.set_index("name").loc[bad, "changed_exact"])
    # the error row is excluded from aggregates, which still add up over the good rows
    assert cmp.by("block").loc["mlp", "n_tensors"] == 5
    assert "1 tensor(s) failed" in repr(cmp)


def test_unsupported_packed_dtype_is_an_error_row(tmp_path: Path) -> None:
    hdr = {
        "w": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [0, 3]},
        "v": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]},
    }
    data = b"\x01\x02\x03" + np.array([1.0, 2.0], np.float32).tobytes()
    raw_safetensors(tmp_path / "a.safetensors", hdr, data)
    raw_safetensors(tmp_path / "b.safetensors", hdr, data)
    cmp = deltascope.compare(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    rows = cmp.tensors.set_index("name")
    assert rows.loc["w", "status"] == "error" and "F6_E2M3" in rows.loc["w", "reason"]
    assert rows.loc["v", "status"] == "ok"


def test_int_and_bool_buffers(tmp_path: Path) -> None:
    base = {"w": torch.ones(4), "ids": torch.arange(10), "mask": torch.ones(3, dtype=torch.bool)}
    tuned = {"w": torch.ones(4), "ids": torch.arange(10) * 2, "mask": torch.ones(3, dtype=torch.bool)}
    save_file(base, tmp_path / "a.safetensors")
    save_file(tuned, tmp_path / "b.safetensors")
    rows = deltascope.compare(tmp_path / "a.safetensors", tmp_path / "b.safetensors").tensors.set_index("name")
    assert rows.loc["ids", "n_changed_exact"] == 9 and rows.loc["mask", "n_changed_exact"] == 0
    assert math.isnan(rows.loc["ids", "energy"])


def test_displays(planted_pair) -> None:
    b, t, *_ = planted_pair
    cmp = deltascope.compare(b, t)
    html = cmp._repr_html_()
    assert "<table>" in html and "mlp" in html and "%" in html
    assert "tensors" in repr(cmp)
    top = cmp.top(3)
    assert len(top) == 3 and top["energy"].is_monotonic_decreasing


def test_by_where_restricts_rows_but_keeps_whole_run_shares(planted_pair) -> None:
    b, t, *_ = planted_pair
    cmp = deltascope.compare(b, t)
    layer0 = (cmp.tensors["layer"] == 0).fillna(False).to_numpy(dtype=bool)
    part = cmp.by("block", where=layer0)
    manual = cmp.tensors[layer0 & (cmp.tensors["block"] == "mlp").to_numpy()]
    assert part.loc["mlp", "n_changed_exact"] == manual["n_changed_exact"].sum()
    assert part.loc["mlp", "energy_share"] == pytest.approx(manual["energy"].sum() / cmp.ok["energy"].sum())
    with pytest.raises(ValueError, match="one boolean per tensor row"):
        cmp.by("block", where=[True])
