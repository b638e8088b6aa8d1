"""Session state and the pure fold ``apply(state, event) -> state``.

``SessionState`` is everything the engine knows about one user *now*: the current session's
interactions, a bounded tail of earlier sessions, the cart, and what the user bought or
dismissed. It is a value: ``apply`` returns a new one and never mutates, reads a clock or does
I/O, so replaying the same events in the same order always yields byte-equal states.

Events may arrive out of order. One up to ``SessionConfig.allowed_lateness_ms`` older than its
user's newest event, and inside the current session, is folded in event-time order: the state is
the one the time-sorted events give (``tests/unit/test_properties.py``). Older ones are refused at
ingest with the reason (:func:`lateness`); ``apply`` itself never refuses.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from insession.config import SessionConfig
from insession.errors import FieldError
from insession.events import Event, EventType


class Interaction(NamedTuple):
    """One item interaction kept in state (an event stripped to what ranking needs).

    A named tuple, not a dataclass: a user's state holds up to a few hundred, and every read of a
    stored state (a checkpoint, Redis, a snapshot) builds them all. ``tuple.__new__`` builds one in
    a quarter of a frozen dataclass's time, and the tuple is written to JSON as it stands (the
    type is a ``StrEnum``: its value)."""

    item_id: str
    type: EventType
    ts: int
    category: str | None = None

    def to_list(self) -> list[Any]:
        return [self.item_id, self.type.value, self.ts, self.category]

    @staticmethod
    def from_list(raw: Sequence[Any]) -> Interaction:
        return Interaction(str(raw[0]), EventType(raw[1]), int(raw[2]), raw[3])


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
_TYPES = {t.value: t for t in EventType}
_new = tuple.__new__


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
    last_query_ms: int = 0
    #: When the user's previous session ended (its newest event), ``None`` before a second session.
    previous_last_ms: int | None = None

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
            "last_query_ms": self.last_query_ms,
            "previous_last_ms": self.previous_last_ms,
        }

    def to_bytes(self) -> bytes:
        """Canonical serialisation: equal states give equal bytes. The bytes of ``to_dict()`` with
        sorted keys, built without it: the keys written in their sorted order, the interactions as
        the tuples they are (a ``StrEnum`` is written as its value). Half the time of ``to_dict`` and a sort for
        a state with a hundred interactions, which the fold and each checkpoint write for every
        user they touch (``tests/unit/test_fold_fast_paths.py`` holds it to the ``to_dict`` form)."""
        return _ENCODE(
            {
                "cart": self.cart,
                "dismissed": self.dismissed,
                "events": self.events,
                "explicit_session": self.explicit_session,
                "history": self.history,
                "last_event_ms": self.last_event_ms,
                "last_query": self.last_query,
                "last_query_ms": self.last_query_ms,
                "log_position": self.log_position,
                "previous_last_ms": self.previous_last_ms,
                "purchased": self.purchased,
                "session_id": self.session_id,
                "session_index": self.session_index,
                "session_started_ms": self.session_started_ms,
                "session_version": self.session_version,
                "user_id": self.user_id,
            }
        ).encode()

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
            events=_interactions(raw["events"]),
            history=_interactions(raw["history"]),
            cart=tuple(raw["cart"]),
            purchased=tuple(raw["purchased"]),
            dismissed=tuple(raw["dismissed"]),
            last_query=raw["last_query"],
            last_query_ms=int(raw.get("last_query_ms", 0)),
            previous_last_ms=raw.get("previous_last_ms"),
        )

    @staticmethod
    def from_bytes(raw: bytes) -> SessionState:
        return SessionState.from_dict(json.loads(raw))


def _interactions(raw: Sequence[Sequence[Any]]) -> tuple[Interaction, ...]:
    """Stored interactions: the usual ones built directly (a dict lookup for the type instead of
    ``from_list``'s per-field calls: a user's state holds up to a few hundred), anything else by
    ``from_list``, which raises what the field's rule says."""
    try:
        return tuple([_new(Interaction, (str(a), _TYPES[t], int(ts), c)) for a, t, ts, c in raw])
    except (KeyError, ValueError, TypeError):
        return tuple(Interaction.from_list(i) for i in raw)


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


def lateness(state: SessionState | None, event: Event, cfg: SessionConfig) -> FieldError | None:
    """Why ``event`` cannot be folded in event-time order into ``state``, or ``None`` if it can.

    An event no older than the user's newest one is always in order. A late one is folded if it
    is at most ``cfg.allowed_lateness_ms`` late and belongs to the current session (same explicit
    ``session_id``; without one, time order would not put it in the previous session or split
    the current one); otherwise the session it belongs to has moved on, and the event is refused
    with this reason rather than folded out of order.
    """
    if state is None or event.ts >= state.last_event_ms:
        return None
    late = state.last_event_ms - event.ts
    got = f"ts {event.ts}, {late} ms before the user's newest event (ts {state.last_event_ms})"
    if late > cfg.allowed_lateness_ms:
        return FieldError("ts", f"at most allowed_lateness_ms = {cfg.allowed_lateness_ms} ms late", got)
    if event.session_id is not None and not (state.explicit_session and state.session_id == event.session_id):
        return FieldError(
            "session_id", f"the user's current session {state.session_id!r} for a late event", repr(event.session_id)
        )
    if event.session_id is None and event.ts < state.session_started_ms:
        # In time order it would open the session (so it may join it) unless it falls within
        # timeout of the previous session's end (then the two sessions would be one).
        previous = state.previous_last_ms
        if state.session_started_ms - event.ts >= cfg.timeout_ms or (
            previous is not None and event.ts - previous < cfg.timeout_ms
        ):
            return FieldError(
                "ts",
                f"a late event that belongs to the current session (started at ts {state.session_started_ms})",
                got + ", which would join it to the previous, ended session",
            )
    return None


