"""Per-item streaming activity: a time-decayed popularity and the recent event times.

Folded per event, purely, exactly like session state: the engine keeps one ``ItemActivity`` per
item in the feature store, and training replays the same fold, so sliding-window counts and live
popularity are the same number online and offline.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from itertools import chain

import numpy as np
import numpy.typing as npt

from insession.clock import HOUR_MS, MINUTE_MS
from insession.events import Event, EventType
from insession.memo import DecodeMemo
from insession.sessions import SessionState

MAX_RECENT = 64
POPULARITY_HALF_LIFE_MS = 6 * HOUR_MS
WINDOWS_MS = (5 * MINUTE_MS, HOUR_MS, 24 * HOUR_MS)
WINDOW_NAMES = ("5m", "1h", "24h")
ACTIVITY_WEIGHTS = {EventType.VIEW: 1.0, EventType.CLICK: 1.0, EventType.ADD_TO_CART: 3.0, EventType.PURCHASE: 4.0}
NAMESPACE = "item_activity"
#: Guard rail: one user moves one item's activity by at most ``MAX_EVENTS_PER_USER`` events per
#: ``USER_WINDOW_MS`` of event time. Events beyond that are *capped*: they still fold into the
#: user's own session, never into the item's popularity or counts, so a bot hammering one item
#: cannot push it up for everyone else.
MAX_EVENTS_PER_USER = 3
USER_WINDOW_MS = 10 * MINUTE_MS
_FORMAT = -1.0  # first value of the serialised form (``decayed`` is never negative)


@cache
def _packer(n: int) -> struct.Struct:
    return struct.Struct(f"={n}d")


def user_key(user_id: str) -> int:
    """A 32-bit key for a user, kept with each recent event of an item."""
    return zlib.crc32(user_id.encode())


@dataclass(frozen=True, slots=True)
class ItemActivity:
    decayed: float  # weighted event count, decayed to ``last_ts``
    last_ts: int
    recent: tuple[int, ...]  # the newest event times, oldest first, at most MAX_RECENT
    recent_users: tuple[int, ...] = ()  # ``user_key`` of each of ``recent`` (-1: unknown); for audits
    #: ``recent`` as an int64 array and, for each ``i`` (``len(recent) + 1`` of them), the distinct
    #: known users of ``recent_users[i:]``; computed on first use: a request asks them of hundreds
    #: of candidates, mostly decoded values it shares with the requests before
    #: (``ActivityDecoder``), and a set of 64 users per candidate per list was a fifth of a list's
    #: cost on a busy shop (issue 25). Not part of the value: equality and bytes ignore it.
    _arrays: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None = field(
        default=None, init=False, compare=False, repr=False
    )

    def to_bytes(self) -> bytes:
        users = self.recent_users or (-1,) * len(self.recent)
        # The bytes of np.array(values, dtype=np.float64) (native order), packed without the array.
        packer = _packer(3 + len(self.recent) + len(users))
        return packer.pack(_FORMAT, self.decayed, self.last_ts, *self.recent, *users)

    @staticmethod
    def from_bytes(raw: bytes) -> ItemActivity:
        values = np.frombuffer(raw, dtype=np.float64)
        # tolist() converts in C: a request decodes hundreds of these, each with up to 64 times.
        if values[0] != _FORMAT:  # written before users were kept: times only
            return ItemActivity(float(values[0]), int(values[1]), tuple(values[2:].astype(np.int64).tolist()))
        n = (len(values) - 3) // 2
        times = values[3:].astype(np.int64).tolist()
        return ItemActivity(float(values[1]), int(values[2]), tuple(times[:n]), tuple(times[n:]))

    def users_between(self, start: int, top: int) -> int:
        """How many distinct known users (``-1`` left out) the events ``recent[start:top]`` came from."""
        users = self.recent_users
        if top != len(users):  # a request before the item's newest events: counted directly
            found = set(users[start:top])
            found.discard(-1)
            return len(found)
        return int(self.arrays()[1][start])

    def arrays(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """``recent`` as an int64 array, and the distinct known users from each event on (zeros
        when no users are kept); computed once per value."""
        found = self._arrays
        if found is None:
            users = self.recent_users
            counts = [0] * (len(self.recent) + 1)
            seen: set[int] = set()
            for n in range(len(users) - 1, -1, -1):
                if users[n] != -1:
                    seen.add(users[n])
                counts[n] = len(seen)
            found = (np.array(self.recent, dtype=np.int64), np.array(counts, dtype=np.int64))
            object.__setattr__(self, "_arrays", found)  # a cache, not part of the value
        return found

    def popularity_at(self, now_ms: int) -> float:
        age = max(now_ms - self.last_ts, 0)
        return self.decayed * math.exp(-math.log(2) * age / POPULARITY_HALF_LIFE_MS)


class ActivityDecoder(DecodeMemo[ItemActivity]):
    """``ItemActivity.from_bytes`` with a bounded memo per item (``memo.DecodeMemo``): a request
    reads the activity of hundreds of candidates, and the fold the activity of each item it bumps,
    mostly unchanged since the last read."""

    def __init__(self, max_entries: int = 10_000) -> None:  # a decoded value can weigh ~6 KB
        super().__init__(ItemActivity.from_bytes, max_entries)


def capped(state: SessionState | None, event: Event) -> bool:
    """Whether ``event`` is over its user's share of the item: ``MAX_EVENTS_PER_USER`` *accepted*
    events in any ``USER_WINDOW_MS``, so a shopper re-viewing an item all afternoon still counts at
    that rate while a bot's burst counts as a few events. Which of the user's earlier events on the
    item were accepted is re-derived from the user's own state (this session, then the history
    tail), from the last gap of a whole window (nothing before it can matter). It reads nothing of
    other users, so every fold reaches the same decision whatever order different users' events
    arrive in (stream partitions, workers)."""
    item = event.item_id
    if state is None or item is None or MAX_EVENTS_PER_USER <= 0:
        return False
    times: list[int] = []  # the user's events on the item, newest first, back to a window's gap
    in_window = 0
    for inter in chain(reversed(state.events), reversed(state.history)):
        if inter.ts <= event.ts - USER_WINDOW_MS and in_window < MAX_EVENTS_PER_USER:
            return False  # the usual case, decided without reading further back
        if inter.item_id != item or inter.type not in ACTIVITY_WEIGHTS or inter.ts > event.ts:
            continue
        if (times[-1] if times else event.ts) - inter.ts >= USER_WINDOW_MS:
            break
        times.append(inter.ts)
        in_window += inter.ts > event.ts - USER_WINDOW_MS
    if in_window < MAX_EVENTS_PER_USER:
        return False
    accepted: list[int] = []
    for t in reversed(times):  # oldest first, as they were folded
        if _room(accepted, t):
            accepted.append(t)
    return not _room(accepted, event.ts)


def _room(accepted: list[int], ts: int) -> bool:
    return sum(1 for t in accepted if ts - USER_WINDOW_MS < t <= ts) < MAX_EVENTS_PER_USER


def bump(activity: ItemActivity | None, event: Event) -> ItemActivity | None:
    """Fold one event into its item's activity; events that carry no item activity change nothing.
    (Callers leave out events over their user's share of the item: ``capped``.)"""
    weight = ACTIVITY_WEIGHTS.get(event.type)
    if weight is None or event.item_id is None:
        return activity
    user = user_key(event.user_id)
    if activity is None:
        return ItemActivity(weight, event.ts, (event.ts,), (user,))
    last = max(activity.last_ts, event.ts)
    decayed = activity.popularity_at(last) + weight * math.exp(
        -math.log(2) * (last - event.ts) / POPULARITY_HALF_LIFE_MS
    )
    recent = activity.recent
    users = activity.recent_users or (-1,) * len(recent)
    if (not recent or event.ts > recent[-1]) and len(users) == len(recent):
        # The newest time (the usual case): appending gives the order the sort below gives, as
        # ``recent`` is sorted (by time, then user), and costs a fraction of it (issue 26).
        return ItemActivity(decayed, last, (*recent, event.ts)[-MAX_RECENT:], (*users, user)[-MAX_RECENT:])
    merged = sorted((*zip(recent, users, strict=True), (event.ts, user)))[-MAX_RECENT:]
    return ItemActivity(decayed, last, tuple(t for t, _ in merged), tuple(u for _, u in merged))


def activity_features(activity: Sequence[ItemActivity | None], now_ms: int) -> npt.NDArray[np.float64]:
    """Per item: log1p(live popularity) and the 5m/1h/24h event counts at ``now_ms`` (zeros if unknown).

    Popularity as ``popularity_at`` gives it; a window counts the events in ``(now - w, now]``
    among each item's (sorted, at most ``MAX_RECENT``) recent times: a request's cost does not grow
    with how busy its candidates are.
    """
    return activity_windows(activity, now_ms)[0]


def activity_windows(
    activity: Sequence[ItemActivity | None], now_ms: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``activity_features`` and, per item, the distinct users of its events in the last of
    ``WINDOWS_MS`` (24 h), from the same counts (``online.novelty`` reads both).

    Every item's recent times in one array: a window's count is the events at or before ``now``
    less those at or before its start (what bisecting each sorted list gives), for all items at
    once; the distinct users from the same positions (``ItemActivity.arrays``)."""
    out = np.zeros((len(activity), 1 + len(WINDOWS_MS)), dtype=np.float64)
    users_last = np.zeros(len(activity), dtype=np.float64)
    rows = [n for n, a in enumerate(activity) if a is not None]
    if not rows:
        return out, users_last
    known = [a for a in activity if a is not None]
    arrays = [a.arrays() for a in known]
    lengths = np.fromiter((len(a.recent) for a in known), dtype=np.int64, count=len(known))
    flat = np.concatenate([t for t, _ in arrays])
    ends = np.cumsum(lengths)
    begins = ends - lengths
    counted = np.zeros(len(flat) + 1, dtype=np.int64)

    def at_or_before(ts: int) -> npt.NDArray[np.int64]:
        np.cumsum(flat <= ts, out=counted[1:])
        found: npt.NDArray[np.int64] = counted[ends] - counted[begins]
        return found

    top = at_or_before(now_ms)
    starts = [at_or_before(now_ms - w) for w in WINDOWS_MS]
    # The distinct users of the last window's events: read off each item's suffix counts (``len + 1``
    # of them, so item ``i``'s start at ``begins[i] + i``), or counted when the request is before
    # the item's newest events.
    users = np.concatenate([u for _, u in arrays])[begins + np.arange(len(known)) + starts[-1]]
    for i in np.flatnonzero(top != lengths):
        users[i] = known[i].users_between(int(starts[-1][i]), int(top[i]))
    users_last[rows] = users
    last = np.fromiter((a.last_ts for a in known), dtype=np.int64, count=len(known))
    decayed = np.fromiter((a.decayed for a in known), dtype=np.float64, count=len(known))
    age = np.maximum(now_ms - last, 0)
    out[rows, 0] = np.log1p(decayed * np.exp(-math.log(2) * age / POPULARITY_HALF_LIFE_MS))
    out[rows, 1:] = np.stack([top - start for start in starts], axis=1)
    return out, users_last
