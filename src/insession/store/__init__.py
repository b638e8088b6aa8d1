"""The feature store: where live state is read at request time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from insession.sessions import SessionState


class FeatureStore(Protocol):
    """Keyed state with a time-to-live.

    Guarantees: a value written is returned by later reads until its TTL (processing time)
    passes, after which reads return ``None``. Writes are last-write-wins. Not guaranteed:
    expired entries are removed at any particular moment (only that they are never returned).
    """

    def get_session(self, user_id: str) -> SessionState | None:
        """The live state of ``user_id``, or ``None`` if absent or expired."""
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

    def applied_position(self) -> int:
        """The event-log position up to which state has been folded (0 if none)."""
        ...

    def set_applied_position(self, position: int) -> None: ...


__all__ = ["FeatureStore"]
