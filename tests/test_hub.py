"""The Hub source against a Hub-compatible loopback server (tests/hubserver.py).

The same client code that talks to the real Hub talks to the server (``endpoint=``); no
deltascope function is mocked. Results are checked against the local path on the same
files, and the client's accounting against the bytes and requests the server logged.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from conftest import llama_shapes, random_state, raw_safetensors, write_checkpoint
from deltascope import compare, open_checkpoint
from deltascope.checkpoint.hub import open_hub, parse_hub_spec
from deltascope.cli import main
from deltascope.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    DeltascopeWarning,
    EntryNotFoundError,
    GatedRepoError,
    HubConnectionError,
    NoWeightsError,
    OfflineModeError,
    RepoNotFoundError,
    RevisionNotFoundError,
    UnsafeCheckpointError,
)
from hubserver import HubServer, RequestInfo, http_date


@pytest.fixture(autouse=True)
def _isolated_hf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No user token, cache or offline setting leaks into these tests."""
    import huggingface_hub.constants as c

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(c, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    with HubServer(tmp_path / "hub-server") as server:
        yield server


def _edit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    out = {}
    for i, (k, v) in enumerate(state.items()):
        if i % 3 == 0:  # a third of the tensors get a sparse update, the rest stay equal
            mask = torch.rand(v.shape, generator=g) < 0.3
            v = torch.where(mask, v + 0.01 * torch.randn(v.shape, generator=g).to(v.dtype), v)
        out[k] = v.contiguous()
    return out


def _pair(tmp_path: Path, *, base_shards: int = 1, tuned_shards: int = 1) -> tuple[Path, Path]:
    base = random_state(llama_shapes(layers=2))
    cfg = {"model_type": "llama", "tie_word_embeddings": False}
    b = write_checkpoint(tmp_path / "base", base, shards=base_shards, config=cfg)
    t = write_checkpoint(tmp_path / "tuned", _edit(base), shards=tuned_shards, config=cfg)
    return b, t


def _opts(hub: HubServer, **kw: object) -> dict[str, object]:
    return {"endpoint": hub.endpoint, "backoff": 0.01, "progress": False, **kw}


def _is_tensor_read(r: RequestInfo) -> bool:
    """A range read past the 8-byte length and the header (both start at 0 or 8)."""
    return r.range is not None and r.range[0] > 8


def _header_bytes(path: Path) -> int:
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


# ----------------------------------------------------------------------------------------
# Results equal the local path's, exactly
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("base_shards", "tuned_shards", "where"),
    [(1, 1, "hub/hub"), (3, 3, "hub/hub"), (3, 1, "local/hub"), (1, 3, "hub/local")],
)
def test_hub_results_equal_local(
    tmp_path: Path, hub: HubServer, base_shards: int, tuned_shards: int, where: str
) -> None:
    b, t = _pair(tmp_path, base_shards=base_shards, tuned_shards=tuned_shards)
    sha_b, sha_t = hub.commit("org/base", b), hub.commit("org/tuned", t)
    local = compare(b, t, progress=False)
    base_spec = "org/base" if where.startswith("hub") else b
    tuned_spec = "hf://org/tuned@main" if where.endswith("hub") else t
    got = compare(base_spec, tuned_spec, **_opts(hub))
    pd.testing.assert_frame_equal(got.tensors, local.tensors)
    pd.testing.assert_frame_equal(got.mismatches, local.mismatches)
    assert got.metadata["n_errors"] == 0
    for side, spec, sha, repo in (("base", base_spec, sha_b, "org/base"), ("tuned", tuned_spec, sha_t, "org/tuned")):
        meta = got.metadata[side]
        if isinstance(spec, Path):
            assert meta["kind"] == "safetensors"
            continue
        assert meta["kind"] == "hub" and meta["revision"] == sha and meta["repo_id"] == repo
        # The client's accounting is the server's, byte for byte and request for request.
        served = hub.records(lambda r, repo=repo: r.repo == repo)
        assert meta["transfer"]["bytes"] == sum(r.body_bytes for r in served)
        assert meta["transfer"]["requests"] == len(served)
        assert meta["transfer"]["retries"] == 0
        # One range request per non-empty tensor, of exactly its span; no whole-file GET.
        ck = open_checkpoint(b if side == "base" else t)
        spans = sorted((ck.tensors[n].file, ck.tensors[n].start, ck.tensors[n].end) for n in ck)
        got_spans = sorted((r.file, *r.range) for r in served if _is_tensor_read(r))
        assert got_spans == spans
        assert all(r.range is not None for r in served if r.file and r.file.endswith(".safetensors"))


