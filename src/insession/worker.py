"""Stream workers: fold the Redis event streams into the Redis feature store, exactly once.

Ownership. Each stream partition has a lease (``{prefix}:{s:<p>}:lease``, a token with a TTL of
``lease_ms``). A worker announces itself in ``{prefix}:workers`` (a sorted set scored by when its
heartbeat expires), takes free leases up to its fair share (``ceil(partitions / live workers)``),
renews them on every step and gives back what is above its share, so partitions spread over the
live workers and a dead worker's partitions are taken over once its leases lapse.

Delivery. Workers read a partition through the consumer group ``fold``: first their own pending
entries (delivered before, not yet acknowledged), then new ones. On taking a partition over, a
worker first claims every pending entry of the consumer group (``XAUTOCLAIM``), so what a dead
worker had read but not applied is applied by its successor, in stream order.

Exactly once. A batch is applied in one ``MULTI``/``EXEC`` transaction that writes the folded
session states and item activity, records the partition's applied position and ``XACK``s the
entries. The transaction ``WATCH``es the partition's lease and the item-activity keys it read, so
it aborts if the lease changed hands (a worker that stalled past its lease can never write) or if
another worker changed one of those items meanwhile (then the batch is re-read and folded again).
A worker killed at any point has either applied and acknowledged a batch as a whole or not at all.

The transaction spans many users' keys, so workers need one Redis primary (not Cluster); the
feature store reads alone work on Cluster.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from insession.clock import Clock, SystemClock
from insession.config import Settings
from insession.errors import StoreUnavailable
from insession.events import Event
from insession.features.activity import NAMESPACE as ACTIVITY_NAMESPACE
from insession.fold import FoldStats, fold_event
from insession.log.redis_stream import decode_entry, position_of
from insession.online import covisit
from insession.sessions import SessionState
from insession.store.memory import MemoryFeatureStore
from insession.store.redis import Keys, RedisFeatureStore, RedisGuard

logger = logging.getLogger(__name__)

GROUP = "fold"
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(slots=True)
class WorkerStats:
    applied: int = 0
    batches: int = 0
    conflicts: int = 0
    claimed: int = 0
    lost_leases: int = 0
    #: Events over their user's share of an item, kept out of item activity (the guard rail).
    capped: int = 0
    owned: list[int] = field(default_factory=list)


class StreamWorker:
    def __init__(
        self,
        client: Any,
        settings: Settings,
        name: str | None = None,
        clock: Clock | None = None,
        batch: int = 200,
        lease_ms: int = 5000,
        prefix: str = "is",
    ) -> None:
        if batch < 1 or lease_ms < 100:
            raise ValueError("worker: expected batch >= 1 and lease_ms >= 100")
        self.client = client
        self.settings = settings
        self.partitions = settings.stream_partitions
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.clock = clock or SystemClock()
        self.batch = batch
        self.lease_ms = lease_ms
        self.keys = Keys(prefix)
        self.store = RedisFeatureStore(client, self.clock, prefix, RedisGuard(retry_ms=0))
        self.stats = WorkerStats()
        self._owned: set[int] = set()
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._groups_missing = False
        self._capped_in_batch = 0
        self._followed: list[str] = []  # the online co-visitation lists the batch read
        self._followed_before: dict[str, bytes] = {}
        self.ensure_groups()

    def ensure_groups(self) -> None:
        """Create each partition's stream and consumer group if missing (first start, or a Redis
        that came back empty); the group starts at the stream's beginning."""
        import redis

        for p in range(self.partitions):
            try:
                self.client.xgroup_create(self.keys.stream(p), GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:  # BUSYGROUP: it exists already
                if "BUSYGROUP" not in str(exc):
                    raise

    @property
    def owned(self) -> list[int]:
        return sorted(self._owned)

    # -- ownership ------------------------------------------------------------------------------
    def _balance(self) -> None:
        now = time.time() * 1000
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self.keys.workers(), {self.name: now + self.lease_ms})
        pipe.zremrangebyscore(self.keys.workers(), "-inf", now)
        pipe.zcard(self.keys.workers())
        live = max(int(pipe.execute()[-1]), 1)
        share = math.ceil(self.partitions / live)
        owned = sorted(self._owned)
        renew = self.client.pipeline(transaction=False)
        for p in owned:
            self._renew(keys=[self.keys.lease(p)], args=[self.name, self.lease_ms], client=renew)
        for p, kept in zip(owned, renew.execute() if owned else [], strict=True):
            if not kept:
                self._owned.discard(p)
                self.stats.lost_leases += 1
        while len(self._owned) > share:
            p = max(self._owned)
            self._release(keys=[self.keys.lease(p)], args=[self.name])
            self._owned.discard(p)
        if len(self._owned) < share:
            start = zlib.crc32(self.name.encode()) % self.partitions
            for i in range(self.partitions):
                p = (start + i) % self.partitions
                if p in self._owned:
                    continue
                if self.client.set(self.keys.lease(p), self.name, nx=True, px=self.lease_ms):
                    self._owned.add(p)
                    self._claim(p)
                    if len(self._owned) >= share:
                        break
        self.stats.owned = self.owned

    def _claim(self, partition: int) -> None:
        """Make every pending entry of the partition ours (a dead worker's unapplied batch)."""
        start = "0-0"
        while True:
            reply = self.client.xautoclaim(
                self.keys.stream(partition), GROUP, self.name, min_idle_time=0, start_id=start, count=1000
            )
            self.stats.claimed += len(reply[1])
            start = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
            if start == "0-0":
                return

    def release(self) -> None:
        """Give back every lease and leave the worker set (a clean stop; a crash just lapses)."""
        for p in sorted(self._owned):
            self._release(keys=[self.keys.lease(p)], args=[self.name])
        self._owned.clear()
        self.client.zrem(self.keys.workers(), self.name)

    # -- folding --------------------------------------------------------------------------------
    def _read(self, block_ms: int) -> dict[int, list[tuple[bytes, dict[Any, Any]]]]:
        """Up to ``batch`` entries per owned partition: our pending ones (delivered, not applied)
        first, else new ones, waiting up to ``block_ms`` for any to arrive."""
        streams = {self.keys.stream(p): p for p in self.owned}
        if not streams:
            return {}
        out: dict[int, list[tuple[bytes, dict[Any, Any]]]] = {}
        for start in ("0", ">"):
            block = block_ms if start == ">" and block_ms > 0 else None
            reply = self.client.xreadgroup(
                GROUP, self.name, dict.fromkeys(streams, start), count=self.batch, block=block
            )
            for name, entries in reply or []:
                key = name.decode() if isinstance(name, bytes) else name
                if entries:
                    out[streams[key]] = list(entries)
            if out:
                return out
        return out

    def _apply(self, partition: int, entries: Sequence[tuple[bytes, dict[Any, Any]]]) -> bool:
        """Fold ``entries`` in one transaction; ``False`` if the lease was lost."""
        import redis

        batch = [(position_of(entry_id), decode_entry(fields)) for entry_id, fields in entries if fields]
        if not batch:  # entries trimmed from the stream before anyone applied them
            self.client.xack(self.keys.stream(partition), GROUP, *[entry_id for entry_id, _ in entries])
            return True
        users = list(dict.fromkeys(e.user_id for _, e in batch))
        items = list(dict.fromkeys(e.item_id for _, e in batch if e.item_id is not None))
        lease = self.keys.lease(partition)
        item_keys = [self.keys.value(ACTIVITY_NAMESPACE, i) for i in items]
        ttl = self.settings.state_ttl_s
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(lease, *item_keys)
                    if pipe.get(lease) != self.name.encode():
                        return False
                    staged = self._stage(pipe, users, item_keys, items, batch)
                    pipe.multi()
                    for user in users:
                        found = staged.get_session(user)
                        if found is not None:
                            self.store.stage_session(pipe, user, found, ttl)
                    folded = zip(items, staged.get_many(ACTIVITY_NAMESPACE, items), strict=True)
                    values = {i: v for i, v in folded if v is not None}
                    self.store.stage_many(pipe, ACTIVITY_NAMESPACE, values, ttl)
                    learned = zip(self._followed, staged.get_many(covisit.NAMESPACE, self._followed), strict=True)
                    changed = {i: v for i, v in learned if v is not None and v != self._followed_before.get(i)}
                    self.store.stage_many(pipe, covisit.NAMESPACE, changed, ttl)
                    pipe.set(self.keys.applied(partition), batch[-1][0])
                    pipe.xack(self.keys.stream(partition), GROUP, *[entry_id for entry_id, _ in entries])
                    pipe.execute()
                    self.stats.capped += self._capped_in_batch
                    return True
                except redis.WatchError:
                    self.stats.conflicts += 1
                    continue

    def _stage(
        self, pipe: Any, users: list[str], item_keys: list[str], items: list[str], batch: list[tuple[int, Event]]
    ) -> MemoryFeatureStore:
        """Read the batch's users and items (one round trip, inside the WATCH) into a staging store
        and fold the batch there."""
        raws = pipe.mget([self.keys.session(u) for u in users] + item_keys) if users or item_keys else []
        staged = MemoryFeatureStore(self.clock)
        ttl = self.settings.state_ttl_s
        for user, raw in zip(users, raws[: len(users)], strict=True):
            payload = self.store.unwrap(raw)
            if payload is not None:
                staged.put_session(user, SessionState.from_bytes(payload), ttl)
        activity = {i: p for i, r in zip(items, raws[len(users) :], strict=True) if (p := self.store.unwrap(r))}
        staged.put_many(ACTIVITY_NAMESPACE, activity, ttl)
        # Online co-visitation: the lists of every item an event of the batch can follow (the
        # batch's items and the last items of its users' sessions), read and watched as well.
        followed: dict[str, None] = dict.fromkeys(items) if self.settings.learn_online else {}
        if followed:
            for user in users:
                state = staged.get_session(user)
                if state is not None:
                    followed.update(dict.fromkeys(i for i, _ in covisit.previous_items(state.events)))
        self._followed = list(followed)
        self._followed_before = {}
        if self._followed:
            keys = [self.keys.value(covisit.NAMESPACE, i) for i in self._followed]
            pipe.watch(*keys)
            raws = pipe.mget(keys)
            self._followed_before = {
                i: p for i, r in zip(self._followed, raws, strict=True) if (p := self.store.unwrap(r))
            }
            staged.put_many(covisit.NAMESPACE, self._followed_before, ttl)
        fold = FoldStats()
        for position, event in batch:
            fold_event(staged, position, event, self.settings.session, ttl, fold, self.settings.learn_online)
        self._capped_in_batch = fold.capped
        return staged

    def step(self, block_ms: int = 0) -> int:
        """One round: heartbeat and leases, then at most one batch per owned partition (waiting up
        to ``block_ms`` for new entries). Returns how many events were applied."""
        if self._groups_missing:
            self.ensure_groups()
            self._groups_missing = False
        self._balance()
        applied = 0
        for p, entries in sorted(self._read(block_ms).items()):
            if self._apply(p, entries):
                applied += len(entries)
                self.stats.batches += 1
            else:
                self._owned.discard(p)
                self.stats.lost_leases += 1
        self.stats.applied += applied
        return applied

    def drain(self, max_steps: int = 100_000) -> int:
        """Step until a round applies nothing (tests, the Python API); returns events applied."""
        total = 0
        for _ in range(max_steps):
            n = self.step()
            total += n
            if n == 0:
                return total
        return total

    def run(self, stop: threading.Event, block_ms: int = 100, on_step: Callable[[int], None] | None = None) -> None:
        """Step until ``stop`` is set, waiting up to ``block_ms`` for new events each round; back
        off (and keep trying) while Redis is unavailable."""
        import redis

        backoff = 0.05
        try:
            while not stop.is_set():
                try:
                    n = self.step(min(block_ms, self.lease_ms // 4))
                    backoff = 0.05
                    if not self._owned:
                        stop.wait(min(block_ms, self.lease_ms // 4) / 1000.0)
                except (redis.RedisError, StoreUnavailable) as exc:
                    logger.warning("worker %s: Redis unavailable (%s); retrying", self.name, exc)
                    n, backoff = 0, min(backoff * 2, 1.0)
                    stop.wait(backoff)
                    if "NOGROUP" in str(exc):  # Redis came back empty: groups are made next round
                        self._owned.clear()
                        self._groups_missing = True
                if on_step is not None:
                    on_step(n)
        finally:
            try:
                self.release()
            except redis.RedisError:
                logger.warning("worker %s: could not release its leases; they will lapse", self.name)
