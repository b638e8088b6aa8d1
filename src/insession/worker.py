"""Stream workers: fold the Redis event streams into Redis state, exactly once, on one Redis or a
Redis Cluster, with single-slot scripts only.

The fold (``fold.py``) runs in two halves, each committed by one Lua script whose keys share one
Cluster slot (the key layout is ``redis_backend.Keys``, written down in ``docs/redis.md``):

User half, per stream partition ``p`` (hash tag ``{s:<p>}``). A batch of the partition's events,
read through the consumer group ``fold``, is folded into its users' session states
(``sessions.apply``, read with one ``MGET``: a partition's users share its slot), and each event's
effects on shared item state are derived from its user's state alone (``fold.item_effects``). One
script then checks the partition's lease token, writes the session states, appends the batch's
item effects to the outboxes ``{s:<p>}:out:<q>`` (one entry per value partition ``q`` touched, its
id the position of the batch's last event), records the partition's applied position and
``XACK``s the entries. A worker killed at any point has committed a batch entirely or not at all.

Item half, per value partition ``q`` (hash tag ``{v:<q>}``). The inbox ``{v:<q>}:in`` records, per
source partition, the id of the last outbox entry folded in, and a version. The worker reads the
outbox entries after those ids, the item values they touch (one ``MGET``), folds them with
``fold.apply_item_effects``, and commits with one script that checks the version is still the one
it read (else someone committed meanwhile: the round is redone), writes the values, moves the
inbox ids and bumps the version. Folded outbox entries are trimmed afterwards (an outbox left
empty is deleted; its ids are event positions, so a new one continues where it left off).

Exactly once. Each event is folded into its user's state, and its item effects written, in one
committed user script (fenced by the lease token); each outbox entry is folded into item state in
one committed item script (serialised by the inbox version). Item updates commute (activity sums
decayed weights and keeps the newest times; co-visitation adds weights), so the state equals the
same events folded once in memory, up to float rounding, however partitions interleave.

Ownership. Each stream partition has a lease (``{s:<p>}:lease``: ``<worker name>|<token>``, the
token new at each acquisition, with a TTL of ``lease_ms``). A worker announces itself in
``{prefix}:workers`` (a sorted set scored by when its heartbeat expires), takes free leases up to
its fair share (``ceil(partitions / live workers)``), renews them on every step and gives back
what is above its share, so partitions spread over the live workers and a dead worker's are taken
over once its leases lapse. The worker that holds user partition ``p`` also folds value partition
``p``. On taking a partition over, a worker claims every pending entry of the consumer group
(``XAUTOCLAIM``) and applies those first, so each user's events stay in order.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from insession.clock import Clock, SystemClock
from insession.config import Settings
from insession.errors import StoreUnavailable
from insession.events import Event, EventType
from insession.features.activity import NAMESPACE as ACTIVITY_NAMESPACE
from insession.fold import ItemEffects, apply_item_effects, item_effects
from insession.log.redis_stream import decode_entry, entry_id_of, position_of
from insession.online import covisit
from insession.redis_backend import Keys, RedisGuard, is_cluster, queue, redis_errors, run_script
from insession.sessions import SessionState, apply, lateness
from insession.store.memory import MemoryFeatureStore
from insession.store.redis import RedisFeatureStore

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
# KEYS: lease, applied, stream, the outboxes (ARGV[4] of them), then the session keys.
# ARGV: token, group, applied position, #outboxes, outbox entry id, #acks, the ack ids, one
# payload per outbox, then (value, PX) per session key.
_COMMIT_USERS = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local n_out, n_ack = tonumber(ARGV[4]), tonumber(ARGV[6])
local acks = 7
local payloads = acks + n_ack
for i = 1, n_out do
  redis.call('XADD', KEYS[3 + i], ARGV[5], 'u', ARGV[payloads + i - 1])
end
local values = payloads + n_out
for k = 4 + n_out, #KEYS do
  local j = values + 2 * (k - 4 - n_out)
  redis.call('SET', KEYS[k], ARGV[j], 'PX', ARGV[j + 1])
end
redis.call('SET', KEYS[2], ARGV[3])
for s = acks, payloads - 1, 1000 do
  redis.call('XACK', KEYS[3], ARGV[2], unpack(ARGV, s, math.min(s + 999, payloads - 1)))
end
return 1
"""
# KEYS: inbox, then the value keys. ARGV: the inbox version read, #sources, (source, id of the
# last outbox entry folded) per source, then (value, PX) per value key.
_COMMIT_ITEMS = """
if (redis.call('HGET', KEYS[1], 'version') or '0') ~= ARGV[1] then return 0 end
local n = tonumber(ARGV[2])
local values = 3 + 2 * n
for k = 2, #KEYS do
  local j = values + 2 * (k - 2)
  redis.call('SET', KEYS[k], ARGV[j], 'PX', ARGV[j + 1])
end
for i = 0, n - 1 do
  redis.call('HSET', KEYS[1], ARGV[3 + 2 * i], ARGV[4 + 2 * i])
end
redis.call('HINCRBY', KEYS[1], 'version', 1)
return 1
"""
# KEYS: an outbox. ARGV: the lowest entry id to keep.
_TRIM = """
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
if redis.call('XLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
return 1
"""


