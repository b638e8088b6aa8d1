"""The feature store: where live state is read at request time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from insession.sessions import SessionState

#: The names of a user's serving values (``get_user``/``put_user``): the list last shown per
#: surface and the lists kept for reuse (``freshness.ServingLists``). Erasing a user
#: (``drop_session``) removes them with the session.
USER_VALUES = ("shown", "kept")


class FeatureStore(Protocol):
    """Keyed state with a time-to-live.

    Guarantees: a value written is returned by later reads until its TTL (processing time)
    passes, after which reads return ``None``. Writes are last-write-wins. Not guaranteed:
    expired entries are removed at any particular moment (only that they are never returned).
    """

    def get_session(self, user_id: str) -> SessionState | None:
        """The live state of ``user_id``, or ``None`` if absent or expired."""
        ...

    def get_sessions(self, user_ids: Sequence[str]) -> list[SessionState | None]:
        """The live state of each of ``user_ids`` (``None`` where absent or expired), in one read."""
        ...

    def put_session(self, user_id: str, state: SessionState, ttl_s: int) -> None:
        """Store ``state`` for ``ttl_s`` seconds of processing time."""
        ...

    def get_many(self, namespace: str, keys: Sequence[str]) -> list[bytes | None]:
        """Raw values for ``keys`` in ``namespace``, ``None`` where absent or expired; same order."""
        ...

    def put_many(self, namespace: str, values: Mapping[str, bytes], ttl_s: int) -> None:
        """Store raw values under ``namespace`` for ``ttl_s`` seconds."""
        ...

    def get_user(self, user_id: str, names: Sequence[str]) -> tuple[SessionState | None, list[bytes | None]]:
        """The live state of ``user_id`` and the user's serving values ``names`` (``None`` where
        absent or expired), read together: one round trip on Redis (the keys share the user's slot)."""
        ...

    def put_user(self, user_id: str, values: Mapping[str, bytes], ttl_s: int) -> None:
        """Store serving values of ``user_id`` (by name) for ``ttl_s`` seconds: one round trip."""
        ...

    def get_user_values(self, name: str, user_ids: Sequence[str]) -> list[bytes | None]:
        """The serving value ``name`` of each of ``user_ids`` (``None`` where absent or expired)."""
        ...

    def add_counts(self, namespace: str, deltas: Mapping[str, int], ttl_s: int) -> None:
        """Add ``deltas`` to counters of ``namespace`` atomically (concurrent adds all count); each
        counter touched lives ``ttl_s`` seconds from now."""
        ...

    def get_counts(self, namespace: str, keys: Sequence[str]) -> list[int]:
        """The counters ``keys`` of ``namespace`` (0 where absent or expired); same order."""
        ...

    def applied_position(self) -> int:
        """The event-log position up to which state has been folded (0 if none)."""
        ...

    def set_applied_position(self, position: int) -> None: ...


__all__ = ["FeatureStore"]
