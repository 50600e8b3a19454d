"""A small HTTP/1.1 client for the gateway's hot path: keep-alive JSON POSTs to plain ``http://`` servers.

Why not aiohttp here: on this path (every model call, ``/verify``, every tool call) aiohttp's request and
response machinery was ~40% of the gateway's CPU per rollout, for features these calls never use (redirects,
proxies, cookie jars, multipart, tracing, streaming bodies). This client does one thing: write a request with a
JSON body on a pooled connection and read one whole answer, parsed by ``httptools`` (llhttp, the parser
uvicorn uses). ``https://`` URLs keep going through aiohttp (see ``_http.HttpClient``).

What it handles: Content-Length, chunked and close-delimited bodies; ``user:password@`` in the URL (Basic auth);
``gzip``/``deflate`` bodies (it asks for none, but a server may send them); ``Connection: close``; IPv6
literals; servers that drop idle connections.

Limits (``H1Client(max_body_bytes=…, keepalive_expiry_s=…)``, from the gateway config's ``http`` section):
- a body (after decompression) over ``max_body_bytes`` fails at once with ``H1TooLarge``, never buffered whole;
- an idle connection is reused only within its expiry: the server's ``Keep-Alive: timeout=N`` less a margin
  (``N - min(1, N/2)`` s), else ``keepalive_expiry_s`` (default ``IDLE_S``, below the 5 s keep-alive of uvicorn —
  and so vLLM and SGLang), so a request is not written into a socket the server is closing;
- should a *reused* connection still turn out closed before any byte of an answer (the server's close crossed
  our request: EOF or reset, nothing received), the request is sent once more on a fresh connection, as
  browsers and urllib3 do; never when any byte of an answer came back, never a second time.

Errors are ``H1Error`` with ``sent``: False only when the request provably never left (the connection could not
be made), so a caller knows whether a non-idempotent call may be resent.

    client = H1Client(max_body_bytes=256 * 2**20)
    status, headers, cookies, body = await client.post("http://127.0.0.1:8000/verify", b"{}", {}, timeout_s=30)
    await client.close()
"""

from __future__ import annotations

import asyncio
import base64
import http.cookies
import re
import time
import zlib
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote, urlsplit

import httptools

__all__ = ["IDLE_S", "MAX_BODY_BYTES", "H1Client", "H1Error", "H1Timeout", "H1TooLarge", "H1Unsendable"]

# Idle connections older than this are closed instead of reused: below the common 5 s server keep-alive.
IDLE_S = 4.0
# The default cap on one answer's body.
MAX_BODY_BYTES = 256 * 2**20
_KEEP_ALIVE_TIMEOUT = re.compile(rb"(?:^|[,;\s])timeout\s*=\s*\"?(\d+(?:\.\d+)?)", re.IGNORECASE)
_URL_CACHE_MAX = 4096


class H1Error(Exception):
    """No answer: ``sent`` is False when the request provably never reached the server."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class H1Timeout(H1Error):
    """No complete answer within the request's time limit."""


