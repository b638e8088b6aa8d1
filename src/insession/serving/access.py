"""One JSON access-log line and one duration observation per HTTP request.

``AccessLog`` is the outermost of the app's own middleware, so it sees every answer, refusals
included: it names the route (the path template, so label values stay few), gives each request
an id (the client's ``X-Request-ID`` when it is a plain token, else a new one; a list's own
``request_id`` when the handler sets the header), observes
``insession_http_request_duration_seconds{route, status}`` and writes one line on the
``insession.access`` logger at INFO::

    {"time": 1764325392.512, "request_id": "...", "method": "POST", "route": "/v1/recommendations",
     "status": 200, "latency_ms": 6.1, "tier": "full"}

The library never configures handlers: the ``insession`` command does (``--log-level``).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable

from insession.serving.admission import ROUTE, ASGIApp, Message, Receive, Scope, Send
from insession.serving.metrics import ServiceMetrics

ACCESS_LOGGER = "insession.access"
access_log = logging.getLogger(ACCESS_LOGGER)
#: Set by a handler that served a list: the tier, for the access line.
TIER = "insession.tier"
UNMATCHED = "unmatched"
_TOKEN = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _request_id(scope: Scope) -> str:
    for key, value in scope.get("headers") or ():
        if key.lower() == b"x-request-id":
            text = bytes(value).decode("latin-1")
            if _TOKEN.fullmatch(text):
                return text
    return uuid.uuid4().hex


class AccessLog:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, route_of: Callable[[Scope], str]) -> None:
        self.app = app
        self.metrics = metrics
        self.route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = scope[ROUTE] = self.route_of(scope)
        request_id = _request_id(scope)
        status = 500  # unless a response starts: an exception escaping here becomes a 500

        async def sending(message: Message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                given = next((v for k, v in headers if k.lower() == b"x-request-id"), None)
                if given is None:
                    headers.append((b"x-request-id", request_id.encode()))
                    message["headers"] = headers
                else:
                    request_id = given.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            took = time.perf_counter() - started
            self.metrics.http_duration.labels(route, str(status)).observe(took)
            if access_log.isEnabledFor(logging.INFO):
                line = {
                    "time": round(time.time(), 3),
                    "request_id": request_id,
                    "method": scope.get("method"),
                    "route": route,
                    "status": status,
                    "latency_ms": round(took * 1000.0, 3),
                    "tier": scope.get(TIER),
                }
                access_log.info(json.dumps(line, separators=(",", ":")))
