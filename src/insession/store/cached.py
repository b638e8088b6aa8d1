"""An in-process L1 cache in front of a shared feature store (Redis as L2).

Only the namespaces named (by default item activity, the values every request reads for hundreds
of candidates) are cached; session state never is (nor a user's serving values, nor counters),
so a user's next request always sees the events a worker has applied and the lists any server
showed them. A cached value is served for at most ``max_age_ms`` after it was
read from L2 (monotonic time), so no read is staler than that bound (0 turns the cache off); this process's own writes
replace their entries at once. The cache holds at most ``max_entries`` values, least recently
used evicted first, and counts hits and misses for the metrics.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

from insession.features.activity import NAMESPACE as ACTIVITY_NAMESPACE
from insession.sessions import SessionState
from insession.store import FeatureStore


class CachedStore:
    def __init__(
        self,
        inner: FeatureStore,
        max_age_ms: float = 1000.0,
        max_entries: int = 50_000,
        namespaces: Sequence[str] = (ACTIVITY_NAMESPACE,),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_age_ms < 0 or max_entries < 1:
            raise ValueError("l1: expected max_age_ms >= 0 and max_entries >= 1")
        self.inner = inner
        self.max_age_s = max_age_ms / 1000.0
        self.max_entries = max_entries
        self.namespaces = frozenset(namespaces)
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], tuple[float, bytes | None]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def __len__(self) -> int:
        return len(self._entries)

    # -- protocol ---------------------------------------------------------------------------
    def get_session(self, user_id: str) -> SessionState | None:
        return self.inner.get_session(user_id)

    def get_sessions(self, user_ids: Sequence[str]) -> list[SessionState | None]:
        return self.inner.get_sessions(user_ids)

    def put_session(self, user_id: str, state: SessionState, ttl_s: int) -> None:
        self.inner.put_session(user_id, state, ttl_s)

    def get_many(self, namespace: str, keys: Sequence[str]) -> list[bytes | None]:
        if namespace not in self.namespaces:
            return self.inner.get_many(namespace, keys)
        now = self._monotonic()
        out: list[bytes | None] = [None] * len(keys)
        missing: list[int] = []
        with self._lock:
            for n, key in enumerate(keys):
                found = self._entries.get((namespace, key))
                if found is not None and now - found[0] < self.max_age_s:
                    out[n] = found[1]
                    self._entries.move_to_end((namespace, key))
                else:
                    missing.append(n)
            self.hits += len(keys) - len(missing)
            self.misses += len(missing)
        if missing:
            fetched = self.inner.get_many(namespace, [keys[n] for n in missing])
            with self._lock:
                for n, raw in zip(missing, fetched, strict=True):
                    out[n] = raw
                    self._entries[(namespace, keys[n])] = (now, raw)
                    self._entries.move_to_end((namespace, keys[n]))
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return out

    def put_many(self, namespace: str, values: Mapping[str, bytes], ttl_s: int) -> None:
        self.inner.put_many(namespace, values, ttl_s)
        if namespace in self.namespaces:
            with self._lock:
                for key in values:
                    self._entries.pop((namespace, key), None)

    def get_user(self, user_id: str, names: Sequence[str]) -> tuple[SessionState | None, list[bytes | None]]:
        return self.inner.get_user(user_id, names)

    def put_user(self, user_id: str, values: Mapping[str, bytes], ttl_s: int) -> None:
        self.inner.put_user(user_id, values, ttl_s)

    def get_user_values(self, name: str, user_ids: Sequence[str]) -> list[bytes | None]:
        return self.inner.get_user_values(name, user_ids)

    def add_counts(self, namespace: str, deltas: Mapping[str, int], ttl_s: int) -> None:
        self.inner.add_counts(namespace, deltas, ttl_s)

    def get_counts(self, namespace: str, keys: Sequence[str]) -> list[int]:
        return self.inner.get_counts(namespace, keys)

    def invalidate(self, namespace: str, keys: Sequence[str]) -> None:
        """Drop the L1 copies of ``keys`` (changed in Redis by someone else, e.g. an erasure)."""
        with self._lock:
            for key in keys:
                self._entries.pop((namespace, key), None)

    def applied_position(self) -> int:
        return self.inner.applied_position()

    def set_applied_position(self, position: int) -> None:
        self.inner.set_applied_position(position)
