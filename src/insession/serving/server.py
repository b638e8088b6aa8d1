"""Run the app with uvicorn, in the foreground or on a background thread (tests, demo)."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import uvicorn
from fastapi import FastAPI

#: On stop (SIGINT/SIGTERM), requests in flight get this long to finish before their connections close.
DRAIN_S = 10


def _config(app: FastAPI, host: str, port: int) -> uvicorn.Config:
    # The access log is insession's own (``serving/access.py``: JSON, with route and tier).
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        ws="none",
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=DRAIN_S,
    )


def serve_forever(app: FastAPI, host: str, port: int) -> None:
    uvicorn.Server(_config(app, host, port)).run()


class BackgroundServer:
    """``with BackgroundServer(app) as srv: srv.url`` serves on loopback until the block ends."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 10.0) -> None:
        self._server = uvicorn.Server(_config(app, host, port))
        self._thread = threading.Thread(target=self._server.run, name="insession-http", daemon=True)
        self._timeout = start_timeout_s
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self._timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"HTTP server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        sockets = [s for srv in self._server.servers for s in srv.sockets]
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=self._timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