def _sets(
    sets: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], item: str, kind: EventType, limit: int
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Cart, purchased and dismissed after one item event."""
    cart, purchased, dismissed = sets
    if kind is EventType.ADD_TO_CART:
        cart = _push(cart, item, limit)
    elif kind is EventType.PURCHASE:
        purchased = _push(purchased, item, limit)
        cart = tuple(i for i in cart if i != item)
    elif kind is EventType.DISMISS:
        dismissed = _push(dismissed, item, limit)
    return cart, purchased, dismissed


def apply(state: SessionState | None, event: Event, cfg: SessionConfig, position: int = 0) -> SessionState:
    """Fold one event into a user's state. Pure: same inputs, same output.

    A late event (older than the user's newest) that stays in the session is placed in event-time
    order (after events of the same time), and the cart, purchases and dismissals are what they
    would be had it arrived in order: its effect, then the session's newer events' effects again
    (each is a move-to-newest or a removal, so re-applying them restores their order).
    """
    if state is not None and state.user_id != event.user_id:
        raise ValueError(f"event for user {event.user_id!r} applied to state of {state.user_id!r}")
    new = state is None or starts_new_session(state, event, cfg)
    base = _open_session(state, event, cfg) if new else state
    assert base is not None
    late = event.ts < base.last_event_ms
    events = base.events
    sets = (base.cart, base.purchased, base.dismissed)
    last_query, last_query_ms = base.last_query, base.last_query_ms
    limit = cfg.max_user_items
    if event.item_id is not None:
        interaction = Interaction(event.item_id, event.type, event.ts, event.prop_str("category"))
        if late:
            cut = next((n for n, i in enumerate(events) if i.ts > event.ts), len(events))
            newer = events[cut:]
            events = (*events[:cut], interaction, *newer)
            sets = _sets(sets, event.item_id, event.type, limit)
            for i in newer:
                sets = _sets(sets, i.item_id, i.type, limit)
        else:
            events = (*events, interaction)
            sets = _sets(sets, event.item_id, event.type, limit)
        events = events[-cfg.max_session_events :]
    if event.type is EventType.SEARCH and event.ts >= last_query_ms:
        last_query, last_query_ms = event.prop_str("query"), event.ts

    # Built field by field, not with ``dataclasses.replace``: this runs once per event ingested,
    # and ``replace`` (which inspects the fields on every call) was a tenth of the fold (issue 26).
    return SessionState(
        user_id=base.user_id,
        session_id=base.session_id,
        session_index=base.session_index,
        session_version=base.session_version + 1,
        session_started_ms=min(base.session_started_ms, event.ts),
        last_event_ms=max(base.last_event_ms, event.ts),
        log_position=max(base.log_position, position),
        explicit_session=base.explicit_session,
        events=events,
        history=base.history,
        cart=sets[0],
        purchased=sets[1],
        dismissed=sets[2],
        last_query=last_query,
        last_query_ms=last_query_ms,
        previous_last_ms=base.previous_last_ms,
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
    return SessionState(
        user_id=state.user_id,
        session_id=event.session_id or f"{event.user_id}#{index}",
        session_index=index,
        session_version=state.session_version,
        session_started_ms=event.ts,
        last_event_ms=event.ts,
        log_position=state.log_position,
        explicit_session=event.session_id is not None,
        events=(),
        history=(state.history + state.events)[-cfg.max_history_events :],
        cart=state.cart,
        purchased=state.purchased,
        dismissed=state.dismissed,
        last_query=None,
        last_query_ms=0,
        previous_last_ms=state.last_event_ms,
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
    return False, SessionState(  # not ``replace``: the admission of every ingested event runs this
        user_id=marker.user_id,
        session_id=marker.session_id,
        session_index=marker.session_index,
        session_version=marker.session_version,
        session_started_ms=marker.session_started_ms,
        last_event_ms=max(marker.last_event_ms, event.ts),
        log_position=marker.log_position,
        explicit_session=marker.explicit_session,
        events=marker.events,
        history=marker.history,
        cart=marker.cart,
        purchased=marker.purchased,
        dismissed=marker.dismissed,
        last_query=marker.last_query,
        last_query_ms=marker.last_query_ms,
        previous_last_ms=marker.previous_last_ms,
    )


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