def test_every_dtype_reads_bit_exact(tmp_path: Path, hub: HubServer) -> None:
    g = torch.Generator().manual_seed(1)
    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2]
    dtypes += [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]
    tensors = {f"t_{str(dt).split('.')[-1]}": (torch.randn(5, 7, generator=g) * 10).to(dt) for dt in dtypes}
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 3)
    (tmp_path / "m").mkdir()
    save_file(tensors, tmp_path / "m" / "model.safetensors")
    hub.commit("org/dtypes", tmp_path / "m")
    with open_hub("org/dtypes", endpoint=hub.endpoint) as ck:
        assert set(ck.tensors) == set(tensors)
        for name, ref in tensors.items():
            got = ck.read(name)
            assert got.dtype == ref.dtype and got.shape == ref.shape
            assert torch.equal(got.reshape(-1).view(torch.uint8), ref.reshape(-1).view(torch.uint8))
            ck.release(name)
    assert len(hub.records(_is_tensor_read)) == len(tensors) - 1  # the empty tensor costs no request


# ----------------------------------------------------------------------------------------
# Accounting: a filtered run fetches only what it analyses
# ----------------------------------------------------------------------------------------
def test_filtered_run_fetches_selected_tensors_plus_headers(tmp_path: Path, hub: HubServer) -> None:
    b, t = _pair(tmp_path, base_shards=3, tuned_shards=1)
    hub.commit("org/base", b)
    hub.commit("org/tuned", t)
    got = compare("org/base", "org/tuned", include="model.layers.1.*", **_opts(hub))
    assert got.metadata["n_selected"] == 9 and got.metadata["n_errors"] == 0

    # Expected from the local files alone: selected tensors, each file's 8 + N header
    # bytes, and the small JSON files (index, config).
    expected = 0
    for folder in (b, t):
        ck = open_checkpoint(folder)
        expected += sum(i.nbytes for n, i in ck.tensors.items() if n.startswith("model.layers.1."))
        expected += sum(_header_bytes(folder / f.path) for f in ck.files)
        expected += sum(p.stat().st_size for p in folder.glob("*.json"))
    fetched = got.metadata["base"]["transfer"]["bytes"] + got.metadata["tuned"]["transfer"]["bytes"]
    api = hub.bytes_served(lambda r: r.path.startswith("/api/"))
    assert fetched == hub.bytes_served()
    assert abs((fetched - api) - expected) <= 0.01 * expected
    assert fetched - api == expected  # exactly, in fact
    assert got.metadata["bytes_compared"]["base"] + got.metadata["bytes_compared"]["tuned"] < expected


# ----------------------------------------------------------------------------------------
# Revisions
# ----------------------------------------------------------------------------------------
def test_revision_resolves_to_sha_and_sticks(tmp_path: Path, hub: HubServer) -> None:
    v1 = random_state(llama_shapes(layers=1), seed=1)
    v2 = random_state(llama_shapes(layers=1), seed=2)
    v3 = random_state(llama_shapes(layers=1), seed=3)
    sha1 = hub.commit("org/m", write_checkpoint(tmp_path / "v1", v1))
    hub.tag("org/m", "v1", sha1)
    sha2 = hub.commit("org/m", write_checkpoint(tmp_path / "v2", v2))
    name = "model.layers.0.mlp.up_proj.weight"
    for spec, kw, sha, state in (
        ("org/m", {}, sha2, v2),
        ("org/m@v1", {}, sha1, v1),
        (f"hf://org/m@{sha1}", {}, sha1, v1),
        ("org/m", {"revision": "v1"}, sha1, v1),
    ):
        with open_hub(spec, endpoint=hub.endpoint, **kw) as ck:
            assert ck.revision == sha and ck.describe()["revision"] == sha
            assert torch.equal(ck.read(name), state[name])
    with pytest.raises(ValueError, match="revision"):
        open_hub("org/m@v1", revision="main", endpoint=hub.endpoint)
    hub.api_siblings = False  # a server that lists files only through /tree
    with open_hub("org/m@v1", endpoint=hub.endpoint) as ck:
        assert ck.revision == sha1 and torch.equal(ck.read(name), v1[name])
    assert hub.records(lambda r: r.path == f"/api/models/org/m/tree/{sha1}")
    hub.api_siblings = True

    # The branch moves after the open: every read still comes from the resolved commit.
    hub.reset_log()
    with open_hub("org/m", endpoint=hub.endpoint) as ck:
        hub.commit("org/m", write_checkpoint(tmp_path / "v3", v3))
        for n in ck:
            assert torch.equal(ck.read(n), v2[n])
            ck.release(n)
        assert ck.describe()["requested_revision"] == "main"
    resolves = hub.records(lambda r: "/resolve/" in r.path)
    assert resolves and all(f"/resolve/{sha2}/" in r.path for r in resolves)


