"""The feature store on Redis (the ``redis`` extra): the same protocol as the memory store.

Key layout (``docs/redis.md``), every key under a prefix (default ``is``), named by :class:`Keys`:

- ``{prefix}:{u:<user_id>}:session`` — a user's ``SessionState``. The hash tag ``{u:<user_id>}``
  puts all of one user's keys in one Redis Cluster slot.
- ``{prefix}:{n:<namespace>:<key>}`` — a raw value of a namespace, e.g. item activity.
- ``{prefix}:position`` — the event-log position the state reflects (embedded log), and
  ``{prefix}:{s:<p>}:applied`` the position folded from stream partition ``p`` (stream log).

Every value carries its expiry (8 bytes, big-endian milliseconds of the injected clock) before
the payload, and reads compare it with that clock, so expiry follows processing time exactly as
in the memory store. Every key also gets a Redis TTL (``PX``) of its time-to-live, so Redis frees
the memory of what nobody reads again. ``get_many`` is one ``MGET``; ``put_many`` one pipeline.

Every call goes through a :class:`RedisGuard`: a Redis error or timeout raises
:class:`~insession.errors.StoreUnavailable` and opens the guard for ``retry_ms``, during which
calls fail at once instead of waiting for another timeout; the first call after that probes
Redis again, so service recovers by itself when Redis returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from insession.clock import Clock, SystemClock
from insession.errors import MissingExtra, StoreUnavailable
from insession.sessions import SessionState

_EXPIRY = 8
T = TypeVar("T")


def connect(url: str, timeout_ms: float = 25.0) -> Any:
    """A redis-py client for ``url`` whose every call gives up after ``timeout_ms``."""
    try:
        import redis
    except ImportError:
        raise MissingExtra("store: redis://", "redis") from None
    return redis.Redis.from_url(url, socket_timeout=timeout_ms / 1000.0, socket_connect_timeout=timeout_ms / 1000.0)


class Keys:
    """Every Redis key insession uses, in one place (``docs/redis.md``)."""

    def __init__(self, prefix: str = "is") -> None:
        self.prefix = prefix

    def session(self, user_id: str) -> str:
        return f"{self.prefix}:{{u:{user_id}}}:session"

    def value(self, namespace: str, key: str) -> str:
        return f"{self.prefix}:{{n:{namespace}:{key}}}"

    def position(self) -> str:
        return f"{self.prefix}:position"

    def stream(self, partition: int) -> str:
        return f"{self.prefix}:{{s:{partition}}}:events"

    def seen(self, partition: int, event_id: str) -> str:
        return f"{self.prefix}:{{s:{partition}}}:seen:{event_id}"

    def lease(self, partition: int) -> str:
        return f"{self.prefix}:{{s:{partition}}}:lease"

    def applied(self, partition: int) -> str:
        return f"{self.prefix}:{{s:{partition}}}:applied"

    def workers(self) -> str:
        return f"{self.prefix}:workers"


class RedisGuard:
    """Turns Redis failures into :class:`StoreUnavailable` and stops asking a Redis that just
    failed for ``retry_ms`` (then one call probes it again)."""

    def __init__(self, retry_ms: float = 500.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.retry_ms = retry_ms
        self._monotonic = monotonic
        self._open_until = 0.0
        self._lock = threading.Lock()
        self.failures = 0
        self.last_error: str | None = None

    @property
    def available(self) -> bool:
        return self._monotonic() >= self._open_until

    def call(self, what: str, fn: Callable[[], T]) -> T:
        import redis

        if not self.available:
            raise StoreUnavailable(f"store: Redis is unavailable ({self.last_error}); {what} was not attempted")
        try:
            result = fn()
        except redis.RedisError as exc:
            with self._lock:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:200]
                self._open_until = self._monotonic() + self.retry_ms / 1000.0
            raise StoreUnavailable(f"store: Redis failed during {what} ({self.last_error})") from exc
        return result


class RedisFeatureStore:
    def __init__(
        self,
        url_or_client: str | Any,
        clock: Clock | None = None,
        prefix: str = "is",
        guard: RedisGuard | None = None,
        partitions: int = 0,
    ) -> None:
        self.client = connect(url_or_client, 1000.0) if isinstance(url_or_client, str) else url_or_client
        self._clock = clock or SystemClock()
        self.keys = Keys(prefix)
        self.guard = guard or RedisGuard()
        #: Stream partitions whose applied positions ``applied_position`` also reads (0: none).
        self.partitions = partitions

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

    def stage_session(self, pipe: Any, user_id: str, state: SessionState, ttl_s: int) -> None:
        """Queue the write of ``state`` on ``pipe`` (a pipeline or transaction)."""
        value, px = self.wrap(state.to_bytes(), ttl_s)
        pipe.set(self.keys.session(user_id), value, px=px)

    def stage_many(self, pipe: Any, namespace: str, values: Mapping[str, bytes], ttl_s: int) -> None:
        for key, payload in values.items():
            value, px = self.wrap(payload, ttl_s)
            pipe.set(self.keys.value(namespace, key), value, px=px)

    # -- protocol ---------------------------------------------------------------------------
    def get_session(self, user_id: str) -> SessionState | None:
        raw = self.unwrap(self.guard.call("get_session", lambda: self.client.get(self.keys.session(user_id))))
        return None if raw is None else SessionState.from_bytes(raw)

    def put_session(self, user_id: str, state: SessionState, ttl_s: int) -> None:
        value, px = self.wrap(state.to_bytes(), ttl_s)
        self.guard.call("put_session", lambda: self.client.set(self.keys.session(user_id), value, px=px))

    def get_many(self, namespace: str, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        names = [self.keys.value(namespace, k) for k in keys]
        raws = self.guard.call("get_many", lambda: self.client.mget(names))
        now = self._clock.now_ms()  # once: a request reads hundreds of values
        return [
            None
            if r is None or len(r) < _EXPIRY or int.from_bytes(r[:_EXPIRY], "big", signed=True) <= now
            else r[_EXPIRY:]
            for r in raws
        ]

    def put_many(self, namespace: str, values: Mapping[str, bytes], ttl_s: int) -> None:
        if not values:
            return
        pipe = self.client.pipeline(transaction=False)
        self.stage_many(pipe, namespace, values, ttl_s)
        self.guard.call("put_many", pipe.execute)

    def applied_position(self) -> int:
        """The highest position folded: ``set_applied_position``'s, or any stream partition's."""
        names = [self.keys.position()] + [self.keys.applied(p) for p in range(self.partitions)]
        raws = self.guard.call("applied_position", lambda: self.client.mget(names))
        return max((int(r) for r in raws if r is not None), default=0)

    def set_applied_position(self, position: int) -> None:
        self.guard.call("set_applied_position", lambda: self.client.set(self.keys.position(), position))
