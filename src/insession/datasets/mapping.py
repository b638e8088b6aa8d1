"""How a shop's own table maps onto the event schema: columns, event names, extra properties.

A :class:`DataMapping` names, for each field of the generic format, the column that holds it
(``--columns user_id=customer,item_id=sku``), what each event name in the file means
(``--event-types page_view=view,basket=add_to_cart``), which other columns are kept as event
properties, and how many rows may be skipped before a load fails (``--max-skipped``). The same
keys live under ``[data]`` in the TOML configuration.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from insession.errors import FieldError, ValidationError, describe
from insession.events import EventType

#: The fields of the generic format. ``item_id``, ``timestamp`` and one of ``user_id`` /
#: ``session_id`` are required; the rest are optional.
FIELDS = ("user_id", "session_id", "item_id", "timestamp", "event_type", "category", "brand", "price", "event_id")
REQUIRED = ("item_id", "timestamp")

#: Event names every loader understands without a mapping (a mapping adds to them and wins).
TYPE_ALIASES: dict[str, EventType] = {
    "view": EventType.VIEW,
    "views": EventType.VIEW,
    "pv": EventType.VIEW,
    "click": EventType.CLICK,
    "clicks": EventType.CLICK,
    "fav": EventType.CLICK,
    "add_to_cart": EventType.ADD_TO_CART,
    "addtocart": EventType.ADD_TO_CART,
    "cart": EventType.ADD_TO_CART,
    "carts": EventType.ADD_TO_CART,
    "purchase": EventType.PURCHASE,
    "buy": EventType.PURCHASE,
    "order": EventType.PURCHASE,
    "orders": EventType.PURCHASE,
    "transaction": EventType.PURCHASE,
    "search": EventType.SEARCH,
    "dismiss": EventType.DISMISS,
}

#: Column names a shop's export often uses for each field: used to suggest a ``--columns``
#: mapping when a file's header does not say, never applied silently.
_COLUMN_HINTS: dict[str, tuple[str, ...]] = {
    "user_id": ("user_id", "userid", "user", "customer", "customer_id", "client_id", "visitor", "visitorid", "buyer"),
    "session_id": ("session_id", "sessionid", "session", "user_session", "visit_id", "visit"),
    "item_id": ("item_id", "itemid", "item", "sku", "product_id", "productid", "product", "aid", "article", "offer"),
    "timestamp": ("timestamp", "ts", "time", "event_time", "datetime", "date", "when", "created_at", "occurred_at"),
    "event_type": ("event_type", "type", "event", "action", "behavior", "behaviour", "interaction", "kind"),
    "category": ("category", "cat", "category_id", "category_code", "category_name", "department", "section"),
    "brand": ("brand", "manufacturer", "vendor", "maker"),
    "price": ("price", "amount", "unit_price", "value"),
    "event_id": ("event_id", "eventid", "id"),
}

#: Words that suggest what an unknown event name means (for the message that names the flag).
_TYPE_HINTS: tuple[tuple[tuple[str, ...], EventType], ...] = (
    (("order", "buy", "purchas", "checkout", "transaction", "sale", "paid"), EventType.PURCHASE),
    (("cart", "basket", "bag", "trolley"), EventType.ADD_TO_CART),
    (("search", "query"), EventType.SEARCH),
    (("dismiss", "hide", "remove", "dislike", "not_interested", "skip"), EventType.DISMISS),
    (("view", "visit", "impression", "pv", "page", "open", "detail"), EventType.VIEW),
    (("click", "fav", "wish", "like", "save", "tap", "select"), EventType.CLICK),
)


def nearest(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or an empty string."""
    found = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{found[0]}'?)" if found else ""


