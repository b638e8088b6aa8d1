"""Replaying an event stream through the engine's folds, and when a replayed request is asked.

Training the ranker and offline evaluation both replay history and ask the ``Recommender`` what
it would have served at some moment. ``Replay`` folds events into per-user state with
``sessions.apply`` and into per-item activity with ``features.activity.bump``, the same folds
the engine runs on ingest, so a replayed request sees exactly what a live one would have seen.

``request_points`` decides the moment: the request that precedes an event is asked right after
the same user's previous event, at that event's time, when both are in one session (the user is
on a page, the list is served, then the user acts). For the first event of a session it is asked
just before the event, at its time. Either way the request never sees the gap before the next
action, nor any event from after its own time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from insession.config import SessionConfig
from insession.events import Event
from insession.features.activity import ItemActivity, bump, capped
from insession.online import covisit
from insession.online.factors import OnlineFactors
from insession.sessions import SessionState, advance, apply


class Replay:
    """Per-user state, per-item activity and online co-visitation, folded event by event exactly as
    ``fold.fold_event`` folds them into a store."""

    def __init__(
        self,
        session_cfg: SessionConfig,
        learn: bool | npt.NDArray[np.bool_] = True,
        factors: OnlineFactors | None = None,
    ) -> None:
        self.session_cfg = session_cfg
        #: The online factor model, fed the same pairs as the engine's (``None``: none kept).
        self.factors = factors
        #: Whether online co-visitation learns from events: all, none, or per stream position
        #: (``learn[position - 1]``): a "batch-only" evaluation learns from training events only.
        self.learn = learn
        self.states: dict[str, SessionState] = {}
        self.activity: dict[str, ItemActivity] = {}
        self.followers: dict[str, covisit.Neighbours] = {}

    def apply(self, position: int, event: Event) -> None:
        """Fold ``event``, the ``position``-th (1-based) event of the stream."""
        old_state = self.states.get(event.user_id)
        self.states[event.user_id] = apply(old_state, event, self.session_cfg, position)
        item = event.item_id
        if item is None or capped(old_state, event):
            return
        bumped = bump(self.activity.get(item), event)
        if bumped is not None:
            self.activity[item] = bumped
        learning = self.learn if isinstance(self.learn, bool) else bool(self.learn[position - 1])
        if learning and covisit.counts(event):
            pairs = covisit.previous_items(covisit.before(old_state, event, self.session_cfg), item)
            for p, w in pairs:
                if p != item:
                    self.followers[p] = covisit.add(self.followers.get(p), item, w, event.ts)
            if pairs and self.factors is not None:
                self.factors.add_ids(pairs[0][0], item)

    def copy(self, learn: bool | npt.NDArray[np.bool_]) -> Replay:
        """A replay that continues from this one's state apart from it (the values are immutable:
        the tables are copied, not the states), learning as ``learn`` says; none with an online
        factor model (its state is not copied)."""
        if self.factors is not None:
            raise ValueError("copy: a replay with an online factor model cannot be copied")
        other = Replay(self.session_cfg, learn=learn)
        other.states, other.activity, other.followers = dict(self.states), dict(self.activity), dict(self.followers)
        return other

    def state(self, user_id: str) -> SessionState | None:
        return self.states.get(user_id)

    def lookup(self, ids: Sequence[str]) -> list[ItemActivity | None]:
        return [self.activity.get(i) for i in ids]

    def neighbours(self, ids: Sequence[str]) -> list[covisit.Neighbours | None]:
        return [self.followers.get(i) for i in ids]


@dataclass(frozen=True, slots=True)
class RequestPoint:
    target: int  # index of the event the request precedes
    after: int  # index of the last event applied before the request (-1: none)
    now_ms: int  # the request's time


def request_points(
    events: Sequence[Event], targets: Iterable[int], cfg: SessionConfig
) -> dict[int, list[RequestPoint]]:
    """For each target index, when its request is asked; keyed by ``after``, in target order."""
    wanted = set(targets)
    due: dict[int, list[RequestPoint]] = defaultdict(list)
    for point in _points(events, cfg):
        if point.target in wanted:
            due[point.after].append(point)
    return dict(due)


def earliest_request(events: Sequence[Event], first_target: int, cfg: SessionConfig) -> int:
    """The smallest ``after`` ``request_points`` gives any target at or after ``first_target``: the
    events before it can be folded once for every replay whose requests start there (-1: none)."""
    earliest = first_target - 1
    for point in _points(events, cfg):
        if point.target >= first_target and point.after < earliest:
            earliest = point.after
    return earliest


def _points(events: Sequence[Event], cfg: SessionConfig) -> Iterable[RequestPoint]:
    """The request point of every event, in event order."""
    previous: dict[str, int] = {}
    markers: dict[str, SessionState] = {}
    for i, event in enumerate(events):
        new_session, markers[event.user_id] = advance(markers.get(event.user_id), event, cfg)
        prev = previous.get(event.user_id)
        if new_session or prev is None:
            yield RequestPoint(i, i - 1, event.ts)
        else:
            yield RequestPoint(i, prev, events[prev].ts)
        previous[event.user_id] = i


@dataclass(frozen=True, slots=True)
class Prefix:
    """The fold of a log's first ``events`` events, from which several replays of that log start
    (each on its own ``Replay.copy``) instead of each folding them again."""

    replay: Replay
    events: int


@dataclass(frozen=True, slots=True)
class ReplayCheck:
    """A replay of the event log compared with a persisted live state at the same log position."""

    position: int
    users: int
    items: int
    differing_users: list[str]
    differing_items: list[str]
    differing_followers: list[str] = field(default_factory=list)  # online co-visitation lists

    @property
    def identical(self) -> bool:
        return not self.differing_users and not self.differing_items and not self.differing_followers


def check(
    events: Iterable[tuple[int, Event]],
    position: int,
    session_cfg: SessionConfig,
    users: Mapping[str, bytes],
    items: Mapping[str, bytes],
    followers: Mapping[str, bytes] | None = None,
    learn: bool = True,
) -> ReplayCheck:
    """Fold ``events`` up to ``position`` and compare every user's state, every item's activity
    and (when given) every online co-visitation list, as canonical bytes, with the live ones
    (``users``/``items``/``followers``: id -> serialised value)."""
    replay = Replay(session_cfg, learn=learn)
    for pos, event in events:
        if pos > position:
            break
        replay.apply(pos, event)
    bad_users = sorted(u for u in set(users) | set(replay.states) if users.get(u) != _bytes(replay.states.get(u)))
    bad_items = sorted(i for i in set(items) | set(replay.activity) if items.get(i) != _bytes(replay.activity.get(i)))
    bad_followers: list[str] = []
    if followers is not None:
        known = set(followers) | set(replay.followers)
        bad_followers = sorted(i for i in known if followers.get(i) != _bytes(replay.followers.get(i)))
    return ReplayCheck(position, len(replay.states), len(replay.activity), bad_users, bad_items, bad_followers)


def _bytes(value: SessionState | ItemActivity | covisit.Neighbours | None) -> bytes | None:
    return None if value is None else value.to_bytes()
