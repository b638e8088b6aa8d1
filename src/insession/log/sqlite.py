"""The embedded event log: one SQLite file in WAL mode.

Durability: each ``append`` is one transaction. With ``synchronous=NORMAL`` (the default) a
committed batch survives a crash of the process; ``durable=True`` selects ``synchronous=FULL``,
which also survives power loss at the cost of an fsync per batch.

Storage faults (disk full, a read-only directory, an I/O error) raise
:class:`~insession.errors.StorageFault` naming the file: an append that raises it stored nothing
of its batch (the transaction is rolled back), so the caller can answer 503 and the client retry.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO

from insession.errors import CorruptRecord, DataDirInUse, StorageFault, ValidationError
from insession.events import Event
from insession.log import AppendResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    body TEXT NOT NULL
);
"""


#: Rows per INSERT statement (4 parameters each, well under SQLite's 32,766 variables).
_ROWS_PER_INSERT = 500


@functools.lru_cache(maxsize=8)
def _insert_sql(rows: int) -> str:
    """One INSERT of ``rows`` events that skips ids already stored and returns the stored rows'
    positions: one statement per batch instead of one per event (the positions are the same as
    one INSERT per event gives, gaps left by skipped ids included)."""
    values = ",".join(["(?,?,?,?)"] * rows)
    return f"INSERT OR IGNORE INTO events (event_id, user_id, ts, body) VALUES {values} RETURNING position, event_id"


def _fault(path: Path, doing: str, exc: sqlite3.Error) -> StorageFault:
    """A storage error as the one the server answers 503 for; SQLite's own message says which
    (``database or disk is full``, ``attempt to write a readonly database``, ``disk I/O error``)."""
    return StorageFault(f"event log {path}: could not {doing} ({exc})")