def lease_holder(raw: bytes | str | None) -> str | None:
    """The name of the worker a lease value belongs to (``None``: no lease)."""
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    return text.rpartition("|")[0]


def encode_effects(effects: Sequence[ItemEffects]) -> str:
    """An outbox entry: item effects as JSON (each ``[event, bump, follows]``)."""
    return json.dumps(
        [[e.event.to_dict(), int(e.bump), [list(f) for f in e.follows]] for e in effects], separators=(",", ":")
    )


def decode_effects(payload: bytes | str) -> list[ItemEffects]:
    """The item effects of an outbox entry. Its events were validated when they were appended and
    written here by a worker, so they are rebuilt as they are, not validated a second time."""
    return [
        ItemEffects(_event_of(event), False, bool(bump), tuple((str(p), float(w)) for p, w in follows))
        for event, bump, follows in json.loads(payload)
    ]


def _event_of(d: dict[str, Any]) -> Event:
    return Event(
        d["event_id"],
        d["user_id"],
        EventType(d["type"]),
        int(d["ts"]),
        d.get("item_id"),
        d.get("session_id"),
        d.get("properties") or {},
    )


def item_backlog(client: Any, keys: Keys) -> int:
    """Outbox entries (each a batch's item updates for one value partition) not yet folded into
    item state, over all partitions: folded entries are trimmed, so this is what the outboxes hold."""
    pipe = client.pipeline(transaction=False)
    for p in range(keys.partitions):
        for q in range(keys.partitions):
            pipe.xlen(keys.outbox(p, q))
    return int(sum(pipe.execute()))


