"""Replay checkpoints: the folded state at chosen log positions, so explain and forget start from the
nearest one instead of the start of the log.

A checkpoint at position ``c`` holds what the fold (``replay.Replay``) reached after the event at
``c``: users' session states, item activity, online co-visitation lists and the online factor model.
Checkpoints are *incremental*: the one at ``c`` stores only the entries changed since the checkpoint
before it, and an entry at position ``c`` is read as "the newest stored value at or before ``c``"
(one indexed lookup). So a checkpoint costs what changed since the last one, not the whole state,
and a fold started from ``c`` loads only the users and items its events and its request touch.

Storage: one SQLite file (``checkpoints.sqlite`` in the data directory), tables ``checkpoints``
(position, the fold's fingerprint) and ``entries`` (namespace, key, position, value). The
fingerprint (session rules, online learning on or off, the online factor model's base) keeps a
checkpoint from being used by a fold with other rules. ``generation`` is bumped by every erasure
(``forget``), so a long-lived explainer drops the state it folded before it.

Written by :class:`CheckpointedReplay` as it folds (explain, forget), by a size/time policy:
every ``checkpoint_every_events`` events or ``checkpoint_every_s`` seconds of event time,
whichever comes first, and only past the newest checkpoint (or at the positions a caller asks).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import secrets
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Generic, TypeVar

from insession.config import SessionConfig, Settings
from insession.events import Event
from insession.features.activity import NAMESPACE as ACTIVITY_NAMESPACE
from insession.features.activity import ItemActivity, user_key
from insession.fold import Written
from insession.log import EventLog
from insession.model import ModelBundle
from insession.online import covisit
from insession.online.factors import OnlineFactors, for_model
from insession.replay import Replay
from insession.sessions import SessionState
from insession.store import FeatureStore

CHECKPOINTS_FILE = "checkpoints.sqlite"
#: A fold that follows the log (``Explainer.follow``: the explanation process catching up after a
#: burst, ``insession import`` folding for checkpoints) takes a due checkpoint no sooner than this
#: many times the last one's duration after it: at a shop's size a checkpoint rewrites the states
#: of thousands of users and items, and taken every ``checkpoint_every_events`` it was a third of
#: the fold's time; spaced, at most about a tenth.
FOLLOW_SPACING = 9.0
FORMAT = 2  # 2: values zlib-compressed (user states are JSON: about a fifth of the bytes)
USERS, ITEMS, FOLLOWERS, FACTORS = "u", "a", "f", "m"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (position INTEGER NOT NULL, fingerprint TEXT NOT NULL,
    PRIMARY KEY (fingerprint, position));
CREATE TABLE IF NOT EXISTS entries (fingerprint TEXT NOT NULL, ns TEXT NOT NULL, key TEXT NOT NULL,
    position INTEGER NOT NULL, value BLOB, PRIMARY KEY (fingerprint, ns, key, position)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

V = TypeVar("V")


def fingerprint(session: SessionConfig, learn: bool, factors: bool, model_version: str) -> str:
    """What a fold's state depends on besides the events (checkpoints of another fold are not used)."""
    text = json.dumps(
        {"format": FORMAT, "session": asdict(session), "learn": learn, "factors": model_version if factors else ""},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint_of(settings: Settings, model: ModelBundle) -> str:
    """The fingerprint of the fold explain runs for ``model`` under ``settings``."""
    factors = bool(model.params.get("train", {}).get("online_factors", False))
    return fingerprint(settings.session, settings.learn_online, factors, model.version.split("+")[0])


class CheckpointStore:
    """The checkpoint file. Safe to share between threads; several processes may read it while one
    writes (WAL)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA secure_delete=ON")  # an erased user's bytes are overwritten, not left in free pages
        self._db.executescript(_SCHEMA)

    def positions(self, fp: str) -> list[int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT position FROM checkpoints WHERE fingerprint = ? ORDER BY position", (fp,)
            ).fetchall()
        return [int(r[0]) for r in rows]

    def nearest(self, fp: str, position: int) -> int:
        """The newest checkpoint at or before ``position`` (0: none, fold from the start)."""
        with self._lock:
            row = self._db.execute(
                "SELECT MAX(position) FROM checkpoints WHERE fingerprint = ? AND position <= ?", (fp, position)
            ).fetchone()
        return int(row[0] or 0)

    def get(self, fp: str, ns: str, key: str, position: int) -> bytes | None:
        """The value of ``key`` as of the checkpoint at ``position`` (``None``: absent)."""
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM entries WHERE fingerprint = ? AND ns = ? AND key = ? AND position <= ? "
                "ORDER BY position DESC LIMIT 1",
                (fp, ns, key, position),
            ).fetchone()
        return None if row is None or row[0] is None else zlib.decompress(row[0])

    def write(self, fp: str, position: int, entries: Iterable[tuple[str, str, bytes | None]], generation: int) -> bool:
        """Record a checkpoint at ``position`` holding ``entries`` ((namespace, key, value), the
        entries changed since the checkpoint before it), in one transaction; refused (``False``)
        if a user was erased since the fold that made them started at ``generation`` (they may
        hold that user)."""
        rows = [(fp, ns, key, position, None if v is None else zlib.compress(v, 1)) for ns, key, v in entries]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone()
                if (int(row[0]) if row else 0) != generation:
                    self._db.execute("ROLLBACK")
                    return False
                self._db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)", rows)
                self._db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?)", (position, fp))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return True

    def generation(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone()
        return int(row[0]) if row else 0

    def erase_user(self, user_id: str, items: Sequence[str], alias: int = -1) -> int:
        """Remove ``user_id``'s session states from every checkpoint and the user's key from the
        recent events of ``items`` (replaced by ``alias``: their activity keeps the counts,
        anonymised; see :func:`scrub_activity`); bumps the
        generation. Returns the entries removed or rewritten."""
        key = float(user_key(user_id))
        changed = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                changed += self._db.execute("DELETE FROM entries WHERE ns = ? AND key = ?", (USERS, user_id)).rowcount
                for item in items:
                    rows = self._db.execute(
                        "SELECT fingerprint, position, value FROM entries WHERE ns = ? AND key = ?", (ITEMS, item)
                    ).fetchall()
                    for fp, position, value in rows:
                        if value is None:
                            continue
                        scrubbed = scrub_activity(zlib.decompress(value), key, alias)
                        if scrubbed is not None:
                            self._db.execute(
                                "UPDATE entries SET value = ? WHERE fingerprint = ? AND ns = ? AND key = ? "
                                "AND position = ?",
                                (zlib.compress(scrubbed, 1), fp, ITEMS, item, position),
                            )
                            changed += 1
                self._db.execute(
                    "INSERT INTO meta VALUES ('generation', 1) ON CONFLICT(name) DO UPDATE SET value = value + 1"
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if changed:
                # The table's interior pages keep copies of keys as dividers, deleted rows' included:
                # rebuilt, so no copy of the user id is left in the file (nor, truncated, in the WAL).
                self._db.execute("VACUUM")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return changed

    def holds_user(self, user_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM entries WHERE ns = ? AND key = ? LIMIT 1", (USERS, user_id)
            ).fetchone()
        return row is not None

    def close(self) -> None:
        with self._lock:
            self._db.close()


def erasure_alias() -> int:
    """A random user key for one erasure, drawn from the same 32-bit range as ``user_key`` and
    derived from nothing: it stands in for the erased user's key in item activity, so the
    item's distinct-user counts and the per-user guard see what they saw before (other users'
    lists explain identically), while nothing links it to the user."""
    return secrets.randbelow(2**32)


def scrub_activity(raw: bytes, key: float, alias: int = -1) -> bytes | None:
    """``raw`` item activity with the user key ``key`` replaced by ``alias`` (one erasure's
    :func:`erasure_alias`; -1 is "unknown"); ``None`` if it holds none. Counts and times stay: the
    item's popularity does not change for anyone."""
    activity = ItemActivity.from_bytes(raw)
    if key not in activity.recent_users:
        return None
    users = tuple(alias if u == key else u for u in activity.recent_users)
    return ItemActivity(activity.decayed, activity.last_ts, activity.recent, users).to_bytes()


