"""Session state and the pure fold ``apply(state, event) -> state``.

``SessionState`` is everything the engine knows about one user *now*: the current session's
interactions, a bounded tail of earlier sessions, the cart, and what the user bought or
dismissed. It is a value: ``apply`` returns a new one and never mutates, reads a clock or does
I/O, so replaying the same events in the same order always yields byte-equal states.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from insession.config import SessionConfig
from insession.events import Event, EventType


@dataclass(frozen=True, slots=True)
class Interaction:
    """One item interaction kept in state (an event stripped to what ranking needs)."""

    item_id: str
    type: EventType
    ts: int
    category: str | None = None

    def to_list(self) -> list[Any]:
        return [self.item_id, self.type.value, self.ts, self.category]

    @staticmethod
    def from_list(raw: Sequence[Any]) -> Interaction:
        return Interaction(str(raw[0]), EventType(raw[1]), int(raw[2]), raw[3])


@dataclass(frozen=True, slots=True)
class SessionState:
    """The live state of one user. ``session_version`` counts every event applied to it."""

    user_id: str
    session_id: str
    session_index: int
    session_version: int
    session_started_ms: int
    last_event_ms: int
    log_position: int = 0
    explicit_session: bool = False
    events: tuple[Interaction, ...] = ()
    history: tuple[Interaction, ...] = ()
    cart: tuple[str, ...] = ()
    purchased: tuple[str, ...] = ()
    dismissed: tuple[str, ...] = ()
    last_query: str | None = None

    def seen_items(self) -> tuple[str, ...]:
        """Items the user interacted with in the current session, oldest first, unique."""
        return tuple(dict.fromkeys(i.item_id for i in self.events))

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "session_id": self.session_id,
            "session_index": self.session_index,
            "session_version": self.session_version,
            "session_started_ms": self.session_started_ms,
            "last_event_ms": self.last_event_ms,
            "log_position": self.log_position,
            "explicit_session": self.explicit_session,
            "events": [i.to_list() for i in self.events],
            "history": [i.to_list() for i in self.history],
            "cart": list(self.cart),
            "purchased": list(self.purchased),
            "dismissed": list(self.dismissed),
            "last_query": self.last_query,
        }

    def to_bytes(self) -> bytes:
        """Canonical serialisation: equal states give equal bytes."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> SessionState:
        return SessionState(
            user_id=raw["user_id"],
            session_id=raw["session_id"],
            session_index=int(raw["session_index"]),
            session_version=int(raw["session_version"]),
            session_started_ms=int(raw["session_started_ms"]),
            last_event_ms=int(raw["last_event_ms"]),
            log_position=int(raw["log_position"]),
            explicit_session=bool(raw["explicit_session"]),
            events=tuple(Interaction.from_list(i) for i in raw["events"]),
            history=tuple(Interaction.from_list(i) for i in raw["history"]),
            cart=tuple(raw["cart"]),
            purchased=tuple(raw["purchased"]),
            dismissed=tuple(raw["dismissed"]),
            last_query=raw["last_query"],
        )

    @staticmethod
    def from_bytes(raw: bytes) -> SessionState:
        return SessionState.from_dict(json.loads(raw))


def starts_new_session(state: SessionState | None, event: Event, cfg: SessionConfig) -> bool:
    """Whether ``event`` opens a new session for the user whose state is ``state``.

    A client-sent ``session_id`` decides when present (a different id is a new session). Without
    one, a gap of ``cfg.timeout_ms`` or more of event time since the user's last event cuts.
    Events older than the last one (out of order) never cut.
    """
    if state is None:
        return True
    if event.session_id is not None:
        return not (state.explicit_session and state.session_id == event.session_id)
    return event.ts - state.last_event_ms >= cfg.timeout_ms


def _push(items: tuple[str, ...], item: str, limit: int) -> tuple[str, ...]:
    """Append ``item`` as the newest entry of an ordered set, dropping the oldest past ``limit``."""
    kept = (*tuple(i for i in items if i != item), item)
    return kept[-limit:]