class SqliteEventLog:
    """``exclusive``: hold a lock on the log while open, so no second process (a server, an
    ``insession import``) folds the same log into state of its own; readers (``explain``,
    ``replay``) open it without."""

    def __init__(self, path: Path | str, durable: bool = False, exclusive: bool = False) -> None:
        self.path = Path(path)
        self._holder: IO[str] | None = None
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if exclusive:
                self._holder = _hold(self.path.with_name(self.path.name + ".lock"))
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise _fault(self.path, "open it for writing", exc) from exc

    def append(self, events: Sequence[Event]) -> AppendResult:
        result = AppendResult()
        if not events:
            return result
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                stored: dict[str, int] = {}  # event id -> position, for the rows this batch inserted
                for start in range(0, len(events), _ROWS_PER_INSERT):
                    part = events[start : start + _ROWS_PER_INSERT]
                    values = [v for e in part for v in (e.event_id, e.user_id, e.ts, e.to_json())]
                    cur.execute(_insert_sql(len(part)), values)
                    stored.update((str(event_id), int(position)) for position, event_id in cur.fetchall())
                # The first of a batch's repeated ids is the one inserted; rows are inserted in
                # batch order, so the accepted come out in position order.
                for event in events:
                    position = stored.pop(event.event_id, None)
                    if position is None:
                        result.duplicate_ids.append(event.event_id)
                    else:
                        result.accepted.append((position, event))
                cur.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:  # SQLite may have rolled back already (disk full)
                    with suppress(sqlite3.Error):  # gone either way: nothing of it was committed
                        cur.execute("ROLLBACK")
                if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.IntegrityError):
                    raise _fault(self.path, f"append {len(events)} events; none was stored", exc) from exc
                raise
        return AppendResult(result.accepted, len(result.duplicate_ids), result.duplicate_ids)

    def read(self, after: int = 0, limit: int | None = None) -> Iterator[tuple[int, Event]]:
        # Page through so a long read never holds the lock, and a reader sees a consistent order.
        page = 5000
        remaining = limit
        position = after
        while remaining is None or remaining > 0:
            size = page if remaining is None else min(page, remaining)
            with self._lock:
                rows = self._conn.execute(
                    "SELECT position, body FROM events WHERE position > ? ORDER BY position LIMIT ?",
                    (position, size),
                ).fetchall()
            if not rows:
                return
            for pos, body in rows:
                yield int(pos), _decode(int(pos), body, self.path)
            position = int(rows[-1][0])
            if remaining is not None:
                remaining -= len(rows)

    def span(self, after: int, limit: int) -> tuple[int, int]:
        """How many of the next ``limit`` events after ``after`` there are, and the position of the
        last of them (0 if none): what ``read`` would yield, without decoding it."""
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*), COALESCE(MAX(position), 0) FROM "
                "(SELECT position FROM events WHERE position > ? ORDER BY position LIMIT ?)",
                (after, limit),
            ).fetchone()
        return int(row[0]), int(row[1])

    def known(self, events: Sequence[Event]) -> set[str]:
        found: set[str] = set()
        ids = list(dict.fromkeys(e.event_id for e in events))
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(f"SELECT event_id FROM events WHERE event_id IN ({marks})", chunk)
                found.update(str(r[0]) for r in rows)
        return found

    def user_events(self, user_id: str) -> list[tuple[int, Event]]:
        """Every event of ``user_id`` in the log, in position order (one scan of the log)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT position, body FROM events WHERE user_id = ? ORDER BY position", (user_id,)
            ).fetchall()
        return [(int(pos), _decode(int(pos), body, self.path)) for pos, body in rows]

    def erase_user(self, user_id: str) -> int:
        """Delete every event of ``user_id`` (compaction for an erasure request); returns how many.
        The deleted rows are overwritten (``secure_delete``) and the WAL truncated, so no copy of
        them is left in the file; other events keep their positions, and positions are never reused
        (``AUTOINCREMENT``)."""
        with self._lock:
            try:
                self._conn.execute("PRAGMA secure_delete=ON")
                self._conn.execute("BEGIN IMMEDIATE")
                n = self._conn.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
                self._conn.execute("COMMIT")
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.DatabaseError as exc:
                if self._conn.in_transaction:
                    with suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise _fault(self.path, "erase the events of one user; none was erased", exc) from exc
        return int(n)

    def last_position(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT COALESCE(MAX(position), 0) FROM events").fetchone()
        return int(row[0])

    def count(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(row[0])

    def quarantine(self, side_file: Path) -> list[int]:
        """Move every record that is not a valid event to ``side_file`` (JSON lines: position,
        reasons, the record as stored; appended and fsynced first, never deleted), then delete it
        from the log; returns their positions. Events around them keep their positions."""
        moved: list[int] = []
        after = 0
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT position, body FROM events WHERE position > ? ORDER BY position LIMIT 5000", (after,)
                ).fetchall()
            if not rows:
                return moved
            bad = []
            for pos, body in rows:
                try:
                    _decode(int(pos), body, self.path)
                except CorruptRecord as exc:
                    bad.append({"position": int(pos), "reasons": exc.reasons, "record": body})
            if bad:
                with open(side_file, "a", encoding="utf-8") as fh:
                    for record in bad:
                        fh.write(json.dumps(record, ensure_ascii=True) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                with self._lock:
                    self._conn.execute("BEGIN IMMEDIATE")
                    self._conn.executemany("DELETE FROM events WHERE position = ?", [(r["position"],) for r in bad])
                    self._conn.execute("COMMIT")
                moved.extend(r["position"] for r in bad)
            after = int(rows[-1][0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        if self._holder is not None:
            self._holder.close()  # releases the lock
            self._holder = None

    def __del__(self) -> None:  # an engine dropped without close(): its lock goes with it
        holder = getattr(self, "_holder", None)
        if holder is not None:
            holder.close()


def _hold(lock_path: Path) -> IO[str]:
    """Take the log's lock or fail naming the process that holds it."""
    fh = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held open while the log is
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise DataDirInUse(
            f"data_dir: {lock_path.parent} is in use by {holder}; stop it first (or send events to its HTTP API)"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"process {os.getpid()}")
    fh.flush()
    return fh


def _decode(position: int, body: str, path: Path) -> Event:
    """The event stored at ``position``; a record that is not a valid event (written by an older
    version, or edited by hand) raises :class:`CorruptRecord` naming its position, fields and content."""
    try:
        return Event.from_json(body)
    except ValidationError as exc:
        reasons = [str(e) for e in exc.errors]
    except (ValueError, TypeError) as exc:  # not JSON at all
        reasons = [f"record: expected a JSON event, got {type(exc).__name__}: {exc}"[:300]]
    raise CorruptRecord(path, position, reasons, body)
