"""One JSON POST, over the gateway's shared HTTP client, with failures turned into ``RolloutFailure``.

Callers decide what a status means (a 404 is fine for ``/close_session``, a tool's 500 is the model's problem),
so ``post`` returns every HTTP answer and raises only when there is no answer: ``connection`` or ``timeout``.

``HttpClient`` sends plain ``http://`` URLs through the small keep-alive client in ``_http1_client`` (the hot
path: model servers and verifiers inside a cluster) and ``https://`` ones through aiohttp (TLS, e.g. a hosted
OpenAI endpoint). ``ROLLGATE_HTTP_CLIENT=aiohttp`` sends everything through aiohttp, should a server and
``_http1_client`` ever disagree. Both keep to the config's ``http`` limits (``HttpLimits``): an answer body over
``max_response_bytes`` fails its call with kind ``invalid_response`` (not retried: the same answer would come
again).
"""

from __future__ import annotations

import datetime
import email.utils
import os
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from rollgate.gateway._config import HttpLimits
from rollgate.gateway._http1_client import H1Client, H1Error, H1Timeout, H1TooLarge, H1Unsendable
from rollgate.gateway._metrics import safe_url
from rollgate.gateway.errors import RolloutFailure

__all__ = ["Answer", "HttpClient", "error_text", "parse_object", "raise_for_status", "retry_after_s"]

_JSON = {"Content-Type": "application/json"}


@dataclass(slots=True)
class Answer:
    """An HTTP answer, body unparsed."""

    url: str
    status: int
    headers: dict[str, str]
    body: bytes
    cookies: dict[str, str]
    parsed: dict[str, Any] | None = None
    """The body already parsed (one item of a ``/verify_batch`` answer); ``parse_object`` returns it."""