# ----------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------
def test_missing_repo_revision_and_file(tmp_path: Path, hub: HubServer) -> None:
    hub.commit("org/m", write_checkpoint(tmp_path / "m", random_state(llama_shapes(layers=1)), config={}))
    with pytest.raises(RepoNotFoundError, match="org/nope"):
        open_hub("org/nope", endpoint=hub.endpoint)
    with pytest.raises(RevisionNotFoundError, match="no-such-branch"):
        open_hub("org/m@no-such-branch", endpoint=hub.endpoint)
    hub.inject("status", status=404, error_code="EntryNotFound", match=lambda r: r.file == "config.json")
    with pytest.raises(EntryNotFoundError, match=r"config\.json"):
        open_hub("org/m", endpoint=hub.endpoint)
    with pytest.raises(CheckpointNotFoundError, match="not a Hub model id"):
        open_hub("hf://org/m/extra", endpoint=hub.endpoint)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    with pytest.raises(HubConnectionError, match=r"gave up after 2 attempts.*ConnectError"):
        open_hub("org/m", endpoint=f"http://127.0.0.1:{port}", retries=1, backoff=0.01)


def test_repo_without_safetensors_lists_its_files(hub: HubServer) -> None:
    hub.commit("org/docs", {"README.md": b"# hi", "config.json": b"{}", "tokenizer.json": b"{}"})
    with pytest.raises(NoWeightsError, match=r"README\.md.*tokenizer\.json") as e:
        open_hub("org/docs", endpoint=hub.endpoint)
    assert "config.json" in e.value.found


