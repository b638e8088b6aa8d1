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
counters in the feature store (``BanditStats``), shared by every server on Redis, and expire a
while after they last changed.

The draw is seeded from the request's seed (``manifest.seed_of``: request id and session
version), so the same counts give the same choice; the counts change with every request, so a
served request's explored items are recorded in its manifest and ``explain`` replays them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from insession.store import FeatureStore

#: How many next-best candidates the bandit draws from.
POOL = 50


#: The counters' namespace in the feature store: ``<item>|n`` impressions, ``<item>|c`` clicks.
NAMESPACE = "bandit"
#: An item's counts live this long after its last impression or click (30 days).
TTL_S = 30 * 24 * 3600


class BanditStats:
    """Impressions and clicks per item, as counters in the feature store (``add_counts``), so
    every server draws from the same counts; each item's counts expire ``ttl_s`` after they
    last changed (bounded)."""

    def __init__(self, store: FeatureStore, ttl_s: int = TTL_S) -> None:
        self.store = store
        self.ttl_s = ttl_s

    def shown(self, items: Sequence[str]) -> None:
        deltas: dict[str, int] = {}
        for item in items:
            deltas[f"{item}|n"] = deltas.get(f"{item}|n", 0) + 1
        self.store.add_counts(NAMESPACE, deltas, self.ttl_s)

    def clicked(self, items: Sequence[str]) -> None:
        deltas: dict[str, int] = {}
        for item in items:
            deltas[f"{item}|c"] = deltas.get(f"{item}|c", 0) + 1
        self.store.add_counts(NAMESPACE, deltas, self.ttl_s)

    def counts(self, items: Sequence[str]) -> list[tuple[int, int]]:
        """``(impressions, clicks)`` per item; clicks never above impressions (a click on an item
        whose impressions expired adds none)."""
        raw = self.store.get_counts(NAMESPACE, [f"{i}|n" for i in items] + [f"{i}|c" for i in items])
        n = len(items)
        return [(raw[j], min(raw[n + j], raw[j])) for j in range(n)]


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
