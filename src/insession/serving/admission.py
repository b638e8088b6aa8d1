"""What the HTTP app checks before a request reaches the engine: load, body size and API keys.

``Admission`` is plain ASGI middleware, so it answers from the event loop without a worker
thread: a request that would exceed ``max_inflight`` is refused with 503 and ``Retry-After`` at
once, and a request body over ``max_body_bytes`` with 413 naming the limit, before anything is
parsed. Of those let in, :class:`Gate` lets ``max_concurrent`` run in the engine at once and
refuses one that could not start within ``max_queue_ms``, so the requests that are answered
stay within their budget however much more traffic arrives (benchmarks/overload.py measures it).

API keys are compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

from insession.config import Settings
from insession.errors import FieldError, Overloaded, Unauthorized
from insession.serving.metrics import ServiceMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths never shed: a load balancer must see the health of an overloaded server.
UNSHED = frozenset({"/healthz", "/metrics"})
ARRIVED = "insession.arrived"
RETRY_AFTER_S = 1


async def _answer(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    raw = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": raw})


class Admission:
    def __init__(self, app: ASGIApp, settings: Settings, metrics: ServiceMetrics) -> None:
        self.app = app
        self.max_body = settings.max_body_bytes
        self.max_inflight = settings.max_inflight
        self.metrics = metrics
        self.inflight = 0  # touched only on the event loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.max_inflight and scope["path"] not in UNSHED:
            self.metrics.refused.labels("inflight").inc()
            await _answer(
                send,
                503,
                {"error": f"overloaded: {self.inflight} requests in flight (max_inflight = {self.max_inflight})"},
                {"Retry-After": str(RETRY_AFTER_S)},
            )
            return
        arrived = scope[ARRIVED] = time.perf_counter()
        self.inflight += 1
        self.metrics.inflight.set(self.inflight)
        try:
            body = await self._body(scope, receive, send)
            if body is None:
                return
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()  # a disconnect, while the response is written

            async def timed(message: Message) -> None:
                if message["type"] == "http.response.start":  # the server's own time, arrival to answer
                    took = (time.perf_counter() - arrived) * 1000.0
                    message["headers"] = [
                        *message.get("headers", []),
                        (b"server-timing", f"app;dur={took:.2f}".encode()),
                    ]
                await send(message)

            await self.app(scope, replay, timed)
        finally:
            self.inflight -= 1
            self.metrics.inflight.set(self.inflight)

    async def _body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole request body, or ``None`` once a 413 was sent for one over the limit."""
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await self._too_large(send, f"{int(declared)} bytes")
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await self._too_large(send, f"more than {self.max_body} bytes")
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _too_large(self, send: Send, got: str) -> None:
        self.metrics.refused.labels("body").inc()
        error = FieldError("body", f"at most max_body_bytes = {self.max_body} bytes", got)
        await _answer(send, 413, {"error": str(error), "errors": [error.to_dict()]})


class Gate:
    """At most ``max_concurrent`` requests run in the engine at once; one that finds them all busy
    and cannot start within ``max_queue_ms`` of arriving is refused (503, Retry-After). Python
    runs one thread at a time, so more requests at once only make each slower: waiting here keeps
    the answered ones within budget, and refusing the ones that would be late at once leaves the
    time for the next."""

    def __init__(self, max_concurrent: int, max_queue_ms: float, metrics: ServiceMetrics) -> None:
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self.max_queue_ms = max_queue_ms
        self.metrics = metrics

    @contextmanager
    def enter(self, scope: Scope) -> Iterator[None]:
        arrived = scope.get(ARRIVED, time.perf_counter())
        left = self.max_queue_ms / 1000.0 - (time.perf_counter() - arrived)
        # A free slot is taken whatever the wait so far: with nobody else waiting, refusing helps none.
        if not self.slots.acquire(blocking=False) and (left <= 0 or not self.slots.acquire(timeout=left)):
            waited = (time.perf_counter() - arrived) * 1000.0
            self.metrics.refused.labels("queued").inc()
            raise Overloaded(f"overloaded: waited {waited:.0f} ms to start (max_queue_ms = {self.max_queue_ms:g})")
        try:
            yield
        finally:
            self.slots.release()


def key_of(headers: MutableMapping[str, str] | Any) -> str | None:
    """The API key a request carries: ``X-API-Key``, or ``Authorization: Bearer <key>``."""
    key = headers.get("x-api-key")
    if key:
        return str(key)
    auth = headers.get("authorization") or ""
    scheme, _, token = str(auth).partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def check_key(headers: MutableMapping[str, str] | Any, allowed: tuple[str, ...], what: str) -> None:
    """Pass when no keys are configured for ``what`` or the request carries one of them."""
    if not allowed:
        return
    key = key_of(headers)
    ok = False
    if key is not None:
        for candidate in allowed:  # every key is compared, so timing says nothing about which
            ok |= hmac.compare_digest(key.encode(), candidate.encode())
    if not ok:
        raise Unauthorized(f"X-API-Key: expected a key allowed to {what}, got {'none' if key is None else 'another'}")
