"""The event log on Redis Streams (one Redis or a Redis Cluster): one stream per partition, users
spread over partitions.

A user's events always go to partition ``crc32(user_id) % partitions``, so one worker folding a
partition sees each user's events in the order they were appended (see ``insession.worker``).

Appending is one Lua script per partition touched, run atomically by Redis: for each event it sets
``{prefix}:{s:<p>}:seen:<event_id>`` if absent (with a TTL of ``dedup_window_s``) and only then
``XADD``s the event, so an event retried within the window (to any server) is a duplicate, never
a second entry. Every key a script touches carries the partition's hash tag, so the script runs on
Redis Cluster too, and the scripts of a batch go in one pipeline (one round trip per Cluster node).

Positions: a stream entry id ``<ms>-<seq>`` becomes the integer ``ms * 2**20 + seq``, strictly
increasing within a partition and ordered by append time across partitions.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from typing import Any

from insession.errors import StoreUnavailable
from insession.events import Event
from insession.log import AppendResult
from insession.redis_backend import Keys, RedisGuard, partition_of, run_script

SEQ_BITS = 20
_APPEND = """
local out = {}
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'PX', ARGV[1]) then
    out[#out + 1] = redis.call('XADD', KEYS[1], '*', 'e', ARGV[i])
  else
    out[#out + 1] = false
  end
end
return out
"""

#: Rewrite a partition's stream without one user's entries (``XDEL`` only marks entries deleted:
#: their bytes stay in the stream's nodes, in memory and in RDB files, so erasure rewrites).
#: KEYS: the stream, a scratch key in its slot. ARGV: the user id.
#: Consumer groups are carried over at their last-delivered id (the caller makes sure nothing is
#: pending); the stream's last id is kept, so later ids stay above every earlier one.
#: Returns the removed entries' bodies.
_ERASE_USER = """
local entries = redis.call('XRANGE', KEYS[1], '-', '+')
local removed, kept = {}, {}
for _, entry in ipairs(entries) do
  local fields = entry[2]
  local body = nil
  for i = 1, #fields, 2 do if fields[i] == 'e' then body = fields[i + 1] end end
  if body ~= nil and cjson.decode(body)['user_id'] == ARGV[1] then
    removed[#removed + 1] = body
  else
    kept[#kept + 1] = entry
  end
end
if #removed == 0 then return removed end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last = '0-0'
for i = 1, #info, 2 do if info[i] == 'last-generated-id' then last = info[i + 1] end end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
redis.call('DEL', KEYS[2])
for _, entry in ipairs(kept) do
  local args = {'XADD', KEYS[2], entry[1]}
  for _, v in ipairs(entry[2]) do args[#args + 1] = v end
  redis.call(unpack(args))
end
for _, g in ipairs(groups) do
  local name, delivered = nil, '0-0'
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then delivered = g[i + 1] end
  end
  redis.call('XGROUP', 'CREATE', KEYS[2], name, delivered, 'MKSTREAM')
end
if #kept == 0 and #groups == 0 then
  redis.call('DEL', KEYS[1])
  return removed
end
redis.call('XSETID', KEYS[2], last)
redis.call('RENAME', KEYS[2], KEYS[1])
return removed
"""


def position_of(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return (int(ms) << SEQ_BITS) | int(seq or 0)


def entry_id_of(position: int) -> str:
    return f"{position >> SEQ_BITS}-{position & ((1 << SEQ_BITS) - 1)}"


def decode_entry(fields: dict[Any, Any]) -> Event:
    body = fields.get(b"e", fields.get("e"))
    return Event.from_json(body.decode() if isinstance(body, bytes) else str(body))


class RedisStreamEventLog:
    def __init__(
        self,
        client: Any,
        partitions: int = 16,
        prefix: str = "is",
        guard: RedisGuard | None = None,
        dedup_window_s: int = 3600,
    ) -> None:
        self.keys = Keys(prefix, partitions)
        self.client = client
        self.partitions = partitions
        self.guard = guard or RedisGuard()
        self.dedup_window_ms = dedup_window_s * 1000

    def append(self, events: Sequence[Event]) -> AppendResult:
        """Append ``events``; each partition's share is one atomic script, all in one round trip.

        If Redis fails part-way, some partitions may be written and others not; the caller gets
        :class:`~insession.errors.StoreUnavailable` and retries the batch, and what was written
        is then recognised as duplicate by ``event_id``.
        """
        if not events:
            return AppendResult()
        by_partition: dict[int, list[int]] = {}
        for n, event in enumerate(events):
            by_partition.setdefault(partition_of(event.user_id, self.partitions), []).append(n)
        pipe = self.client.pipeline(transaction=False)
        order = sorted(by_partition)
        for p in order:
            idx = by_partition[p]
            keys = [self.keys.stream(p)] + [self.keys.seen(p, events[n].event_id) for n in idx]
            args = [self.dedup_window_ms] + [events[n].to_json() for n in idx]
            run_script(pipe, _APPEND, keys, args)
        replies = self.guard.call("append", pipe.execute)
        positions: dict[int, int] = {}
        duplicate_ids: list[str] = []
        for p, reply in zip(order, replies, strict=True):
            for n, entry in zip(by_partition[p], reply, strict=True):
                if entry:
                    positions[n] = position_of(entry)
                else:
                    duplicate_ids.append(events[n].event_id)
        accepted = [(positions[n], events[n]) for n in sorted(positions)]
        return AppendResult(accepted, len(duplicate_ids), duplicate_ids)

    def known(self, events: Sequence[Event]) -> set[str]:
        if not events:
            return set()
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            pipe.exists(self.keys.seen(partition_of(event.user_id, self.partitions), event.event_id))
        found = self.guard.call("known", pipe.execute)
        return {e.event_id for e, hit in zip(events, found, strict=True) if hit}

    def read_partition(self, partition: int, after: int = 0, page: int = 5000) -> Iterator[tuple[int, Event]]:
        for entry_id, fields in self._entries(partition, after, page):
            yield position_of(entry_id), decode_entry(fields)

    def _entries(self, partition: int, after: int, page: int) -> Iterator[tuple[Any, Any]]:
        """One partition's stream entries after position ``after``, as Redis returns them."""
        start = "-" if after <= 0 else "(" + entry_id_of(after)
        key = self.keys.stream(partition)
        while True:
            rows = self.guard.call("read", lambda s=start: self.client.xrange(key, min=s, max="+", count=page))  # type: ignore[misc]
            if not rows:
                return
            yield from rows
            start = "(" + (rows[-1][0].decode() if isinstance(rows[-1][0], bytes) else rows[-1][0])

    def read(self, after: int = 0, limit: int | None = None) -> Iterator[tuple[int, Event]]:
        """Every partition merged by position (append time); each user's events in their order."""
        merged = heapq.merge(*(self.read_partition(p, after) for p in range(self.partitions)), key=lambda pe: pe[0])
        for n, item in enumerate(merged):
            if limit is not None and n >= limit:
                return
            yield item

    def span(self, after: int, limit: int) -> tuple[int, int]:
        """As ``read`` would yield, counted from the entries' positions only (nothing decoded);
        each partition reads at most ``limit`` entries."""
        page = max(min(limit, 5000), 1)
        positions = heapq.merge(
            *((position_of(e) for e, _ in self._entries(p, after, page)) for p in range(self.partitions))
        )
        n = last = 0
        for position in positions:
            if n >= limit:
                break
            n, last = n + 1, position
        return n, last

    def erase_user(self, user_id: str) -> list[Event]:
        """Remove every event of ``user_id`` from its partition's stream (the stream is rewritten
        without them, in one script: Redis is busy for the time it takes to copy the partition)
        and the dedup keys of those events; returns the events removed. Call it only when the
        workers have folded everything (``backlog`` 0): pending deliveries are not carried over."""
        p = partition_of(user_id, self.partitions)
        stream = self.keys.stream(p)
        bodies = self.guard.call(
            "erase_user", lambda: self.client.eval(_ERASE_USER, 2, stream, stream + ":rewrite", user_id)
        )
        events = [Event.from_json(b.decode() if isinstance(b, bytes) else str(b)) for b in bodies]
        if events:
            seen = [self.keys.seen(p, e.event_id) for e in events]
            self.guard.call("erase_user", lambda: self.client.delete(*seen))
        return events

    def last_position(self) -> int:
        pipe = self.client.pipeline(transaction=False)
        for p in range(self.partitions):
            pipe.xrevrange(self.keys.stream(p), count=1)
        replies = self.guard.call("last_position", pipe.execute)
        return max((position_of(r[0][0]) for r in replies if r), default=0)

    def count(self) -> int:
        pipe = self.client.pipeline(transaction=False)
        for p in range(self.partitions):
            pipe.xlen(self.keys.stream(p))
        return int(sum(self.guard.call("count", pipe.execute)))

    def backlog(self, group: str) -> int:
        """Entries not yet acknowledged by ``group`` over all partitions: delivered and pending,
        or not delivered yet (what the workers still have to fold)."""
        pipe = self.client.pipeline(transaction=False)
        for p in range(self.partitions):
            pipe.xinfo_groups(self.keys.stream(p))
        total = 0
        for p, groups in enumerate(self.guard.call("backlog", lambda: pipe.execute(raise_on_error=False))):
            if isinstance(groups, Exception):
                if "no such key" in str(groups):  # nothing appended to this partition yet
                    continue
                raise StoreUnavailable(f"store: Redis failed during backlog ({type(groups).__name__}: {groups})")
            found = [g for g in groups if g.get("name") in (group, group.encode())]
            if found:
                total += int(found[0]["pending"]) + int(found[0].get("lag") or 0)
            else:  # no worker has read this partition yet
                total += int(self.guard.call("backlog", lambda p=p: self.client.xlen(self.keys.stream(p))))  # type: ignore[misc]
        return total

    def close(self) -> None:
        """The client belongs to whoever made it; nothing to release here."""