@dataclass(slots=True)
class WorkerStats:
    applied: int = 0
    batches: int = 0
    #: Item rounds redone because another worker committed to the value partition meanwhile.
    conflicts: int = 0
    claimed: int = 0
    lost_leases: int = 0
    #: Events over their user's share of an item, kept out of item activity (the guard rail).
    capped: int = 0
    #: Events skipped as too late for their user's state (a server admitted them before the
    #: user's newer events were folded; the embedded engine refuses them).
    late: int = 0
    #: Outbox entries folded into item state, and the item commits that did it.
    item_entries: int = 0
    item_batches: int = 0
    #: Rounds run (``step``); the worker's round trips are its guard's ``calls``.
    rounds: int = 0
    owned: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Inbox:
    """A value partition's inbox as last read or committed by this worker."""

    version: int
    folded: dict[int, str]  # source partition -> id of the last outbox entry folded


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
        item_entries: int = 4,
    ) -> None:
        if batch < 1 or lease_ms < 100 or item_entries < 1:
            raise ValueError("worker: expected batch >= 1, lease_ms >= 100 and item_entries >= 1")
        self.client = client
        self.settings = settings
        self.partitions = settings.stream_partitions
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.clock = clock or SystemClock()
        self.batch = batch
        self.lease_ms = lease_ms
        #: Outbox entries read per source partition per item round.
        self.item_entries = item_entries
        self.keys = Keys(prefix, self.partitions)
        self.guard = RedisGuard(retry_ms=0)
        self.store = RedisFeatureStore(client, self.clock, prefix, self.guard, self.partitions)
        self.cluster = is_cluster(client)
        #: On a Cluster a blocking read cannot span partitions: an idle worker polls, first after
        #: this long (doubling while it stays idle, up to the ``block_ms`` of :meth:`run`).
        self.poll_ms = 10
        #: How often :meth:`run` looks for other workers' item updates (its own are folded at once):
        #: every ``item_scan_ms`` while there are some, slowing (doubling) to ``item_scan_max_ms``
        #: while there are none.
        self.item_scan_ms = 100.0
        self.item_scan_max_ms = 1000.0
        self._scan_every_ms = self.item_scan_ms
        self.stats = WorkerStats()
        self._owned: dict[int, str] = {}  # partition -> lease token
        self._maybe_pending: set[int] = set()  # partitions whose pending entries are read first
        self._inbox: dict[int, _Inbox] = {}
        self._dirty: set[int] = set()  # value partitions this worker has just written outboxes to
        self._scanned_at = 0.0
        self._groups_missing = False
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

    def _call(self, what: str, pipe: Any) -> list[Any]:
        return list(self.guard.call(what, pipe.execute))

    # -- ownership ------------------------------------------------------------------------------
    def _balance(self) -> None:
        now = time.time() * 1000
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self.keys.workers(), {self.name: now + self.lease_ms})
        pipe.zremrangebyscore(self.keys.workers(), "-inf", now)
        pipe.zcard(self.keys.workers())
        live = max(int(self._call("heartbeat", pipe)[-1]), 1)
        share = math.ceil(self.partitions / live)
        owned = self.owned
        if owned:
            renew = self.client.pipeline(transaction=False)
            for p in owned:
                run_script(renew, _RENEW, [self.keys.lease(p)], [self._owned[p], self.lease_ms])
            for p, kept in zip(owned, self._call("renew", renew), strict=True):
                if not kept:
                    self._drop(p)
                    self.stats.lost_leases += 1
        while len(self._owned) > share:
            self._give_back(max(self._owned))
        if len(self._owned) < share:
            start = self.keys.user_partition(self.name)
            for i in range(self.partitions):
                p = (start + i) % self.partitions
                if p in self._owned:
                    continue
                if self._take(p):
                    self._claim(p)
                    if len(self._owned) >= share:
                        break
        self.stats.owned = self.owned

    def _take(self, partition: int) -> bool:
        """Take the partition's lease if it is free, with a token new to this acquisition."""
        lease, token = self.keys.lease(partition), f"{self.name}|{uuid.uuid4().hex[:12]}"
        if not self.guard.call("take lease", lambda: self.client.set(lease, token, nx=True, px=self.lease_ms)):
            return False
        self._owned[partition] = token
        return True

    def _drop(self, partition: int) -> None:
        self._owned.pop(partition, None)
        self._maybe_pending.discard(partition)
        self._inbox.pop(partition, None)

    def _claim(self, partition: int) -> None:
        """Make every pending entry of the partition ours (a dead worker's unapplied batch), to be
        applied before new ones; the partition's inbox is read afresh on its next item round."""
        start = "0-0"
        while True:
            reply = self.guard.call(
                "claim",
                lambda s=start: self.client.xautoclaim(  # type: ignore[misc]
                    self.keys.stream(partition), GROUP, self.name, min_idle_time=0, start_id=s, count=1000
                ),
            )
            self.stats.claimed += len(reply[1])
            start = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
            if start == "0-0":
                break
        self._maybe_pending.add(partition)
        self._inbox.pop(partition, None)

    def release(self) -> None:
        """Give back every lease and leave the worker set (a clean stop; a crash just lapses)."""
        for p in self.owned:
            self._give_back(p)
        self.guard.call("leave", lambda: self.client.zrem(self.keys.workers(), self.name))

    def _give_back(self, partition: int) -> None:
        lease, token = self.keys.lease(partition), self._owned[partition]
        self.guard.call("give back", lambda: self.client.execute_command("EVAL", _RELEASE, 1, lease, token))
        self._drop(partition)

    # -- the user half ----------------------------------------------------------------------------
    def _read(self, block_ms: int) -> dict[int, list[tuple[bytes, dict[Any, Any]]]]:
        """Up to ``batch`` entries per owned partition, in one pipeline: our pending ones
        (delivered, not applied) first where there may be some, else new ones. (Where both are
        read, the new ones stay pending for us and come first next time.) On one Redis, when
        there is nothing, wait up to ``block_ms`` for new entries in any owned partition."""
        owned = self.owned
        if not owned:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for p in owned:
            stream = self.keys.stream(p)
            for start in ("0", ">") if p in self._maybe_pending else (">",):
                queue(
                    pipe, stream, "XREADGROUP", "GROUP", GROUP, self.name, "COUNT", self.batch, "STREAMS", stream, start
                )
        replies = iter(self._call("read", pipe))
        out: dict[int, list[tuple[bytes, dict[Any, Any]]]] = {}
        for p in owned:
            pending = _entries(next(replies)) if p in self._maybe_pending else []
            fresh = _entries(next(replies))
            if pending:
                out[p] = pending
            else:
                self._maybe_pending.discard(p)
                if fresh:
                    out[p] = fresh
        if out or block_ms <= 0 or self.cluster:
            return out
        streams = {self.keys.stream(p): p for p in owned}
        reply = self.guard.call(
            "read",
            lambda: self.client.xreadgroup(GROUP, self.name, dict.fromkeys(streams, ">"), self.batch, block_ms),
        )
        for name, entries in reply or []:
            if entries:
                out[streams[name.decode() if isinstance(name, bytes) else name]] = list(entries)
        return out

    def _fold_users(self, read: dict[int, list[tuple[bytes, dict[Any, Any]]]]) -> dict[int, bool]:
        """Fold and commit one batch per partition (one ``MGET`` and one script per partition, each
        kind in one pipeline); per partition, ``False`` if its lease was lost."""
        batches: dict[int, list[tuple[int, Event]]] = {}
        for p, entries in read.items():
            batch = [(position_of(entry_id), decode_entry(fields)) for entry_id, fields in entries if fields]
            if batch:
                batches[p] = batch
            else:  # entries trimmed from the stream before anyone applied them: nothing to fold
                ids = [entry_id for entry_id, _ in entries]
                self.guard.call("ack", lambda p=p, ids=ids: self.client.xack(self.keys.stream(p), GROUP, *ids))  # type: ignore[misc]
        if not batches:
            return {}
        order = sorted(batches)
        users = {p: list(dict.fromkeys(e.user_id for _, e in batches[p])) for p in order}
        pipe = self.client.pipeline(transaction=False)
        for p in order:
            names = [self.keys.session(u) for u in users[p]]
            queue(pipe, names[0], "MGET", *names)
        found = self._call("read sessions", pipe)
        commit = self.client.pipeline(transaction=False)
        capped = []
        for p, raws in zip(order, found, strict=True):
            states = {
                u: SessionState.from_bytes(b)
                for u, r in zip(users[p], raws, strict=True)
                if (b := self.store.unwrap(r))
            }
            outboxes, n_capped, n_late = self._fold_batch(batches[p], states)
            capped.append((n_capped, n_late))
            self._stage_commit(commit, p, read[p], batches[p][-1][0], states, outboxes)
        done: dict[int, bool] = {}
        for p, ok, (n_capped, n_late) in zip(order, self._call("commit users", commit), capped, strict=True):
            done[p] = bool(ok)
            if ok:
                self.stats.capped += n_capped
                self.stats.late += n_late
        return done

    def _fold_batch(
        self, batch: list[tuple[int, Event]], states: dict[str, SessionState]
    ) -> tuple[dict[int, list[ItemEffects]], int, int]:
        """Fold ``batch`` into ``states`` (in place); returns the item effects by value partition,
        how many events the guard rail kept out of item state and how many were skipped as late."""
        cfg, learn = self.settings.session, self.settings.learn_online
        outboxes: dict[int, list[ItemEffects]] = {}
        capped = late = 0
        for position, event in batch:
            old = states.get(event.user_id)
            if lateness(old, event, cfg) is not None:
                # Admitted by a server before the user's newer events were folded: skipped, as the
                # embedded engine refuses it, so both folds reach the same state.
                late += 1
                continue
            states[event.user_id] = apply(old, event, cfg, position)
            effects = item_effects(old, event, cfg, learn)
            if effects is None:
                continue
            if effects.capped:
                capped += 1
                continue
            where = {self.keys.value_partition(i) for i, _ in effects.follows}
            if effects.bump and event.item_id is not None:
                where.add(self.keys.value_partition(event.item_id))
            for q in sorted(where):
                part = effects.only(partial(self._in_value_partition, q))
                if part is not None:
                    outboxes.setdefault(q, []).append(part)
        return outboxes, capped, late

    def _in_value_partition(self, q: int, key: str) -> bool:
        return self.keys.value_partition(key) == q

    def _stage_commit(
        self,
        pipe: Any,
        partition: int,
        entries: Sequence[tuple[bytes, dict[Any, Any]]],
        last: int,
        states: dict[str, SessionState],
        outboxes: dict[int, list[ItemEffects]],
    ) -> None:
        ttl = self.settings.state_ttl_s
        qs = sorted(outboxes)
        keys = [self.keys.lease(partition), self.keys.applied(partition), self.keys.stream(partition)]
        keys += [self.keys.outbox(partition, q) for q in qs]
        ids = [entry_id for entry_id, _ in entries]
        args: list[Any] = [self._owned[partition], GROUP, last, len(qs), entry_id_of(last), len(ids), *ids]
        args += [encode_effects(outboxes[q]) for q in qs]
        for user, state in states.items():
            keys.append(self.keys.session(user))
            args.extend(self.store.wrap(state.to_bytes(), ttl))
        run_script(pipe, _COMMIT_USERS, keys, args)
        self._dirty.update(qs)

    # -- the item half ----------------------------------------------------------------------------
    def _load_inboxes(self, qs: Sequence[int]) -> None:
        """Read the inboxes of ``qs`` and trim their outboxes to what is folded (a predecessor may
        have committed and died before trimming)."""
        pipe = self.client.pipeline(transaction=False)
        for q in qs:
            pipe.hgetall(self.keys.inbox(q))
        trims: list[tuple[int, int, str]] = []
        for q, raw in zip(qs, self._call("read inbox", pipe), strict=True):
            fields = {_text(k): _text(v) for k, v in raw.items()}
            version = int(fields.pop("version", "0"))
            self._inbox[q] = _Inbox(version, {int(p): last for p, last in fields.items()})
            trims += [(p, q, last) for p, last in self._inbox[q].folded.items()]
        self._trim("trim on load", trims)

    def _trim(self, what: str, trims: Sequence[tuple[int, int, str]]) -> None:
        """Drop the outbox entries folded: ``(source partition, value partition, last id folded)``."""
        if not trims:
            return
        pipe = self.client.pipeline(transaction=False)
        for p, q, last in trims:
            run_script(pipe, _TRIM, [self.keys.outbox(p, q)], [entry_id_of(position_of(last) + 1)])
        self._call(what, pipe)

    def _fold_items(self) -> int:
        """One item round over the owned value partitions; returns the outbox entries folded."""
        qs = self.owned
        if not qs:
            return 0
        self._dirty.difference_update(qs)
        self._scanned_at = time.monotonic()
        missing = [q for q in qs if q not in self._inbox]
        if missing:
            self._load_inboxes(missing)
        pipe = self.client.pipeline(transaction=False)
        for q in qs:
            for p in range(self.partitions):
                last = self._inbox[q].folded.get(p)
                pipe.xrange(self.keys.outbox(p, q), "(" + last if last else "-", "+", self.item_entries)
        replies = iter(self._call("read outboxes", pipe))
        rounds: dict[int, dict[int, list[tuple[Any, dict[Any, Any]]]]] = {}
        for q in qs:
            for p in range(self.partitions):
                entries = next(replies)
                if entries:
                    rounds.setdefault(q, {})[p] = entries
        if not rounds:
            return 0
        effects = {
            q: [e for es in src.values() for _, f in es for e in decode_effects(f[b"u"])] for q, src in rounds.items()
        }
        touched = {q: self._touched(es) for q, es in effects.items()}
        pipe = self.client.pipeline(transaction=False)
        for q in rounds:
            if touched[q]:
                names = [self.keys.value(ns, k) for ns, k in touched[q]]
                queue(pipe, names[0], "MGET", *names)
        found = iter(self._call("read items", pipe))
        commit = self.client.pipeline(transaction=False)
        heads: dict[int, dict[int, str]] = {}
        for q in rounds:
            changed = self._fold_effects(effects[q], touched[q], next(found) if touched[q] else [])
            heads[q] = {p: _text(es[-1][0]) for p, es in rounds[q].items()}
            keys = [self.keys.inbox(q)] + [self.keys.value(ns, k) for ns, k in changed]
            args: list[Any] = [self._inbox[q].version, len(heads[q])]
            for p, head in heads[q].items():
                args += [p, head]
            for value in changed.values():
                args.extend(self.store.wrap(value, self.settings.state_ttl_s))
            run_script(commit, _COMMIT_ITEMS, keys, args)
        trims: list[tuple[int, int, str]] = []
        folded = 0
        for q, ok in zip(rounds, self._call("commit items", commit), strict=True):
            if not ok:  # another worker committed to q since we read its inbox: read it again
                self.stats.conflicts += 1
                self._inbox.pop(q, None)
                continue
            inbox = self._inbox[q]
            inbox.version += 1
            inbox.folded.update(heads[q])
            trims += [(p, q, head) for p, head in heads[q].items()]
            n = sum(len(es) for es in rounds[q].values())
            folded += n
            self.stats.item_entries += n
            self.stats.item_batches += 1
        try:
            self._trim("trim", trims)
        except StoreUnavailable:  # what is folded stays readable; the next inbox read trims it
            self._inbox.clear()
            raise
        return folded

    @staticmethod
    def _touched(effects: Sequence[ItemEffects]) -> list[tuple[str, str]]:
        """The (namespace, key) values ``effects`` read and write."""
        out: dict[tuple[str, str], None] = {}
        for e in effects:
            item = e.event.item_id
            if e.bump and item is not None:
                out[(ACTIVITY_NAMESPACE, item)] = None
            for p, _ in e.follows:
                if p != item:
                    out[(covisit.NAMESPACE, p)] = None
        return list(out)

    def _fold_effects(
        self, effects: Sequence[ItemEffects], touched: Sequence[tuple[str, str]], raws: Sequence[Any]
    ) -> dict[tuple[str, str], bytes]:
        """Fold ``effects`` into the current values (``raws`` of ``touched``); the changed ones."""
        staged = MemoryFeatureStore(self.clock)
        ttl = self.settings.state_ttl_s
        before: dict[tuple[str, str], bytes] = {}
        for (ns, key), raw in zip(touched, raws, strict=True):
            payload = self.store.unwrap(raw)
            if payload is not None:
                before[(ns, key)] = payload
                staged.put_many(ns, {key: payload}, ttl)
        for e in effects:
            apply_item_effects(staged, e, ttl)
        after = {(ns, key): staged.get_many(ns, [key])[0] for ns, key in touched}
        return {k: v for k, v in after.items() if v is not None and v != before.get(k)}

    # -- the loop ---------------------------------------------------------------------------------
    def _round(self, block_ms: int, scan_items: bool) -> tuple[int, int]:
        if self._groups_missing:
            self.ensure_groups()
            self._groups_missing = False
        self.stats.rounds += 1
        self._balance()
        applied = 0
        read = self._read(block_ms)
        try:
            done = self._fold_users(read)
        except BaseException:
            self._maybe_pending.update(read)  # a commit may or may not have happened: re-read
            raise
        for p, ok in sorted(done.items()):
            if ok:
                applied += len(read[p])
                self.stats.batches += 1
            else:
                self._drop(p)
                self.stats.lost_leases += 1
        self.stats.applied += applied
        items = 0
        if scan_items or self._dirty & set(self._owned):
            items = self._fold_items()
            busy = items > 0
            self._scan_every_ms = self.item_scan_ms if busy else min(self._scan_every_ms * 2, self.item_scan_max_ms)
        return applied, items

    def step(self, block_ms: int = 0, scan_items: bool = True) -> int:
        """One round: heartbeat and leases, at most one batch per owned partition (waiting up to
        ``block_ms`` for new entries on one Redis), then, with ``scan_items`` or when this worker
        has just written item updates for its value partitions, one item round. Returns how many
        events were applied to user state."""
        return self._round(block_ms, scan_items)[0]

    def drain(self, max_steps: int = 100_000) -> int:
        """Step until a round folds nothing, users and items (tests, the Python API); returns the
        events applied."""
        total = 0
        for _ in range(max_steps):
            applied, items = self._round(0, True)
            total += applied
            if applied == 0 and items == 0:
                return total
        return total

    def run(self, stop: threading.Event, block_ms: int = 100, on_step: Callable[[int], None] | None = None) -> None:
        """Step until ``stop`` is set, waiting up to ``block_ms`` for new events each round (on a
        Cluster, where a blocking read cannot span partitions, polling: after ``poll_ms`` once a
        round finds nothing, doubling while rounds stay empty, up to ``block_ms``); item rounds
        look for other workers' updates every ``item_scan_ms`` to ``item_scan_max_ms``. Back off
        (and keep trying) while Redis is unavailable."""
        backoff = 0.05
        wait_ms = min(block_ms, self.lease_ms // 4)
        idle_ms = 0.0
        failures: tuple[type[Exception], ...] = (*redis_errors(), StoreUnavailable)
        try:
            while not stop.is_set():
                try:
                    due = (time.monotonic() - self._scanned_at) * 1000 >= self._scan_every_ms
                    n = self.step(wait_ms, scan_items=due)
                    backoff = 0.05
                    if not self._owned:
                        stop.wait(wait_ms / 1000.0)
                    elif self.cluster:
                        idle_ms = 0.0 if n else min(max(idle_ms * 2, self.poll_ms), wait_ms)
                        stop.wait(idle_ms / 1000.0)
                except failures as exc:
                    logger.warning("worker %s: Redis unavailable (%s); retrying", self.name, exc)
                    n, backoff = 0, min(backoff * 2, 1.0)
                    self._maybe_pending.update(self._owned)
                    self._inbox.clear()
                    stop.wait(backoff)
                    if "NOGROUP" in str(exc):  # Redis came back empty: groups are made next round
                        self._owned.clear()
                        self._groups_missing = True
                if on_step is not None:
                    on_step(n)
        finally:
            try:
                self.release()
            except failures:
                logger.warning("worker %s: could not release its leases; they will lapse", self.name)


def _entries(reply: Any) -> list[tuple[bytes, dict[Any, Any]]]:
    """The entries of a one-stream ``XREADGROUP`` reply."""
    return list(reply[0][1]) if reply else []


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