class Layered(dict[str, V], Generic[V]):
    """Values folded since the checkpoint a replay started from, over that checkpoint's values
    (read on first use). ``dirty`` names the keys written since the last checkpoint was taken.
    Kept in the order of their last write (or first read), so :meth:`trim` drops the values the
    fold has not used for longest."""

    def __init__(self, load: Callable[[str], V | None]) -> None:
        super().__init__()
        self._load = load
        self._absent: set[str] = set()
        self.dirty: set[str] = set()

    def get(self, key: str, default: V | None = None) -> V | None:  # type: ignore[override]
        if key in self:
            return self[key]
        if key in self._absent:
            return default
        found = self._load(key)
        if found is None:
            self._absent.add(key)
            return default
        super().__setitem__(key, found)
        return found

    def __setitem__(self, key: str, value: V) -> None:
        super().pop(key, None)  # to the end: the newest
        super().__setitem__(key, value)
        self._absent.discard(key)
        self.dirty.add(key)

    def trim(self, keep: int) -> None:
        """Keep the ``keep`` values written (or read) most recently; the others are read back from
        the checkpoint when used. Only right after a checkpoint, which holds every written value."""
        if self.dirty:
            raise ValueError("trim: values written since the last checkpoint would be lost")
        for key in list(itertools.islice(self, max(len(self) - keep, 0))):
            super().__delitem__(key)
        self._absent.clear()

    def reset(self) -> None:
        """Forget every value read or folded: the next reads go to the (new) checkpoint."""
        self.clear()
        self._absent.clear()
        self.dirty.clear()


