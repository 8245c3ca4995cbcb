"""A Hugging Face Hub-compatible HTTP server on 127.0.0.1, for tests and benchmarks.

It serves model repositories from a temporary folder with the parts of the Hub protocol
that deltascope and huggingface_hub use (see DESIGN.md §3):

- ``GET /api/models/{repo}[/revision/{rev}]``: JSON with ``id``, ``sha``, ``siblings``.
- ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=true``: the file list with sizes,
  git blob ids and LFS info.
- ``HEAD/GET /{repo}/resolve/{rev}/{path}``: the file, with ``Range`` support (206 and
  ``Content-Range``; 416 outside the file), ``Accept-Ranges``, ``X-Repo-Commit``,
  ``ETag``; LFS files (``*.safetensors``, ``*.bin``...) also carry ``X-Linked-Etag``
  (sha256) and ``X-Linked-Size``.
- Errors: 404 with ``X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound``;
  a gated repo answers 401 (no token) or 403 (wrong token) with ``X-Error-Code: GatedRepo``.

Switchable behaviour for robustness tests:

- ``redirect_lfs = True``: LFS files answer 302 to a signed "CDN" URL on another host
  name (``localhost`` instead of ``127.0.0.1``: another origin, same socket), as the real
  Hub does. The CDN path needs no token.
- ``latency``: seconds slept before answering each request (concurrent requests overlap).
- :meth:`HubServer.inject` faults: ``status`` (e.g. 500, or 429 with ``Retry-After``),
  ``drop`` (headers, half the body, then the connection is closed), ``truncate`` (a
  consistent HTTP answer whose body is half the range asked for), ``slow`` (a delay before
  answering), each for the next ``times`` matching requests (``None``: forever).

Every request is logged (:attr:`HubServer.log`) with the bytes of body sent, so tests can
cross-check the client's accounting. Use as a context manager or call start/stop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".gguf")
_CHUNK = 1 << 20


@dataclass
class Blob:
    path: Path
    size: int
    sha256: str
    git_oid: str

    @property
    def lfs(self) -> bool:
        return self.path.name.endswith(LFS_SUFFIXES)


@dataclass
class Repo:
    repo_id: str
    commits: dict[str, dict[str, Blob]] = field(default_factory=dict)  # sha -> path -> blob
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> sha
    gated_token: str | None = None


@dataclass
class RequestInfo:
    """What a fault's ``match`` sees, and what the log records."""

    method: str
    host: str
    path: str
    range: tuple[int, int] | None = None  # [start, end) asked for
    repo: str | None = None
    file: str | None = None
    cdn: bool = False
    auth: str | None = None
    status: int = 0
    body_bytes: int = 0
    fault: str | None = None


@dataclass
class Fault:
    kind: str  # "status", "drop", "truncate", "slow"
    times: int | None = 1
    match: Callable[[RequestInfo], bool] | None = None
    status: int = 500
    retry_after: str | None = None
    error_code: str | None = None
    delay: float = 0.0
    hits: int = 0


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _parse_range(value: str | None, size: int) -> tuple[int, int] | str | None:
    """[start, end) from ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n``; "bad" when unsatisfiable."""
    if not value:
        return None
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", value)
    if not m or (not m.group(1) and not m.group(2)):
        return None  # not a form we know: ignore it, as HTTP allows
    if not m.group(1):
        n = int(m.group(2))
        return (max(0, size - n), size) if n else "bad"
    start = int(m.group(1))
    end = min(size, int(m.group(2)) + 1) if m.group(2) else size
    if start >= size or end <= start:
        return "bad"
    return start, end


