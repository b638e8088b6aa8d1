"""Co-visitation learned online: which items people go on to after an item, counted per event.

The trained co-visitation matrix knows only what happened before the training cut-off. This
counter is folded from the event stream by the same fold as session state and item activity
(``fold.fold_event``, and ``replay.Replay`` offline), so it learns what started at noon by
12:01, and knows items the model has never seen. For each item event, each of the session's
``LOOKBACK`` previous item events ``p`` adds ``1/d`` (``d`` = 1 for the latest) to the pair
``p -> item``. Each item keeps its ``MAX_NEIGHBOURS`` heaviest followers, their weights halving
every ``HALF_LIFE_MS`` of event time, so the lists are bounded and forget.

Events the guard rail caps (``features.activity.capped``) are not counted, and an item event
that repeats an item already in its session adds no pairs (each session says "A, then X" once),
so a bot going A -> X over and over weighs what one shopper does and cannot make its item
everyone's follower; many distinct sessions do.
"""

from __future__ import annotations

import json
import math
import struct
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from operator import neg

from insession.config import SessionConfig
from insession.events import Event
from insession.features.activity import ACTIVITY_WEIGHTS
from insession.sessions import Interaction, SessionState, starts_new_session

NAMESPACE = "covisit_online"
LOOKBACK = 3
MAX_NEIGHBOURS = 50
HALF_LIFE_MS = 3 * 24 * 3_600_000
#: Guard rail on sharing: a learned transition reaches other users' lists (and the ranker's
#: features) only once its decayed weight reaches this, about two distinct sessions' worth (a
#: session adds at most ~1 to a pair): one shopper's path, or one bot's, is not shared.
MIN_SHARED_WEIGHT = 1.5


def counts(event: Event) -> bool:
    """Whether ``event`` takes part in co-visitation (an item event a shopper chose: not a dismissal)."""
    return event.item_id is not None and event.type in ACTIVITY_WEIGHTS


@dataclass(frozen=True, slots=True)
class Neighbours:
    """An item's followers, heaviest first (ties by id), weights decayed to ``last_ts``."""

    last_ts: int
    items: tuple[str, ...]
    weights: tuple[float, ...]

    def to_bytes(self) -> bytes:
        """Binary (see ``_BINARY``); JSON for a list no binary form holds (an id with a NUL in it, or
        a malformed list). :meth:`from_bytes` reads both, and JSON written by earlier versions."""
        n = len(self.items)
        joined = "\x00".join(self.items)
        if n != len(self.weights) or joined.count("\x00") != max(n - 1, 0):
            return json.dumps([self.last_ts, self.items, self.weights], separators=(",", ":")).encode()
        return _head(n).pack(_BINARY, self.last_ts, n, *self.weights) + joined.encode()

    @staticmethod
    def from_bytes(raw: bytes) -> Neighbours:
        if raw[:1] == b"[":
            last_ts, items, weights = json.loads(raw)
            return Neighbours(int(last_ts), tuple(items), tuple(map(float, weights)))
        if raw[:1] != _BINARY:
            raise ValueError(f"followers: unknown format {raw[:1]!r}")
        _, last_ts, n = _COUNT.unpack_from(raw)
        head = _head(n)
        weights = head.unpack_from(raw)[3:]
        items = tuple(raw[head.size :].decode().split("\x00")) if n else ()
        if len(items) != n:
            raise ValueError(f"followers: {len(items)} items but {n} weights (a malformed stored list)")
        return Neighbours(last_ts, items, weights)

    def at(self, now_ms: int) -> dict[str, float]:
        """The weights decayed to ``now_ms`` (never grown: a request before ``last_ts`` sees them as is)."""
        f = _decay(now_ms - self.last_ts)
        return {i: w * f for i, w in zip(self.items, self.weights, strict=True)}

    def shared(self, now_ms: int) -> dict[str, float]:
        """``at(now_ms)`` without the transitions lighter than ``MIN_SHARED_WEIGHT``: what other
        users' requests may read."""
        return {i: w for i, w in self.at(now_ms).items() if w >= MIN_SHARED_WEIGHT}


