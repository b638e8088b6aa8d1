"""What the HTTP app checks before a request reaches the engine: load, API keys, body size and time.

``Admission`` is plain ASGI middleware, so it answers from the event loop without a worker
thread, in this order: a request that would exceed ``max_inflight`` is refused with 503 and
``Retry-After`` at once; one that lacks an API key its route needs gets 401 before its body is
read; a body over ``max_body_bytes`` gets 413 naming the limit, and one that has not fully
arrived ``body_timeout_ms`` after the headers gets 408 (a slow or stalled sender gives its
in-flight slot back). Early refusals close the connection (the unread body is not drained). Of
those let in, :class:`Gate` lets ``max_concurrent`` run in the engine at once and refuses one
that could not start within ``max_queue_ms``, so the requests that are answered stay within
their budget however much more traffic arrives (benchmarks/overload.py measures it); and
:class:`TimeShare` keeps explanations within their share of the server's time.

API keys are compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
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
UNSHED = frozenset({"/healthz", "/readyz", "/metrics"})
ARRIVED = "insession.arrived"
#: The route template a request matched (``AccessLog`` sets it; ``Admission`` reads its key rule).
ROUTE = "insession.route"
RETRY_AFTER_S = 1


@dataclass(frozen=True, slots=True)
class KeyRule:
    """The API keys a route needs (none configured: open) and what they allow, for the 401."""

    keys: tuple[str, ...]
    what: str


async def _answer(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None, close: bool = True
) -> None:
    """An early refusal. It closes the connection (the request's body may be unread), unless
    ``close`` is false (a guard's refusal of a request without a body)."""
    raw = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    if close:
        head.append((b"connection", b"close"))
    head += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": raw})


class Admission:
    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        metrics: ServiceMetrics,
        key_rules: Mapping[str, KeyRule],
        guards: Mapping[str, Callable[[], Overloaded | None]] | None = None,
    ) -> None:
        self.app = app
        #: Per route, a check that may refuse at once, from the event loop (the explanations'
        #: share: a client that keeps asking costs no worker thread and no parsing).
        self.guards = guards or {}
        self.max_body = settings.max_body_bytes
        self.max_inflight = settings.max_inflight
        self.body_timeout_s = settings.body_timeout_ms / 1000.0
        self.key_rules = key_rules
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
        rule = self.key_rules.get(scope.get(ROUTE, ""))
        if rule is not None:  # before the body is read: a keyless sender costs no parsing
            try:
                check_key(_headers(scope), rule.keys, rule.what)
            except Unauthorized as exc:
                self.metrics.refused.labels("auth").inc()
                await _answer(send, exc.status, {"error": exc.message})
                return
        guard = self.guards.get(scope.get(ROUTE, ""))
        refused = guard() if guard is not None else None
        if refused is not None:
            retry = getattr(refused, "retry_after_s", RETRY_AFTER_S)
            await _answer(send, refused.status, {"error": refused.message}, {"Retry-After": str(retry)}, close=False)
            return
        arrived = scope[ARRIVED] = time.perf_counter()
        self.inflight += 1
        self.metrics.inflight.set(self.inflight)
        try:
            body = await self._body(scope, receive, send, arrived + self.body_timeout_s)
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

    async def _body(self, scope: Scope, receive: Receive, send: Send, deadline: float) -> bytes | None:
        """The whole request body, or ``None`` once a 413 (over the limit) or a 408 (not all there
        by ``deadline``) was sent."""
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await self._too_large(send, f"{int(declared)} bytes")
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(deadline - time.perf_counter(), 0.0))
            except TimeoutError:
                self.metrics.refused.labels("body_timeout").inc()
                error = FieldError(
                    "body", f"the whole body within body_timeout_ms = {self.body_timeout_s * 1000:g}", f"{size} bytes"
                )
                await _answer(send, 408, {"error": str(error), "errors": [error.to_dict()]})
                return None
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


class TimeShare:
    """Explanations refold the event log (about a second of CPU each on a long log) and share the
    interpreter with lists and events: at most one runs at a time, and all together may use at
    most ``share`` of the wall time of a sliding ``window_s``. One that would go over is refused at
    once with 503 and a Retry-After of when the budget frees, so explanation traffic of any rate
    takes a bounded share of the server's time and lists keep theirs."""

    def __init__(self, share: float, window_s: float, metrics: ServiceMetrics) -> None:
        self.budget_s = share * window_s
        self.window_s = window_s
        self.metrics = metrics
        self._running = threading.Lock()
        self._spent: deque[tuple[float, float]] = deque()  # (started, finished), monotonic
        self._book = threading.Lock()

    def used(self, now: float) -> float:
        """Seconds spent within the window ending at ``now``."""
        start = now - self.window_s
        with self._book:
            while self._spent and self._spent[0][1] <= start:
                self._spent.popleft()
            return sum(end - max(begin, start) for begin, end in self._spent)

    def _frees_in(self, now: float) -> float:
        """Seconds until the oldest spend in the window leaves it (at least one)."""
        with self._book:
            oldest = self._spent[0][1] if self._spent else now - self.window_s
        return max(oldest + self.window_s - now, float(RETRY_AFTER_S))

    def refusal(self) -> ExplainBusy | None:
        """Why an explanation asked now would be refused (counted), or ``None``."""
        now = time.monotonic()
        if self.used(now) >= self.budget_s:
            self.metrics.refused.labels("explain_share").inc()
            wait = math.ceil(self._frees_in(now))
            return ExplainBusy(
                f"explain: the explanations' share of the server's time ({self.budget_s:g} s per "
                f"{self.window_s:g} s) is used up; retry in {wait} s",
                wait,
            )
        if self._running.locked():
            self.metrics.refused.labels("explain_share").inc()
            return ExplainBusy("explain: another explanation is running; retry in 1 s", RETRY_AFTER_S)
        return None

    @contextmanager
    def enter(self) -> Iterator[None]:
        refused = self.refusal()
        if refused is not None or not self._running.acquire(blocking=False):
            raise refused or ExplainBusy("explain: another explanation is running; retry in 1 s", RETRY_AFTER_S)
        started = time.monotonic()
        try:
            yield
        finally:
            with self._book:
                self._spent.append((started, time.monotonic()))
            self._running.release()


class ExplainBusy(Overloaded):
    """An explanation refused by :class:`TimeShare`; ``retry_after_s`` is when to ask again."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


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


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or ()}


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
