"""The feature store on Redis or a Redis Cluster (the ``redis`` extra): the same protocol as the
memory store.

Key layout (``docs/redis.md``; every key named by :class:`~insession.redis_backend.Keys`, under a
prefix, default ``is``):

- ``{prefix}:{s:<p>}:u:<user_id>`` — a user's ``SessionState``, in the slot of the user's stream
  partition ``p`` (``crc32(user_id) % partitions``), so a worker writes a partition's users in
  one single-slot script and a reader finds a user with one ``GET``.
- ``{prefix}:{s:<p>}:uv:<name>:<user_id>`` — a user's serving values (``shown``: the list last
  shown per surface; ``kept``: lists kept for reuse), in the slot of the user's session, so a
  request reads the session and them with one ``MGET``.
- ``{prefix}:{v:<q>}:<namespace>:<key>`` — a raw value of a namespace (item activity, online
  co-visitation, ...), in the slot of its value partition ``q`` (``crc32(key) % partitions``).
- ``{prefix}:position`` — the event-log position the state reflects (embedded log), and
  ``{prefix}:{s:<p>}:applied`` the position folded from stream partition ``p`` (stream log).

Every value carries its expiry (8 bytes, big-endian milliseconds of the injected clock) before
the payload, and reads compare it with that clock, so expiry follows processing time exactly as
in the memory store. Every key also gets a Redis TTL (``PX``) of its time-to-live, so Redis frees
the memory of what nobody reads again. ``get_many`` is one ``MGET`` per value partition in one
pipeline (one round trip per Cluster node, one ``MGET`` on one Redis); ``put_many`` one pipeline.

Every call goes through a :class:`~insession.redis_backend.RedisGuard`: a Redis error or timeout
raises :class:`~insession.errors.StoreUnavailable` and opens the guard for ``retry_ms``, during
which calls fail at once instead of waiting for another timeout; the first call after that probes
Redis again, so service recovers by itself when Redis returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from insession.clock import Clock, SystemClock
from insession.redis_backend import Keys, RedisGuard, connect, mget, queue
from insession.sessions import SessionState
from insession.store import USER_VALUES

_EXPIRY = 8


class RedisFeatureStore:
    def __init__(
        self,
        url_or_client: str | Any,
        clock: Clock | None = None,
        prefix: str = "is",
        guard: RedisGuard | None = None,
        partitions: int = 16,
    ) -> None:
        """``partitions``: the deployment's ``stream_partitions``, which places every key."""
        self.client = connect(url_or_client, 1000.0) if isinstance(url_or_client, str) else url_or_client
        self._clock = clock or SystemClock()
        self.keys = Keys(prefix, partitions)
        self.guard = guard or RedisGuard()

    def wrap(self, payload: bytes, ttl_s: int) -> tuple[bytes, int]:
        """``payload`` with its expiry in front, and the Redis TTL (ms) to set."""
        expires = self._clock.now_ms() + ttl_s * 1000
        return expires.to_bytes(_EXPIRY, "big", signed=True) + payload, max(ttl_s * 1000, 1)

    def unwrap(self, raw: Any) -> bytes | None:
        """The payload of a stored value, ``None`` if absent or expired by the engine's clock."""
        if not isinstance(raw, bytes) or len(raw) < _EXPIRY:
            return None
        if int.from_bytes(raw[:_EXPIRY], "big", signed=True) <= self._clock.now_ms():
            return None
        return raw[_EXPIRY:]

    # -- protocol ---------------------------------------------------------------------------
    def get_session(self, user_id: str) -> SessionState | None:
        raw = self.unwrap(self.guard.call("get_session", lambda: self.client.get(self.keys.session(user_id))))
        return None if raw is None else SessionState.from_bytes(raw)

    def get_sessions(self, user_ids: Sequence[str]) -> list[SessionState | None]:
        raws = self._read("get_sessions", [self.keys.session(u) for u in user_ids])
        return [None if raw is None else SessionState.from_bytes(raw) for raw in raws]

    def put_session(self, user_id: str, state: SessionState, ttl_s: int) -> None:
        value, px = self.wrap(state.to_bytes(), ttl_s)
        self.guard.call("put_session", lambda: self.client.set(self.keys.session(user_id), value, px=px))

    def drop_session(self, user_id: str) -> bool:
        """Remove ``user_id``'s state and serving values now (the user is erased; one slot: the
        keys share the user's hash tag); whether there was anything."""
        names = [self.keys.session(user_id), *(self.keys.user_value(n, user_id) for n in USER_VALUES)]
        return bool(self.guard.call("drop_session", lambda: self.client.delete(*names)))

    def get_many(self, namespace: str, keys: Sequence[str]) -> list[bytes | None]:
        return self._read("get_many", [self.keys.value(namespace, k) for k in keys])

    def _read(self, what: str, names: Sequence[str]) -> list[bytes | None]:
        """The unexpired payloads of ``names`` (one ``MGET`` per slot, one pipeline)."""
        return self._fresh(self.guard.call(what, lambda: mget(self.client, names))) if names else []

    def put_many(self, namespace: str, values: Mapping[str, bytes], ttl_s: int) -> None:
        if not values:
            return
        pipe = self.client.pipeline(transaction=False)
        for key, payload in values.items():
            value, px = self.wrap(payload, ttl_s)
            pipe.set(self.keys.value(namespace, key), value, px=px)
        self.guard.call("put_many", pipe.execute)

    def _fresh(self, raws: Sequence[Any]) -> list[bytes | None]:
        now = self._clock.now_ms()  # once: a request reads hundreds of values
        return [
            None
            if r is None or len(r) < _EXPIRY or int.from_bytes(r[:_EXPIRY], "big", signed=True) <= now
            else r[_EXPIRY:]
            for r in raws
        ]

    def get_user(self, user_id: str, names: Sequence[str]) -> tuple[SessionState | None, list[bytes | None]]:
        # One slot (the user's hash tag): one MGET.
        raws = self._read("get_user", [self.keys.session(user_id)] + [self.keys.user_value(n, user_id) for n in names])
        return (None if raws[0] is None else SessionState.from_bytes(raws[0])), raws[1:]

    def put_user(self, user_id: str, values: Mapping[str, bytes], ttl_s: int) -> None:
        if not values:
            return
        pipe = self.client.pipeline(transaction=False)
        for name, payload in values.items():
            key = self.keys.user_value(name, user_id)
            value, px = self.wrap(payload, ttl_s)
            queue(pipe, key, "SET", key, value, "PX", px)
        self.guard.call("put_user", pipe.execute)

    def get_user_values(self, name: str, user_ids: Sequence[str]) -> list[bytes | None]:
        return self._read("get_user_values", [self.keys.user_value(name, u) for u in user_ids])

    def add_counts(self, namespace: str, deltas: Mapping[str, int], ttl_s: int) -> None:
        """``INCRBY`` and ``PEXPIRE`` per counter, in one pipeline (counters are plain integers:
        their expiry is Redis's TTL alone)."""
        if not deltas:
            return
        pipe = self.client.pipeline(transaction=False)
        for key, delta in deltas.items():
            name = self.keys.value(namespace, key)
            queue(pipe, name, "INCRBY", name, delta)
            queue(pipe, name, "PEXPIRE", name, max(ttl_s * 1000, 1))
        self.guard.call("add_counts", pipe.execute)

    def get_counts(self, namespace: str, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        names = [self.keys.value(namespace, k) for k in keys]
        return [0 if r is None else int(r) for r in self.guard.call("get_counts", lambda: mget(self.client, names))]

    def applied_position(self) -> int:
        """The highest position folded: ``set_applied_position``'s, or any stream partition's."""
        names = [self.keys.position()] + [self.keys.applied(p) for p in range(self.keys.partitions)]
        raws = self.guard.call("applied_position", lambda: mget(self.client, names))
        return max((int(r) for r in raws if r is not None), default=0)

    def set_applied_position(self, position: int) -> None:
        self.guard.call("set_applied_position", lambda: self.client.set(self.keys.position(), position))


# The connection and the guard live in ``insession.redis_backend``; importable from here as before.
__all__ = ["RedisFeatureStore", "RedisGuard", "connect"]
