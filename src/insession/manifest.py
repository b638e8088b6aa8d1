"""Request manifests: what it takes to recompute a served list exactly, after the fact.

Every recommendation the engine serves writes one small row to the request log (SQLite, next to
the event log): the request as asked (user, surface, k, context, request time), the event-log
position its state reflects, the model version and a hash of the serving configuration, the
seed, and every decision that depended on the moment rather than on the data: the tier served,
the stages cut, the sources skipped, how many candidates the learned ranker scored, and the list
the user had seen before (the churn budget's input). A list served again from the freshness cache
points at the request that computed it. With the log and the model, that is enough to recompute
the list with no clock and no deadline (``insession.explain``).

Storage is bounded: the oldest rows beyond ``retention`` are deleted every ``prune_every`` writes.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

REQUEST_LOG_FILE = "requests.sqlite"


def seed_of(request_id: str, session_version: int) -> int:
    """The seed of a request's randomness (exploration, tie-breaks): reproducible from the manifest."""
    digest = hashlib.sha256(f"{request_id}|{session_version}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def config_hash(value: Any) -> str:
    """A short content hash of a JSON-able configuration (surfaces, pipeline settings)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Manifest:
    request_id: str
    user_id: str
    surface: str
    k: int
    context: dict[str, str]
    now_ms: int
    log_position: int
    session_version: int
    model_version: str
    config: str
    seed: int
    tier_asked: str
    tier: str
    cut: list[str]
    skipped_sources: list[str]
    ranked_rows: int | None  # candidates the learned ranker scored when a deadline truncated them
    previous: list[str]
    items: list[str]
    cached_from: str | None = None
    explored: list[str] = field(default_factory=list)  # items exploration put in the list
    factors_version: str = ""  # the online factor model's version the ranker read ("": none)
    filters: dict[str, Any] | None = None  # the request's filters (None: none)

    def to_json(self) -> str:
        # Fields are JSON values already; no deep copy (``asdict``) on the request path.
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)}, separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> Manifest:
        return Manifest(**json.loads(text))


class RequestLog:
    """Append-only (then pruned) manifests, keyed by request id."""

    def __init__(self, path: Path | str, retention: int = 1_000_000, prune_every: int = 10_000) -> None:
        self.path = Path(path)
        self.retention = retention
        self.prune_every = prune_every
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS manifests (seq INTEGER PRIMARY KEY, request_id TEXT UNIQUE, body TEXT)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS erased (request_id TEXT PRIMARY KEY, erased_ms INTEGER)")
        self._lock = threading.Lock()
        self._writes = 0

    def write(self, manifest: Manifest) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO manifests (request_id, body) VALUES (?, ?)",
                (manifest.request_id, manifest.to_json()),
            )
            self._writes += 1
            if self._writes % self.prune_every == 0:
                self._db.execute(
                    "DELETE FROM manifests WHERE seq <= (SELECT MAX(seq) FROM manifests) - ?", (self.retention,)
                )

    def get(self, request_id: str) -> Manifest | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM manifests WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else Manifest.from_json(row[0])

    def erase_user(self, user_id: str, now_ms: int) -> int:
        """Delete the manifests of ``user_id``'s requests (the user is erased), keeping only their
        request ids and the time, so explaining one answers 410 rather than 404; returns how many.
        Deleted rows are overwritten (``secure_delete``) and the WAL truncated."""
        with self._lock:
            ids = [
                str(r[0])
                for r in self._db.execute(
                    "SELECT request_id FROM manifests WHERE json_extract(body, '$.user_id') = ?", (user_id,)
                )
            ]
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM manifests WHERE request_id = ?", [(r,) for r in ids])
            self._db.executemany("INSERT OR REPLACE INTO erased VALUES (?, ?)", [(r, now_ms) for r in ids])
            self._db.execute("COMMIT")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return len(ids)

    def erased_at(self, request_id: str) -> int | None:
        """When the manifest of ``request_id`` was erased with its user (``None``: it was not)."""
        with self._lock:
            row = self._db.execute("SELECT erased_ms FROM erased WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else int(row[0])

    def ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT request_id FROM manifests ORDER BY seq")]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM manifests").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
