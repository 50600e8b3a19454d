"""Many rollouts' ``/verify`` calls in one ``POST /verify_batch`` to a rollgate verifier.

Only for rollouts that skipped the session (the verifier said ``X-Rollgate-Session: none``) and only for a verifier
that says ``X-Rollgate-Verify-Batch: N`` on its answers; a third-party server never sees this route. The calls
made during one event-loop iteration (the rollouts whose model answers arrived together) are sent together as
soon as that iteration ends: nothing waits for a batch to fill, so no rollout is delayed by batching, and a
call with nothing to batch with goes to plain ``/verify``.

Each rollout still gets its own ``Answer`` (status, ``X-Verifier-Version``, body) and runs its own retries: a
connection failure or timeout of the batch request fails each rollout's attempt (a copy of the failure each,
since retries annotate it), and its retry joins a later batch. A verifier that stops knowing the route (404,
405: a hot swap to another server behind the same URL) or refuses the size (413) gets the rollouts one by one
(``verify`` answers None: "send it alone").

    batches = VerifyBatches(http)
    answer = await batches.verify("http://verifier:8001", auth_headers, body, limit=1024, timeout_s=30)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson

from rollgate.gateway._http import Answer, HttpClient
from rollgate.gateway._metrics import GatewayMetrics
from rollgate.gateway.errors import RolloutFailure, VerifyError

__all__ = ["BATCH_HEADER", "MAX_BATCH_BYTES", "MAX_BATCH_ITEMS", "VerifyBatches"]

BATCH_HEADER = "x-rollgate-verify-batch"
# At most this many bodies or bytes per request, whatever the verifier takes: a batch is as big as the rollouts
# that finished together, and one request of a few MiB keeps a verifier's event loop responsive.
MAX_BATCH_ITEMS = 256
MAX_BATCH_BYTES = 4 * 1024 * 1024
_SEND_ALONE = frozenset({404, 405, 413})


@dataclass(slots=True)
class _Item:
    body: bytes
    future: asyncio.Future[Answer | None]
    timeout_s: float


@dataclass(slots=True)
class _Queue:
    """The calls waiting for the end of this loop iteration, for one verifier URL and credentials."""

    url: str
    headers: dict[str, str]
    limit: int
    items: list[_Item] = field(default_factory=list)


def _copy(exc: RolloutFailure) -> RolloutFailure:
    return VerifyError(exc.message, kind=exc.kind, http_status=exc.http_status, url=exc.url,
                       retry_after=exc.retry_after, reached=exc.reached)


def _chunks(items: list[_Item], limit: int) -> list[list[_Item]]:
    out: list[list[_Item]] = []
    chunk: list[_Item] = []
    size = 0
    for item in items:
        if chunk and (len(chunk) >= limit or size + len(item.body) > MAX_BATCH_BYTES):
            out.append(chunk)
            chunk, size = [], 0
        chunk.append(item)
        size += len(item.body)
    if chunk:
        out.append(chunk)
    return out


class VerifyBatches:
    """The gateway's batching of ``/verify``: one queue per verifier URL and credentials."""

    def __init__(self, http: HttpClient, metrics: GatewayMetrics | None = None) -> None:
        self._http = http
        self._metrics = metrics
        self._queues: dict[tuple[str, tuple[tuple[str, str], ...]], _Queue] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self.requests = 0
        self.items = 0

    async def aclose(self) -> None:
        """Cancel the batch requests still in flight (their rollouts are being cancelled too)."""
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)

    async def verify(self, base_url: str, headers: dict[str, str], body: dict[str, Any], *, limit: int,
                     timeout_s: float) -> Answer | None:
        """This rollout's ``/verify`` answer, sent in a batch; None when it must be sent alone instead."""
        key = (base_url, tuple(sorted(headers.items())))
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(f"{base_url}/verify_batch", headers, limit)
            # The task's first step runs on the next loop iteration: by then every call made in this one is queued.
            self._track(asyncio.get_running_loop().create_task(self._flush(key)))
        queue.limit = min(limit, MAX_BATCH_ITEMS)
        item = _Item(orjson.dumps(body), asyncio.get_running_loop().create_future(), timeout_s)
        queue.items.append(item)
        return await item.future

    def _track(self, task: asyncio.Task[None]) -> None:
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _flush(self, key: tuple[str, tuple[tuple[str, str], ...]]) -> None:
        queue = self._queues.pop(key)
        # A rollout cancelled while it waited here (its deadline) needs no score.
        waiting = [item for item in queue.items if not item.future.done()]
        chunks = _chunks(waiting, queue.limit)
        for chunk in chunks[1:]:  # rare: more than one request's worth finished together
            self._track(asyncio.get_running_loop().create_task(self._send(queue, chunk)))
        if chunks:
            await self._send(queue, chunks[0])

    async def _send(self, queue: _Queue, chunk: list[_Item]) -> None:
        self.requests += 1
        self.items += len(chunk)
        if self._metrics is not None:
            self._metrics.verify_batch_size.observe(len(chunk))
        alone = len(chunk) == 1  # nothing to batch with: the plain route, whose answer needs no unpacking
        url = queue.url.removesuffix("_batch") if alone else queue.url
        payload = chunk[0].body if alone else b'{"requests":[' + b",".join(item.body for item in chunk) + b"]}"
        try:
            ans = await self._http.post_bytes(url, payload, error=VerifyError,
                                              timeout_s=max(item.timeout_s for item in chunk),
                                              headers=queue.headers or None)
        except RolloutFailure as exc:
            for item in chunk:
                if not item.future.done():
                    item.future.set_exception(_copy(exc))
            return
        answers: list[Answer | None | RolloutFailure] = [ans] if alone else self._answers(ans, len(chunk))
        for item, answer in zip(chunk, answers, strict=True):
            if not item.future.done():  # a rollout cancelled meanwhile (its deadline) wants nothing
                if isinstance(answer, RolloutFailure):
                    item.future.set_exception(answer)
                else:
                    item.future.set_result(answer)

    @staticmethod
    def _answers(ans: Answer, n: int) -> list[Answer | None | RolloutFailure]:
        """One per item: its own answer, None (send it alone), or the failure to raise."""
        if ans.status in _SEND_ALONE:
            return [None] * n
        if ans.status >= 400:
            # The batch as a whole was refused (a 5xx, 429, 401...): each rollout sees that answer and its
            # retry policy decides, as for a refused /verify.
            return [ans] * n
        try:
            data = orjson.loads(ans.body)
            results = data["results"]
            if not isinstance(results, list) or len(results) != n:
                raise ValueError(f"{n} requests but {len(results) if isinstance(results, list) else 'no'} results")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return [VerifyError(f"POST {ans.url}: not a /verify_batch answer: {exc}", kind="invalid_response",
                                http_status=ans.status, url=ans.url) for _ in range(n)]
        url = ans.url.removesuffix("_batch")
        return [_item_answer(url, ans, result) for result in results]


def _item_answer(url: str, batch: Answer, result: Any) -> Answer | RolloutFailure:
    if not isinstance(result, dict) or not isinstance(result.get("status"), int):
        return VerifyError(f"POST {batch.url}: a result is not an object with a status: {str(result)[:200]}",
                           kind="invalid_response", http_status=batch.status, url=batch.url)
    headers = dict(batch.headers)
    if isinstance(result.get("version"), str):
        headers["x-verifier-version"] = result["version"]
    if isinstance(result.get("session"), str):
        headers["x-rollgate-session"] = result["session"]
    status: int = result["status"]
    if status < 400:
        fields = result.get("fields")
        if not isinstance(fields, dict):
            return VerifyError(f"POST {batch.url}: a result has no 'fields' object", kind="invalid_response",
                               http_status=batch.status, url=batch.url)
        return Answer(url, status, headers, b"", {}, parsed=fields)
    return Answer(url, status, headers, orjson.dumps({"error": result.get("error")}), {})
