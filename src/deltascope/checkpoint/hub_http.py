"""HTTP for the Hub source: range reads and small files, with retries, redirects, length
checks, accounting and errors mapped to :mod:`deltascope.errors`.

Requests go through huggingface_hub's configured session
(``huggingface_hub.utils.get_session()``: the user's client factory, proxies, CA bundle and
its offline-mode hook) with headers from ``build_hf_headers`` (user agent; the token as
huggingface_hub resolves it: ``token=``, ``HF_TOKEN``, the saved login).

Redirects are followed here, not by the session, so that every hop is counted and the
rules are explicit: the ``Range`` header is kept on every hop (the Hub answers large
files with a 302 to a CDN host), and ``Authorization`` is dropped as soon as a hop leaves
the endpoint's origin, so the token is never sent to another host.
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

from .._version import __version__
from ..errors import (
    EntryNotFoundError,
    GatedRepoError,
    HubConnectionError,
    HubError,
    OfflineModeError,
    RepoNotFoundError,
    RevisionNotFoundError,
)

__all__ = ["TransferStats", "RetryPolicy", "RangeResult", "HubHTTP", "parse_retry_after", "parse_content_range"]

T = TypeVar("T")

_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 10
#: Largest small file (index, config, API answer) read whole.
_MAX_SMALL_FILE_BYTES = 256 * 1024 * 1024
_ERROR_BODY_BYTES = 4096
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)

TOKEN_HELP = "pass token='hf_...', set HF_TOKEN, or run `hf auth login`"


@dataclass
class TransferStats:
    """What one Hub source cost, counted as it happens (thread-safe).

    Attributes:
        requests: HTTP requests sent (each redirect hop and each retry counts).
        bytes: response body bytes received, over all attempts.
        retries: attempts repeated after a retryable failure.
        redirects: redirect hops followed.
        cache_hits: spans and files served from the local tensor cache or HF cache.
        cache_bytes: bytes served from those caches.
        wait_s: seconds spent waiting before retries.

    Example:
        >>> s = TransferStats()
        >>> s.add(requests=2, bytes=10)
        >>> s.to_dict()["bytes"]
        10
    """

    requests: int = 0
    bytes: int = 0
    retries: int = 0
    redirects: int = 0
    cache_hits: int = 0
    cache_bytes: int = 0
    wait_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: float) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to retry.

    Attributes:
        retries: retries after the first attempt (0: fail at once).
        backoff: first wait in seconds; doubles on each retry, with up to 25 % jitter.
        max_backoff: cap on one wait.
        max_retry_after: a ``Retry-After`` longer than this fails at once instead of waiting.
    """

    retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 20.0
    max_retry_after: float = 300.0

    def delay(self, attempt: int) -> float:
        base = min(self.max_backoff, self.backoff * 2.0**attempt)
        return base * (1.0 + 0.25 * random.random())


@dataclass
class RangeResult:
    """One answered range read: the bytes, the whole file's size, and its ETag."""

    data: bytearray
    total: int | None
    etag: str | None


class _Retryable(Exception):
    """A failure worth another attempt (5xx, 429, short or mismatched body)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date.

    Example:
        >>> parse_retry_after("3")
        3.0
        >>> t0 = datetime(2015, 10, 21, 7, 28, 0, tzinfo=timezone.utc)
        >>> parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now=t0)
        5.0
        >>> parse_retry_after("soon") is None
        True
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``(first, last, total)`` from ``Content-Range: bytes first-last/total`` (total ``None``
    for ``*``), or ``None`` if absent or malformed.

    Example:
        >>> parse_content_range("bytes 8-15/100")
        (8, 15, 100)
    """
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def _etag(headers: Any) -> str | None:
    raw = headers.get("x-linked-etag") or headers.get("etag")
    if not raw:
        return None
    return raw.strip().removeprefix("W/").strip('"')


def _httpx_module(session: object) -> Any:
    """The httpx flavour huggingface_hub's session is built on (``httpx2`` or ``httpx``)."""
    try:
        import httpx2 as httpx  # huggingface_hub >= 2
    except ImportError:  # pragma: no cover - huggingface_hub 1.x
        import httpx  # type: ignore[no-redef]
    if not isinstance(session, httpx.Client):  # pragma: no cover - huggingface_hub < 1.0 (requests)
        raise HubError(
            f"huggingface_hub's session is a {type(session).__name__}, not an httpx client: this huggingface_hub "
            "is too old for deltascope's Hub source. Upgrade it: pip install -U 'huggingface_hub>=1.0'."
        )
    return httpx


