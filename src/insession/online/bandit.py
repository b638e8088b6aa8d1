"""Exploration: a bounded share of each list given to items the ranker would not show yet.

A ranker trained on what was shown keeps showing it: new and long-tail items never collect the
clicks that would lift them. A surface with ``explore_share > 0`` gives ``floor(k * share)`` of
its last positions to a Thompson-sampling bandit over the next-best candidates (those ranked just
below the top ``k`` that passed every rule): each draws a click rate from ``Beta(1 + clicks,
1 + impressions - clicks)`` and the highest draws take the slots. An item nobody was shown draws
from ``Beta(1, 1)``, so unexposed items get their chance; one shown often and never clicked
stops being drawn.

Feedback is item-level: an impression per item per served list, a click when the user acts on
(views, clicks, carts or buys) an item shown to them in their current session. The counts are
kept per server process (``BanditStats``), bounded in size.

The draw is seeded from the request's seed (``manifest.seed_of``: request id and session
version), so the same counts give the same choice; the counts change with every request, so a
served request's explored items are recorded in its manifest and ``explain`` replays them.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

#: How many next-best candidates the bandit draws from.
POOL = 50


class BanditStats:
    """Impressions and clicks per item, for the items touched most recently (bounded)."""

    def __init__(self, max_items: int = 200_000) -> None:
        self.max_items = max_items
        self._counts: OrderedDict[str, list[int]] = OrderedDict()  # item -> [impressions, clicks]
        self._lock = threading.Lock()

    def _entry(self, item: str) -> list[int]:
        found = self._counts.get(item)
        if found is None:
            found = self._counts[item] = [0, 0]
            while len(self._counts) > self.max_items:
                self._counts.popitem(last=False)
        else:
            self._counts.move_to_end(item)
        return found

    def shown(self, items: Sequence[str]) -> None:
        with self._lock:
            for item in items:
                self._entry(item)[0] += 1

    def clicked(self, item: str) -> None:
        with self._lock:
            entry = self._entry(item)
            entry[1] = min(entry[1] + 1, entry[0])  # a click without a counted impression adds none

    def counts(self, items: Sequence[str]) -> list[tuple[int, int]]:
        with self._lock:
            return [tuple(self._counts.get(i, (0, 0))) for i in items]  # type: ignore[misc]


def slots(k: int, share: float) -> int:
    """Positions of a ``k`` list given to exploration."""
    return math.floor(k * share + 1e-9)


def choose(pool: Sequence[str], counts: Sequence[tuple[int, int]], n: int, seed: int) -> list[str]:
    """Thompson sampling: the ``n`` items of ``pool`` with the highest click-rate draws (ties by
    pool order). Pure: the same pool, counts and seed give the same items."""
    if n <= 0 or not pool:
        return []
    rng = np.random.default_rng(seed)
    shown = np.array([c[0] for c in counts], dtype=np.float64)
    clicks = np.array([c[1] for c in counts], dtype=np.float64)
    draws = rng.beta(1.0 + clicks, 1.0 + np.maximum(shown - clicks, 0.0))
    order = np.lexsort((np.arange(len(pool)), -draws))[:n]
    return [pool[int(i)] for i in sorted(order.tolist())]
