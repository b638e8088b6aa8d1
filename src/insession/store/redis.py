"""The feature store on Redis (the ``redis`` extra): the same protocol as the memory store.

Key layout (``docs/redis.md``), every key under a prefix (default ``is``):

- ``{prefix}:{u:<user_id>}:session`` — a user's ``SessionState``. The hash tag ``{u:<user_id>}``
  puts all of one user's keys in one Redis Cluster slot.
- ``{prefix}:{n:<namespace>:<key>}`` — a raw value of a namespace, e.g. item activity.
- ``{prefix}:position`` — the event-log position the state reflects.

Every value carries its expiry (8 bytes, big-endian milliseconds of the injected clock) before
the payload, and reads compare it with that clock, so expiry follows processing time exactly as
in the memory store. Every key also gets a Redis TTL (``PX``) of its time-to-live, so Redis frees
the memory of what nobody reads again. ``get_many`` is one ``MGET``; ``put_many`` one pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from insession.clock import Clock, SystemClock
from insession.errors import MissingExtra
from insession.sessions import SessionState

_EXPIRY = 8


class RedisFeatureStore:
    def __init__(self, url_or_client: str | Any, clock: Clock | None = None, prefix: str = "is") -> None:
        if isinstance(url_or_client, str):
            try:
                import redis
            except ImportError:
                raise MissingExtra("store: redis://", "redis") from None
            self.client = redis.Redis.from_url(url_or_client, socket_timeout=1.0, socket_connect_timeout=1.0)
        else:
            self.client = url_or_client
        self._clock = clock or SystemClock()
        self.prefix = prefix

    def _session_key(self, user_id: str) -> str:
        return f"{self.prefix}:{{u:{user_id}}}:session"

    def _key(self, namespace: str, key: str) -> str:
        return f"{self.prefix}:{{n:{namespace}:{key}}}"

    def _wrap(self, payload: bytes, ttl_s: int) -> tuple[bytes, int]:
        expires = self._clock.now_ms() + ttl_s * 1000
        return expires.to_bytes(_EXPIRY, "big", signed=True) + payload, max(ttl_s * 1000, 1)

    def _unwrap(self, raw: Any) -> bytes | None:
        if not isinstance(raw, bytes) or len(raw) < _EXPIRY:
            return None
        if int.from_bytes(raw[:_EXPIRY], "big", signed=True) <= self._clock.now_ms():
            return None
        return raw[_EXPIRY:]

    # -- protocol ---------------------------------------------------------------------------
    def get_session(self, user_id: str) -> SessionState | None:
        raw = self._unwrap(self.client.get(self._session_key(user_id)))
        return None if raw is None else SessionState.from_bytes(raw)

    def put_session(self, user_id: str, state: SessionState, ttl_s: int) -> None:
        value, px = self._wrap(state.to_bytes(), ttl_s)
        self.client.set(self._session_key(user_id), value, px=px)

    def get_many(self, namespace: str, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        raws = self.client.mget([self._key(namespace, k) for k in keys])
        return [self._unwrap(r) for r in raws]

    def put_many(self, namespace: str, values: Mapping[str, bytes], ttl_s: int) -> None:
        if not values:
            return
        pipe = self.client.pipeline(transaction=False)
        for key, payload in values.items():
            value, px = self._wrap(payload, ttl_s)
            pipe.set(self._key(namespace, key), value, px=px)
        pipe.execute()

    def applied_position(self) -> int:
        raw = self.client.get(f"{self.prefix}:position")
        return int(raw) if raw is not None else 0

    def set_applied_position(self, position: int) -> None:
        self.client.set(f"{self.prefix}:position", position)