@dataclass(frozen=True, slots=True)
class DataMapping:
    """Where each event field is in a table, and what its event names mean.

    ``columns`` maps a field (one of :data:`FIELDS`) to a column name, or to several separated by
    ``|`` (the first non-empty wins: ``category_code|category_id``). ``event_types`` maps a value
    of the event-type column to an :class:`~insession.events.EventType` value; the built-in names
    (``view``, ``pv``, ``cart``, ``buy``, ...) apply too. ``properties`` are other columns kept as
    event properties (``("*",)``: every unmapped column). ``default_event_type`` is the type of
    every row of a file without an event-type column. A load fails when more than
    ``max_skipped`` (a fraction of the rows) cannot be used.
    """

    columns: Mapping[str, str] = field(default_factory=dict)
    event_types: Mapping[str, str] = field(default_factory=dict)
    properties: tuple[str, ...] = ()
    default_event_type: str = EventType.CLICK.value
    max_skipped: float = 0.01

    def __post_init__(self) -> None:
        errors: list[FieldError] = []
        for name, column in self.columns.items():
            if name not in FIELDS:
                errors.append(FieldError(f"columns.{name}", f"one of {', '.join(FIELDS)}{nearest(name, FIELDS)}", name))
            elif not isinstance(column, str) or not column.strip():
                errors.append(FieldError(f"columns.{name}", "a column name", describe(column)))
        for value, kind in self.event_types.items():
            if not isinstance(value, str) or not value:
                errors.append(FieldError("event_types", "event names as non-empty strings", describe(value)))
            try:
                EventType(kind)
            except ValueError:
                allowed = " | ".join(t.value for t in EventType)
                errors.append(
                    FieldError(
                        f"event_types.{value}",
                        f"one of {allowed}{nearest(str(kind), allowed.split(' | '))}",
                        describe(kind),
                    )
                )
        try:
            EventType(self.default_event_type)
        except ValueError:
            errors.append(
                FieldError(
                    "default_event_type", " | ".join(t.value for t in EventType), describe(self.default_event_type)
                )
            )
        if not isinstance(self.max_skipped, int | float) or not 0 <= self.max_skipped <= 1:
            errors.append(
                FieldError("max_skipped", "a fraction of the rows, 0..1 (0.01 = 1%)", describe(self.max_skipped))
            )
        if errors:
            raise ValidationError(errors)

    def column_choices(self, name: str) -> tuple[str, ...]:
        """The columns (in order of preference) the field ``name`` is read from; empty if unmapped."""
        spec = self.columns.get(name)
        return tuple(c.strip() for c in spec.split("|") if c.strip()) if spec else ()

    def type_of(self, value: str) -> EventType | None:
        """The event type a value of the event-type column means, or ``None`` if unknown."""
        mapped = self.event_types.get(value)
        if mapped is not None:
            return EventType(mapped)
        return TYPE_ALIASES.get(value) or TYPE_ALIASES.get(value.strip().lower())

    def merged(self, other: DataMapping) -> DataMapping:
        """This mapping with ``other``'s entries on top (a preset under a user's mapping)."""
        return DataMapping(
            columns={**self.columns, **other.columns},
            event_types={**self.event_types, **other.event_types},
            properties=other.properties or self.properties,
            default_event_type=other.default_event_type,
            max_skipped=other.max_skipped,
        )

    @staticmethod
    def from_options(
        columns: str | None = None,
        event_types: str | None = None,
        properties: str | None = None,
        max_skipped: str | float | None = None,
        base: DataMapping | None = None,
    ) -> DataMapping:
        """A mapping from command-line text (``FIELD=COLUMN,...``, ``VALUE=TYPE,...``, ``COL,COL``
        or ``all``, ``0.01`` or ``1%``) on top of ``base`` (the configuration's)."""
        base = base or DataMapping()
        cols = {**base.columns, **_pairs(columns, "columns")}
        types = {**base.event_types, **_pairs(event_types, "event-types")}
        props = base.properties
        if properties is not None:
            props = (
                ("*",)
                if properties.strip().lower() in ("all", "*")
                else tuple(p.strip() for p in properties.split(",") if p.strip())
            )
        skipped = base.max_skipped if max_skipped is None else parse_fraction(max_skipped, "max-skipped")
        return DataMapping(cols, types, props, base.default_event_type, skipped)


def _pairs(text: str | None, flag: str) -> dict[str, str]:
    if not text:
        return {}
    out: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValidationError([FieldError(f"--{flag}", "NAME=VALUE pairs separated by commas", describe(part))])
        out[key.strip()] = value.strip()
    return out


def parse_fraction(value: str | float, name: str) -> float:
    """``0.05``, ``5%`` or ``5 %`` -> 0.05; refuses anything outside 0..1."""
    text = str(value).strip()
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValidationError([FieldError(name, "a fraction (0.01) or a percentage (1%)", describe(value))]) from None
    if not 0 <= number <= 1:
        raise ValidationError([FieldError(name, "between 0 and 1 (0% and 100%)", describe(value))])
    return number


def suggest_columns(header: Iterable[str]) -> dict[str, str]:
    """A guess at ``--columns`` for a header, from the names shops often use (one column per field)."""
    lower = {c.strip().lower(): c for c in header}
    out: dict[str, str] = {}
    taken: set[str] = set()
    for name in FIELDS:
        for hint in _COLUMN_HINTS[name]:
            column = lower.get(hint)
            if column is not None and column not in taken:
                out[name] = column
                taken.add(column)
                break
    return out


def suggest_type(value: str) -> EventType | None:
    """A guess at what an unknown event name means (``basket`` -> add_to_cart), or ``None``."""
    text = value.strip().lower()
    for words, kind in _TYPE_HINTS:
        if any(w in text for w in words):
            return kind
    return None


def mapping_text(pairs: Mapping[str, str]) -> str:
    """``a=b,c=d``: a mapping as the command line takes it."""
    return ",".join(f"{k}={v}" for k, v in pairs.items())


__all__ = [
    "FIELDS",
    "REQUIRED",
    "TYPE_ALIASES",
    "DataMapping",
    "mapping_text",
    "nearest",
    "parse_fraction",
    "suggest_columns",
    "suggest_type",
]
