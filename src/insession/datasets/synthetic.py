"""A synthetic shop: a catalog with categories, brands and prices; users with long-term tastes;
sessions whose intent sometimes shifts to another category.

Everything comes from one seeded generator, so a config always yields the same shop. Within a
category, items fall into "styles" (small groups browsed together), which gives co-visitation
real structure to find.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
    #: Emerging transitions: each trend starts on a random day and, for ``trend_days``, brings
    #: ``trend_sessions`` shoppers (distinct, new) who go from a popular item A to an item X of
    #: another category, far down the popular list (a promotion, a fashion). Real shops have them;
    #: a ranker learns when to trust what it sees online only from data that has them. Drawn from
    #: their own generator: the other events are the same with or without them.
    trends: int = 0
    trend_days: float = 3.0
    trend_sessions: int = 40

    def __post_init__(self) -> None:
        if not 1 <= self.n_categories <= len(CATEGORIES):
            raise ValueError(f"n_categories: expected 1..{len(CATEGORIES)}, got {self.n_categories}")
        if self.items_per_category < self.styles_per_category:
            raise ValueError("items_per_category: expected >= styles_per_category")


def demo_config(seed: int = 7, end_ms: int = 1_767_225_600_000) -> ShopConfig:
    """The shop ``insession demo`` serves: the default shop with a dozen emerging trends."""
    return ShopConfig(seed=seed, end_ms=end_ms, trends=12)


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
    events += _trends(cfg, items, events)
    events.sort(key=lambda e: (e.ts, e.event_id))
    return SyntheticShop(items, events, tastes)


def _trends(cfg: ShopConfig, items: list[Item], events: list[Event]) -> list[Event]:
    """Sessions ``A -> X`` (then another item of X's category) by distinct new shoppers, one burst
    per trend; A among the 100 most viewed items, X in the less viewed half of another category."""
    if cfg.trends <= 0:
        return []
    rng = np.random.default_rng([cfg.seed, 1])
    counts: dict[str, int] = {}
    for e in events:
        counts[e.item_id or ""] = counts.get(e.item_id or "", 0) + 1
    by_count = sorted((i for i in items if i.item_id in counts), key=lambda i: (-counts[i.item_id], i.item_id))
    head, tail = by_count[:100], by_count[len(by_count) // 2 :]
    start_ms = cfg.end_ms - cfg.days * DAY_MS
    span = int(cfg.trend_days * DAY_MS)
    out: list[Event] = []
    for t in range(cfg.trends):
        a = head[int(rng.integers(len(head)))]
        others = [i for i in tail if i.category != a.category]
        x = others[int(rng.integers(len(others)))]
        same = [i for i in items if i.category == x.category and i.item_id != x.item_id]
        begin = int(rng.integers(start_ms, cfg.end_ms - span))
        for k in range(cfg.trend_sessions):
            user = f"t{t:02d}-{k:03d}"
            ts = begin + int(rng.integers(span))
            then = same[int(rng.integers(len(same)))]
            for step, item in enumerate((a, x, then)):
                kind = EventType.CLICK if rng.random() < 0.3 else EventType.VIEW
                out.append(
                    _event(len(events) + len(out), user, kind, ts + step * int(rng.integers(8_000, 90_000)), item)
                )
    return out


def _event(n: int, user: str, kind: EventType, ts: int, item: Item) -> Event:
    props: dict[str, str | float | None] = {"category": item.category, "brand": item.brand, "price": item.price}
    return Event(f"syn-{n:07d}", user, kind, ts, item.item_id, None, props)


#: What a shop's own export calls each event type in :func:`write_export` (foreign on purpose).
EXPORT_NAMES = {
    EventType.VIEW: "page_view",
    EventType.CLICK: "wishlist",
    EventType.ADD_TO_CART: "basket",
    EventType.PURCHASE: "order",
    EventType.SEARCH: "search",
    EventType.DISMISS: "hide",
}
#: The ``[data]`` mapping that reads :func:`write_export`'s events file.
EXPORT_COLUMNS = {
    "user_id": "customer",
    "item_id": "sku",
    "category": "cat",
    "event_type": "action",
    "timestamp": "when",
}


def write_export(shop: SyntheticShop, directory: Path) -> dict[str, Path]:
    """Write ``shop`` the way a shop's own export looks: ``events.csv`` with its own column names
    (``customer, sku, cat, action, when``), its own event names (``page_view``, ``wishlist``,
    ``basket``, ``order``), ISO-8601 times and no session column; ``items.csv`` (``sku, title, cat,
    brand, price, stock``); and ``shop.toml``, the ``[data]`` mapping that reads them."""
    import csv
    from datetime import UTC, datetime

    directory.mkdir(parents=True, exist_ok=True)
    events = directory / "events.csv"
    with open(events, "w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["customer", "sku", "cat", "action", "when"])
        for e in shop.events:
            when = datetime.fromtimestamp(e.ts / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            out.writerow([e.user_id, e.item_id, e.prop_str("category") or "", EXPORT_NAMES[e.type], when])
    items = directory / "items.csv"
    with open(items, "w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["sku", "title", "cat", "brand", "price", "stock"])
        for n, item in enumerate(shop.items):
            stock = 0 if n % 50 == 49 else 3 + n % 17  # every 50th item sold out
            out.writerow([item.item_id, item.name or "", item.category or "", item.brand or "", item.price, stock])
    config = directory / "shop.toml"
    columns = ", ".join(f'{k} = "{v}"' for k, v in EXPORT_COLUMNS.items())
    types = ", ".join(f'{v} = "{k.value}"' for k, v in EXPORT_NAMES.items())
    config.write_text(
        "# How this shop's export maps onto insession's events (see docs/configuration.md).\n"
        f"[data]\ncolumns = {{ {columns} }}\nevent_types = {{ {types} }}\n",
        encoding="utf-8",
    )
    return {"events": events, "items": items, "config": config}
