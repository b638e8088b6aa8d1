"""The event log: the append-only source of truth that every state is folded from."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from insession.errors import FieldError
from insession.events import Event


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What ``append`` did: the events newly written, with their positions, and duplicates."""

    accepted: list[tuple[int, Event]] = field(default_factory=list)
    duplicates: int = 0
    duplicate_ids: list[str] = field(default_factory=list)
    #: Events refused before the append (index in the batch, every reason): invalid, or late beyond
    #: the allowed lateness.
    refused: list[tuple[int, list[FieldError]]] = field(default_factory=list)


class EventLog(Protocol):
    def append(self, events: Sequence[Event]) -> AppendResult:
        """Durably append ``events`` in the given order.

        Idempotent by ``event_id``: an id already in the log (or earlier in the same batch) is
        counted as a duplicate and not written again. Every accepted event gets a position
        strictly greater than any earlier one of the same user (the embedded log: of any user).
        When this returns, accepted events survive a process crash (on Redis: as far as Redis's
        own persistence is configured). Not guaranteed: positions are not contiguous.
        """
        ...

    def read(self, after: int = 0, limit: int | None = None) -> Iterator[tuple[int, Event]]:
        """Events with position > ``after``, in position order."""
        ...

    def span(self, after: int, limit: int) -> tuple[int, int]:
        """How many of the next ``limit`` events after ``after`` there are, and the position of the
        last of them (0 if none): what ``read(after, limit)`` would yield, without decoding it."""
        ...

    def known(self, events: Sequence[Event]) -> set[str]:
        """The ids of those of ``events`` the log already holds (on Redis: within its dedup window)."""
        ...

    def last_position(self) -> int:
        """The highest position written, 0 for an empty log."""
        ...

    def count(self) -> int:
        """How many events the log holds."""
        ...

    def close(self) -> None: ...


__all__ = ["AppendResult", "EventLog"]
