"""Per-item streaming activity: a time-decayed popularity and the recent event times.

Folded per event, purely, exactly like session state: the engine keeps one ``ItemActivity`` per
item in the feature store, and training replays the same fold, so sliding-window counts and live
popularity are the same number online and offline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import numpy.typing as npt

from insession.clock import HOUR_MS, MINUTE_MS
from insession.events import Event, EventType

MAX_RECENT = 64
POPULARITY_HALF_LIFE_MS = 6 * HOUR_MS
WINDOWS_MS = (5 * MINUTE_MS, HOUR_MS, 24 * HOUR_MS)
WINDOW_NAMES = ("5m", "1h", "24h")
ACTIVITY_WEIGHTS = {EventType.VIEW: 1.0, EventType.CLICK: 1.0, EventType.ADD_TO_CART: 3.0, EventType.PURCHASE: 4.0}
NAMESPACE = "item_activity"


@dataclass(frozen=True, slots=True)
class ItemActivity:
    decayed: float  # weighted event count, decayed to ``last_ts``
    last_ts: int
    recent: tuple[int, ...]  # the newest event times, oldest first, at most MAX_RECENT

    def to_bytes(self) -> bytes:
        return np.array((self.decayed, self.last_ts, *self.recent), dtype=np.float64).tobytes()

    @staticmethod
    def from_bytes(raw: bytes) -> ItemActivity:
        values = np.frombuffer(raw, dtype=np.float64)
        return ItemActivity(float(values[0]), int(values[1]), tuple(int(v) for v in values[2:]))

    def popularity_at(self, now_ms: int) -> float:
        age = max(now_ms - self.last_ts, 0)
        return self.decayed * math.exp(-math.log(2) * age / POPULARITY_HALF_LIFE_MS)


def bump(activity: ItemActivity | None, event: Event) -> ItemActivity | None:
    """Fold one event into its item's activity; events that carry no item activity change nothing."""
    weight = ACTIVITY_WEIGHTS.get(event.type)
    if weight is None or event.item_id is None:
        return activity
    if activity is None:
        return ItemActivity(weight, event.ts, (event.ts,))
    last = max(activity.last_ts, event.ts)
    decayed = activity.popularity_at(last) + weight * math.exp(
        -math.log(2) * (last - event.ts) / POPULARITY_HALF_LIFE_MS
    )
    recent = tuple(sorted((*activity.recent, event.ts)))[-MAX_RECENT:]
    return ItemActivity(decayed, last, recent)


def activity_features(activity: Sequence[ItemActivity | None], now_ms: int) -> npt.NDArray[np.float64]:
    """Per item: log1p(live popularity) and the 5m/1h/24h event counts at ``now_ms`` (zeros if unknown).

    Popularity as ``popularity_at`` gives it; a window counts the events in ``(now - w, now]``.
    """
    out = np.zeros((len(activity), 1 + len(WINDOWS_MS)), dtype=np.float64)
    rows = [n for n, a in enumerate(activity) if a is not None]
    if not rows:
        return out
    known = [activity[n] for n in rows]
    decayed = np.array([a.decayed for a in known if a is not None], dtype=np.float64)
    last = np.array([a.last_ts for a in known if a is not None], dtype=np.int64)
    age = np.maximum(now_ms - last, 0)
    out[rows, 0] = np.log1p(decayed * np.exp(-math.log(2) * age / POPULARITY_HALF_LIFE_MS))
    lens = np.array([len(a.recent) for a in known if a is not None], dtype=np.int64)
    flat = np.fromiter(chain.from_iterable(a.recent for a in known if a is not None), dtype=np.int64, count=lens.sum())
    owner = np.repeat(np.asarray(rows, dtype=np.int64), lens)
    for col, w in enumerate(WINDOWS_MS, start=1):
        inside = (flat > now_ms - w) & (flat <= now_ms)
        out[:, col] = np.bincount(owner[inside], minlength=len(activity))
    return out