class HttpClient:
    """The gateway's one HTTP client (an async context manager): ``_http1_client`` for http://, aiohttp for https://."""

    def __init__(self, *, plain_via_aiohttp: bool | None = None, limits: HttpLimits | None = None) -> None:
        if plain_via_aiohttp is None:
            plain_via_aiohttp = os.environ.get("ROLLGATE_HTTP_CLIENT", "").strip().lower() == "aiohttp"
        self.limits = limits if limits is not None else HttpLimits()
        self._h1 = None if plain_via_aiohttp else H1Client(
            max_body_bytes=self.limits.max_response_bytes, keepalive_expiry_s=self.limits.keepalive_expiry_s)
        self._session: aiohttp.ClientSession | None = None

    def _aiohttp(self) -> aiohttp.ClientSession:
        if self._session is None:
            # limit=0: aiohttp's default of 100 connections would silently cap in-flight calls.
            # DummyCookieJar: cookies are per rollout (ResourcesSession), never shared through this session.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=self.limits.keepalive_expiry_s),
                cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def close(self) -> None:
        if self._h1 is not None:
            await self._h1.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def post(self, url: str, body: Any, *, error: type[RolloutFailure], timeout_s: float,
                   headers: dict[str, str] | None = None) -> Answer:
        """POST ``body`` as JSON; raise ``error`` (kind connection/timeout) when no answer comes back."""
        return await self.post_bytes(url, orjson.dumps(body), error=error, timeout_s=timeout_s, headers=headers)

    async def post_bytes(self, url: str, data: bytes, *, error: type[RolloutFailure], timeout_s: float,
                         headers: dict[str, str] | None = None) -> Answer:
        """``post`` with the JSON body already serialised."""
        # What messages and answers name: never a password from the URL (messages end up in rollout rows).
        shown = safe_url(url) if "@" in url else url
        if self._h1 is not None and url.startswith("http://"):
            try:
                status, hdrs, cookies, raw = await self._h1.post(url, data, headers or {}, timeout_s=timeout_s)
            except H1Unsendable as exc:
                raise error(f"POST {shown}: {exc}", kind="invalid_request", url=shown, reached=False) from None
            except H1Timeout:
                raise error(f"POST {shown}: no answer within {timeout_s:g}s", kind="timeout", url=shown) from None
            except H1TooLarge as exc:
                raise error(f"POST {shown}: {exc}", kind="invalid_response", http_status=exc.status,
                            url=shown) from None
            except H1Error as exc:
                raise error(f"POST {shown}: {exc}", kind="connection", url=shown, reached=exc.sent) from None
            return Answer(shown, status, hdrs, raw, cookies)
        return await self._post_aiohttp(url, shown, data, error=error, timeout_s=timeout_s, headers=headers)

    async def _post_aiohttp(self, url: str, shown: str, data: bytes, *, error: type[RolloutFailure],
                            timeout_s: float, headers: dict[str, str] | None) -> Answer:
        hdrs = {**_JSON, **headers} if headers else _JSON
        try:
            async with self._aiohttp().post(
                url, data=data, headers=hdrs, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                raw = await self._read_capped(resp, shown, error)
                # Most answers set no cookie; skip building the (http.cookies) jar for them.
                cookies = ({name: morsel.value for name, morsel in resp.cookies.items()}
                           if "Set-Cookie" in resp.headers else {})
                return Answer(shown, resp.status, {k.lower(): v for k, v in resp.headers.items()}, raw, cookies)
        except TimeoutError:
            # aiohttp's own timeouts; a cancellation from the rollout deadline is CancelledError and passes through.
            raise error(f"POST {shown}: no answer within {timeout_s:g}s", kind="timeout", url=shown) from None
        except aiohttp.ClientConnectorError as exc:
            # The connection was never made, so the request was never sent: even a non-idempotent call may be resent.
            raise error(f"POST {shown}: {type(exc).__name__}: {exc}", kind="connection", url=shown,
                        reached=False) from None
        except (aiohttp.ClientError, ValueError) as exc:  # ValueError: a header value aiohttp refuses to send
            raise error(f"POST {shown}: {type(exc).__name__}: {exc}", kind="connection", url=shown) from None

    async def _read_capped(self, resp: aiohttp.ClientResponse, shown: str, error: type[RolloutFailure]) -> bytes:
        """The (decompressed) body, failing as soon as it passes ``max_response_bytes``."""
        limit = self.limits.max_response_bytes
        if resp.content_length is not None and resp.content_length > limit and "Content-Encoding" not in resp.headers:
            raise _too_large_error(error, shown, resp.status, limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                raise _too_large_error(error, shown, resp.status, limit)
            chunks.append(chunk)
        return b"".join(chunks)


def _too_large_error(error: type[RolloutFailure], shown: str, status: int, limit: int) -> RolloutFailure:
    return error(f"POST {shown}: HTTP {status}: the answer's body is over the {limit}-byte limit "
                 "(http.max_response_bytes)", kind="invalid_response", http_status=status, url=shown)


def error_text(ans: Answer, limit: int = 500) -> str:
    """The most useful short text of an error answer: ``error.message`` when JSON, else the body's start."""
    try:
        data = orjson.loads(ans.body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        err = data.get("error", data.get("detail"))
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])[:limit]
        if isinstance(err, str):
            return err[:limit]
    return ans.body[:limit].decode("utf-8", "replace")


def parse_object(ans: Answer, error: type[RolloutFailure]) -> dict[str, Any]:
    """The answer's body as a JSON object, else ``error`` with kind ``invalid_response``."""
    if ans.parsed is not None:
        return ans.parsed
    try:
        data = orjson.loads(ans.body)
    except orjson.JSONDecodeError:
        snippet = ans.body[:200].decode("utf-8", "replace")
        raise error(
            f"POST {ans.url}: answer is not JSON: {snippet!r}",
            kind="invalid_response", http_status=ans.status, url=ans.url,
        ) from None
    if not isinstance(data, dict):
        raise error(
            f"POST {ans.url}: expected a JSON object, got {type(data).__name__}",
            kind="invalid_response", http_status=ans.status, url=ans.url,
        )
    return data


def retry_after_s(headers: dict[str, str]) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or None when absent or unreadable."""
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


def raise_for_status(ans: Answer, error: type[RolloutFailure]) -> None:
    """Raise ``error`` (kind http_error, with the status and any ``Retry-After``) for any status >= 400."""
    if ans.status >= 400:
        raise error(
            f"POST {ans.url}: HTTP {ans.status}: {error_text(ans)}",
            kind="http_error", http_status=ans.status, url=ans.url, retry_after=retry_after_s(ans.headers),
        )
