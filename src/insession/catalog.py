"""Items and their metadata, indexed densely so models can use arrays."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from insession.errors import FieldError, describe
from insession.events import MAX_PROPERTY_STRING_CHARS, Event, _id_error, _property_error, text_problem


@dataclass(frozen=True, slots=True)
class Item:
    """A catalog item. ``available``: ``False`` is never served; ``None`` (unknown) is served, but
    not to a request that asks for ``available_only``."""

    item_id: str
    category: str | None = None
    brand: str | None = None
    price: float | None = None
    name: str | None = None
    available: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "item_id": self.item_id,
            "category": self.category,
            "brand": self.brand,
            "price": self.price,
            "name": self.name,
        }
        if self.available is not None:  # absent when unknown: older catalogs hash as before
            out["available"] = self.available
        return out

    @staticmethod
    def from_dict(raw: dict[str, Any]) -> Item:
        price = raw.get("price")
        available = raw.get("available")
        return Item(
            str(raw["item_id"]),
            raw.get("category"),
            raw.get("brand"),
            None if price is None else float(price),
            raw.get("name"),
            None if available is None else bool(available),
        )


_ITEM_FIELDS = ("item_id", "name", "category", "brand", "price", "available")
_TRUE = frozenset({"true", "yes", "y", "1", "in_stock", "instock", "available", "t"})
_FALSE = frozenset({"false", "no", "n", "0", "out_of_stock", "outofstock", "unavailable", "f"})


def parse_item(raw: object, text_numbers: bool = False) -> tuple[Item | None, list[FieldError]]:
    """Validate one untrusted item (``POST /v1/items``, an items file) with the rules events'
    fields follow: an id like ``item_id``'s, text without control characters, a finite price >= 0,
    ``available`` a boolean. ``text_numbers``: a file's text (``"12.5"``, ``"yes"``, a stock count)
    is read as the number or boolean it spells; empty text means absent."""
    if not isinstance(raw, dict):
        return None, [FieldError("item", "an object", describe(raw))]
    errors: list[FieldError] = []
    values = dict(raw)
    if text_numbers:
        values = {k: (None if isinstance(v, str) and not v.strip() else v) for k, v in values.items()}
    for key in values:
        if key not in _ITEM_FIELDS:
            name = key if isinstance(key, str) and text_problem(key) is None else describe(key)
            errors.append(FieldError(str(name), f"no such field (allowed: {', '.join(_ITEM_FIELDS)})", "a value"))
    item_id = values.get("item_id")
    error = _id_error("item_id", item_id)
    if error is not None:
        errors.append(error)
    text: dict[str, str | None] = {}
    for key in ("name", "category", "brand"):
        value = values.get(key)
        if value is not None and (problem := _property_error(key, value)) is not None:
            expected = f"a string of at most {MAX_PROPERTY_STRING_CHARS} characters, without control characters"
            errors.append(FieldError(key, expected, problem.got))
        elif value is not None and not isinstance(value, str):
            errors.append(FieldError(key, "a string", describe(value)))
        text[key] = value if isinstance(value, str) else None
    price = values.get("price")
    if isinstance(price, str) and text_numbers:
        try:
            price = float(price)
        except ValueError:
            errors.append(FieldError("price", "a non-negative number", describe(price)))
            price = None
    if price is not None and (problem := _property_error("price", price)) is not None:
        errors.append(FieldError("price", problem.expected, problem.got))
    available = values.get("available")
    if isinstance(available, str) and text_numbers:
        word = available.strip().lower()
        if word in _TRUE or word in _FALSE:
            available = word in _TRUE
        else:
            try:
                available = float(word) > 0  # a stock count
            except ValueError:
                errors.append(FieldError("available", "true/false, yes/no, 1/0 or a stock count", describe(available)))
                available = None
    if available is not None and not isinstance(available, bool):
        errors.append(FieldError("available", "true or false", describe(available)))
    if errors:
        return None, errors
    return Item(
        str(item_id),
        text["category"],
        text["brand"],
        None if price is None else float(price),
        text["name"],
        available,
    ), []


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
        #: Availability: 1 available, 0 unavailable (never served), -1 unknown.
        self.availability: npt.NDArray[np.int8] = np.array(
            [-1 if i.available is None else int(i.available) for i in self.items], dtype=np.int8
        )
        #: Whether any item is unavailable (then every list is filtered by availability).
        self.has_unavailable = bool((self.availability == 0).any())
        self.category_index: dict[str, int] = code

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
            available=old.available if old else None,
        )
    return Catalog([meta[k] for k in sorted(meta)])


def _complete(item: Item) -> bool:
    return item.category is not None and item.brand is not None and item.price is not None