def apply(state: SessionState | None, event: Event, cfg: SessionConfig, position: int = 0) -> SessionState:
    """Fold one event into a user's state. Pure: same inputs, same output."""
    if state is not None and state.user_id != event.user_id:
        raise ValueError(f"event for user {event.user_id!r} applied to state of {state.user_id!r}")
    base = _open_session(state, event, cfg) if (state is None or starts_new_session(state, event, cfg)) else state
    events = base.events
    cart, purchased, dismissed = base.cart, base.purchased, base.dismissed
    last_query = base.last_query
    limit = cfg.max_user_items
    if event.item_id is not None:
        interaction = Interaction(event.item_id, event.type, event.ts, event.prop_str("category"))
        events = ((*events, interaction))[-cfg.max_session_events :]
        if event.type is EventType.ADD_TO_CART:
            cart = _push(cart, event.item_id, limit)
        elif event.type is EventType.PURCHASE:
            purchased = _push(purchased, event.item_id, limit)
            cart = tuple(i for i in cart if i != event.item_id)
        elif event.type is EventType.DISMISS:
            dismissed = _push(dismissed, event.item_id, limit)
    if event.type is EventType.SEARCH:
        last_query = event.prop_str("query")

    return replace(
        base,
        session_version=base.session_version + 1,
        last_event_ms=max(base.last_event_ms, event.ts),
        log_position=max(base.log_position, position),
        events=events,
        cart=cart,
        purchased=purchased,
        dismissed=dismissed,
        last_query=last_query,
    )


def _open_session(state: SessionState | None, event: Event, cfg: SessionConfig) -> SessionState:
    """A fresh session for ``event``'s user, carrying over the user-level parts of ``state``."""
    index = 1 if state is None else state.session_index + 1
    if state is None:
        return SessionState(
            user_id=event.user_id,
            session_id=event.session_id or f"{event.user_id}#{index}",
            session_index=index,
            session_version=0,
            session_started_ms=event.ts,
            last_event_ms=event.ts,
            explicit_session=event.session_id is not None,
        )
    return replace(
        state,
        session_id=event.session_id or f"{event.user_id}#{index}",
        session_index=index,
        session_started_ms=event.ts,
        last_event_ms=event.ts,
        explicit_session=event.session_id is not None,
        events=(),
        history=(state.history + state.events)[-cfg.max_history_events :],
        last_query=None,
    )


def fold(events: Iterable[Event], cfg: SessionConfig) -> dict[str, SessionState]:
    """Fold a stream of events (in order) into one state per user. Used by tests and replay."""
    states: dict[str, SessionState] = {}
    for position, event in enumerate(events, start=1):
        states[event.user_id] = apply(states.get(event.user_id), event, cfg, position)
    return states


def advance(marker: SessionState | None, event: Event, cfg: SessionConfig) -> tuple[bool, SessionState]:
    """Track session boundaries cheaply: whether ``event`` opens a session, and the next marker.

    A marker is a ``SessionState`` with only the fields the cut rule reads; it is what
    :func:`split_sessions` and the replay scheduler use instead of folding whole states.
    """
    if starts_new_session(marker, event, cfg):
        return True, SessionState(
            user_id=event.user_id,
            session_id=event.session_id or "",
            session_index=0,
            session_version=0,
            session_started_ms=event.ts,
            last_event_ms=event.ts,
            explicit_session=event.session_id is not None,
        )
    assert marker is not None  # starts_new_session is True for a missing marker
    return False, replace(marker, last_event_ms=max(marker.last_event_ms, event.ts))


def split_sessions(user_events: Sequence[Event], cfg: SessionConfig) -> Iterator[list[Event]]:
    """Cut one user's time-ordered events into sessions with the same rule ``apply`` uses."""
    current: list[Event] = []
    marker: SessionState | None = None
    for event in user_events:
        new, marker = advance(marker, event, cfg)
        if new and current:
            yield current
            current = []
        current.append(event)
    if current:
        yield current