class H1TooLarge(H1Error):
    """The answer's body is over the client's ``max_body_bytes``: a property of the answer, not worth a retry."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message, sent=True)
        self.status = status


class _Stale(H1Error):
    """A connection closed with no byte of an answer: on a reused one, the request is sent once more."""


def _too_large(status: int, limit: int, what: str = "body") -> H1TooLarge:
    return H1TooLarge(f"HTTP {status}: the answer's {what} is over the {limit}-byte limit (http.max_response_bytes)",
                      status=status)


def _keep_alive_s(value: bytes) -> float | None:
    """How long an idle connection may be reused, from a ``Keep-Alive: timeout=N`` header (less a margin)."""
    m = _KEEP_ALIVE_TIMEOUT.search(value)
    if m is None:
        return None
    n = float(m.group(1))
    return max(0.0, n - min(1.0, n / 2))


class H1Unsendable(H1Error):
    """The request itself cannot be written (not an http:// URL, a header with a line break): never sent."""

    def __init__(self, message: str) -> None:
        super().__init__(message, sent=False)


@dataclass(frozen=True, slots=True)
class _Target:
    """A URL taken apart once: where to connect, and the request line's start."""

    key: tuple[str, int]
    host: str
    port: int
    head: bytes  # b"POST /path HTTP/1.1\r\nHost: h:p\r\n..."
    basic: str | None  # "Basic …" from user:password in the URL, sent unless the caller sets Authorization


def _target(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise H1Unsendable(f"not a plain http:// URL: {url!r}")
    host = parts.hostname
    port = parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc = f"{netloc}:{port}"
    head = (f"POST {path} HTTP/1.1\r\nHost: {netloc}\r\nUser-Agent: rollgate-gateway\r\n"
            "Content-Type: application/json\r\n").encode("latin-1")
    basic = None
    if parts.username is not None:
        secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        basic = "Basic " + base64.b64encode(secret).decode("ascii")
    return _Target((host, port), host, port, head, basic)


def _header_block(headers: dict[str, str]) -> bytes:
    lines = []
    for name, value in headers.items():
        # A value with a line break would split the request (a token file's trailing newline, say).
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise H1Unsendable(f"header {name!r} contains a line break; not sent")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")


class _Connection(asyncio.Protocol):
    """One keep-alive connection: at most one request at a time; ``httptools`` calls the ``on_*`` methods."""

    def __init__(self, pool: dict[_Connection, None], max_body: int) -> None:
        self._pool = pool
        self._max_body = max_body
        self._body_size = 0
        self.answered = 0  # answers read on this connection: above 0, a reuse
        self.keep_alive_s: float | None = None  # the server's own idle timeout, less a margin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] | None = None
        self.closed = False
        self.idle_since = 0.0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._status = 0
        self._length_known = False
        self._received = False

    # -- asyncio.Protocol ------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have the same methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            # Bytes nobody asked for on an idle connection: whatever they are, this connection is out of step.
            self.abort()
            return
        self._received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(H1Error(f"the server's answer is not valid HTTP/1.1: {exc}", sent=True))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.pop(self, None)
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self._status and not self._length_known:
            # A body delimited by the end of the connection: complete now.
            self._complete()
            return
        what = "in the middle of its answer" if self._received else "before answering"
        reason = f" ({type(exc).__name__}: {exc})" if exc else ""
        error = H1Error if self._received else _Stale
        waiter.set_exception(error(f"the server closed the connection {what}{reason}", sent=True))

    # -- httptools callbacks ---------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.waiter is None:
            # A second answer right behind the first, in the same bytes: out of step, never reused.
            self.abort()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()
        self._length_known = False
        for name, value in self._headers:
            name = name.lower()
            if name == b"transfer-encoding":
                self._length_known = True
            elif name == b"content-length":
                self._length_known = True
                if value.strip().isdigit() and int(value) > self._max_body and self.waiter is not None:
                    self._fail(_too_large(self._status, self._max_body))
            elif name == b"keep-alive":
                self.keep_alive_s = _keep_alive_s(value)

    def on_body(self, body: bytes) -> None:
        if self.waiter is None:
            return  # given up (too large, or nobody asked): the connection is being closed
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._fail(_too_large(self._status, self._max_body))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete()

    # -- the client's side -----------------------------------------------------------------------------------
    def _complete(self) -> None:
        if 100 <= self._status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows on the same connection.
            self._headers, self._body, self._status = [], [], 0
            return
        waiter, self.waiter = self.waiter, None
        result = (self._status, self._headers, b"".join(self._body))
        self._headers, self._body, self._status, self._received, self._body_size = [], [], 0, False, 0
        self.answered += 1
        if waiter is None or waiter.done():
            # An answer nobody asked for (or one for a request already given up): the connection is unusable.
            self.abort()
            return
        if not self.parser.should_keep_alive():
            self.abort()
        waiter.set_result(result)

    def _fail(self, exc: H1Error) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.abort()

    def abort(self) -> None:
        self.closed = True
        self._pool.pop(self, None)
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes) -> asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]]:
        assert self.transport is not None and self.waiter is None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter


def _decompress(status: int, encoding: str, body: bytes, limit: int) -> bytes:
    """A gzip/deflate body, inflated to at most ``limit`` bytes (a small body can inflate a thousandfold)."""
    inflater = zlib.decompressobj(wbits=47 if encoding != "deflate" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
        if len(out) > limit or inflater.unconsumed_tail:
            raise _too_large(status, limit, f"{encoding}-decoded body")
        out += inflater.flush()
    except zlib.error as exc:
        raise H1Error(f"HTTP {status}: a {encoding} body that does not decompress: {exc}", sent=True) from None
    if not inflater.eof:
        raise H1Error(f"HTTP {status}: a {encoding} body that does not decompress: incomplete stream", sent=True)
    return out


def _decode(status: int, raw: list[tuple[bytes, bytes]], body: bytes, limit: int = MAX_BODY_BYTES,
            ) -> tuple[dict[str, str], dict[str, str], bytes]:
    headers: dict[str, str] = {}
    cookies: dict[str, str] = {}
    for name_b, value_b in raw:
        name, value = name_b.decode("latin-1").lower(), value_b.decode("latin-1")
        if name == "set-cookie":
            jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
            try:
                jar.load(value)
            except http.cookies.CookieError:
                continue  # a cookie we cannot read is one the next request cannot send back either
            cookies.update({key: morsel.value for key, morsel in jar.items()})
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate") and body:
        body = _decompress(status, encoding, body, limit)
    elif encoding not in ("identity", ""):
        raise H1Error(f"HTTP {status}: unsupported Content-Encoding {encoding!r}", sent=True)
    return headers, cookies, body


class H1Client:
    """Pooled keep-alive connections per (host, port), unlimited in number, reused most-recent first.

    ``max_body_bytes``: the cap on one answer's body; ``keepalive_expiry_s``: how long an idle connection is
    reused when the server does not say (``None``: ``IDLE_S``).
    """

    def __init__(self, *, max_body_bytes: int = MAX_BODY_BYTES, keepalive_expiry_s: float | None = None) -> None:
        self.max_body_bytes = max_body_bytes
        self.keepalive_expiry_s = keepalive_expiry_s
        self._idle: dict[tuple[str, int], dict[_Connection, None]] = {}
        self._targets: dict[str, _Target] = {}
        self._closed = False

    def _parse(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            target = _target(url)
            if len(self._targets) >= _URL_CACHE_MAX:
                self._targets.clear()
            self._targets[url] = target
        return target

    async def _connection(self, target: _Target, *, fresh: bool = False) -> tuple[_Connection, dict[_Connection, None]]:
        pool = self._idle.setdefault(target.key, {})
        now = time.monotonic()
        default = self.keepalive_expiry_s if self.keepalive_expiry_s is not None else IDLE_S
        while pool and not fresh:
            conn, _ = pool.popitem()  # the most recently used: the warmest, least likely to be timed out
            expiry = conn.keep_alive_s if conn.keep_alive_s is not None else default
            if not conn.closed and now - conn.idle_since < expiry:
                return conn, pool
            conn.abort()
        loop = asyncio.get_running_loop()
        limit = self.max_body_bytes
        try:
            _, conn = await loop.create_connection(lambda: _Connection(pool, limit), target.host, target.port)
        except OSError as exc:
            raise H1Error(f"cannot connect to {target.host}:{target.port}: {exc.strerror or exc}", sent=False) from None
        return conn, pool

    async def post(self, url: str, body: bytes, headers: dict[str, str], *,
                   timeout_s: float) -> tuple[int, dict[str, str], dict[str, str], bytes]:
        """POST ``body`` (JSON); the status, headers (lower-case names), cookies set and the whole body."""
        if self._closed:
            raise H1Error("the HTTP client is closed", sent=False)
        target = self._parse(url)
        if target.basic is not None and not any(name.lower() == "authorization" for name in headers):
            headers = {**headers, "Authorization": target.basic}
        request = b"".join((target.head, _header_block(headers), b"Content-Length: %d\r\n\r\n" % len(body), body))
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(timeout_s):
                conn, pool = await self._connection(target)
                try:
                    status, raw, data = await conn.send(request)
                except _Stale:
                    if not conn.answered:
                        raise
                    # A reused connection the server had closed: once more on a new one (no answer byte came).
                    conn = None
                    conn, pool = await self._connection(target, fresh=True)
                    status, raw, data = await conn.send(request)
        except TimeoutError:
            if conn is not None:
                conn.abort()
            raise H1Timeout(f"no answer within {timeout_s:g}s", sent=conn is not None) from None
        except BaseException:
            # Cancelled (the rollout's deadline) or failed: the answer may still come; this socket is spent.
            if conn is not None:
                conn.abort()
            raise
        if not conn.closed:
            conn.idle_since = time.monotonic()
            pool[conn] = None
        decoded_headers, cookies, data = _decode(status, raw, data, self.max_body_bytes)
        return status, decoded_headers, cookies, data

    async def close(self) -> None:
        self._closed = True
        for pool in self._idle.values():
            for conn in list(pool):
                conn.abort()
        self._idle.clear()
