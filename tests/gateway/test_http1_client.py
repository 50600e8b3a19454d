"""The gateway's small HTTP/1.1 client against raw loopback servers that answer exactly as scripted.

Every case runs on asyncio's own loop and on uvloop (the gateway's loop in production): their transports differ.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvloop

import rollgate.gateway._http1_client as h1
from rollgate.gateway._config import GatewayConfig, parse_config
from rollgate.gateway._http import HttpClient, parse_object
from rollgate.gateway._http1_client import H1Client, H1Error, H1Timeout, H1TooLarge, H1Unsendable
from rollgate.gateway.errors import ConfigError, ModelError, RolloutFailure

# One request as the server read it: (request line and headers, body).
Request = tuple[bytes, bytes]
# A script answers one request on a connection: write to the stream, or close it, or hang.
Script = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]


def _run(coro_fn: Callable[[], Coroutine[Any, Any, None]], loop: str) -> None:
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(asyncio.wait_for(coro_fn(), 30))


class RawServer:
    """Counts connections and requests; ``script`` decides each answer."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[Request] = []
        self.url = ""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                await self.script((head, body), writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def raw_server(script: Script, host: str = "127.0.0.1") -> AsyncIterator[RawServer]:
    server = RawServer(script)
    srv = await asyncio.start_server(server._handle, host, 0)
    port = srv.sockets[0].getsockname()[1]
    server.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    try:
        yield server
    finally:
        srv.close()


def answer(body: bytes, *, status: str = "200 OK", extra: bytes = b"") -> Script:
    async def script(_req: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 " + status.encode() + b"\r\nContent-Length: %d\r\n" % len(body) + extra + b"\r\n"
                     + body)
        await writer.drain()
    return script


LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])


@LOOPS
def test_keep_alive_reuses_one_connection_and_sends_a_well_formed_request(loop: str) -> None:
    async def main() -> None:
        async with raw_server(answer(b'{"ok": true}', extra=b"X-Verifier-Version: v7\r\n")) as server:
            client = H1Client()
            for i in range(5):
                status, headers, cookies, body = await client.post(
                    f"{server.url}/verify?x=1", b'{"i": %d}' % i, {"Authorization": "Bearer t"}, timeout_s=5)
                assert (status, body, cookies) == (200, b'{"ok": true}', {})
                assert headers["x-verifier-version"] == "v7"
            await client.close()
        assert server.connections == 1
        head, body = server.requests[-1]
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /verify?x=1 HTTP/1.1"
        assert f"Host: {server.url.removeprefix('http://')}".encode() in lines
        assert b"Content-Type: application/json" in lines and b"Authorization: Bearer t" in lines
        assert body == b'{"i": 4}'
    _run(main, loop)


@LOOPS
def test_credentials_in_the_url_become_basic_auth_unless_the_caller_sets_its_own(loop: str) -> None:
    async def main() -> None:
        async with raw_server(answer(b"{}")) as server:
            client = H1Client()
            with_auth = server.url.replace("http://", "http://ann:p%40ss@")
            await client.post(f"{with_auth}/v1/x", b"{}", {}, timeout_s=5)
            await client.post(f"{with_auth}/v1/x", b"{}", {"Authorization": "Bearer t"}, timeout_s=5)
            await client.close()
        first, second = (head.split(b"\r\n") for head, _ in server.requests)
        assert b"Authorization: Basic YW5uOnBAc3M=" in first  # ann:p@ss
        assert b"Authorization: Bearer t" in second and not any(b"Basic" in line for line in second)
        assert all(b"ann" not in line for line in first[:2])  # never in the request line or Host
    _run(main, loop)


