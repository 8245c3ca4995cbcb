"""Checkpoints on the Hugging Face Hub, streamed tensor by tensor with HTTP range reads.

Opening ``org/name@rev`` (or ``hf://org/name@rev``):

1. ``GET /api/models/{repo}/revision/{rev}`` resolves the revision to a commit sha and
   lists the files; every later URL uses the sha, so a branch that moves during the run
   cannot mix two commits.
2. The layout is picked as for a local folder: ``*.safetensors.index.json`` (shards must
   stay inside the repo), ``model.safetensors``, several ``*.safetensors``; a repo with
   only PyTorch pickles is downloaded whole to the Hugging Face cache (with a warning) and
   read with ``torch.load(weights_only=True)``.
3. Each safetensors header is read with two range requests (the 8-byte length, then
   exactly the JSON) and validated by the same strict parser as local files.
4. Each tensor is one range request of exactly its bytes, started by
   :meth:`HubCheckpoint.prefetch` in a bounded thread pool, so that latency is hidden
   while in-flight requests and bytes stay bounded.

Nothing else is fetched: no shard is ever downloaded whole, and a filtered run fetches
only the headers and the tensors it analyses. See docs/hub.md.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import torch

from ..errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    DeltascopeWarning,
    EntryNotFoundError,
    GatedRepoError,
    HubConnectionError,
    HubError,
    NoWeightsError,
    OfflineModeError,
    RepoNotFoundError,
    RevisionNotFoundError,
    UnsafeCheckpointError,
)
from .base import Checkpoint, SourceFile, TensorInfo
from .hub_http import TOKEN_HELP, HubHTTP, RetryPolicy, TransferStats
from .safetensors_format import (
    SafetensorsHeader,
    assemble_tensors,
    parse_header,
    parse_weight_map,
    read_header_length,
)
from .torchfile import TorchCheckpoint

__all__ = ["HubCheckpoint", "open_hub", "parse_hub_spec", "TensorCache"]

#: Range requests in flight per checkpoint.
DEFAULT_MAX_INFLIGHT = 8
#: Bytes of tensors fetched ahead and not yet released, per checkpoint (one larger tensor
#: is still fetched alone).
DEFAULT_MAX_INFLIGHT_BYTES = 512 * 1024 * 1024

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*$")
_SHA = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "ON", "YES", "TRUE"}


def parse_hub_spec(spec: str) -> tuple[str, str | None]:
    """``(repo_id, revision)`` from ``org/name``, ``org/name@rev`` or ``hf://org/name@rev``.

    Raises:
        CheckpointNotFoundError: the spec is not a Hub model id.

    Example:
        >>> parse_hub_spec("hf://Qwen/Qwen3-8B@refs/pr/1")
        ('Qwen/Qwen3-8B', 'refs/pr/1')
        >>> parse_hub_spec("someorg/qwen3-8b-opd")
        ('someorg/qwen3-8b-opd', None)
    """
    text = spec.removeprefix("hf://")
    repo, sep, rev = text.partition("@")
    if repo.startswith("models/") and repo.count("/") == 2:  # hf://models/org/name
        repo = repo.removeprefix("models/")
    if not _REPO_ID.match(repo) or ".." in repo or (sep and not _valid_revision(rev)):
        raise CheckpointNotFoundError(
            f"{spec!r} is not a Hub model id. Use 'org/name', 'org/name@revision' or 'hf://org/name@revision' "
            "(revision: a branch, tag or commit sha).",
            path=spec,
        )
    return repo, (rev if sep else None)


def _valid_revision(rev: str) -> bool:
    """A branch, tag or sha: not empty, no ``..`` component, no control character."""
    return bool(rev.strip()) and ".." not in rev.split("/") and not any(ord(c) < 32 for c in rev)


def _is_offline(offline: bool | None) -> bool:
    if offline is not None:
        return bool(offline)
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.is_offline_mode() or env.strip().upper() in _TRUE


def _atomic_write(path: Path, data: bytes | bytearray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class TensorCache:
    """Fetched bytes on disk, keyed by repo, commit sha, file and byte span.

    Layout under ``root``: ``models--{org}--{name}/refs/{rev}`` (the sha a revision
    resolved to, for offline use), ``models--{org}--{name}/{sha}/`` with ``repo.json``
    (file list), ``files/`` (index, config), ``meta/`` (file sizes) and
    ``spans/{file}/{start}-{end}`` (header and tensor bytes). A commit never changes, so
    entries never go stale; every write is atomic (temporary file + rename). A failed
    write warns once and disables writing; it never fails a run.
    """

    def __init__(self, root: str | os.PathLike[str], repo_id: str) -> None:
        self.root = Path(root).expanduser()
        self.repo_dir = self.root / ("models--" + repo_id.replace("/", "--"))
        self._writable = True

    def _path(self, sha: str, *parts: str) -> Path:
        return self.repo_dir.joinpath(sha, *parts)

    @staticmethod
    def _key(name: str) -> str:
        return quote(name, safe="") + ".d"

    def read(self, path: Path, size: int | None = None) -> bytearray | None:
        try:
            n = path.stat().st_size
            if size is not None and n != size:
                return None
            buf = bytearray(n)
            with open(path, "rb") as f:
                if f.readinto(buf) != n:
                    return None
            return buf
        except OSError:
            return None

    def write(self, path: Path, data: bytes | bytearray) -> None:
        if not self._writable:
            return
        try:
            _atomic_write(path, data)
        except OSError as e:
            self._writable = False
            warnings.warn(
                f"Cannot write the tensor cache under {str(self.root)!r} ({e}); going on without caching.",
                DeltascopeWarning,
                stacklevel=2,
            )

    def ref(self, revision: str) -> Path:
        return self.repo_dir / "refs" / self._key(revision)

    def span(self, sha: str, file: str, start: int, end: int) -> Path:
        return self._path(sha, "spans", self._key(file), f"{start}-{end}")

    def file(self, sha: str, file: str) -> Path:
        return self._path(sha, "files", self._key(file))

    def meta(self, sha: str, file: str) -> Path:
        return self._path(sha, "meta", self._key(file) + ".json")

    def listing(self, sha: str) -> Path:
        return self._path(sha, "repo.json")


def _default_cache_dir() -> Path:
    from ..demo import _cache_root

    return _cache_root() / "hub"


class _Repo:
    """The bytes of one repository at one commit: tensor cache, then (offline) the Hugging
    Face cache, then the network."""

    def __init__(
        self,
        *,
        repo_id: str,
        endpoint: str,
        http: HubHTTP,
        stats: TransferStats,
        cache: TensorCache | None,
        offline: bool,
        hf_cache_dir: str | None,
    ) -> None:
        self.repo_id = repo_id
        self.endpoint = endpoint
        self.http = http
        self.stats = stats
        self.cache = cache
        self.offline = offline
        self.hf_cache_dir = hf_cache_dir
        self.sha = ""
        self.siblings: list[str] = []

    # -- revision -----------------------------------------------------------------------
    def resolve(self, revision: str) -> None:
        """Set ``sha`` and ``siblings`` for ``revision``."""
        if self.offline:
            self._resolve_offline(revision)
            return
        url = f"{self.endpoint}/api/models/{self.repo_id}/revision/{quote(revision, safe='')}"
        what = f"resolving revision {revision!r} of {self.repo_id!r}"
        info = self.http.get_json(url, what=what, revision=revision)
        sha = info.get("sha") if isinstance(info, dict) else None
        if not isinstance(sha, str) or not _SHA.match(sha):
            raise HubError(
                f"{what}: {url} answered without a commit sha (got {sha!r}). Is {self.endpoint} a Hub endpoint?",
                repo_id=self.repo_id,
                revision=revision,
            )
        siblings = info.get("siblings")
        if isinstance(siblings, list):
            names = [s.get("rfilename") for s in siblings if isinstance(s, dict)]
        else:  # a server that omits siblings: list the tree instead
            tree = self.http.get_json(
                f"{self.endpoint}/api/models/{self.repo_id}/tree/{sha}?recursive=true", what=what, revision=revision
            )
            names = [e.get("path") for e in tree if isinstance(e, dict) and e.get("type") == "file"]
        self.sha = sha
        self.siblings = sorted(n for n in names if isinstance(n, str))
        if self.cache is not None:
            self.cache.write(self.cache.ref(revision), sha.encode())
            self.cache.write(self.cache.listing(sha), json.dumps({"siblings": self.siblings}).encode())

    def _resolve_offline(self, revision: str) -> None:
        sha: str | None = revision if _SHA.match(revision) else None
        hf_repo = Path(self._hf_cache()) / ("models--" + self.repo_id.replace("/", "--"))
        if sha is None and self.cache is not None:
            raw = self.cache.read(self.cache.ref(revision))
            sha = raw.decode().strip() if raw else None
        if sha is None and (hf_repo / "refs" / revision).is_file():
            sha = (hf_repo / "refs" / revision).read_text().strip()
        if sha is not None and not _SHA.match(sha):
            sha = None
        listing = self.cache.read(self.cache.listing(sha)) if (sha and self.cache is not None) else None
        if listing is not None:
            self.siblings = list(json.loads(listing.decode())["siblings"])
        elif sha and (hf_repo / "snapshots" / sha).is_dir():
            snap = hf_repo / "snapshots" / sha
            self.siblings = sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file())
        else:
            raise OfflineModeError(
                f"Offline mode (HF_HUB_OFFLINE=1 or offline=True): {self.repo_id}@{revision} is not in the tensor "
                f"cache nor in the Hugging Face cache {self._hf_cache()!r}. Run once online with cache_tensors=True "
                "(or download it with `hf download`), or unset HF_HUB_OFFLINE.",
                repo_id=self.repo_id,
                revision=revision,
            )
        self.sha = sha

    # -- bytes --------------------------------------------------------------------------
    def _hf_cache(self) -> str:
        from huggingface_hub import constants

        return str(self.hf_cache_dir or constants.HF_HUB_CACHE)

    def url(self, file: str) -> str:
        # hf_hub_url's format, built from *our* endpoint: hf_hub_url formats a template
        # fixed when huggingface_hub was imported, which can disagree with `endpoint`.
        return f"{self.endpoint}/{self.repo_id}/resolve/{quote(self.sha, safe='')}/{quote(file)}"

    def where(self, file: str) -> str:
        return f"hf://{self.repo_id}@{self.sha[:12]}/{file}"

    def _offline_copy(self, file: str, what: str) -> Path:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(self.repo_id, file, cache_dir=self._hf_cache(), revision=self.sha)
        if isinstance(found, str):
            return Path(found)
        raise OfflineModeError(
            f"Offline mode (HF_HUB_OFFLINE=1 or offline=True): {what} is not cached (neither in the tensor cache "
            "nor in the Hugging Face cache). Run once online with cache_tensors=True, or unset HF_HUB_OFFLINE.",
            repo_id=self.repo_id,
            revision=self.sha,
        )

    def small_file(self, file: str) -> bytes:
        """A whole small file (index, config)."""
        what = f"reading {self.where(file)}"
        if self.cache is not None:
            data = self.cache.read(self.cache.file(self.sha, file))
            if data is not None:
                self.stats.add(cache_hits=1, cache_bytes=len(data))
                return bytes(data)
        if self.offline:
            data = self._offline_copy(file, what).read_bytes()
            self.stats.add(cache_hits=1, cache_bytes=len(data))
            return data
        body = self.http.get_file(self.url(file), what=what, revision=self.sha, file=file)
        if self.cache is not None:
            self.cache.write(self.cache.file(self.sha, file), body)
        return body

    def span(self, file: str, start: int, end: int, *, what: str) -> bytearray:
        """Bytes ``[start, end)`` of ``file``: one range request unless cached."""
        n = end - start
        if self.cache is not None:
            data = self.cache.read(self.cache.span(self.sha, file, start, end), size=n)
            if data is not None:
                self.stats.add(cache_hits=1, cache_bytes=n)
                return data
        if self.offline:
            path = self._offline_copy(file, what)
            data = bytearray(n)
            with open(path, "rb") as f:
                f.seek(start)
                if f.readinto(data) != n:
                    raise CorruptCheckpointError(f"{what}: the cached file {str(path)!r} is truncated.", path=file)
            self.stats.add(cache_hits=1, cache_bytes=n)
            return data
        res = self.http.get_range(self.url(file), start, end, what=what, revision=self.sha, file=file)
        if self.cache is not None:
            self.cache.write(self.cache.span(self.sha, file, start, end), res.data)
        return res.data

    def _size(self, file: str) -> tuple[int, str | None, bytearray | None]:
        """File size, ETag and (when it took a request) the first 8 bytes."""
        if self.cache is not None:
            meta = self.cache.read(self.cache.meta(self.sha, file))
            if meta is not None:
                d = json.loads(meta.decode())
                return int(d["size"]), d.get("etag"), None
        if self.offline:
            return self._offline_copy(file, f"the header of {self.where(file)}").stat().st_size, None, None
        what = f"reading the header of {self.where(file)}"
        res = self.http.get_range(self.url(file), 0, 8, what=what, revision=self.sha, file=file, allow_short=True)
        if res.total is None:
            raise HubError(f"{what}: the server did not say how large the file is (Content-Range total).")
        if self.cache is not None:
            meta = json.dumps({"size": res.total, "etag": res.etag}).encode()
            self.cache.write(self.cache.meta(self.sha, file), meta)
            self.cache.write(self.cache.span(self.sha, file, 0, 8), res.data)
        return res.total, res.etag, res.data

    def header(self, file: str) -> tuple[SafetensorsHeader, SourceFile]:
        """The validated header of a safetensors file: 8 bytes, then exactly ``N`` bytes."""
        size, etag, prefix = self._size(file)
        what = f"reading the header of {self.where(file)}"
        source = self.url(file)
        if prefix is None:
            prefix = self.span(file, 0, min(8, size), what=what) if size else bytearray()
        n = read_header_length(bytes(prefix), file_size=size, source=source)
        raw = self.span(file, 8, 8 + n, what=what)
        header = parse_header(bytes(raw), header_len=n, file_size=size, file=file, source=source)
        sha256 = etag if etag and re.fullmatch(r"[0-9a-f]{64}", etag) else None
        return header, SourceFile(file, size, sha256, {"etag": etag, "header_bytes": 8 + n})


# ----------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------
def choose_layout(files: list[str], repo: str) -> tuple[str, list[str]]:
    """Which files hold the weights, as for a local folder (top level only).

    Returns ``("index", [index])``, ``("safetensors", names)``, ``("torch-index", [index])``
    or ``("torch", names)``.

    Example:
        >>> choose_layout(["config.json", "model.safetensors", "pytorch_model.bin"], "o/n")
        ('safetensors', ['model.safetensors'])
    """
    top = sorted(f for f in files if "/" not in f)
    indexes = [f for f in top if f.endswith(".safetensors.index.json")]
    if indexes:
        if "model.safetensors.index.json" in indexes:
            return "index", ["model.safetensors.index.json"]
        if len(indexes) == 1:
            return "index", indexes
        raise NoWeightsError(
            f"{repo} holds several safetensors indexes ({', '.join(indexes)}) and no model.safetensors.index.json; "
            "deltascope cannot tell which one is the model. Download the repo and pass the index to use.",
            path=repo,
            found=top,
        )
    if "model.safetensors" in top:
        return "safetensors", ["model.safetensors"]
    st = [f for f in top if f.endswith(".safetensors")]
    if st:
        return "safetensors", st
    if "pytorch_model.bin.index.json" in top:
        return "torch-index", ["pytorch_model.bin.index.json"]
    if "pytorch_model.bin" in top:
        return "torch", ["pytorch_model.bin"]
    pickles = [f for f in top if f.endswith((".bin", ".pt", ".pth"))]
    if pickles:
        return "torch", pickles
    shown = ", ".join(files[:30]) + (" ..." if len(files) > 30 else "") if files else "no files at all"
    raise NoWeightsError(
        f"{repo} holds no weights deltascope can read (found: {shown}). Expected model.safetensors, *.safetensors "
        "with or without a *.safetensors.index.json, or pytorch_model.bin.",
        path=repo,
        found=list(files),
    )


def _weight_map(body: bytes, where: str, siblings: list[str]) -> dict[str, str]:
    """The ``weight_map`` of an index, with every shard a file of the repo."""
    wm = parse_weight_map(body, where=where)
    present = set(siblings)
    out: dict[str, str] = {}
    for name, shard in wm.items():
        parts = PurePosixPath(shard).parts
        if not shard or "\x00" in shard or "\\" in shard or shard.startswith("/") or ".." in parts:
            raise UnsafeCheckpointError(
                f"Index {where!r} names shard {shard!r}, a path outside the repository. deltascope only reads "
                "shards inside the repository of their index; fix the weight_map.",
                path=where,
            )
        clean = PurePosixPath(*parts).as_posix()
        if clean not in present:
            raise CorruptCheckpointError(
                f"Index {where!r} names shard {shard!r}, which is not in the repository at this commit. "
                "The index and the shards are out of sync; fix the repository or pick another revision.",
                path=where,
            )
        out[name] = clean
    return out


def _as_tensor(buf: bytearray, info: TensorInfo) -> torch.Tensor:
    """The tensor over ``buf`` (no copy), in its stored dtype and shape."""
    dt = info.dtype_info
    if dt.torch is None:  # packed sub-byte formats: raw bytes, as local files give them
        return torch.frombuffer(buf, dtype=torch.uint8) if len(buf) else torch.empty(0, dtype=torch.uint8)
    if info.numel == 0:
        return torch.empty(info.shape, dtype=dt.torch)
    t = torch.frombuffer(buf, dtype=dt.torch)
    if sys.byteorder == "big":  # pragma: no cover - safetensors is little-endian
        t = torch.from_numpy(t.numpy().byteswap())
    return t.view(info.shape)


# ----------------------------------------------------------------------------------------
# The checkpoint
# ----------------------------------------------------------------------------------------
class HubCheckpoint(Checkpoint):
    """A safetensors checkpoint on the Hub, read tensor by tensor with range requests.

    Built by :func:`open_hub`. :meth:`prefetch` queues a tensor's range read; queued reads
    start in a pool of ``max_inflight`` threads while the bytes fetched and not yet released
    stay under ``max_inflight_bytes`` (a single larger tensor is fetched alone).
    :meth:`read` waits for the bytes (or fetches them at once when not prefetched) and
    returns a tensor over them; :meth:`release` drops them. A tensor whose fetch fails
    after the retries raises from :meth:`read`, which the engine records as that tensor's
    error row.

    ``describe()["transfer"]`` counts requests, bytes, retries, redirects and cache hits.
    """

    kind = "hub"

    def __init__(
        self,
        spec: str,
        repo: _Repo,
        *,
        requested_revision: str,
        layout: tuple[str, list[str]],
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
    ) -> None:
        super().__init__(spec)
        self._repo = repo
        self.repo_id = repo.repo_id
        self.revision = repo.sha
        self.requested_revision = requested_revision
        self.root = f"hf://{repo.repo_id}@{repo.sha}"
        self._max_bytes = max_inflight_bytes
        self.prefetch_depth = 2 * max_inflight  # enough announced reads to keep the pool busy
        self._pool = ThreadPoolExecutor(max_workers=max_inflight, thread_name_prefix="deltascope-hub")
        self._lock = threading.RLock()
        self._slots: dict[str, Future[bytearray]] = {}
        self._queued: dict[str, None] = {}  # an ordered set
        self._held = 0
        self._closed = False
        try:
            self._load(layout)
        except BaseException:
            self._pool.shutdown(wait=False, cancel_futures=True)
            raise

    def _load(self, layout: tuple[str, list[str]]) -> None:
        kind, names = layout
        repo = self._repo
        weight_map = None
        if kind == "index":
            weight_map = _weight_map(repo.small_file(names[0]), repo.where(names[0]), repo.siblings)
            names = sorted(set(weight_map.values()))
        config = self._pool.submit(repo.small_file, "config.json") if "config.json" in repo.siblings else None
        parts = list(self._pool.map(repo.header, names))
        headers = {name: h for name, (h, _) in zip(names, parts)}
        self.files = [f for _, f in parts]
        for h in headers.values():
            self.metadata.update(h.metadata)
        self.tensors = assemble_tensors(
            headers, weight_map, where=f"{repo.repo_id}@{repo.sha}", fix="fix the repository or pick another revision"
        )
        if config is not None:
            try:
                cfg = json.loads(config.result().decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                cfg = None
            self.config = cfg if isinstance(cfg, dict) else None

    # -- reading ----------------------------------------------------------------------
    def _fetch(self, info: TensorInfo) -> bytearray:
        if info.nbytes == 0:
            return bytearray()
        what = f"tensor {info.name!r} (bytes {info.start}-{info.end - 1} of {self._repo.where(info.file)})"
        return self._repo.span(info.file, info.start, info.end, what=what)

    def _pump(self) -> None:
        """Start queued fetches while the byte budget allows (lock held)."""
        while self._queued and not self._closed:
            name = next(iter(self._queued))
            n = self.tensors[name].nbytes
            if self._held and self._held + n > self._max_bytes:
                return
            del self._queued[name]
            self._held += n
            self._slots[name] = self._pool.submit(self._fetch, self.tensors[name])

    def _free(self, n: int) -> None:
        with self._lock:
            self._held -= n
            self._pump()

    def prefetch(self, name: str) -> None:
        """Queue the range read of ``name``; it starts when a slot and the byte budget allow."""
        if name not in self.tensors:
            return
        with self._lock:
            if self._closed or name in self._slots or name in self._queued:
                return
            self._queued[name] = None
            self._pump()

    def _read(self, info: TensorInfo) -> torch.Tensor:
        with self._lock:
            fut = self._slots.get(info.name)
            now = fut is None
            if fut is None:  # not prefetched (or still queued): fetch it here, now
                self._queued.pop(info.name, None)
                fut = Future()
                fut.set_running_or_notify_cancel()
                self._held += info.nbytes
                self._slots[info.name] = fut
        if now:
            try:
                fut.set_result(self._fetch(info))
            except BaseException as e:
                fut.set_exception(e)
                if not isinstance(e, Exception):
                    raise
        return _as_tensor(fut.result(), info)

    def release(self, name: str) -> None:
        """Drop the bytes of ``name`` (or cancel its fetch) and start queued fetches."""
        with self._lock:
            self._queued.pop(name, None)
            fut = self._slots.pop(name, None)
            if fut is not None:
                n = self.tensors[name].nbytes
                if fut.done() or fut.cancel():
                    self._held -= n
                else:  # running: its bytes count until it ends
                    fut.add_done_callback(lambda _f, n=n: self._free(n))
            self._pump()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._queued.clear()
            for fut in self._slots.values():
                fut.cancel()
            self._slots.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(_hub_description(self._repo, self.requested_revision, "safetensors"))
        return d


class HubTorchCheckpoint(TorchCheckpoint):
    """A repository with only PyTorch pickles, downloaded whole to the Hugging Face cache
    and read with ``torch.load(weights_only=True)``."""

    kind = "hub"

    def __init__(self, spec: str, root: Path, files: list[Path], *, repo: _Repo, requested_revision: str) -> None:
        super().__init__(spec, root, files)
        self._repo = repo
        self.repo_id = repo.repo_id
        self.revision = repo.sha
        self.requested_revision = requested_revision

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(_hub_description(self._repo, self.requested_revision, "torch"))
        return d


def _hub_description(repo: _Repo, requested: str, fmt: str) -> dict[str, Any]:
    return {
        "repo_id": repo.repo_id,
        "requested_revision": requested,
        "endpoint": repo.endpoint,
        "format": fmt,
        "offline": repo.offline,
        "tensor_cache": None if repo.cache is None else str(repo.cache.root),
        "transfer": repo.stats.to_dict(),
    }


def _download(repo: _Repo, file: str, token: str | bool | None) -> Path:
    """A whole file into the Hugging Face cache (``.bin``-only repos); errors mapped."""
    from huggingface_hub import errors as hf
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    if repo.offline:
        return repo._offline_copy(file, f"{repo.where(file)}")
    cached = try_to_load_from_cache(repo.repo_id, file, cache_dir=repo._hf_cache(), revision=repo.sha)
    where = dict(repo_id=repo.repo_id, revision=repo.sha)
    try:
        path = Path(
            hf_hub_download(
                repo.repo_id, file, revision=repo.sha, cache_dir=repo._hf_cache(), token=token, endpoint=repo.endpoint
            )
        )
    except hf.GatedRepoError as e:
        raise GatedRepoError(f"Access to {repo.repo_id!r} was refused ({e}). {TOKEN_HELP}.", **where) from e
    except hf.RepositoryNotFoundError as e:
        raise RepoNotFoundError(f"{repo.repo_id!r} was not found ({e}).", **where) from e
    except hf.RevisionNotFoundError as e:
        raise RevisionNotFoundError(f"{repo.repo_id}@{repo.sha} was not found ({e}).", **where) from e
    except hf.OfflineModeIsEnabled as e:
        raise OfflineModeError(f"{repo.where(file)} is not cached and HF_HUB_OFFLINE is set ({e}).", **where) from e
    except hf.EntryNotFoundError as e:  # also LocalEntryNotFoundError: connection trouble
        cls = EntryNotFoundError if isinstance(e, hf.RemoteEntryNotFoundError) else HubConnectionError
        raise cls(f"Downloading {repo.where(file)} failed ({e}).", **where) from e
    except (hf.HfHubHTTPError, OSError) as e:
        raise HubConnectionError(f"Downloading {repo.where(file)} failed ({e}).", **where) from e
    if not isinstance(cached, str):
        repo.stats.add(bytes=path.stat().st_size)
    return path


def _open_torch(
    spec: str, repo: _Repo, layout: tuple[str, list[str]], requested: str, token: str | bool | None
) -> HubTorchCheckpoint:
    kind, names = layout
    if kind == "torch-index":
        index = _download(repo, names[0], token).read_bytes()
        names = sorted(set(_weight_map(index, names[0], repo.siblings).values()))
    warnings.warn(
        f"{repo.repo_id}@{repo.sha[:12]} has no safetensors weights, only PyTorch pickles ({', '.join(names)}): "
        "downloading them whole to the Hugging Face cache and reading them with torch.load(weights_only=True). "
        "With safetensors, deltascope would stream only the tensors it needs.",
        DeltascopeWarning,
        stacklevel=3,
    )
    paths = [_download(repo, n, token) for n in names]
    if "config.json" in repo.siblings:
        _download(repo, "config.json", token)
    root = paths[0].parents[len(PurePosixPath(names[0]).parts) - 1]  # the snapshot folder
    return HubTorchCheckpoint(spec, root, paths, repo=repo, requested_revision=requested)


def open_hub(
    spec: str,
    *,
    token: str | bool | None = None,
    endpoint: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_tensors: bool = False,
    hf_cache_dir: str | os.PathLike[str] | None = None,
    max_inflight: int = DEFAULT_MAX_INFLIGHT,
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
    retries: int = 5,
    backoff: float = 0.5,
    timeout: float = 30.0,
    offline: bool | None = None,
) -> Checkpoint:
    """Open a Hub checkpoint lazily: resolve the revision, read the headers.

    Args:
        spec: ``org/name``, ``org/name@rev`` or ``hf://org/name@rev``.
        token: Hub token; ``None`` uses huggingface_hub's resolution (``HF_TOKEN``, then the
            saved login of ``hf auth login``); ``False`` sends none.
        endpoint: Hub endpoint; default ``HF_ENDPOINT`` (read when huggingface_hub is imported)
            or https://huggingface.co.
        revision: branch, tag or sha, when the spec has no ``@rev`` (default ``main``).
        cache_dir: folder of the tensor cache; giving it turns the cache on.
        cache_tensors: keep fetched headers and tensors on disk (in ``cache_dir``, default
            ``$DELTASCOPE_CACHE/hub`` or ``~/.cache/deltascope/hub``) so a rerun fetches nothing.
        hf_cache_dir: the Hugging Face cache, for ``.bin``-only repos and offline reads
            (default: huggingface_hub's ``HF_HUB_CACHE``).
        max_inflight: range requests in flight at once.
        max_inflight_bytes: bytes fetched ahead and not yet released.
        retries: retries per request on 5xx, 429, timeouts, resets and short bodies.
        backoff: first wait between retries in seconds (doubles each time); a ``Retry-After``
            from the server is honoured instead.
        timeout: seconds for connecting and between received bytes.
        offline: only use cached data; default: ``HF_HUB_OFFLINE``.

    Returns:
        A :class:`HubCheckpoint` (kind ``"hub"``), or for a ``.bin``-only repo a
        :class:`HubTorchCheckpoint` read from the downloaded files.

    Raises:
        RepoNotFoundError, RevisionNotFoundError, EntryNotFoundError, GatedRepoError,
        HubConnectionError, OfflineModeError: see :mod:`deltascope.errors`.
        NoWeightsError: the repository holds no weight files (the message lists its files).
        CorruptCheckpointError, UnsafeCheckpointError: a bad header or index.

    Example:
        >>> ck = open_hub("Qwen/Qwen3-8B@main")  # doctest: +SKIP
        >>> ck.revision, ck.describe()["transfer"]["requests"]  # doctest: +SKIP
        ('b968826d9c46dd6066d109eabc6255188de91218', 7)
    """
    repo_id, rev = parse_hub_spec(spec)
    if revision is not None and rev is not None and revision != rev:
        raise ValueError(f"{spec!r} names revision {rev!r} but revision={revision!r} was also given; pass one.")
    rev = rev or revision or "main"
    if not _valid_revision(rev):
        raise RevisionNotFoundError(f"{rev!r} is not a valid revision (a branch, tag or commit sha).", repo_id=repo_id)
    if max_inflight < 1 or max_inflight_bytes < 1:
        raise ValueError("max_inflight and max_inflight_bytes must be at least 1.")
    from huggingface_hub import constants

    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    stats = TransferStats()
    http = HubHTTP(
        endpoint=endpoint,
        token=token,
        repo_id=repo_id,
        policy=RetryPolicy(retries=retries, backoff=backoff),
        timeout=timeout,
        stats=stats,
    )
    use_cache = cache_tensors or cache_dir is not None
    cache = TensorCache(cache_dir if cache_dir is not None else _default_cache_dir(), repo_id) if use_cache else None
    repo = _Repo(
        repo_id=repo_id,
        endpoint=endpoint,
        http=http,
        stats=stats,
        cache=cache,
        offline=_is_offline(offline),
        hf_cache_dir=None if hf_cache_dir is None else os.fspath(hf_cache_dir),
    )
    repo.resolve(rev)
    layout = choose_layout(repo.siblings, f"{repo_id}@{rev}")
    if layout[0].startswith("torch"):
        return _open_torch(spec, repo, layout, rev, token)
    return HubCheckpoint(
        spec,
        repo,
        requested_revision=rev,
        layout=layout,
        max_inflight=max_inflight,
        max_inflight_bytes=max_inflight_bytes,
    )
