"""Items and their metadata, indexed densely so models can use arrays."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from insession.events import Event


@dataclass(frozen=True, slots=True)
class Item:
    item_id: str
    category: str | None = None
    brand: str | None = None
    price: float | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "category": self.category,
            "brand": self.brand,
            "price": self.price,
            "name": self.name,
        }

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> Item:
        price = raw.get("price")
        return Item(
            str(raw["item_id"]),
            raw.get("category"),
            raw.get("brand"),
            None if price is None else float(price),
            raw.get("name"),
        )


class Catalog:
    """An ordered, immutable set of items; position in it is the item's dense index."""

    def __init__(self, items: Sequence[Item]) -> None:
        self.items: tuple[Item, ...] = tuple(items)
        self.ids: tuple[str, ...] = tuple(i.item_id for i in self.items)
        self.index: dict[str, int] = {item_id: n for n, item_id in enumerate(self.ids)}
        if len(self.index) != len(self.ids):
            raise ValueError("catalog has duplicate item ids")
        names = sorted({i.category for i in self.items if i.category is not None})
        self.category_names: tuple[str, ...] = tuple(names)
        code = {name: n for n, name in enumerate(names)}
        self.category_codes: npt.NDArray[np.int32] = np.array(
            [code.get(i.category, -1) if i.category is not None else -1 for i in self.items],
            dtype=np.int32,
        )
        brands = sorted({i.brand for i in self.items if i.brand})
        self.brand_index: dict[str, int] = {name: n for n, name in enumerate(brands)}
        self.brand_codes: npt.NDArray[np.int32] = np.array(
            [self.brand_index[i.brand] if i.brand else -1 for i in self.items], dtype=np.int32
        )
        #: Prices as float64, NaN where unknown.
        self.prices: npt.NDArray[np.float64] = np.array(
            [np.nan if i.price is None else i.price for i in self.items], dtype=np.float64
        )

    def __len__(self) -> int:
        return len(self.items)

    def get(self, item_id: str) -> Item | None:
        n = self.index.get(item_id)
        return None if n is None else self.items[n]

    def category_of(self, item_id: str) -> str | None:
        item = self.get(item_id)
        return None if item is None else item.category

    def to_list(self) -> list[dict[str, Any]]:
        return [i.to_dict() for i in self.items]

    @staticmethod
    def from_list(raw: Iterable[dict[str, Any]]) -> Catalog:
        return Catalog([Item.from_dict(r) for r in raw])


def item_of(event: Event) -> Item:
    """The item an event is about, with the metadata the event carries (``item_id`` required)."""
    if event.item_id is None:
        raise ValueError(f"event {event.event_id!r} carries no item_id")
    return Item(event.item_id, event.prop_str("category"), event.prop_str("brand"), event.prop_float("price"))


def catalog_from_events(events: Iterable[Event], known: Iterable[Item] = ()) -> Catalog:
    """Items seen in ``events``, with the latest metadata each carried; ``known`` items first win.

    The result is sorted by item id so the same data always gives the same dense indices.
    """
    meta: dict[str, Item] = {i.item_id: i for i in known}
    for event in events:
        if event.item_id is None or (event.item_id in meta and _complete(meta[event.item_id])):
            continue
        old = meta.get(event.item_id)
        meta[event.item_id] = Item(
            event.item_id,
            category=(old.category if old and old.category else event.prop_str("category")),
            brand=(old.brand if old and old.brand else event.prop_str("brand")),
            price=(old.price if old and old.price is not None else event.prop_float("price")),
            name=old.name if old else None,
        )
    return Catalog([meta[k] for k in sorted(meta)])


def _complete(item: Item) -> bool:
    return item.category is not None and item.brand is not None and item.price is not None