#: The first byte of the binary form (a JSON list starts with ``[``); then the newest event time
#: (int64), the count ``n`` (uint32) and ``n`` weights (float64, exact), little-endian; then the ``n``
#: ids, UTF-8, joined by NUL. Against JSON: about a twentieth of the time to write, an eighth to read
#: (50 followers: 2 and 4 us against 43 and 29), and half the bytes.
_BINARY = b"\x01"
_COUNT = struct.Struct("<cqI")


@cache
def _head(n: int) -> struct.Struct:
    return struct.Struct(f"<cqI{n}d")


_MINUS_LN2 = -math.log(2)


def _decay(age_ms: int) -> float:
    return math.exp(_MINUS_LN2 * max(age_ms, 0) / HALF_LIFE_MS)


def add(old: Neighbours | None, item: str, weight: float, ts: int) -> Neighbours:
    """``old`` with ``weight`` added to ``item`` at event time ``ts``; the lightest dropped past
    ``MAX_NEIGHBOURS``. An event older than ``last_ts`` adds its weight decayed to ``last_ts``.

    The list is kept sorted, so this moves one entry instead of sorting them all (the fold does
    this for up to ``LOOKBACK`` lists per event); it gives exactly what :func:`add_by_sort` gives.
    Decaying every weight by one factor keeps their order, unless rounding makes two of them
    equal: then their order goes by id and may change, and the whole list is sorted again."""
    if old is None:
        return Neighbours(ts, (item,), (weight,))
    if len(old.items) != len(old.weights):
        raise ValueError(f"followers: {len(old.items)} items but {len(old.weights)} weights (a malformed stored list)")
    last = max(old.last_ts, ts)
    f = _decay(last - old.last_ts)
    weights = [w * f for w in old.weights]
    if f != 1.0 and len(set(weights)) != len(set(old.weights)):
        return add_by_sort(old, item, weight, ts)
    items = list(old.items)
    try:
        at = items.index(item)
    except ValueError:
        now = 0.0 + weight * _decay(last - ts)
    else:
        del items[at]
        now = weights.pop(at) + weight * _decay(last - ts)
    # Heaviest first, ties by id: after the entries heavier than ``now``, and the equal ones before ``item``.
    at = bisect_left(weights, -now, key=neg)
    while at < len(weights) and weights[at] == now and items[at] < item:
        at += 1
    items.insert(at, item)
    weights.insert(at, now)
    return Neighbours(last, tuple(items[:MAX_NEIGHBOURS]), tuple(weights[:MAX_NEIGHBOURS]))


def add_by_sort(old: Neighbours, item: str, weight: float, ts: int) -> Neighbours:
    """:func:`add` by sorting the merged list: what it must equal, and its way when ties may move."""
    last = max(old.last_ts, ts)
    f = _decay(last - old.last_ts)
    merged = {i: w * f for i, w in zip(old.items, old.weights, strict=True)}
    merged[item] = merged.get(item, 0.0) + weight * _decay(last - ts)
    ranked = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_NEIGHBOURS]
    return Neighbours(last, tuple(i for i, _ in ranked), tuple(w for _, w in ranked))


def previous_items(events: Sequence[Interaction], item: str | None = None) -> list[tuple[str, float]]:
    """The pairs an item event adds, given the session's item events before it: up to
    ``LOOKBACK`` previous counted events, latest first, each ``(item, 1/d)``. None when ``item``
    (the event's item) is already among the session's counted events: a repeat adds nothing."""
    if item is not None and any(i.item_id == item and i.type in ACTIVITY_WEIGHTS for i in events):
        return []
    out: list[tuple[str, float]] = []
    d = 0
    for inter in reversed(events):
        if inter.type not in ACTIVITY_WEIGHTS:
            continue
        d += 1
        out.append((inter.item_id, 1.0 / d))
        if d == LOOKBACK:
            break
    return out


def before(state: SessionState | None, event: Event, cfg: SessionConfig) -> Sequence[Interaction]:
    """The session item events ``event`` follows, from the user's state before it (``()`` when it
    opens a new session)."""
    if state is None or starts_new_session(state, event, cfg):
        return ()
    if event.ts >= state.last_event_ms:
        return state.events
    return tuple(i for i in state.events if i.ts <= event.ts)  # a late event follows only older ones
