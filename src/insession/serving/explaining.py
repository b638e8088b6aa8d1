"""Explanations in a process of their own, so they never hold the interpreter lists are served in.

Explaining a list refolds the event log up to it: about a second of CPU on a long log. Run in the
server's process it holds the GIL in turns with every list being served, and list p99 grew
tenfold under explanation traffic (benchmarks/explain_share.py), however few ran at once. Here a
child process (started once, at a lower CPU priority) keeps its own ``Explainer`` (its own model
copy, read connections to the event and request logs, and the fold state between calls, so
explaining lists in log order folds the log once). In idle time it folds the log's newest events
into replay checkpoints (``insession.checkpoints``), so explaining a recent list costs the events
since the newest checkpoint, however long the log. The server sends a request id and the model
version that served lists now (with the items that joined the catalog online since training, when
it changed) and waits for the answer without holding the GIL. Its share of the server's time is
still bounded by ``TimeShare`` in front of it.

Used when the server was started from a model directory (``insession serve``, the demo); an engine
built around a model in memory explains in its own process.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from insession.config import Settings
from insession.errors import InsessionError, Overloaded
from insession.model import ModelBundle

logger = logging.getLogger(__name__)
#: The child's nice increment: when both cores are busy, the scheduler favours the server.
NICE = 10
#: Idle this long, the child folds up to ``FOLLOW_EVENTS`` more events into checkpoints
#: (``Explainer.follow``), so an explanation of a recent list starts from a recent checkpoint; while
#: a step finds that many, the next follows at once.
IDLE_S = 1.0
FOLLOW_EVENTS = 5_000


class ExplainProcess:
    def __init__(self, model_dir: Path, settings: Settings) -> None:
        self.model_dir = model_dir
        self.settings = settings
        self._lock = threading.Lock()  # one explanation at a time through the pipe
        self._conn: Connection | None = None
        self._process: Any = None
        self._sent_version: str | None = None
        self._start()

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # nothing of the server's threads or sockets
        ours, theirs = ctx.Pipe()
        self._process = ctx.Process(
            target=_serve, args=(theirs, str(self.model_dir), self.settings), name="insession-explain", daemon=True
        )
        self._process.start()
        theirs.close()
        self._conn, self._sent_version = ours, None

    def explain(self, request_id: str, model: ModelBundle, model_dir: Path | None = None) -> dict[str, Any]:
        """The explanation of ``request_id`` as ``Explanation.to_dict()``, computed with ``model``
        (trained in ``model_dir``: after a model swap, the one that served the list); the child's
        refusals (unknown request, another model) are raised here with their status."""
        with self._lock:
            if self._process is None or not self._process.is_alive():
                self._start()
            assert self._conn is not None
            added = None
            if model.version != self._sent_version:
                added = [item.to_dict() for item in model.added]
            try:
                self._conn.send((request_id, model.version, added, str(model_dir or self.model_dir)))
                kind, payload = self._conn.recv()
            except (EOFError, OSError):
                logger.error("the explanation process stopped; starting another")
                self._process = None
                raise Overloaded("explain: the explanation process restarted; retry") from None
            self._sent_version = model.version
        if kind == "ok":
            return dict(payload)
        status, message = payload
        error = InsessionError(message)
        error.status = status
        raise error

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._process is not None and self._process.is_alive():
                with contextlib.suppress(OSError):
                    self._conn.send(None)
                self._process.join(timeout=5)
                if self._process.is_alive():
                    self._process.terminate()
            self._process = None


def _serve(conn: Connection, model_dir: str, settings: Settings) -> None:
    """The child: explain each request id received until ``None`` arrives or the pipe closes."""
    from insession.catalog import Item
    from insession.checkpoints import CHECKPOINTS_FILE, CheckpointStore
    from insession.engine import LOG_FILE
    from insession.explain import Explainer
    from insession.log.sqlite import SqliteEventLog
    from insession.manifest import REQUEST_LOG_FILE, RequestLog

    with contextlib.suppress(OSError):
        os.nice(NICE)
    trained = ModelBundle.load(Path(model_dir))
    loaded_from = model_dir
    log = SqliteEventLog(settings.data_dir / LOG_FILE)
    requests = RequestLog(settings.data_dir / REQUEST_LOG_FILE, retention=settings.request_log_retention)
    checkpoints = CheckpointStore(settings.data_dir / CHECKPOINTS_FILE)
    explainer = Explainer(trained, settings, log, requests, checkpoints)
    behind = False  # the last follow stopped short of the log's end: no idle wait before the next
    while True:
        try:
            # Idle: keep the newest checkpoint near the end of the log. Behind (a burst of events),
            # the child folds on without waiting, still at its lower priority: waiting a second per
            # step let it fall minutes behind a busy server (scale bench, 1M events).
            while not conn.poll(0 if behind else IDLE_S):
                behind = False
                with contextlib.suppress(InsessionError, OSError):
                    behind = explainer.follow(FOLLOW_EVENTS) >= FOLLOW_EVENTS
            message = conn.recv()
        except EOFError:
            break
        if message is None:
            break
        request_id, version, added, directory = message
        try:
            if directory != loaded_from:  # a model swapped in (or back): the list's own model
                trained, loaded_from = ModelBundle.load(Path(directory)), directory
                explainer = Explainer(trained, settings, log, requests, checkpoints)
            if added is not None and version != explainer.model.version:
                model = trained.with_items([Item.from_dict(d) for d in added]) if added else trained
                explainer = Explainer(model, settings, log, requests, checkpoints)
            conn.send(("ok", explainer.explain(request_id).to_dict()))
        except InsessionError as exc:
            conn.send(("error", (exc.status, exc.message)))
        except Exception:  # the server answers 500 with an incident id; the details stay in this log
            logger.exception("explaining %s failed", request_id)
            conn.send(("error", (500, "internal error")))
    log.close()
    requests.close()
    checkpoints.close()