class HubServer:
    """See the module docstring.

    Args:
        root: folder where committed files are stored (a private copy per commit).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.repos: dict[str, Repo] = {}
        self.redirect_lfs = False
        self.api_siblings = True  # False: the revision API omits the file list (clients use /tree)
        self.latency = 0.0
        self.faults: list[Fault] = []
        self.log: list[RequestInfo] = []
        self.max_concurrency = 0
        self._active = 0
        self._lock = threading.Lock()
        self._cdn_keys: dict[str, Blob] = {}
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._n = 0

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> HubServer:
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True, name="hubserver")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cdn(self) -> str:
        return f"http://localhost:{self.port}"

    # -- content ------------------------------------------------------------------------
    def commit(
        self,
        repo_id: str,
        files: Path | dict[str, bytes | Path],
        *,
        branch: str = "main",
        gated_token: str | None = None,
    ) -> str:
        """Commit ``files`` (a folder, or path -> bytes/file) as the new head of ``branch``.

        Returns the commit sha (40 hex digits, derived from the content and the parent).
        """
        if isinstance(files, Path):
            items: dict[str, bytes | Path] = {
                p.relative_to(files).as_posix(): p for p in sorted(files.rglob("*")) if p.is_file()
            }
        else:
            items = dict(files)
        repo = self.repos.setdefault(repo_id, Repo(repo_id))
        if gated_token is not None:
            repo.gated_token = gated_token
        parent = repo.refs.get(branch, "")
        with self._lock:
            self._n += 1
            n = self._n
        snap: dict[str, Blob] = {}
        folder = self.root / f"c{n}"
        for rel, src in items.items():
            data = src.read_bytes() if isinstance(src, Path) else bytes(src)
            dst = folder / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, Path):
                shutil.copyfile(src, dst)
            else:
                dst.write_bytes(data)
            snap[rel] = Blob(dst, len(data), hashlib.sha256(data).hexdigest(), _git_oid(data))
        digest = hashlib.sha1(json.dumps([repo_id, parent, n, {k: b.sha256 for k, b in snap.items()}]).encode())
        sha = digest.hexdigest()
        repo.commits[sha] = snap
        repo.refs[branch] = sha
        return sha

    def tag(self, repo_id: str, name: str, sha: str) -> None:
        self.repos[repo_id].refs[name] = sha

    # -- faults and log -----------------------------------------------------------------
    def inject(
        self, kind: str, *, times: int | None = 1, match: Callable[[RequestInfo], bool] | None = None, **kw: Any
    ) -> Fault:
        """Add a fault (see the module docstring); ``match`` picks the requests it hits."""
        f = Fault(kind, times, match, **kw)
        with self._lock:
            self.faults.append(f)
        return f

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def reset_log(self) -> None:
        with self._lock:
            self.log.clear()
            self.max_concurrency = 0

    def records(self, pred: Callable[[RequestInfo], bool] | None = None) -> list[RequestInfo]:
        with self._lock:
            return [r for r in self.log if pred is None or pred(r)]

    def bytes_served(self, pred: Callable[[RequestInfo], bool] | None = None) -> int:
        return sum(r.body_bytes for r in self.records(pred))

    def _take_fault(self, info: RequestInfo) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if (f.times is None or f.hits < f.times) and (f.match is None or f.match(info)):
                    f.hits += 1
                    return f
        return None

    # -- routing ------------------------------------------------------------------------
    def _resolve_rev(self, repo: Repo, rev: str) -> str | None:
        if rev in repo.refs:
            return repo.refs[rev]
        return rev if rev in repo.commits else None

    def handle(self, h: _Handler, method: str) -> None:
        url = urlsplit(h.path)
        info = RequestInfo(method, h.headers.get("Host", ""), url.path, auth=h.headers.get("Authorization"))
        with self._lock:
            # Logged on arrival, and bytes counted before they are written, so that a client
            # that has its answer always finds it in the log.
            self.log.append(info)
            self._active += 1
            self.max_concurrency = max(self.max_concurrency, self._active)
        try:
            if self.latency:
                time.sleep(self.latency)
            self._route(h, method, url.path, parse_qs(url.query), info)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True
        finally:
            with self._lock:
                self._active -= 1

    def _route(self, h: _Handler, method: str, path: str, query: dict[str, list[str]], info: RequestInfo) -> None:
        m = re.fullmatch(r"/cdn/([0-9a-f]+)/[0-9a-f]+", path)
        if m:
            info.cdn = True
            blob = self._cdn_keys.get(m.group(1))
            if blob is None:
                return self._error(h, info, 403, None, "Invalid or expired signature")
            return self._serve_blob(h, method, blob, info, {})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/(revision|tree)/(.+))?", path)
        if m:
            return self._api(h, method, m.group(1), m.group(2), unquote(m.group(3) or "main"), query, info)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            return self._resolve(h, method, m.group(1), unquote(m.group(2)), unquote(m.group(3)), info)
        return self._error(h, info, 404, None, "Not found")

    def _api(
        self,
        h: _Handler,
        method: str,
        repo_id: str,
        kind: str | None,
        rev: str,
        query: dict[str, list[str]],
        info: RequestInfo,
    ) -> None:
        info.repo = repo_id
        repo = self.repos.get(repo_id)
        if repo is None:
            return self._error(h, info, 404, "RepoNotFound", "Repository not found")
        if kind == "tree":
            rev, _, sub = rev.partition("/")
        sha = self._resolve_rev(repo, rev)
        if sha is None:
            return self._error(h, info, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
        files = repo.commits[sha]
        if kind == "tree":
            sub = sub.strip("/")
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            entries = []
            for p, b in sorted(files.items()):
                if sub and not p.startswith(sub + "/"):
                    continue
                rest = p[len(sub) + 1 :] if sub else p
                if not recursive and "/" in rest:
                    continue
                e: dict[str, Any] = {"type": "file", "oid": b.git_oid, "size": b.size, "path": p}
                if b.lfs:
                    e["lfs"] = {"oid": b.sha256, "size": b.size, "pointerSize": 134}
                entries.append(e)
            return self._json(h, info, entries)
        body = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "sha": sha,
            "private": False,
            "gated": "manual" if repo.gated_token else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "lastModified": "2025-01-01T00:00:00.000Z",
            "createdAt": "2025-01-01T00:00:00.000Z",
        }
        if self.api_siblings:
            body["siblings"] = [{"rfilename": p} for p in sorted(files)]
        return self._json(h, info, body)

    def _resolve(self, h: _Handler, method: str, repo_id: str, rev: str, file: str, info: RequestInfo) -> None:
        info.repo, info.file = repo_id, file
        repo = self.repos.get(repo_id)
        if repo is None:
            return self._error(h, info, 404, "RepoNotFound", "Repository not found")
        sha = self._resolve_rev(repo, rev)
        if sha is None:
            return self._error(h, info, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
        if repo.gated_token is not None and info.auth != f"Bearer {repo.gated_token}":
            code = 401 if info.auth is None else 403
            msg = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
            return self._error(h, info, code, "GatedRepo", msg)
        blob = repo.commits[sha].get(file)
        if blob is None:
            return self._error(h, info, 404, "EntryNotFound", f"{file} does not exist on {rev}", commit=sha)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{blob.git_oid}"'}
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
        if blob.lfs and self.redirect_lfs:
            key = secrets.token_hex(8)
            with self._lock:
                self._cdn_keys[key] = blob
            rng = _parse_range(h.headers.get("Range"), blob.size)
            info.range = rng if isinstance(rng, tuple) else None
            fault = self._take_fault(info)
            if fault is not None:
                return self._fault(h, method, blob, info, fault, headers)
            headers["Location"] = f"{self.cdn}/cdn/{key}/{blob.sha256}"
            return self._send(h, info, 302, headers, b"", method)
        return self._serve_blob(h, method, blob, info, headers)

    # -- answers ------------------------------------------------------------------------
    def _serve_blob(self, h: _Handler, method: str, blob: Blob, info: RequestInfo, headers: dict[str, str]) -> None:
        rng = _parse_range(h.headers.get("Range"), blob.size)
        info.range = rng if isinstance(rng, tuple) else None
        fault = self._take_fault(info)
        if fault is not None:
            return self._fault(h, method, blob, info, fault, headers)
        headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if rng == "bad":
            headers["Content-Range"] = f"bytes */{blob.size}"
            return self._send(h, info, 416, headers, b"", method)
        if isinstance(rng, tuple):
            start, end = rng
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.size}"
            return self._send_file(h, info, 206, headers, blob, start, end, method)
        return self._send_file(h, info, 200, headers, blob, 0, blob.size, method)

    def _fault(
        self, h: _Handler, method: str, blob: Blob, info: RequestInfo, f: Fault, headers: dict[str, str]
    ) -> None:
        info.fault = f.kind
        start, end = info.range or (0, blob.size)
        if f.kind == "slow":
            time.sleep(f.delay)
            info.fault = None
            f_headers = {**headers, "Accept-Ranges": "bytes"}
            if info.range:
                f_headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.size}"
            return self._send_file(h, info, 206 if info.range else 200, f_headers, blob, start, end, method)
        if f.kind == "status":
            extra = {"Retry-After": f.retry_after} if f.retry_after else {}
            return self._error(h, info, f.status, f.error_code, f"injected HTTP {f.status}", **extra)
        half = start + (end - start) // 2
        headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if info.range:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.size}"
        status = 206 if info.range else 200
        if f.kind == "truncate":  # a well-formed answer whose body is short
            return self._send_file(h, info, status, headers, blob, start, half, method)
        if f.kind == "drop":  # announce the whole span, send half, hang up
            h.send_response(status)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(end - start))
            h.end_headers()
            info.status = status
            if method != "HEAD":
                with open(blob.path, "rb") as fh:
                    fh.seek(start)
                    data = fh.read(half - start)
                info.body_bytes = len(data)
                h.wfile.write(data)
            h.wfile.flush()
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return None
        raise ValueError(f"unknown fault {f.kind!r}")

    def _error(self, h: _Handler, info: RequestInfo, status: int, code: str | None, message: str, **extra: str) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message, **extra}
        if code:
            headers["X-Error-Code"] = code
        self._send(h, info, status, headers, json.dumps({"error": message}).encode(), h.command)

    def _json(self, h: _Handler, info: RequestInfo, obj: Any) -> None:
        self._send(h, info, 200, {"Content-Type": "application/json"}, json.dumps(obj).encode(), h.command)

    def _send(
        self, h: _Handler, info: RequestInfo, status: int, headers: dict[str, str], body: bytes, method: str
    ) -> None:
        info.status = status
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if method != "HEAD" and body:
            info.body_bytes = len(body)
            h.wfile.write(body)

    def _send_file(
        self,
        h: _Handler,
        info: RequestInfo,
        status: int,
        headers: dict[str, str],
        blob: Blob,
        start: int,
        end: int,
        method: str,
    ) -> None:
        info.status = status
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(end - start))
        h.end_headers()
        if method == "HEAD":
            return
        with open(blob.path, "rb") as fh:
            fh.seek(start)
            left = end - start
            while left:
                data = fh.read(min(_CHUNK, left))
                if not data:
                    break
                info.body_bytes += len(data)
                h.wfile.write(data)
                left -= len(data)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm
    # and the client's delayed ACK add ~40 ms to every keep-alive answer.
    disable_nagle_algorithm = True
    server_hub: HubServer

    def do_GET(self) -> None:
        self.server_hub.handle(self, "GET")

    def do_HEAD(self) -> None:
        self.server_hub.handle(self, "HEAD")

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def date_time_string(self, timestamp: float | None = None) -> str:
        return formatdate(timestamp, usegmt=True)


def http_date(seconds_from_now: float) -> str:
    """An HTTP date ``seconds_from_now`` in the future (for ``Retry-After``)."""
    return formatdate(time.time() + seconds_from_now, usegmt=True)


__all__ = ["HubServer", "RequestInfo", "Fault", "http_date"]
