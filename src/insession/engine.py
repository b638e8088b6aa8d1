"""The engine: an event log, a feature store and a model, wired together.

``ingest`` appends to the log first and folds into the store second, under one lock, so the
store's order of application is the log's order. On start the engine loads the store snapshot
(if any and intact) and folds every log event after the snapshot's position, so a crash between
append and fold loses nothing: the log is the source of truth.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from insession.catalog import Item, item_of, parse_item
from insession.checkpoints import CHECKPOINTS_FILE, CheckpointStore, StoreCheckpoints, fingerprint_of
from insession.clock import Clock, SystemClock
from insession.config import Settings, SurfaceConfig
from insession.errors import (
    FieldError,
    InsessionError,
    NotFound,
    SnapshotCorrupt,
    StorageFault,
    StoreUnavailable,
    Unsupported,
)
from insession.events import Event, check_event, normalise, validate_event
from insession.explain import Explainer, Explanation
from insession.features.activity import ACTIVITY_WEIGHTS, ActivityDecoder, ItemActivity
from insession.features.activity import NAMESPACE as ACTIVITY_NAMESPACE
from insession.features.profile import build_profile
from insession.fold import FoldBatch, FoldMemos, FoldStats
from insession.forget import ForgetResult, forget_embedded, forget_on_redis
from insession.forget import prepare as prepare_forget
from insession.freshness import ServingLists
from insession.log import AppendResult, EventLog
from insession.log.items import ITEMS_FILE, FileItemLog, ItemLog, StoreItemLog
from insession.log.redis_stream import RedisStreamEventLog
from insession.log.sqlite import SqliteEventLog
from insession.manifest import REQUEST_LOG_FILE, Manifest, RequestLog, config_hash, seed_of
from insession.memo import DecodeMemo
from insession.model import ModelBundle
from insession.model_swap import ModelSwap
from insession.online import covisit
from insession.online.bandit import BanditStats
from insession.online.factors import for_model
from insession.pipeline import Recommender, RecommendRequest, RecommendResponse, no_activity
from insession.rerank import churn_at_k
from insession.sessions import SessionState, advance, lateness
from insession.store import FeatureStore
from insession.store.cached import CachedStore
from insession.store.memory import MemoryFeatureStore
from insession.store.redis import RedisFeatureStore, RedisGuard, connect
from insession.tiers import TierMonitor
from insession.worker import GROUP, StreamWorker, item_backlog

logger = logging.getLogger(__name__)
#: Where the online factor model's state is kept (written with each snapshot).
CATALOG_NAMESPACE = "catalog"
FACTORS_KEY = "online_factors"
CATALOG_TTL_S = 10 * 365 * 24 * 3600

LOG_FILE = "events.sqlite"
SNAPSHOT_FILE = "state.snapshot"
PURGE_EVERY_MS = 60_000
#: The request-context keys the pipeline reads (``pipeline.py``: item_id; ``ranking/features.py``:
#: page, device): all a manifest keeps of a request's context, and all explain needs.
CONTEXT_READ = ("item_id", "page", "device")
#: After a snapshot fails (disk full, read-only directory) the next one is tried this much later.
SNAPSHOT_RETRY_S = 30.0
#: After a snapshot that took ``t`` seconds, the next is written no sooner than ``SNAPSHOT_SPACING * t``
#: later (and ``snapshot_every_events`` events), so snapshots take at most about a tenth of the time:
#: each rewrites the whole state, and an import of 3M events spent a large share of its time
#: rewriting a snapshot of up to 200 MB every 50,000 events. The log holds every event meanwhile.
SNAPSHOT_SPACING = 9.0
#: Events folded as one batch on start (``catch_up``): bounds what a batch keeps decoded.
CATCH_UP_BATCH = 5000


def _pages(pairs: Iterable[tuple[int, Event]], size: int) -> Iterator[list[tuple[int, Event]]]:
    page: list[tuple[int, Event]] = []
    for pair in pairs:
        page.append(pair)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page


class DataDirHealth:
    """Whether the data directory takes writes: the last event-log append's outcome, checked again
    by writing (and removing) a small probe file, at most once a second while writes fail and
    every 10 s while they work. So a server on a full disk or a read-only directory reports its
    storage down before an append fails, and up again once it can write. Snapshot failures are
    counted apart: they lose nothing (the log keeps every event) and are retried."""

    PROBE = ".insession-write-probe"

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.error: str | None = None
        self.write_failures = 0
        self.snapshot_failures = 0
        self.last_snapshot_error: str | None = None
        self._checked = float("-inf")

    def failed(self, error: str) -> None:
        self.error = error
        self.write_failures += 1
        self._checked = time.monotonic()

    def snapshot_failed(self, error: str) -> None:
        self.snapshot_failures += 1
        self.last_snapshot_error = error

    def check(self) -> str | None:
        """The current write error (``None``: writes work), probing when one is due."""
        now = time.monotonic()
        if self.directory is not None and now - self._checked >= (1.0 if self.error else 10.0):
            self._checked = now
            self.error = self.probe(self.directory)
        return self.error

    @classmethod
    def probe(cls, directory: Path) -> str | None:
        """Why ``directory`` cannot take a small fsynced write, or ``None`` when it can."""
        probe = directory / cls.PROBE
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"\0" * 4096)
                os.fsync(fd)
            finally:
                os.close(fd)
            probe.unlink()
        except OSError as exc:
            return f"data_dir {directory}: cannot write ({exc.strerror or exc})"
        return None


@dataclass(frozen=True, slots=True)
class Rejected:
    index: int
    errors: list[FieldError]

    def to_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "errors": [e.to_dict() for e in self.errors],
            "message": "; ".join(str(e) for e in self.errors),
        }


@dataclass(slots=True)
class BulkResult:
    """What a bulk load did: events accepted, duplicates (already in the log), and the events
    refused, counted by reason (``field: expected``) with the first event id of each."""

    accepted: int = 0
    duplicates: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    checkpoints: int = 0  # explain's checkpoints written while folding (``ingest_all(checkpoint=True)``)

    def summary(self) -> str:
        text = f"{self.accepted} events accepted, {self.duplicates} already in the log"
        if self.refused:
            reasons = "; ".join(f"{n} {why} (e.g. {self.examples[why]})" for why, n in self.refused.most_common(5))
            text += f", {sum(self.refused.values())} refused: {reasons}"
        return text


@dataclass(frozen=True, slots=True)
class ItemsResult:
    """What a catalog update did: items added or changed, items sent unchanged, items refused."""

    changed: int
    unchanged: int
    rejected: list[Rejected] = field(default_factory=list)
    model_version: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "changed": self.changed,
            "unchanged": self.unchanged,
            "rejected": [r.to_dict() for r in self.rejected],
            "model_version": self.model_version,
        }


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    duplicates: int
    rejected: list[Rejected] = field(default_factory=list)
    last_position: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [r.to_dict() for r in self.rejected],
        }


class Engine:
    def __init__(
        self,
        settings: Settings,
        model: ModelBundle,
        log: EventLog,
        store: FeatureStore,
        clock: Clock | None = None,
        snapshot_path: Path | None = None,
        requests: RequestLog | None = None,
        items: ItemLog | None = None,
    ) -> None:
        self.settings = settings
        #: The catalog's changes since training (items joined or changed while serving), durable.
        self.items = items or StoreItemLog(store)
        #: Where every served request's manifest goes (``None``: not recorded).
        self.requests = requests
        #: A content hash of what, besides the model, decides a list: surfaces and pipeline settings.
        self.config_version = config_hash(
            {
                "surfaces": {k: asdict(v) for k, v in sorted(settings.surfaces.items())},
                "session": asdict(settings.session),
            }
        )
        self.model = model
        self.log = log
        self.store = store
        self.clock = clock or SystemClock()
        self.snapshot_path = snapshot_path
        self.recommender = Recommender(model, settings.surfaces, settings.session.timeout_ms)
        self.tiers = TierMonitor(settings.surfaces)
        #: The lists each user was shown and the lists kept for reuse, in the store (every server's).
        self.lists = ServingLists(store, settings.state_ttl_s)
        #: Exploration feedback: impressions of served lists, clicks on shown items (in the store),
        #: counted while a surface explores.
        self.bandit = BanditStats(store)
        self.exploring = any(s.explore_share > 0 for s in settings.surfaces.values())
        self._lock = threading.Lock()
        self._decoder = ActivityDecoder()
        #: Decoded values the fold reads back batch after batch (the activity shared with requests).
        self._fold_memos = FoldMemos(self._decoder, DecodeMemo(covisit.Neighbours.from_bytes))
        #: Events the guard rail kept out of item activity (folded here; on Redis, by the workers).
        self.fold_stats = FoldStats()
        #: Items named by events that stayed out of the catalog (``max_joined_items`` reached).
        self.items_not_joined = 0
        self._since_snapshot = 0
        self._snapshot_due = 0.0  # monotonic time before which no snapshot is written (spacing, or a retry)
        #: Whether the data directory takes writes (embedded; ``store_health`` reports it).
        self.disk = DataDirHealth(snapshot_path.parent if snapshot_path is not None else None)
        self._purged_at = self.clock.now_ms()
        #: Set on Redis: the guard every Redis call goes through (its state is the store's health).
        self.guard: RedisGuard | None = None
        self._stop = threading.Event()
        self._workers: list[tuple[StreamWorker, threading.Thread]] = []
        #: The online factor model (``online.factors``) when the ranker was trained to read it; it
        #: learns in the embedded engine only (on Redis it stays at the trained vectors).
        self.factors = for_model(model)
        #: Replay checkpoints explain and forget fold from (embedded, opened from a data directory).
        self.checkpoints: CheckpointStore | None = None
        #: Set while ``ingest_all`` writes explain's checkpoints from this fold.
        self._checkpointing: StoreCheckpoints | None = None
        self._restore_items()
        #: Model hot swap (``model_swap.py``): the versions loaded, the one recorded as active.
        self.models = ModelSwap(self, store, self.items, settings.model_dir)
        try:
            self.models.follow()
        except StoreUnavailable as exc:
            logger.error("model: could not read the active model version: %s", exc.message)

    def _restore_items(self) -> None:
        """The catalog changes made before a restart apply again, in the same order (so the model
        version is the same); the online factor model continues from the snapshot's state."""
        changes = self.items.read()
        if not changes and not isinstance(self.items, StoreItemLog):
            changes = StoreItemLog(self.store).read()  # a data directory from before items.jsonl
            self.items.append(changes)
        if changes:
            self._adopt(self.model.with_items(changes))
        factors = self.store.get_many(CATALOG_NAMESPACE, [FACTORS_KEY])[0]
        if factors is not None and self.factors is not None:
            self.factors.load(factors)

    def _adopt(self, model: ModelBundle) -> None:
        self.model = model
        self.recommender.adopt(model)

    def _join_items(self, events: Iterable[Event]) -> None:
        """Items the model does not know join the catalog (with the category, brand and price
        their events carry) and become recommendable without retraining; the list of joined items
        is kept in the store so a restart rebuilds the same model version."""
        if not self.settings.learn_online or not self.folds_inline:
            return
        known = self.model.catalog.index
        fresh = [e for e in events if e.item_id is not None and e.item_id not in known]
        if not fresh:
            return
        # Each joins with what its first event says: the same items in the same order, with the
        # same metadata, however the events were batched (so a restart gets the same version).
        first: dict[str, Event] = {}
        for e in fresh:
            first.setdefault(e.item_id, e)  # type: ignore[arg-type]
        room = max(self.settings.max_joined_items - len(self.model.added), 0)
        joining = list(first.values())[:room]  # bounded: the catalog does not grow without limit
        if len(first) > room:
            self.items_not_joined += len(first) - room
            logger.warning(
                "catalog: %d items not joined (max_joined_items = %d reached; retrain to add them)",
                len(first) - room,
                self.settings.max_joined_items,
            )
        if joining:
            self._change_items([item_of(e) for e in joining])

    def _change_items(self, items: Sequence[Item]) -> ModelBundle:
        """Apply catalog changes (under the lock): recorded durably first, then served."""
        model = self.model.with_items(items)
        if model is not self.model:
            self.items.append(model.added[len(self.model.added) :])
            joined = len(model.catalog) - len(self.model.catalog)
            self._adopt(model)
            logger.info("catalog: %d items joined, model %s", joined, model.version)
        return model

    def update_items(self, raw_items: Sequence[object]) -> ItemsResult:
        """Add or change catalog items while serving (``POST /v1/items``): each is validated on its
        own (``catalog.parse_item``); a new item is recommendable at once, an unavailable one is
        never served. Returns how many changed, how many were sent as they already are, and the
        refused ones with every field at fault."""
        valid: list[Item] = []
        rejected: list[Rejected] = []
        for index, raw in enumerate(raw_items):
            item, errors = parse_item(raw.to_dict() if isinstance(raw, Item) else raw)
            if item is None:
                rejected.append(Rejected(index, errors))
            else:
                valid.append(item)
        with self._lock:
            before = len(self.model.added)
            model = self._change_items(valid)
            changed = len(model.added) - before
        return ItemsResult(changed, len(valid) - changed, rejected, model.version)

    @property
    def folds_inline(self) -> bool:
        """Embedded: events are folded as they are ingested. Redis: stream workers fold them."""
        return self.guard is None

    @classmethod
    def open(
        cls,
        settings: Settings,
        model: ModelBundle | None = None,
        clock: Clock | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Engine:
        """Open (or create) the engine in ``settings.data_dir``: the SQLite event log and state in
        memory (with a snapshot file; the log after it is folded on start) by default, or a
        stateless server on Redis when ``settings.store`` is a ``redis://`` or ``redis+cluster://``
        URL (:meth:`on_redis`)."""
        if model is None:
            if settings.model_dir is None:
                raise ValueError("model_dir: expected a model directory (insession train --out DIR)")
            model = ModelBundle.load(settings.model_dir)
        clock = clock or SystemClock()
        data_dir = settings.data_dir
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageFault(f"data_dir {data_dir}: cannot create it ({exc.strerror or exc})") from None
        if (unwritable := DataDirHealth.probe(data_dir)) is not None:
            raise StorageFault(unwritable)  # a server that cannot keep what it acknowledges does not start
        requests = RequestLog(data_dir / REQUEST_LOG_FILE, retention=settings.request_log_retention)
        if settings.store.startswith(("redis://", "redis+cluster://")):
            return cls.on_redis(settings, model, clock, requests)
        log = SqliteEventLog(data_dir / LOG_FILE, exclusive=True)
        store = MemoryFeatureStore(clock)
        snapshot = data_dir / SNAPSHOT_FILE
        if snapshot.exists():
            try:
                store.load(snapshot)
            except SnapshotCorrupt as exc:
                logger.warning("%s; rebuilding state from the event log", exc)
                store = MemoryFeatureStore(clock)
        try:
            engine = cls(settings, model, log, store, clock, snapshot, requests, FileItemLog(data_dir / ITEMS_FILE))
            engine.checkpoints = CheckpointStore(data_dir / CHECKPOINTS_FILE)
            engine.catch_up(progress)
        except BaseException:
            log.close()  # releases the data directory for whatever is run to mend it
            requests.close()
            raise
        return engine

    @classmethod
    def on_redis(
        cls, settings: Settings, model: ModelBundle, clock: Clock, requests: RequestLog | None = None
    ) -> Engine:
        """A stateless server on one Redis or a Redis Cluster: events go to the Redis streams
        (``RedisStreamEventLog``), state is read from Redis through the L1 cache, and stream
        workers (``insession worker``, or :meth:`start_worker`) fold the streams. Nothing is
        folded in this process."""
        guard = RedisGuard()
        client = connect(settings.store, settings.store_timeout_ms)
        partitions = settings.stream_partitions
        l2 = RedisFeatureStore(client, clock, guard=guard, partitions=partitions)
        store: FeatureStore = l2 if settings.l1_max_age_ms <= 0 else CachedStore(l2, settings.l1_max_age_ms)
        log = RedisStreamEventLog(client, partitions, guard=guard, dedup_window_s=settings.dedup_window_s)
        engine = cls(settings, model, log, store, clock, None, requests)
        engine.guard = guard
        return engine

    def start_worker(self, batch: int = 200, lease_ms: int = 5000) -> StreamWorker:
        """Fold the Redis streams on a background thread of this process (``serve --workers``)."""
        if self.guard is None:
            raise Unsupported("store: an in-process stream worker needs store = redis:// or redis+cluster://")
        client = connect(self.settings.store, 5000.0, retries=1)
        worker = StreamWorker(client, self.settings, batch=batch, lease_ms=lease_ms)
        thread = threading.Thread(target=worker.run, args=(self._stop,), name="insession-worker", daemon=True)
        thread.start()
        self._workers.append((worker, thread))
        return worker

    # -- writes ---------------------------------------------------------------------------------
    def catch_up(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Fold every log event after the store's applied position; returns how many (on Redis, 0:
        the stream workers fold)."""
        if not self.folds_inline:
            return 0
        with self._lock:
            start = self.store.applied_position()
            last = self.log.last_position()
            n = 0
            fresh: list[Event] = []

            def each(position: int, event: Event) -> None:
                nonlocal n
                if event.item_id is not None and event.item_id not in self.model.catalog.index:
                    fresh.append(event)
                n += 1
                if progress is not None and n % 5000 == 0:
                    progress(position - start, last - start)

            for page in _pages(self.log.read(after=start), CATCH_UP_BATCH):
                self._fold_all(page, each)
            self._join_items(fresh)
            return n

    def _folder(self) -> FoldBatch:
        """A batch fold into the store (``fold.FoldBatch``): each user's state read once, every
        change written back once when it is flushed."""
        return FoldBatch(
            self.store,
            self.settings.session,
            self.settings.state_ttl_s,
            self.fold_stats,
            self.settings.learn_online,
            self.factors.add_ids if self.settings.learn_online and self.factors is not None else None,
            self._fold_memos,
            None if self._checkpointing is None else self._checkpointing.written,
        )

    def _fold_all(self, accepted: Iterable[tuple[int, Event]], each: Callable[[int, Event], object]) -> None:
        """Fold ``accepted`` (log order) as one batch, calling ``each`` after each event; what was
        folded is written to the store and the applied position even if a later event raises."""
        batch = self._folder()
        last = 0
        try:
            for position, event in accepted:
                batch.fold(position, event)
                last = position
                each(position, event)
        finally:
            batch.flush()
            if last:
                self.store.set_applied_position(last)

    def activity(self, item_ids: Sequence[str]) -> list[ItemActivity | None]:
        """Live item activity from the store (what the ranker's streaming item features read)."""
        decode = self._decoder.decode
        raws = self.store.get_many(ACTIVITY_NAMESPACE, item_ids)
        return [None if raw is None else decode(item, raw) for item, raw in zip(item_ids, raws, strict=True)]

    def _credit(self, events: Sequence[Event]) -> None:
        """A click for exploration when the user acts on an item of a list they were shown last
        (one read of the users' shown lists, one write of the counts)."""
        acted = [e for e in events if e.item_id is not None and e.type in ACTIVITY_WEIGHTS] if self.exploring else []
        if acted:
            shown = self.lists.shown_to(sorted({e.user_id for e in acted}))
            self.bandit.clicked([e.item_id for e in acted if e.item_id in shown[e.user_id]])

    def neighbours(self, item_ids: Sequence[str]) -> list[covisit.Neighbours | None]:
        """The online co-visitation lists of items from the store (``online.covisit``)."""
        raws = self.store.get_many(covisit.NAMESPACE, item_ids)
        return [None if raw is None else covisit.Neighbours.from_bytes(raw) for raw in raws]

    def ingest(self, events: Sequence[Event]) -> AppendResult:
        """Validate ``events`` (the rules ``POST /v1/events`` applies, with the same reasons: an
        event that fails never reaches the log), append the valid ones to the log, then fold the
        newly accepted ones into state (on Redis, append to the streams; a worker folds them).
        ``refused`` lists each event not taken (its index in ``events``) with every reason."""
        events = [normalise(e) for e in events]
        problems = [(n, errors) for n, e in enumerate(events) if (errors := check_event(e))]
        if not problems:
            return self._ingest_valid(events)
        bad = {n for n, _ in problems}
        where = [n for n in range(len(events)) if n not in bad]
        result = self._ingest_valid([events[n] for n in where])
        refused = sorted([*problems, *((where[n], reasons) for n, reasons in result.refused)], key=lambda r: r[0])
        return replace(result, refused=refused)

    def _ingest_valid(self, events: Sequence[Event]) -> AppendResult:
        if not self.folds_inline:
            # The same refusal of late events as embedded, against the state the workers folded
            # (an event that races a newer one still in the stream is skipped by the worker).
            events, refused = self._admit(events)
            appended = self.log.append(events)
            if refused:
                appended = replace(appended, refused=refused)
            try:
                self._credit([e for _, e in appended.accepted])
            except StoreUnavailable as exc:  # the events are stored: only exploration feedback is lost
                logger.warning("exploration clicks not counted: %s", exc.message)
            return appended
        with self._lock:
            events, refused = self._admit(events)
            try:
                result = self.log.append(events)
            except StoreUnavailable as exc:  # nothing of the batch was stored: the caller retries
                self.disk.failed(exc.message)
                raise
            self.disk.error = None
            if refused:
                result = replace(result, refused=refused)
            self._fold_all(result.accepted, lambda _, __: None)
            if self._checkpointing is not None:  # under the lock: the store holds this fold exactly
                self._checkpointing.folded(result.accepted)
            self._credit([e for _, e in result.accepted])
            self._join_items(e for _, e in result.accepted)
            self._since_snapshot += len(result.accepted)
            self._purge_locked()
            due = self._since_snapshot >= self.settings.snapshot_every_events and time.monotonic() >= self._snapshot_due
            if self.snapshot_path is not None and due:
                self._snapshot_locked()  # a failure is logged and counted: the events are stored
        return result

    def _admit(self, events: Sequence[Event]) -> tuple[list[Event], list[tuple[int, list[FieldError]]]]:
        """The events that can be folded in event-time order, and the others with the reason
        (``sessions.lateness``); a refused event the log already holds is let through, so the log
        reports it as the duplicate it is."""
        cfg = self.settings.session
        users = list(dict.fromkeys(e.user_id for e in events))
        markers: dict[str, SessionState | None] = dict(zip(users, self.store.get_sessions(users), strict=True))
        kept: list[Event] = []
        late: list[tuple[int, Event, FieldError]] = []
        for n, event in enumerate(events):
            user = event.user_id
            marker = markers[user]
            reason = lateness(marker, event, cfg)
            if reason is None:
                kept.append(event)
                markers[user] = advance(marker, event, cfg)[1]
            else:
                markers[user] = marker
                late.append((n, event, reason))
        if not late:
            return kept, []
        logged = self.log.known([e for _, e, _ in late])
        kept.extend(e for _, e, _ in late if e.event_id in logged)
        return kept, [(n, [reason]) for n, e, reason in late if e.event_id not in logged]

    def ingest_raw(self, raw_events: Sequence[object]) -> IngestResult:
        """Validate untrusted events one by one; accept the valid ones, list the rest."""
        valid: list[Event] = []
        rejected: list[Rejected] = []
        where: list[int] = []
        for index, raw in enumerate(raw_events):
            event, errors = validate_event(raw)
            if event is None:
                rejected.append(Rejected(index, errors))
            else:
                valid.append(event)
                where.append(index)
        result = self._ingest_valid(valid)
        if result.refused:
            rejected.extend(Rejected(where[n], reasons) for n, reasons in result.refused)
            rejected.sort(key=lambda r: r.index)
        last = result.accepted[-1][0] if result.accepted else 0
        return IngestResult(len(result.accepted), result.duplicates, rejected, last)

    def ingest_all(
        self,
        events: Iterable[Event],
        batch: int = 2000,
        progress: Callable[[int], None] | None = None,
        checkpoint: bool = False,
    ) -> BulkResult:
        """Bulk-load events in batches through :meth:`ingest` (validated, idempotent by
        ``event_id``); returns what was accepted, what was already in the log and what was refused,
        by reason. Give a user's events in time order: one more than ``allowed_lateness_ms`` older
        than the user's newest is refused (``sessions.lateness``).

        ``checkpoint``: also write explain's checkpoints from this fold as it goes (embedded, when
        the state is the fold of the log up to its newest checkpoint; ``checkpoints.StoreCheckpoints``),
        so no second fold of the history is needed (:meth:`write_checkpoints` then has nothing
        left to fold). ``BulkResult.checkpoints`` says how many were written."""
        out = BulkResult()
        chunk: list[Event] = []
        with self._lock:
            writer = self._store_checkpoints() if checkpoint else None
            self._checkpointing = writer

        def flush() -> None:
            r = self.ingest(chunk)
            out.accepted += len(r.accepted)
            out.duplicates += r.duplicates
            for n, reasons in r.refused:
                why = f"{reasons[0].field}: expected {reasons[0].expected}"
                out.refused[why] += 1
                out.examples.setdefault(why, chunk[n].event_id)
            if progress is not None:
                progress(len(chunk))
            chunk.clear()

        try:
            for event in events:
                chunk.append(event)
                if len(chunk) >= batch:
                    flush()
            if chunk:
                flush()
            if writer is not None:
                with self._lock:
                    writer.checkpoint()  # at the end: explaining the next list folds only what follows
                out.checkpoints = writer.taken
        finally:
            self._checkpointing = None
        if out.refused:
            logger.warning("bulk load: %s", out.summary())
        return out

    # -- reads ----------------------------------------------------------------------------------
    def state(self, user_id: str) -> SessionState | None:
        return self.store.get_session(user_id)

    def recommend(self, req: RecommendRequest) -> RecommendResponse:
        if not req.request_id or not req.now_ms:
            req = replace(req, request_id=req.request_id or uuid.uuid4().hex, now_ms=req.now_ms or self.clock.now_ms())
        started = time.perf_counter()
        surface = self.recommender.surface(req.surface)
        try:
            return self._recommend(req, surface, started)
        except StoreUnavailable as exc:
            # Redis is slow or down: popularity alone, no state read, within the budget.
            response = self.recommender.recommend(req, None, no_activity, "popular")
            response = replace(response, cut=(*response.cut, "store"), degraded=exc.message)
            if self.requests is not None:
                self.requests.write(self._manifest(req, None, 0, "popular", (), response, None))
            return response

    def _recommend(self, req: RecommendRequest, surface: SurfaceConfig, started: float) -> RecommendResponse:
        # Under the ingest lock: the state, the item activity the ranker reads and the log
        # position the manifest records all describe the same moment. (On Redis the position is
        # the user's last folded event: the partitions have no common one.)
        if not self.folds_inline:
            self.models.poll()  # another server may have swapped the model (one read a second)
        with self._lock:
            view = self.lists.read(req, surface)  # the session and the lists kept for it: one read
            state = view.state
            if self.folds_inline:
                position = self.store.applied_position()
            else:
                position = state.log_position if state is not None else 0
            previous = self.lists.previous(view, req)
            kept = self.lists.lookup(view, surface, req, lambda: self._intent(req, state), self.model.version)
            tier = self.tiers.tier(req.surface)
            if kept is None:
                response = self.recommender.recommend(
                    req,
                    state,
                    self.activity,
                    tier,
                    previous,
                    neighbours=self.neighbours,
                    feedback=self.bandit.counts,
                    seed=seed_of(req.request_id, state.session_version if state else 0),
                    factors=self.factors,
                )
        if kept is not None:
            response = replace(
                kept.response,
                request_id=req.request_id,
                session_version=state.session_version if state else 0,
                cached=True,
                timings_ms={"total": round((time.perf_counter() - started) * 1000, 3)},
            )
        else:
            self.tiers.record(req.surface, (time.perf_counter() - started) * 1000)
        ids = [i.item_id for i in response.items]
        self.lists.record(view, surface, req, ids, response if kept is None else None)
        if self.exploring:
            self.bandit.shown(ids)
        if self.requests is not None:
            origin = kept.response.request_id if kept is not None else None
            self.requests.write(self._manifest(req, state, position, tier, previous, response, origin))
        return replace(response, churn=churn_at_k(previous, ids, req.k) if previous else None)

    def _manifest(
        self,
        req: RecommendRequest,
        state: SessionState | None,
        position: int,
        tier: str,
        previous: Sequence[str],
        response: RecommendResponse,
        origin: str | None,
    ) -> Manifest:
        version = state.session_version if state else 0
        return Manifest(
            request_id=req.request_id,
            user_id=req.user_id,
            surface=req.surface,
            k=req.k,
            context={k: req.context[k] for k in CONTEXT_READ if k in req.context},
            now_ms=req.now_ms,
            log_position=position,
            session_version=version,
            model_version=response.model_version,
            config=self.config_version,
            seed=seed_of(req.request_id, version),
            tier_asked=tier,
            tier=response.tier,
            cut=list(response.cut),
            skipped_sources=list(response.skipped_sources),
            ranked_rows=response.ranked_rows,
            previous=list(previous),
            items=[i.item_id for i in response.items],
            cached_from=origin,
            explored=list(response.explored),
            factors_version=response.factors_version,
            filters=req.filters.to_dict() or None,
        )

    def explain(self, request_id: str) -> Explanation:
        """Recompute a served list from its manifest and the event log (see ``insession.explain``)."""
        if self.requests is None:
            raise NotFound("request_id: this engine keeps no request manifests")
        if not self.folds_inline:
            raise Unsupported(
                "explain: needs the embedded event log (store = memory); on Redis the stream partitions "
                "have no common position to replay to"
            )
        model, _ = self.model_serving(request_id)
        return Explainer(model, self.settings, self.log, self.requests, self.checkpoints).explain(request_id)

    def _store_checkpoints(self) -> StoreCheckpoints | None:
        """A writer of explain's checkpoints from the serving fold (``ingest_all``), or ``None``
        when the state is not known to be the fold of the log up to its newest checkpoint (then
        :meth:`write_checkpoints` folds the log instead)."""
        if self.requests is None or self.checkpoints is None or not self.folds_inline:
            return None
        fp = fingerprint_of(self.settings, self.model)
        known = self.checkpoints.positions(fp)
        newest = known[-1] if known else 0
        if newest != self.log.last_position() or newest != self.store.applied_position():
            return None
        every_ms = int(self.settings.checkpoint_every_s * 1000)
        return StoreCheckpoints(
            self.checkpoints, fp, self.store, self.factors, self.settings.checkpoint_every_events, every_ms
        )

    def write_checkpoints(self, progress: Callable[[int, int], object] | None = None, step: int = 20_000) -> int:
        """Fold the event log into replay checkpoints up to its end (what the server's explanation
        process does in idle time), so the first explanation after a large import does not fold the
        whole log. ``progress(folded, total)`` after each step. Returns the events folded (0 on Redis:
        explain needs the embedded log)."""
        if self.requests is None or self.checkpoints is None or not self.folds_inline:
            return 0
        # This process holds the whole serving state already; the fold's decoded copy may be as
        # large (at most doubling it) instead of dropping it at every checkpoint past
        # explain_cache_entries and reading it back value by value (150k events of the scale bench: 58 s
        # against 34 s).
        explainer = Explainer(self.model, self.settings, self.log, self.requests, self.checkpoints, max_loaded=2**62)
        known = self.checkpoints.positions(fingerprint_of(self.settings, self.model))
        total = max(self.log.last_position() - (known[-1] if known else 0), 0)
        done = 0
        while (read := explainer.follow(max_events=step)) > 0:
            done += read
            if progress is not None:
                progress(done, total)
        explainer.checkpoint()  # at the end of the log: explaining the next list folds only what follows
        return done

    def model_serving(self, request_id: str) -> tuple[ModelBundle, Path | None]:
        """The model (and its directory) that computed the list of ``request_id``: the one served
        now, or one active before a swap (``model_swap.py``); the current one if unknown (explain
        then says which version it needs)."""
        served = self.requests.get(request_id) if self.requests is not None else None
        if served is not None and served.cached_from is not None and self.requests is not None:
            served = self.requests.get(served.cached_from) or served
        version = served.model_version if served is not None else self.model.version
        model = self.models.model_for(version) or self.model
        return model, self.models.directory(model.version) or self.settings.model_dir

    def forget(self, user_id: str) -> ForgetResult:
        """Erase a user: their events from the log (compacted), the checkpoints and the state, the
        lists kept for them and their manifests; their share of item aggregates stays, anonymised
        (``insession.forget``)."""
        if isinstance(self.log, SqliteEventLog):  # the long fold, outside the ingest lock
            prepare_forget(user_id, self.settings, self.model, self.log, self.checkpoints)
        with self._lock:
            if isinstance(self.log, RedisStreamEventLog):
                health = self.store_health()
                backlog = int(health.get("fold_backlog", 0)) + int(health.get("item_backlog", 0))
                now = self.clock.now_ms()
                return forget_on_redis(user_id, self.settings, self.log, self.store, self.requests, backlog, now)
            if not isinstance(self.log, SqliteEventLog) or not isinstance(self.store, MemoryFeatureStore):
                raise Unsupported("forget: needs the embedded log and store, or Redis")
            result = forget_embedded(
                user_id,
                self.settings,
                self.model,
                self.log,
                self.store,
                self.checkpoints,
                self.requests,
                self.clock.now_ms(),
            )
            self._snapshot_locked()  # the snapshot on disk held the user's state: rewritten now
            return result

    def _intent(self, req: RecommendRequest, state: SessionState | None) -> npt.NDArray[np.float32]:
        """The current session embedding, for deciding whether a kept list still fits."""
        timeout = self.settings.session.timeout_ms
        return build_profile(state, self.model, req.now_ms, timeout, self.recommender.cfg.profile).session_embedding

    # -- lifecycle ------------------------------------------------------------------------------
    def snapshot(self) -> bool:
        """Write the state snapshot now; ``False`` when it failed (logged and counted)."""
        with self._lock:
            return self._snapshot_locked()

    def _purge_locked(self) -> None:
        """Drop the embedded store's expired state (users past ``state_ttl_s``, with the lists they
        were shown), once a minute, so memory follows the live users rather than every user ever
        seen (Redis expires keys itself)."""
        now = self.clock.now_ms()
        if now - self._purged_at >= PURGE_EVERY_MS and isinstance(self.store, MemoryFeatureStore):
            self._purged_at = now
            removed = self.store.purge_expired()
            if removed:
                logger.info("dropped %d expired store entries", removed)

    def _snapshot_locked(self) -> bool:
        """Write the state snapshot; on failure (disk full, read-only directory) log and count it,
        remove the partial file, and retry ``SNAPSHOT_RETRY_S`` later: nothing is lost, the log
        holds every event and a restart folds those after the last good snapshot."""
        if self.snapshot_path is None or not isinstance(self.store, MemoryFeatureStore):
            return True
        started = time.monotonic()
        try:
            if self.factors is not None:
                self.store.put_many(CATALOG_NAMESPACE, {FACTORS_KEY: self.factors.to_bytes()}, CATALOG_TTL_S)
            self.store.snapshot(self.snapshot_path)
        except (OSError, InsessionError) as exc:
            error = f"snapshot {self.snapshot_path}: {exc}"
            self.disk.snapshot_failed(error)
            self._snapshot_due = time.monotonic() + SNAPSHOT_RETRY_S
            with contextlib.suppress(OSError):
                self.snapshot_path.with_name(self.snapshot_path.name + ".tmp").unlink(missing_ok=True)
            logger.error("%s; the event log keeps every event, next try in %.0f s", error, SNAPSHOT_RETRY_S)
            return False
        self._since_snapshot = 0
        done = time.monotonic()
        self._snapshot_due = done + SNAPSHOT_SPACING * (done - started)
        return True

    def store_health(self) -> dict[str, Any]:
        """The store's kind and health: on Redis whether it is a Cluster, whether it answers now,
        failures since start, the last error, the L1 cache's size and hit rate, and what the
        workers have still to fold (events into sessions, item updates into item state)."""
        if self.guard is None:
            error = self.disk.check()
            return {
                "kind": "memory",
                "up": error is None,
                "items_not_joined": self.items_not_joined,
                "last_error": error,
                "write_failures": self.disk.write_failures,
                "snapshot_failures": self.disk.snapshot_failures,
                "last_snapshot_error": self.disk.last_snapshot_error,
            }
        out: dict[str, Any] = {
            "kind": "redis",
            "cluster": self.settings.store.startswith("redis+cluster://"),
            "up": self.guard.available,
            "failures": self.guard.failures,
            "last_error": self.guard.last_error,
        }
        if isinstance(self.store, CachedStore):
            out.update(l1_entries=len(self.store), l1_hit_rate=round(self.store.hit_rate, 4))
        if isinstance(self.log, RedisStreamEventLog) and out["up"]:
            log = self.log
            try:
                out["fold_backlog"] = log.backlog(GROUP)
                out["item_backlog"] = log.guard.call("item_backlog", lambda: item_backlog(log.client, log.keys))
            except StoreUnavailable:
                out["up"] = False
        return out

    def capped_events(self) -> int:
        """Events the guard rail kept out of item activity, folded here or by this process's workers."""
        return self.fold_stats.capped + sum(worker.stats.capped for worker, _ in self._workers)

    def users_with_most_history(self, n: int = 3) -> list[str]:
        """Up to ``n`` users with the most interactions kept in state, most first (the demo page's
        "user with a long history"); empty on Redis, where finding them means a scan."""
        if not isinstance(self.store, MemoryFeatureStore):
            return []
        sizes = []
        for user in self.store.users()[:10_000]:  # a bounded look: this serves a demo, not a query
            state = self.store.get_session(user)
            if state is not None:
                sizes.append((-(len(state.history) + len(state.events)), user))
        return [user for _, user in sorted(sizes)[:n]]

    def live_users(self) -> int | None:
        """Users with state in the embedded store (``None`` on Redis, where counting means a scan)."""
        return len(self.store) if isinstance(self.store, MemoryFeatureStore) else None

    def close(self) -> None:
        """Stop the workers, write the final snapshot (a failure is logged: the next start folds the
        log after the last good one), close the logs."""
        self._stop.set()
        for _, thread in self._workers:
            thread.join(timeout=10)
        self.snapshot()
        self.log.close()
        if self.requests is not None:
            self.requests.close()
        if self.checkpoints is not None:
            self.checkpoints.close()
