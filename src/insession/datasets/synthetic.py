"""A synthetic shop: a catalog with categories, brands and prices; users with long-term tastes;
sessions whose intent sometimes shifts to another category.

Everything comes from one seeded generator, so a config always yields the same shop. Within a
category, items fall into "styles" (small groups browsed together), which gives co-visitation
real structure to find.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from insession.catalog import Item
from insession.clock import DAY_MS
from insession.events import Event, EventType

CATEGORIES = (
    ("shoes", 80.0),
    ("jackets", 120.0),
    ("laptops", 900.0),
    ("phones", 600.0),
    ("coffee", 12.0),
    ("books", 18.0),
    ("toys", 25.0),
    ("garden", 40.0),
    ("cookware", 55.0),
    ("headphones", 150.0),
    ("watches", 250.0),
    ("bikes", 700.0),
)
BRANDS = ("Northwind", "Alder", "Kestrel", "Lumen", "Orbit", "Brightwater", "Cobalt", "Fernhill")


@dataclass(frozen=True, slots=True)
class ShopConfig:
    n_categories: int = 10
    items_per_category: int = 100
    styles_per_category: int = 8
    n_users: int = 300
    days: int = 30
    mean_sessions_per_user: float = 6.0
    mean_session_length: float = 8.0
    intent_shift_prob: float = 0.08
    seed: int = 7
    end_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z

    def __post_init__(self) -> None:
        if not 1 <= self.n_categories <= len(CATEGORIES):
            raise ValueError(f"n_categories: expected 1..{len(CATEGORIES)}, got {self.n_categories}")
        if self.items_per_category < self.styles_per_category:
            raise ValueError("items_per_category: expected >= styles_per_category")


@dataclass(slots=True)
class SyntheticShop:
    items: list[Item]
    events: list[Event]
    tastes: dict[str, str] = field(default_factory=dict)  # user -> favourite category

    def items_in(self, category: str) -> list[Item]:
        return [i for i in self.items if i.category == category]


def generate(cfg: ShopConfig | None = None) -> SyntheticShop:
    cfg = cfg or ShopConfig()
    rng = np.random.default_rng(cfg.seed)
    items: list[Item] = []
    by_style: list[list[list[int]]] = []  # category -> style -> item indices
    for c in range(cfg.n_categories):
        name, base_price = CATEGORIES[c]
        styles: list[list[int]] = [[] for _ in range(cfg.styles_per_category)]
        for j in range(cfg.items_per_category):
            style = j % cfg.styles_per_category
            brand = BRANDS[int(rng.integers(len(BRANDS)))]
            price = round(float(base_price * rng.lognormal(0.0, 0.35)), 2)
            n = len(items)
            items.append(
                Item(
                    f"i{n:05d}",
                    name,
                    brand,
                    price,
                    f"{brand} {name.rstrip('s')} {chr(65 + style)}{j // cfg.styles_per_category + 1}",
                )
            )
            styles[style].append(n)
        by_style.append(styles)
    # Popularity within a style is Zipf-like, so some items are best-sellers.
    style_probs = [[np.array([1.0 / (r + 1) ** 0.9 for r in range(len(s))]) for s in cat] for cat in by_style]
    style_probs = [[p / p.sum() for p in cat] for cat in style_probs]

    events: list[Event] = []
    tastes: dict[str, str] = {}
    start_ms = cfg.end_ms - cfg.days * DAY_MS
    for u in range(cfg.n_users):
        user = f"u{u:04d}"
        main = int(rng.integers(cfg.n_categories))
        second = int(rng.integers(cfg.n_categories))
        tastes[user] = CATEGORIES[main][0]
        taste = np.full(cfg.n_categories, 0.05 / cfg.n_categories)
        taste[main] += 0.75
        taste[second] += 0.20
        taste /= taste.sum()
        n_sessions = 1 + int(rng.poisson(cfg.mean_sessions_per_user - 1))
        starts = np.sort(rng.integers(start_ms, cfg.end_ms - 3_600_000, size=n_sessions))
        for s_start in starts:
            ts = int(s_start)
            cat = int(rng.choice(cfg.n_categories, p=taste))
            style = int(rng.integers(cfg.styles_per_category))
            length = 1 + int(rng.geometric(1.0 / cfg.mean_session_length))
            cart: list[int] = []
            for _ in range(length):
                roll = rng.random()
                if roll < cfg.intent_shift_prob:
                    cat = int(rng.integers(cfg.n_categories))
                    style = int(rng.integers(cfg.styles_per_category))
                elif roll < cfg.intent_shift_prob + 0.2:
                    style = int(rng.integers(cfg.styles_per_category))
                pool = by_style[cat][style]
                item = pool[int(rng.choice(len(pool), p=style_probs[cat][style]))]
                kind = EventType.CLICK if rng.random() < 0.3 else EventType.VIEW
                events.append(_event(len(events), user, kind, ts, items[item]))
                ts += int(rng.integers(8_000, 120_000))
                if rng.random() < 0.07:
                    events.append(_event(len(events), user, EventType.ADD_TO_CART, ts, items[item]))
                    cart.append(item)
                    ts += int(rng.integers(5_000, 60_000))
            for item in cart:
                if rng.random() < 0.4:
                    events.append(_event(len(events), user, EventType.PURCHASE, ts, items[item]))
                    ts += int(rng.integers(5_000, 30_000))
    events.sort(key=lambda e: (e.ts, e.event_id))
    return SyntheticShop(items, events, tastes)


def _event(n: int, user: str, kind: EventType, ts: int, item: Item) -> Event:
    props: dict[str, str | float | None] = {"category": item.category, "brand": item.brand, "price": item.price}
    return Event(f"syn-{n:07d}", user, kind, ts, item.item_id, None, props)
