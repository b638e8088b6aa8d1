"""The next-item protocol: which (prefix, target) pairs are scored, and when each is asked.

A test session is a user's session (cut with the same rule as the live fold) whose last event is
at or after the split. Its item events are kept when the item is known to training; sessions left
with fewer than two items are dropped. A kept session of n items gives n - 1 pairs: before each
item but the first, every model predicts it from the items before it (and, where users exist,
from the user's earlier sessions).

Each prediction is asked at the moment the user's previous event has been applied, at that event's
time, never later: the request cannot see how long the user waited before the next action, nor
any other user's events from after it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from insession.clock import DAY_MS
from insession.config import SessionConfig
from insession.events import Event, EventType
from insession.replay import request_points
from insession.sessions import split_sessions

#: Event types that count as "the next item": what the user went on to look at or buy.
TARGET_TYPES = frozenset({EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE})


@dataclass(frozen=True, slots=True)
class Split:
    """Training and test events, each in time order (file order breaks ties)."""

    train: list[Event]
    test: list[Event]
    description: str


def time_ordered(events: Iterable[Event]) -> list[Event]:
    return sorted(events, key=lambda e: e.ts)


def time_split(events: Iterable[Event], test_days: float, session_cfg: SessionConfig) -> Split:
    """The last ``test_days`` become the test period; whole sessions go to one side.

    A session belongs to the test side when its last event is at or after the cut, so no session
    is split in two and no training session ends after the test period starts.
    """
    if test_days <= 0:
        raise ValueError(f"test_days: expected > 0, got {test_days}")
    ordered = time_ordered(events)
    if not ordered:
        raise ValueError("events: expected at least one event, got none")
    cut = ordered[-1].ts - round(test_days * DAY_MS)
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in ordered:
        by_user[event.user_id].append(event)
    test_ids: set[str] = set()
    for user_events in by_user.values():
        for session in split_sessions(user_events, session_cfg):
            if max(e.ts for e in session) >= cut:
                test_ids.update(e.event_id for e in session)
    train = [e for e in ordered if e.event_id not in test_ids]
    test = [e for e in ordered if e.event_id in test_ids]
    return Split(train, test, f"time split: the last {test_days:g} days (sessions ending at or after ts={cut})")


@dataclass(frozen=True, slots=True)
class TestSession:
    user_id: str
    items: npt.NDArray[np.int64]  # dense item indices of the kept item events, in order
    stream_positions: npt.NDArray[np.int64]  # where each kept event sits in ``Plan.stream``
    history: npt.NDArray[np.int64]  # the user's earlier item events (train and test), oldest first


@dataclass(frozen=True, slots=True)
class Pair:
    session: int  # index into ``Plan.sessions``
    position: int  # index of the target within the session's items (1 = the second item)
    target: int  # dense item index
    after: int  # index into ``Plan.stream``: the prediction is made right after this event is applied
    now_ms: int  # the request's time (the time of the event at ``after``)


@dataclass(slots=True)
class Plan:
    """Everything an evaluation run replays: the merged event stream and the pairs to score."""

    stream: list[Event]  # train and test events merged in time order (train first on ties)
    is_test: npt.NDArray[np.bool_]
    sessions: list[TestSession]
    pairs: list[Pair]  # ordered by ``after``, then session, then position
    test_users: frozenset[str]
    dropped_unknown_items: int
    dropped_short_sessions: int

    def prefix(self, pair: Pair) -> npt.NDArray[np.int64]:
        return self.sessions[pair.session].items[: pair.position]

    def session_lengths(self) -> npt.NDArray[np.int64]:
        return np.array([len(self.sessions[p.session].items) for p in self.pairs], dtype=np.int64)

    def positions(self) -> npt.NDArray[np.int64]:
        return np.array([p.position for p in self.pairs], dtype=np.int64)

    def targets(self) -> npt.NDArray[np.int64]:
        return np.array([p.target for p in self.pairs], dtype=np.int64)


def plan(split: Split, item_index: Mapping[str, int], session_cfg: SessionConfig) -> Plan:
    """Build the pairs of ``split.test`` against the items training knows (``item_index``)."""
    train_ids = {id(e) for e in split.train}
    stream = sorted([*split.train, *split.test], key=lambda e: (e.ts, id(e) not in train_ids))
    is_test = np.array([id(e) not in train_ids for e in stream], dtype=np.bool_)
    position_of = {id(e): n for n, e in enumerate(stream)}

    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in stream:
        by_user[event.user_id].append(event)
    test_users = frozenset(e.user_id for e in split.test)

    sessions: list[TestSession] = []
    wanted: list[tuple[int, int, int, int]] = []  # session, position, target item, stream position
    dropped_unknown = 0
    dropped_short = 0
    for user in sorted(test_users):
        history: list[int] = []
        for session in split_sessions(by_user[user], session_cfg):
            kept = [e for e in session if e.type in TARGET_TYPES and e.item_id is not None]
            known = [e for e in kept if e.item_id in item_index]
            in_test = is_test[position_of[id(session[-1])]]
            if in_test:
                dropped_unknown += len(kept) - len(known)
                if len(known) < 2:
                    dropped_short += 1
                else:
                    n = len(sessions)
                    items = np.array([item_index[e.item_id] for e in known], dtype=np.int64)  # type: ignore[index]
                    where = np.array([position_of[id(e)] for e in known], dtype=np.int64)
                    sessions.append(TestSession(user, items, where, np.array(history, dtype=np.int64)))
                    wanted.extend((n, j, int(items[j]), int(where[j])) for j in range(1, len(items)))
            history.extend(item_index[e.item_id] for e in known)  # type: ignore[index]
    points = {p.target: p for due in request_points(stream, (w[3] for w in wanted), session_cfg).values() for p in due}
    pairs = [Pair(n, j, item, points[at].after, points[at].now_ms) for n, j, item, at in wanted]
    pairs.sort(key=lambda p: (p.after, p.session, p.position))
    return Plan(stream, is_test, sessions, pairs, test_users, dropped_unknown, dropped_short)