class HubHTTP:
    """HTTP calls for one repository, counted in ``stats``.

    Args:
        endpoint: the Hub endpoint (``https://huggingface.co`` or a compatible server).
        token: ``None`` (huggingface_hub's resolution: ``HF_TOKEN``, saved login),
            ``False`` (send none) or a token string.
        repo_id: for messages and error attributes.
        policy: retry policy.
        timeout: seconds for connecting and between received bytes.
        stats: where requests and bytes are counted.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        token: str | bool | None,
        repo_id: str,
        policy: RetryPolicy,
        timeout: float,
        stats: TransferStats,
    ) -> None:
        from huggingface_hub.utils import build_hf_headers

        self.endpoint = endpoint
        self.repo_id = repo_id
        self.policy = policy
        self.timeout = timeout
        self.stats = stats
        self.headers = build_hf_headers(token=token, library_name="deltascope", library_version=__version__)
        # The real size on the wire: a compressed answer would defeat the length checks.
        self.headers["accept-encoding"] = "identity"
        self.sends_token = any(k.lower() == "authorization" for k in self.headers)
        self._origin = _origin(endpoint)

    # -- public calls -----------------------------------------------------------------
    def get_json(self, url: str, *, what: str, revision: str | None = None, file: str | None = None) -> Any:
        """GET a JSON document (an API answer or a small JSON file)."""
        body = self.get_file(url, what=what, revision=revision, file=file)
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise HubError(
                f"{what}: {url} did not answer valid JSON ({e}). Is {self.endpoint} a Hugging Face Hub endpoint?",
                repo_id=self.repo_id,
                revision=revision,
            ) from e

    def get_file(self, url: str, *, what: str, revision: str | None = None, file: str | None = None) -> bytes:
        """GET a whole small file; its length is checked against ``Content-Length``."""

        def handle(r: Any) -> bytes:
            n = _declared_length(r)
            if n is not None and n > _MAX_SMALL_FILE_BYTES:
                raise HubError(f"{what}: {url} is {n} bytes, more than the {_MAX_SMALL_FILE_BYTES} accepted.")
            buf = bytearray()
            for chunk in r.iter_bytes():
                self.stats.add(bytes=len(chunk))
                buf += chunk
                if len(buf) > _MAX_SMALL_FILE_BYTES:
                    raise HubError(f"{what}: {url} is larger than the {_MAX_SMALL_FILE_BYTES} bytes accepted.")
            if n is not None and len(buf) != n:
                raise _Retryable(f"truncated body: {len(buf)} of {n} bytes")
            return bytes(buf)

        return self._call("GET", url, handle, what=what, revision=revision, file=file)

    def get_range(
        self,
        url: str,
        start: int,
        end: int,
        *,
        what: str,
        revision: str | None,
        file: str,
        allow_short: bool = False,
    ) -> RangeResult:
        """GET bytes ``[start, end)`` of a file with one ``Range`` request (``end > start``).

        The answer must be a 206 whose ``Content-Range`` is exactly that span (or a 200 when
        the span is the whole file); the body must hold exactly that many bytes. A short,
        long or mismatched answer is retried. With ``allow_short``, a file that ends inside
        the span (``Content-Range: bytes start-(total-1)/total``) gives its last bytes.
        """
        if end <= start:
            raise ValueError(f"empty range {start}-{end}")
        first: dict[str, str] = {}

        def handle(r: Any) -> RangeResult:
            n = end - start
            total: int | None
            if r.status_code == 206:
                cr = parse_content_range(r.headers.get("content-range"))
                if allow_short and cr is not None and cr[0] == start and cr[2] is not None and cr[1] == cr[2] - 1:
                    n = min(n, cr[2] - start)  # the file ends inside the span
                if cr is None or cr[0] != start or cr[1] != start + n - 1:
                    said = r.headers.get("content-range")
                    raise _Retryable(f"answer's Content-Range {said!r} is not bytes {start}-{start + n - 1}")
                total = cr[2]
            elif r.status_code == 200 and start == 0 and _declared_length(r) == n:
                total = n  # the span is the whole file
            elif r.status_code == 200:
                raise HubError(
                    f"{what}: {url} ignored the Range header and answered with the whole file. deltascope reads "
                    "only the bytes it needs; the endpoint must support HTTP Range requests (the Hub does).",
                    repo_id=self.repo_id,
                    revision=revision,
                )
            else:
                raise HubError(f"{what}: unexpected HTTP {r.status_code} from {url}.", repo_id=self.repo_id)
            declared = _declared_length(r)
            if declared is not None and declared != n:
                raise _Retryable(f"Content-Length {declared} for a {n}-byte range (truncated answer)")
            data = bytearray(n)
            view = memoryview(data)
            got = 0
            try:
                for chunk in r.iter_bytes():
                    k = len(chunk)
                    self.stats.add(bytes=k)
                    if got + k > n:
                        raise _Retryable(f"body longer than the {n} bytes asked for")
                    view[got : got + k] = chunk
                    got += k
            finally:
                view.release()
            if got != n:
                raise _Retryable(f"truncated body: {got} of {n} bytes")
            if total is None:
                size = first.get("x-linked-size") or r.headers.get("x-linked-size")
                total = int(size) if size and size.isdigit() else None
            return RangeResult(data, total, _etag(first) or _etag(r.headers))

        return self._call(
            "GET",
            url,
            handle,
            what=what,
            revision=revision,
            file=file,
            extra_headers={"range": f"bytes={start}-{end - 1}"},
            first_headers=first,
        )

    # -- machinery --------------------------------------------------------------------
    def _call(
        self,
        method: str,
        url: str,
        handle: Callable[[Any], T],
        *,
        what: str,
        revision: str | None,
        file: str | None,
        extra_headers: dict[str, str] | None = None,
        first_headers: dict[str, str] | None = None,
    ) -> T:
        from huggingface_hub.errors import OfflineModeIsEnabled
        from huggingface_hub.utils import get_session

        attempt = 0
        while True:
            session = get_session()  # per attempt: huggingface_hub may have reset it
            httpx = _httpx_module(session)
            retry_after: float | None = None
            try:
                return self._once(session, method, url, handle, extra_headers, first_headers, revision, file, what)
            except _Retryable as e:
                reason, retry_after = str(e), e.retry_after
            except OfflineModeIsEnabled as e:
                raise OfflineModeError(
                    f"{what}: HF_HUB_OFFLINE is set, so {url} cannot be fetched and it is not cached. Unset "
                    "HF_HUB_OFFLINE, or run once online with cache_tensors=True.",
                    repo_id=self.repo_id,
                    revision=revision,
                ) from e
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as e:
                reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            except (httpx.HTTPError, httpx.InvalidURL) as e:  # a proxy, URL or protocol problem: no retry
                raise HubConnectionError(
                    f"{what}: request to {url} failed ({type(e).__name__}: {e}). Check the endpoint "
                    f"({self.endpoint}) and your proxy settings.",
                    repo_id=self.repo_id,
                    revision=revision,
                ) from e
            if attempt >= self.policy.retries:
                raise HubConnectionError(
                    f"{what}: gave up after {attempt + 1} attempts; last error: {reason}. The Hub ({self.endpoint}) "
                    "could not be reached or kept failing: check your connection and HF_ENDPOINT, or retry later "
                    "(retries= and timeout= raise the limits).",
                    repo_id=self.repo_id,
                    revision=revision,
                )
            wait = retry_after if retry_after is not None else self.policy.delay(attempt)
            if wait > self.policy.max_retry_after:
                raise HubConnectionError(
                    f"{what}: the server asks to retry after {wait:.0f} s ({reason}), more than "
                    f"{self.policy.max_retry_after:.0f} s: rate limited. Retry later.",
                    repo_id=self.repo_id,
                    revision=revision,
                )
            self.stats.add(retries=1, wait_s=wait)
            time.sleep(wait)
            attempt += 1

    def _once(
        self,
        session: Any,
        method: str,
        url: str,
        handle: Callable[[Any], T],
        extra_headers: dict[str, str] | None,
        first_headers: dict[str, str] | None,
        revision: str | None,
        file: str | None,
        what: str,
    ) -> T:
        headers = dict(self.headers)
        headers.update(extra_headers or {})
        current = url
        for hop in range(_MAX_REDIRECTS + 1):
            self.stats.add(requests=1)
            with session.stream(method, current, headers=headers, timeout=self.timeout, follow_redirects=False) as r:
                if hop == 0 and first_headers is not None:
                    first_headers.clear()
                    first_headers.update({k.lower(): v for k, v in r.headers.items()})
                code = r.status_code
                if code in _REDIRECT_CODES and r.headers.get("location"):
                    nxt = urljoin(current, r.headers["location"])
                    if _origin(nxt) != self._origin:
                        # Never send the token to another host (the CDN URL is signed).
                        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                    self.stats.add(redirects=1)
                    current = nxt
                    continue
                if code in (408, 429) or code >= 500:
                    hint = parse_retry_after(r.headers.get("retry-after"))
                    body = _error_body(r, self.stats)
                    raise _Retryable(f"HTTP {code} from {current}" + (f" ({body})" if body else ""), retry_after=hint)
                if code >= 400:
                    raise self._status_error(r, code, current, what=what, revision=revision, file=file)
                return handle(r)
        raise HubError(f"{what}: more than {_MAX_REDIRECTS} redirects from {url}.", repo_id=self.repo_id)

    def _status_error(
        self, r: Any, code: int, url: str, *, what: str, revision: str | None, file: str | None
    ) -> HubError:
        error_code = r.headers.get("x-error-code", "")
        message = r.headers.get("x-error-message") or _error_body(r, self.stats)
        detail = f" (server: {message})" if message else ""
        repo, rev = self.repo_id, revision
        if error_code == "RepoNotFound" or (code == 404 and not error_code and file is None):
            hint = f"If it is private, {TOKEN_HELP} with an account that can read it." if code == 401 else ""
            return RepoNotFoundError(
                f"Repository {repo!r} was not found at {self.endpoint} (HTTP {code} while {what}){detail}. "
                f"Check the id (org/name). {hint}".strip(),
                repo_id=repo,
                revision=rev,
            )
        if error_code == "RevisionNotFound":
            return RevisionNotFoundError(
                f"Revision {rev!r} does not exist in {repo!r} (HTTP {code} while {what}){detail}. Use a branch, "
                "a tag or a commit sha of that repository.",
                repo_id=repo,
                revision=rev,
            )
        if error_code == "EntryNotFound" or code == 404:
            return EntryNotFoundError(
                f"File {file!r} is not in {repo}@{rev} (HTTP {code} while {what}){detail}.",
                repo_id=repo,
                revision=rev,
            )
        if code in (401, 403):
            if self.sends_token:
                fix = (
                    "The token sent does not grant access: accept the model's terms on its Hub page with that "
                    f"account, or use a token of an account that has access ({TOKEN_HELP})."
                )
            else:
                fix = f"No token was sent: {TOKEN_HELP}."
            return GatedRepoError(
                f"Access to {repo!r} was refused (HTTP {code} while {what}){detail}: the repository is gated or "
                f"private. {fix}",
                repo_id=repo,
                revision=rev,
            )
        if code == 416:
            return HubError(
                f"{what}: {url} says the bytes asked for are outside the file (HTTP 416){detail}. The file does not "
                "match its header; the repository is corrupt at this commit.",
                repo_id=repo,
                revision=rev,
            )
        return HubError(f"{what}: HTTP {code} from {url}{detail}.", repo_id=repo, revision=rev)


def _declared_length(r: Any) -> int | None:
    """``Content-Length`` when it describes the decoded body (no content encoding)."""
    if r.headers.get("content-encoding", "identity").lower() not in ("", "identity"):
        return None
    value = r.headers.get("content-length")
    return int(value) if value and value.isdigit() else None


def _error_body(r: Any, stats: TransferStats) -> str:
    """The start of an error answer's body, for messages (``{"error": ...}`` on the Hub)."""
    buf = bytearray()
    try:
        for chunk in r.iter_bytes():
            stats.add(bytes=len(chunk))
            buf += chunk
            if len(buf) >= _ERROR_BODY_BYTES:
                break
    except Exception:  # the message is best effort; the status code says what failed
        pass
    text = bytes(buf[:_ERROR_BODY_BYTES]).decode("utf-8", "replace").strip()
    try:
        obj = json.loads(text)
        if isinstance(obj, dict) and isinstance(obj.get("error"), str):
            return obj["error"]
    except ValueError:
        pass
    return text[:300]