@LOOPS
def test_chunked_close_delimited_and_compressed_bodies_arrive_whole(loop: str) -> None:
    async def chunked(_req: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        await writer.drain()

    async def until_close(_req: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    async def main() -> None:
        client = H1Client()
        async with raw_server(chunked) as server:
            assert (await client.post(server.url, b"{}", {}, timeout_s=5))[3] == b"hello world"
            assert (await client.post(server.url, b"{}", {}, timeout_s=5))[3] == b"hello world"
            assert server.connections == 1
        async with raw_server(until_close) as server:
            assert (await client.post(server.url, b"{}", {}, timeout_s=5))[3] == b"all of it"
        for encoding, packed in (("gzip", gzip.compress(b'{"a": 1}')), ("deflate", zlib.compress(b'{"a": 1}'))):
            async with raw_server(answer(packed, extra=f"Content-Encoding: {encoding}\r\n".encode())) as server:
                assert (await client.post(server.url, b"{}", {}, timeout_s=5))[3] == b'{"a": 1}'
        async with raw_server(answer(b"x", extra=b"Content-Encoding: br\r\n")) as server:
            with pytest.raises(H1Error, match="unsupported Content-Encoding 'br'"):
                await client.post(server.url, b"{}", {}, timeout_s=5)
        await client.close()
    _run(main, loop)


@LOOPS
def test_bytes_on_an_idle_connection_retire_it(loop: str) -> None:
    async def chatty(_req: Request, writer: asyncio.StreamWriter) -> None:
        # The answer, then half of a second one nobody asked for.
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Le")
        await writer.drain()

    async def main() -> None:
        client = H1Client()
        async with raw_server(chatty) as server:
            for _ in range(3):
                assert (await client.post(server.url, b"{}", {}, timeout_s=5))[3] == b"ok"
                await asyncio.sleep(0.05)
            assert server.connections == 3  # each connection was dropped, never reused out of step
        await client.close()
    _run(main, loop)


@LOOPS
def test_an_interim_answer_is_skipped_for_the_real_one(loop: str) -> None:
    async def interim(_req: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                     b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\nreal")
        await writer.drain()

    async def main() -> None:
        client = H1Client()
        async with raw_server(interim) as server:
            for _ in range(2):
                status, headers, _, body = await client.post(server.url, b"{}", {}, timeout_s=5)
                assert (status, body, "link" in headers) == (201, b"real", False)
            assert server.connections == 1
        await client.close()
    _run(main, loop)


@LOOPS
def test_connection_close_and_a_server_dropping_idle_connections_cost_no_request(loop: str) -> None:
    async def close_each(_req: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()

    async def main() -> None:
        client = H1Client()
        async with raw_server(close_each) as server:
            for _ in range(3):
                assert (await client.post(server.url, b"{}", {}, timeout_s=5))[3] == b"ok"
            assert server.connections == 3
        # The server closes the idle connection (its keep-alive timeout): the next request opens a new one.
        drop_after_answer = answer(b"ok")

        async def answer_then_drop(req: Request, writer: asyncio.StreamWriter) -> None:
            await drop_after_answer(req, writer)
            await asyncio.sleep(0.05)
            writer.close()

        async with raw_server(answer_then_drop) as server:
            for _ in range(3):
                assert (await client.post(server.url, b"{}", {}, timeout_s=5))[3] == b"ok"
                await asyncio.sleep(0.2)
            assert server.connections == 3
        await client.close()
    _run(main, loop)


@LOOPS
def test_an_idle_connection_older_than_idle_s_is_not_reused(loop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h1, "IDLE_S", 0.1)

    async def main() -> None:
        client = H1Client()
        async with raw_server(answer(b"ok")) as server:
            await client.post(server.url, b"{}", {}, timeout_s=5)
            await client.post(server.url, b"{}", {}, timeout_s=5)
            assert server.connections == 1
            await asyncio.sleep(0.2)
            await client.post(server.url, b"{}", {}, timeout_s=5)
            assert server.connections == 2
        await client.close()
    _run(main, loop)


@LOOPS
def test_failures_say_whether_the_request_may_have_reached_the_server(loop: str) -> None:
    async def hang(_req: Request, _writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async def half(_req: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    async def garbage(_req: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()

    async def main() -> None:
        client = H1Client()
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(H1Error, match="cannot connect") as refused:
            await client.post(f"http://127.0.0.1:{port}/verify", b"{}", {}, timeout_s=5)
        assert refused.value.sent is False
        async with raw_server(hang) as server:
            with pytest.raises(H1Timeout) as timed_out:
                await client.post(server.url, b"{}", {}, timeout_s=0.2)
            assert timed_out.value.sent is True
        async with raw_server(half) as server:
            with pytest.raises(H1Error, match="closed the connection in the middle of its answer") as cut:
                await client.post(server.url, b"{}", {}, timeout_s=5)
            assert cut.value.sent is True
        async with raw_server(garbage) as server:
            with pytest.raises(H1Error, match="not valid HTTP/1.1"):
                await client.post(server.url, b"{}", {}, timeout_s=5)
        with pytest.raises(H1Unsendable, match="line break"):
            await client.post("http://127.0.0.1:1/x", b"{}", {"Authorization": "Bearer abc\n"}, timeout_s=5)
        with pytest.raises(H1Unsendable, match="not a plain http:// URL"):
            await client.post("ftp://127.0.0.1/x", b"{}", {}, timeout_s=5)
        await client.close()
    _run(main, loop)


@LOOPS
def test_a_cancelled_request_never_hands_its_late_answer_to_the_next_one(loop: str) -> None:
    async def numbered(req: Request, writer: asyncio.StreamWriter) -> None:
        if req[1] == b"slow":
            await asyncio.sleep(0.3)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(req[1]), req[1]))
        await writer.drain()

    async def main() -> None:
        client = H1Client()
        async with raw_server(numbered) as server:
            slow = asyncio.create_task(client.post(server.url, b"slow", {}, timeout_s=5))
            await asyncio.sleep(0.1)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            for word in (b"one", b"two"):
                assert (await client.post(server.url, word, {}, timeout_s=5))[3] == word
        await client.close()
    _run(main, loop)


@LOOPS
def test_cookies_headers_and_ipv6(loop: str) -> None:
    async def cookies(_req: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nSet-Cookie: session=abc; Path=/; HttpOnly\r\nSet-Cookie: b=2\r\n"
                     b"X-A: 1\r\nX-A: 2\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()

    async def main() -> None:
        client = H1Client()
        async with raw_server(cookies) as server:
            _, headers, jar, _ = await client.post(server.url, b"{}", {}, timeout_s=5)
            assert jar == {"session": "abc", "b": "2"}
            assert headers["x-a"] == "1, 2"
        if socket.has_ipv6:
            try:
                async with raw_server(answer(b"six"), host="::1") as server:
                    assert (await client.post(server.url + "/v", b"{}", {}, timeout_s=5))[3] == b"six"
                    assert b"Host: [::1]:" in server.requests[0][0]
            except OSError:  # no ::1 on this machine's loopback
                pass
        await client.close()
    _run(main, loop)


@LOOPS
def test_http_client_gives_the_same_answer_through_h1_and_aiohttp(loop: str) -> None:
    async def main() -> None:
        async with raw_server(answer(b'{"reward": 1}', extra=b"Set-Cookie: s=1\r\nX-Rollgate-Session: none\r\n")) \
                as server:
            answers = []
            for via_aiohttp in (False, True):
                async with HttpClient(plain_via_aiohttp=via_aiohttp) as http:
                    answers.append(await http.post(server.url + "/verify", {"a": 1}, error=ModelError, timeout_s=5))
            ours, theirs = answers
            assert (ours.status, ours.body, ours.cookies) == (theirs.status, theirs.body, theirs.cookies)
            assert ours.headers["x-rollgate-session"] == theirs.headers["x-rollgate-session"] == "none"
            assert server.requests[0][1] == server.requests[1][1] == b'{"a":1}'
        async with raw_server(answer(b"not json")) as server, HttpClient() as http:
            secret_url = server.url.replace("http://", "http://ann:hunter2@") + "/v1/x"
            ans = await http.post(secret_url, {}, error=ModelError, timeout_s=5)
            with pytest.raises(RolloutFailure) as garbled:
                parse_object(ans, ModelError)
            assert "hunter2" not in garbled.value.message and "/v1/x" in garbled.value.message
        async with HttpClient() as http:
            with pytest.raises(RolloutFailure) as refused:
                await http.post("http://ann:hunter2@127.0.0.1:1/x", {}, error=ModelError, timeout_s=5)
            assert "hunter2" not in refused.value.message and "hunter2" not in refused.value.url
            with pytest.raises(RolloutFailure) as bad:
                await http.post("http://127.0.0.1:1/x", {}, error=ModelError, timeout_s=5,
                                headers={"Authorization": "Bearer x\r\n"})
            assert (bad.value.kind, bad.value.reached, bad.value.transient) == ("invalid_request", False, False)
    _run(main, loop)


# -- limits (issue 14): body cap, the server's keep-alive timeout, one resend on a stale reused connection --------

def _nth_on_connection() -> Callable[[asyncio.StreamWriter], int]:
    """How many requests each connection (by its writer) has carried, this one included."""
    seen: dict[int, int] = {}

    def count(writer: asyncio.StreamWriter) -> int:
        seen[id(writer)] = seen.get(id(writer), 0) + 1
        return seen[id(writer)]
    return count


@LOOPS
def test_a_reused_connection_closed_before_answering_is_resent_once_on_a_fresh_one(loop: str) -> None:
    nth = _nth_on_connection()

    async def close_on_second(req: Request, writer: asyncio.StreamWriter) -> None:
        # The server's idle close crossing our second request: it reads it and closes, no byte answered.
        if nth(writer) == 2:
            writer.close()
            return
        await answer(req[1])(req, writer)

    async def main() -> None:
        client = H1Client()
        async with raw_server(close_on_second) as server:
            assert (await client.post(server.url, b"one", {}, timeout_s=5))[3] == b"one"
            assert (await client.post(server.url, b"two", {}, timeout_s=5))[3] == b"two"
            assert server.connections == 2 and [b for _, b in server.requests] == [b"one", b"two", b"two"]
        await client.close()
    _run(main, loop)


@LOOPS
def test_no_resend_on_a_fresh_connection_nor_once_an_answer_began(loop: str) -> None:
    nth = _nth_on_connection()

    async def never(_req: Request, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def half_on_second(req: Request, writer: asyncio.StreamWriter) -> None:
        if nth(writer) == 2:
            writer.write(b"HTTP/1.1 200 OK\r\n")  # an answer began: the request was processed
            await writer.drain()
            writer.close()
            return
        await answer(b"ok")(req, writer)

    async def main() -> None:
        client = H1Client()
        async with raw_server(never) as server:
            with pytest.raises(H1Error, match="closed the connection before answering") as fresh:
                await client.post(server.url, b"{}", {}, timeout_s=5)
            assert fresh.value.sent is True and len(server.requests) == 1
        async with raw_server(half_on_second) as server:
            await client.post(server.url, b"{}", {}, timeout_s=5)
            with pytest.raises(H1Error, match="in the middle of its answer"):
                await client.post(server.url, b"{}", {}, timeout_s=5)
            assert len(server.requests) == 2
        await client.close()
    _run(main, loop)


@LOOPS
def test_the_servers_keep_alive_timeout_replaces_the_default_expiry(loop: str) -> None:
    async def main() -> None:
        # The server keeps idle connections 1 s (we reuse for 0.5 s), though our own default would be a minute.
        client = H1Client(keepalive_expiry_s=60)
        async with raw_server(answer(b"ok", extra=b"Keep-Alive: timeout=1, max=100\r\n")) as server:
            await client.post(server.url, b"{}", {}, timeout_s=5)
            await client.post(server.url, b"{}", {}, timeout_s=5)
            assert server.connections == 1
            await asyncio.sleep(0.7)
            await client.post(server.url, b"{}", {}, timeout_s=5)
            assert server.connections == 2
        await client.close()
        # And a server that keeps them a minute lets a connection idle past our 0.1 s default be reused.
        client = H1Client(keepalive_expiry_s=0.1)
        async with raw_server(answer(b"ok", extra=b"Keep-Alive: timeout=60\r\n")) as server:
            await client.post(server.url, b"{}", {}, timeout_s=5)
            await asyncio.sleep(0.3)
            await client.post(server.url, b"{}", {}, timeout_s=5)
            assert server.connections == 1
        async with raw_server(answer(b"ok")) as server:  # no header: the configured 0.1 s
            await client.post(server.url, b"{}", {}, timeout_s=5)
            await asyncio.sleep(0.3)
            await client.post(server.url, b"{}", {}, timeout_s=5)
            assert server.connections == 2
        await client.close()
    _run(main, loop)


@LOOPS
def test_a_body_over_the_cap_fails_at_once_and_the_client_goes_on(loop: str) -> None:
    big = b"x" * 5000

    async def chunked(_req: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(10):
            writer.write(b"1f4\r\n" + b"y" * 500 + b"\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def until_close(_req: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n" + big)
        await writer.drain()
        writer.close()

    async def main() -> None:
        client = H1Client(max_body_bytes=1000)
        cases = [answer(big), chunked, until_close, answer(gzip.compress(big), extra=b"Content-Encoding: gzip\r\n")]
        for script in cases:
            async with raw_server(script) as server:
                with pytest.raises(H1TooLarge, match="over the 1000-byte limit") as too_large:
                    await client.post(server.url, b"{}", {}, timeout_s=5)
                assert too_large.value.status == 200
        async with raw_server(answer(b"x" * 1000)) as server:  # at the cap: fine, and the client goes on
            for _ in range(2):
                assert len((await client.post(server.url, b"{}", {}, timeout_s=5))[3]) == 1000
        await client.close()
    _run(main, loop)


@LOOPS
def test_http_limits_from_the_config_reach_both_clients(loop: str) -> None:
    async def main() -> None:
        limits = GatewayConfig.model_validate(
            {"agents": {"a": {"model": {"base_urls": ["http://m/v1"], "name": "m"}, "verifier_url": "http://v"}},
             "http": {"max_response_bytes": 2048, "keepalive_expiry_s": 1.5}}).http
        async with raw_server(answer(b'{"a": "' + b"x" * 4000 + b'"}')) as server:
            for via_aiohttp in (False, True):
                async with HttpClient(plain_via_aiohttp=via_aiohttp, limits=limits) as http:
                    with pytest.raises(RolloutFailure, match="over the 2048-byte limit") as too_large:
                        await http.post(server.url + "/v1/x", {}, error=ModelError, timeout_s=5)
                    failure = too_large.value
                    assert (failure.kind, failure.http_status, failure.transient) == ("invalid_response", 200, False)
    _run(main, loop)


def test_http_limits_are_validated_with_the_key_named() -> None:
    agents = {"a": {"model": {"base_urls": ["http://m/v1"], "name": "m"}, "verifier_url": "http://v"}}
    assert parse_config({"agents": agents}).http.max_response_bytes == 256 * 2**20
    with pytest.raises(ConfigError, match="http.max_response_bytes"):
        parse_config({"agents": agents, "http": {"max_response_bytes": 10}})
    with pytest.raises(ConfigError, match="http.keepalive_s"):
        parse_config({"agents": agents, "http": {"keepalive_s": 3}})