class CheckpointedReplay(Replay):
    """A :class:`~insession.replay.Replay` started from the checkpoint at ``base`` (0: from the
    start), which records new checkpoints as it folds (:meth:`advance`). Passing an existing
    checkpoint it starts again from that checkpoint's state: checkpoints are authoritative (after
    an erasure the log alone no longer reaches them)."""

    def __init__(
        self,
        store: CheckpointStore,
        fp: str,
        base: int,
        session_cfg: SessionConfig,
        learn: bool = True,
        factors: OnlineFactors | None = None,
        every_events: int = 10_000,
        every_ms: int = 86_400_000,
        max_loaded: int = 20_000,
    ) -> None:
        super().__init__(session_cfg, learn=learn, factors=factors)
        self.store, self.fp = store, fp
        self.every_events, self.every_ms = every_events, every_ms
        self.max_loaded = max_loaded
        self._states: Layered[SessionState] = Layered(lambda k: self._read(USERS, k, SessionState.from_bytes))
        self._activity: Layered[ItemActivity] = Layered(lambda k: self._read(ITEMS, k, ItemActivity.from_bytes))
        self._followers: Layered[covisit.Neighbours] = Layered(
            lambda k: self._read(FOLLOWERS, k, covisit.Neighbours.from_bytes)
        )
        self.states, self.activity, self.followers = self._states, self._activity, self._followers
        self.generation = store.generation()  # its checkpoints are refused once a user is erased
        known = store.positions(fp)
        self._later = [p for p in known if p > base]  # existing checkpoints this fold will pass
        self._newest = known[-1] if known else 0
        self.base = self.position = 0
        self._since = 0
        self._since_ts: int | None = None
        #: A due checkpoint waits until ``spacing`` times the last one's duration has passed (0: none).
        self.spacing = 0.0
        self._not_before = 0.0  # monotonic time
        if base > 0:
            self._rebase(base)

    @property
    def pending(self) -> int:
        """Events folded since the newest checkpoint this fold took or passed."""
        return self._since

    def _read(self, ns: str, key: str, decode: Callable[[bytes], V]) -> V | None:
        if self.base <= 0:
            return None
        raw = self.store.get(self.fp, ns, key, self.base)
        return None if raw is None else decode(raw)

    def _rebase(self, position: int) -> None:
        """Continue from the checkpoint at ``position``: its state, nothing changed since."""
        self.base = self.position = position
        for table in (self._states, self._activity, self._followers):
            table.reset()
        if self.factors is not None:
            raw = self.store.get(self.fp, FACTORS, "", position)
            if raw is not None:
                self.factors.load(raw)
        self._since, self._since_ts = 0, None

    def advance(self, position: int, event: Event, checkpoint_at: set[int] | frozenset[int] = frozenset()) -> None:
        """Fold ``event`` at ``position``; then record a checkpoint if the policy says so, or if
        ``position`` is in ``checkpoint_at``."""
        while self._later and self._later[0] <= position:
            self._rebase(self._later.pop(0))
        if position <= self.position:
            return  # the checkpoint just taken up holds this event already
        self.apply(position, event)
        self.position = position
        self._since += 1
        if self._since_ts is None:
            self._since_ts = event.ts
        due = self._since >= self.every_events or event.ts - self._since_ts >= self.every_ms
        if position in checkpoint_at or (due and position > self._newest and self._spaced()):
            self.checkpoint()

    def _spaced(self) -> bool:
        return self.spacing <= 0 or time.monotonic() >= self._not_before

    def checkpoint(self) -> None:
        """Record the state at ``self.position`` (what changed since the checkpoint before it)."""
        if self.position <= 0 or self.position == self.base:
            return
        started = time.monotonic()
        entries: list[tuple[str, str, bytes | None]] = []
        for ns, table in ((USERS, self._states), (ITEMS, self._activity), (FOLLOWERS, self._followers)):
            entries.extend((ns, key, table[key].to_bytes()) for key in sorted(table.dirty))
            table.dirty.clear()
        if self.factors is not None:
            entries.append((FACTORS, "", self.factors.to_bytes()))
        if not self.store.write(self.fp, self.position, entries, self.generation):
            self.generation = -1  # a user was erased meanwhile: this fold writes no more checkpoints
            return
        self._newest = max(self._newest, self.position)
        done = time.monotonic()
        self._not_before = done + self.spacing * (done - started)
        self.base = self.position  # values not yet read come from this checkpoint (the same as before)
        self._since, self._since_ts = 0, None
        if (loaded := self.loaded) > self.max_loaded:  # bounded memory: what is dropped is read back from here
            for table in (self._states, self._activity, self._followers):  # each its share, the oldest out
                table.trim(len(table) * self.max_loaded // loaded)

    @property
    def loaded(self) -> int:
        """Values held decoded (read from a checkpoint or folded since)."""
        return len(self._states) + len(self._activity) + len(self._followers)


def replay_from(
    checkpoints: CheckpointStore, settings: Settings, model: ModelBundle, position: int, max_loaded: int | None = None
) -> CheckpointedReplay:
    """The fold explain and forget run for ``model`` under ``settings``, from the nearest checkpoint
    at or before ``position``, leaving checkpoints by the settings' policy; it holds at most
    ``max_loaded`` decoded values past a checkpoint (default: ``explain_cache_entries``)."""
    fp = fingerprint_of(settings, model)
    return CheckpointedReplay(
        checkpoints,
        fp,
        checkpoints.nearest(fp, position),
        settings.session,
        learn=settings.learn_online,
        factors=for_model(model),
        every_events=settings.checkpoint_every_events,
        every_ms=int(settings.checkpoint_every_s * 1000),
        max_loaded=settings.explain_cache_entries if max_loaded is None else max_loaded,
    )


class StoreCheckpoints:
    """Checkpoints written from the serving fold itself as it ingests (``Engine.ingest_all``, used by
    ``insession import``), instead of folding the log a second time afterwards: the fold records
    the keys it writes (``fold.Written``), and at a checkpoint their values are copied from the
    store as the bytes the fold wrote there, which are the bytes :meth:`CheckpointedReplay.checkpoint`
    would record, as that fold is the same (``tests/unit/test_checkpoints.py`` compares them).

    Only valid when the store holds exactly the fold of the log up to the newest checkpoint (an
    empty data directory, or one a previous import or explanation checkpointed to its end): the
    engine checks that before it uses one. Checkpoints are taken after a batch by the size/time
    policy of ``replay_from`` (so at batch ends, not at the exact event a replay would pick)."""

    def __init__(
        self,
        checkpoints: CheckpointStore,
        fp: str,
        store: FeatureStore,
        factors: OnlineFactors | None,
        every_events: int,
        every_ms: int,
    ) -> None:
        self.checkpoints, self.fp, self.store, self.factors = checkpoints, fp, store, factors
        self.every_events, self.every_ms = every_events, every_ms
        self.written = Written()
        self.generation = checkpoints.generation()
        self.taken = 0  # checkpoints written
        self.position = 0  # the last folded position
        self._since = 0
        self._since_ts: int | None = None

    def folded(self, accepted: Sequence[tuple[int, Event]]) -> None:
        """After the fold of ``accepted`` (one batch, written to the store): a checkpoint if due."""
        if not accepted or self.generation < 0:
            return
        self.position = accepted[-1][0]
        self._since += len(accepted)
        if self._since_ts is None:
            self._since_ts = accepted[0][1].ts
        newest = max(e.ts for _, e in accepted)
        if self._since >= self.every_events or newest - self._since_ts >= self.every_ms:
            self.checkpoint()

    def checkpoint(self) -> bool:
        """Record the state at the last folded position (what changed since the last checkpoint);
        ``False`` if nothing was pending or a user was erased meanwhile (then no more are taken)."""
        if self._since == 0 or self.generation < 0:
            return False
        users, activity, followers = self.written.take()
        entries: list[tuple[str, str, bytes | None]] = []
        for user, state in zip(users, self.store.get_sessions(users), strict=True):
            entries.append((USERS, user, None if state is None else state.to_bytes()))
        for ns, namespace, keys in ((ITEMS, ACTIVITY_NAMESPACE, activity), (FOLLOWERS, covisit.NAMESPACE, followers)):
            entries.extend((ns, k, v) for k, v in zip(keys, self.store.get_many(namespace, keys), strict=True))
        if self.factors is not None:
            entries.append((FACTORS, "", self.factors.to_bytes()))
        if not self.checkpoints.write(self.fp, self.position, entries, self.generation):
            self.generation = -1
            return False
        self.taken += 1
        self._since, self._since_ts = 0, None
        return True


def fold_with_checkpoints(
    log: EventLog,
    replay: CheckpointedReplay,
    until: int,
    checkpoint_at: set[int] | frozenset[int] = frozenset(),
) -> None:
    """Fold ``log`` from ``replay``'s position through ``until``, recording checkpoints."""
    for position, event in log.read(after=replay.position):
        if position > until:
            break
        replay.advance(position, event, checkpoint_at)