def test_bad_index_and_header_fail_the_open(tmp_path: Path, hub: HubServer) -> None:
    folder = write_checkpoint(tmp_path / "sh", random_state(llama_shapes(layers=1)), shards=2)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    files = {p.name: p for p in folder.iterdir()}
    for shard, error in (
        ("../outside.safetensors", UnsafeCheckpointError),
        ("gone.safetensors", CorruptCheckpointError),
    ):
        bad = dict(index, weight_map={**index["weight_map"], "model.norm.weight": shard})
        hub.commit("org/bad", {**files, "model.safetensors.index.json": json.dumps(bad).encode()})
        with pytest.raises(error, match="shard"):
            open_hub("org/bad", endpoint=hub.endpoint)
    raw_safetensors(tmp_path / "x.safetensors", {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"")
    hub.commit("org/truncated", {"model.safetensors": tmp_path / "x.safetensors"})
    with pytest.raises(CorruptCheckpointError, match="past the data area"):
        open_hub("org/truncated", endpoint=hub.endpoint)
    hub.commit("org/tiny", {"model.safetensors": b"abc"})
    with pytest.raises(CorruptCheckpointError, match="3 bytes long"):
        open_hub("org/tiny", endpoint=hub.endpoint)


def test_gated_repo_needs_a_token_which_never_leaves_the_endpoint(
    tmp_path: Path, hub: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_checkpoint(tmp_path / "g", random_state(llama_shapes(layers=1)))
    hub.commit("org/gated", folder, gated_token="hf_right")
    with pytest.raises(GatedRepoError, match=r"401.*No token was sent.*HF_TOKEN.*hf auth login"):
        open_hub("org/gated", endpoint=hub.endpoint)
    with pytest.raises(GatedRepoError, match=r"403.*does not grant access"):
        open_hub("org/gated", endpoint=hub.endpoint, token="hf_wrong")

    hub.redirect_lfs = True
    hub.reset_log()
    ref = open_checkpoint(folder)
    with open_hub("org/gated", endpoint=hub.endpoint, token="hf_right") as ck:
        for n in ck:
            assert torch.equal(ck.read(n), ref.read(n))
    assert all(r.auth == "Bearer hf_right" for r in hub.records(lambda r: not r.cdn))
    cdn = hub.records(lambda r: r.cdn)
    assert cdn and all(r.auth is None and r.host.startswith("localhost:") for r in cdn)
    assert len(hub.records(lambda r: r.cdn and _is_tensor_read(r))) == len(ref)  # Range kept across the 302

    monkeypatch.setenv("HF_TOKEN", "hf_right")  # huggingface_hub's own resolution
    with open_hub("org/gated", endpoint=hub.endpoint) as ck:
        assert len(ck) == len(ref)


def test_bin_only_repo_is_downloaded_and_read_safely(tmp_path: Path, hub: HubServer) -> None:
    base = random_state(llama_shapes(layers=1), dtype=torch.float32)
    tuned = _edit(base)
    for name, state in (("b", base), ("t", tuned)):
        (tmp_path / name).mkdir()
        torch.save(state, tmp_path / name / "pytorch_model.bin")
        (tmp_path / name / "config.json").write_text("{}")
        hub.commit(f"org/{name}", tmp_path / name)
    local = compare(tmp_path / "b", tmp_path / "t", progress=False)
    hf_cache = tmp_path / "hf"
    with pytest.warns(DeltascopeWarning, match="no safetensors weights.*weights_only=True"):
        got = compare("org/b", "org/t", hf_cache_dir=hf_cache, **_opts(hub))
    pd.testing.assert_frame_equal(got.tensors, local.tensors)
    meta = got.metadata["base"]
    assert meta["kind"] == "hub" and meta["format"] == "torch" and meta["revision"] == hub.repos["org/b"].refs["main"]
    assert meta["transfer"]["bytes"] == hub.bytes_served(lambda r: r.repo == "org/b")  # API answer + whole files
    hub.reset_log()
    with pytest.warns(DeltascopeWarning), open_hub("org/b", endpoint=hub.endpoint, hf_cache_dir=hf_cache) as ck:
        assert ck.describe()["transfer"]["bytes"] == hub.bytes_served()
    assert hub.records(lambda r: r.file is not None) == []  # cached: not downloaded again


def test_sharded_bin_repo_follows_its_index(tmp_path: Path, hub: HubServer) -> None:
    state = random_state(llama_shapes(layers=1), dtype=torch.float32)
    names = list(state)
    folder = tmp_path / "sb"
    folder.mkdir()
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        fname = f"pytorch_model-{i + 1:05d}-of-00002.bin"
        torch.save({n: state[n] for n in part}, folder / fname)
        weight_map.update(dict.fromkeys(part, fname))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "training_args.bin").write_bytes(b"not read")
    hub.commit("org/sb", folder)
    with (
        pytest.warns(DeltascopeWarning, match="pytorch_model-00001"),
        open_hub("org/sb", endpoint=hub.endpoint, hf_cache_dir=tmp_path / "hf") as ck,
    ):
        assert set(ck.tensors) == set(state)
        assert all(torch.equal(ck.read(n), state[n]) for n in names)
    assert not hub.records(lambda r: r.file == "training_args.bin")


# ----------------------------------------------------------------------------------------
# Faults: identical results or a clear error, never a silently missing tensor
# ----------------------------------------------------------------------------------------
FAULTS = {
    "redirect": [],
    "500": [dict(kind="status", status=500, times=3)],
    "503-on-header": [dict(kind="status", status=503, times=2, match=lambda r: r.range == (0, 8))],
    "429-seconds": [dict(kind="status", status=429, retry_after="1", times=1)],
    "429-http-date": [dict(kind="status", status=429, retry_after="DATE", times=1)],
    "drop": [dict(kind="drop", times=3)],
    "truncate": [dict(kind="truncate", times=3)],
    "slow": [dict(kind="slow", delay=1.5, times=1)],
    "redirect+drop-at-cdn": [dict(kind="drop", times=2, match=lambda r: r.cdn and _is_tensor_read(r))],
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_faults_recover_with_identical_results(tmp_path: Path, hub: HubServer, fault: str) -> None:
    b, t = _pair(tmp_path, base_shards=1, tuned_shards=2)
    hub.commit("org/base", b)
    hub.commit("org/tuned", t)
    local = compare(b, t, progress=False)
    hub.redirect_lfs = fault.startswith("redirect")
    injected = []
    for spec in FAULTS[fault]:
        spec = dict(spec)
        if spec.get("retry_after") == "DATE":
            spec["retry_after"] = http_date(1)
        spec.setdefault("match", _is_tensor_read)
        injected.append(hub.inject(**spec))
    timeout = 0.5 if fault == "slow" else 30.0  # only the slow answer may time out
    got = compare("org/base", "org/tuned", timeout=timeout, **_opts(hub))
    assert got.metadata["n_errors"] == 0 and (got.tensors["status"] == "ok").all()
    pd.testing.assert_frame_equal(got.tensors, local.tensors)
    transfer = [got.metadata[s]["transfer"] for s in ("base", "tuned")]
    for f in injected:
        assert f.hits == f.times
    retries = sum(x["retries"] for x in transfer)
    expected = sum(f.times for f in injected)
    assert retries >= expected if fault == "slow" else retries == expected  # a loaded machine may time out more
    if hub.redirect_lfs:
        assert all(x["redirects"] > 0 for x in transfer)


def test_persistent_failure_is_that_tensors_error_row(tmp_path: Path, hub: HubServer) -> None:
    b, t = _pair(tmp_path)
    hub.commit("org/base", b)
    hub.commit("org/tuned", t)
    local = compare(b, t, progress=False)
    victim = "model.layers.1.mlp.down_proj.weight"
    t_start = open_checkpoint(t).tensors[victim].start
    b_start = open_checkpoint(b).tensors[victim].start
    hub.inject(
        "status", status=500, times=None, match=lambda r: r.repo == "org/tuned" and r.range and r.range[0] == t_start
    )
    hub.inject("drop", times=None, match=lambda r: r.repo == "org/base" and r.range and r.range[0] == b_start)
    got = compare("org/base", "org/tuned", retries=2, **_opts(hub))
    assert len(got.tensors) == len(local.tensors)  # nothing silently dropped
    errors = got.tensors[got.tensors["status"] == "error"]
    assert list(errors["name"]) == [victim] and got.metadata["n_errors"] == 1
    assert "HubConnectionError" in errors["reason"].iloc[0] and "gave up after 3 attempts" in errors["reason"].iloc[0]
    ok = got.tensors["status"] == "ok"
    shares = ["energy_share", "numel_share"]  # shares of the total over ok rows: differ by design
    pd.testing.assert_frame_equal(got.tensors[ok].drop(columns=shares), local.tensors[ok].drop(columns=shares))

    hub.clear_faults()
    hub.inject("status", status=500, times=None, match=lambda r: r.range == (0, 8))
    with pytest.raises(HubConnectionError, match=r"header.*gave up after 2 attempts"):
        open_hub("org/base", endpoint=hub.endpoint, retries=1, backoff=0.01)


# ----------------------------------------------------------------------------------------
# Caches and offline mode
# ----------------------------------------------------------------------------------------
def test_tensor_cache_second_run_fetches_no_tensor(tmp_path: Path, hub: HubServer) -> None:
    b, t = _pair(tmp_path, base_shards=2)
    hub.commit("org/base", b)
    hub.commit("org/tuned", t)
    cache = tmp_path / "tensor-cache"
    first = compare("org/base", "org/tuned", cache_dir=cache, **_opts(hub))
    hub.reset_log()
    second = compare("org/base", "org/tuned", cache_dir=cache, **_opts(hub))
    pd.testing.assert_frame_equal(second.tensors, first.tensors)
    assert [r.path.startswith("/api/models/") for r in hub.records()] == [True, True]  # only the revisions
    assert second.metadata["base"]["transfer"]["cache_hits"] > len(first.tensors)
    assert not list(cache.rglob(".tmp-*"))

    # Offline, the cache alone answers: no request at all, identical results.
    hub.reset_log()
    offline = compare("org/base", "org/tuned", cache_dir=cache, offline=True, **_opts(hub))
    pd.testing.assert_frame_equal(offline.tensors, first.tensors)
    assert hub.records() == [] and offline.metadata["base"]["offline"] is True


def test_offline_mode(tmp_path: Path, hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as c
    from huggingface_hub import snapshot_download

    b, t = _pair(tmp_path)
    hub.commit("org/base", b)
    hub.commit("org/tuned", t)
    local = compare(b, t, progress=False)
    with pytest.raises(OfflineModeError, match="HF_HUB_OFFLINE"):
        open_hub("org/base", endpoint=hub.endpoint, offline=True)

    # A filtered run cached only layer 1: offline, the rest are error rows, not gaps.
    cache = tmp_path / "tc"
    compare("org/base", "org/tuned", cache_dir=cache, include="model.layers.1.*", **_opts(hub))
    partial = compare("org/base", "org/tuned", cache_dir=cache, offline=True, **_opts(hub))
    assert len(partial.tensors) == len(local.tensors)
    bad = partial.tensors[partial.tensors["status"] == "error"]
    assert len(bad) == len(local.tensors) - 9 and bad["reason"].str.contains("OfflineModeError").all()

    # The Hugging Face cache (snapshot_download from the same server), found through
    # huggingface_hub's own HF_HUB_OFFLINE.
    for repo in ("org/base", "org/tuned"):
        snapshot_download(repo, endpoint=hub.endpoint)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    hub.reset_log()
    got = compare("org/base", "org/tuned", **_opts(hub))
    pd.testing.assert_frame_equal(got.tensors, local.tensors)
    assert hub.records() == []


# ----------------------------------------------------------------------------------------
# Pipelining stays bounded
# ----------------------------------------------------------------------------------------
def test_prefetch_respects_byte_and_request_bounds(tmp_path: Path, hub: HubServer) -> None:
    state = {f"w{i:02d}": torch.full((256,), float(i)) for i in range(12)}  # 1 KiB each
    (tmp_path / "p").mkdir()
    save_file(state, tmp_path / "p" / "model.safetensors")
    hub.commit("org/p", tmp_path / "p")
    names = list(state)
    with open_hub("org/p", endpoint=hub.endpoint, max_inflight=4, max_inflight_bytes=2048) as ck:
        names = list(ck)
        for n in names:
            ck.prefetch(n)
        assert torch.equal(ck.read(names[0]), state[names[0]])
        assert torch.equal(ck.read(names[1]), state[names[1]])
        assert len(hub.records(_is_tensor_read)) == 2  # the budget holds two tensors
        ck.release(names[0])
        assert torch.equal(ck.read(names[2]), state[names[2]])
        assert len(hub.records(_is_tensor_read)) == 3
        ck.release(names[1])
        ck.release(names[2])
        assert torch.equal(ck.read(names[-1]), state[names[-1]])  # not prefetched in time: read at once

    hub.latency = 0.3
    hub.reset_log()
    with open_hub("org/p", endpoint=hub.endpoint, max_inflight=3) as ck:
        hub.reset_log()
        for n in ck:
            ck.prefetch(n)
        for n in ck:
            assert torch.equal(ck.read(n), state[n])
            ck.release(n)
    assert 1 < hub.max_concurrency <= 3


# ----------------------------------------------------------------------------------------
# Specs and the command line
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("org/name", ("org/name", None)),
        ("org/name@v1.0", ("org/name", "v1.0")),
        ("hf://org/name@refs/pr/3", ("org/name", "refs/pr/3")),
        ("hf://models/org/name", ("org/name", None)),
    ],
)
def test_parse_hub_spec(spec: str, expected: tuple[str, str | None]) -> None:
    assert parse_hub_spec(spec) == expected


@pytest.mark.parametrize("spec", ["org", "hf://org/name@", "org/name@../../x", "a/b/c", "org/na me"])
def test_parse_hub_spec_rejects(spec: str) -> None:
    with pytest.raises(CheckpointNotFoundError):
        parse_hub_spec(spec)


def test_cli_compares_hub_repos_with_token(
    tmp_path: Path, hub: HubServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub.constants as c

    b, t = _pair(tmp_path)
    sha = hub.commit("org/base", b, gated_token="hf_cli")
    hub.commit("org/tuned", t, gated_token="hf_cli")
    monkeypatch.setattr(c, "ENDPOINT", hub.endpoint)  # what HF_ENDPOINT sets at import
    code = main(
        ["compare", "hf://org/base", "org/tuned@main", "--token", "hf_cli", "--format", "json", "--no-progress"]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["n_errors"] == 0
    assert out["metadata"]["base"]["revision"] == sha and out["metadata"]["base"]["transfer"]["requests"] > 0
    assert main(["compare", "hf://org/base", "org/tuned", "--no-progress"]) == 2
    assert "hf auth login" in capsys.readouterr().err
