"""The one event schema every source is converted into, and its validation.

``parse_event`` is the only way untrusted input becomes an :class:`Event`; it collects every
problem (not just the first) as :class:`~insession.errors.FieldError` values naming the field,
what was expected and what arrived.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from insession.errors import FieldError, ValidationError, describe


class EventType(StrEnum):
    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    SEARCH = "search"
    DISMISS = "dismiss"


#: Event types that are about one item and so must carry ``item_id``.
ITEM_EVENT_TYPES = frozenset(
    {EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE, EventType.DISMISS}
)

PropertyValue = str | int | float | bool | None

# Limits on what one event may carry. They bound memory per event and are named in errors.
MAX_ID_CHARS = 128
MAX_PROPERTIES = 32
MAX_PROPERTY_KEY_CHARS = 64
MAX_PROPERTY_STRING_CHARS = 512
#: Timestamps below this (1973-03-03 in ms) are almost certainly seconds sent as milliseconds.
MIN_PLAUSIBLE_TS_MS = 100_000_000_000
MAX_PLAUSIBLE_TS_MS = 4_102_444_800_000  # 2100-01-01

#: What ``json.dumps(..., sort_keys=True, separators=(",", ":"), allow_nan=False)`` makes, built
#: once: ``dumps`` builds an encoder per call, a measurable share of logging an event (issue 26).
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)
_FIELDS = ("event_id", "user_id", "session_id", "type", "item_id", "ts", "properties")
_FIELD_SET = frozenset(_FIELDS)
_TYPED_PROPERTIES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "category": (str, "a string"),
    "brand": (str, "a string"),
    "query": (str, "a string"),
    "page": (str, "a string"),
    "device": (str, "a string"),
    "price": ((int, float), "a non-negative number"),
}


@dataclass(frozen=True, slots=True)
class Event:
    """One thing a user did. ``ts`` is event time in epoch milliseconds (UTC)."""

    event_id: str
    user_id: str
    type: EventType
    ts: int
    item_id: str | None = None
    session_id: str | None = None
    properties: Mapping[str, PropertyValue] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "type": self.type.value,
            "ts": self.ts,
        }
        if self.item_id is not None:
            out["item_id"] = self.item_id
        if self.session_id is not None:
            out["session_id"] = self.session_id
        if self.properties:
            out["properties"] = dict(self.properties)
        return out

    def to_json(self) -> str:
        """Canonical, standard JSON: sorted keys, no whitespace, no NaN or infinity (refused by
        validation; an event built around it fails here rather than write a non-standard record)."""
        return _CANONICAL_JSON.encode(self.to_dict())

    @staticmethod
    def from_json(text: str) -> Event:
        return parse_event(json.loads(text))

    def prop_str(self, key: str) -> str | None:
        value = self.properties.get(key)
        return value if isinstance(value, str) else None

    def prop_float(self, key: str) -> float | None:
        value = self.properties.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)


def parse_ts(value: object, field_name: str = "ts") -> tuple[int | None, FieldError | None]:
    """Epoch milliseconds (int) or an ISO-8601 string with a zone -> epoch ms."""
    expected = "epoch milliseconds (integer) or an ISO-8601 string with a time zone"
    if isinstance(value, bool):
        return None, FieldError(field_name, expected, describe(value))
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        if value < MIN_PLAUSIBLE_TS_MS:
            return None, FieldError(
                field_name,
                f"epoch milliseconds >= {MIN_PLAUSIBLE_TS_MS} (is this seconds? multiply by 1000)",
                describe(value),
            )
        if value > MAX_PLAUSIBLE_TS_MS:
            return None, FieldError(
                field_name,
                f"epoch milliseconds before year 2100 (<= {MAX_PLAUSIBLE_TS_MS})",
                describe(value),
            )
        return value, None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None, FieldError(field_name, expected, describe(value))
        if parsed.tzinfo is None:
            return None, FieldError(
                field_name,
                "an ISO-8601 time with a zone (e.g. 2026-01-02T10:00:00Z)",
                describe(value),
            )
        return parse_ts(round(parsed.timestamp() * 1000), field_name)
    return None, FieldError(field_name, expected, describe(value))


#: Characters no text field may hold: C0/C1 controls and lone UTF-16 surrogates (a JSON
#: ``"\\ud800"`` decodes to one; it cannot be encoded as UTF-8, so it could be neither stored nor sent).
_BAD_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: Property strings may also hold tabs and line breaks (a search query, a product name).
_BAD_PROPERTY_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
#: Integers in properties: what a signed 64-bit column and every JSON reader hold exactly enough.
MAX_PROPERTY_INT = 2**63 - 1


def text_problem(value: str, pattern: re.Pattern[str] = _BAD_TEXT) -> str | None:
    """Why ``value`` is not valid text for a field (a control character or a lone surrogate, with
    its position), or ``None``. Every string that can reach the log or a response passes this."""
    if value.isascii() and value.isprintable():
        return None  # the common case: printable ASCII
    found = pattern.search(value)
    if found is None:
        return None
    char = found.group()
    kind = "a lone UTF-16 surrogate" if "\ud800" <= char <= "\udfff" else "a control character"
    return f"{kind} U+{ord(char):04X} at character {found.start()}"


_ID_EXPECTED = f"a non-empty string of at most {MAX_ID_CHARS} characters, without control characters"


def _id_error(name: str, value: object) -> FieldError | None:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        return FieldError(name, _ID_EXPECTED, describe(value))
    problem = text_problem(value)
    return None if problem is None else FieldError(name, _ID_EXPECTED, problem)


def _check_id(raw: Mapping[str, Any], name: str, required: bool, errors: list[FieldError]) -> str | None:
    if name not in raw or raw[name] is None or (name == "session_id" and raw[name] == ""):
        if required:
            errors.append(
                FieldError(name, f"a non-empty string of at most {MAX_ID_CHARS} characters", "nothing (field missing)")
            )
        return None  # an empty session_id means none: sessions are then cut by inactivity
    error = _id_error(name, raw[name])
    if error is not None:
        errors.append(error)
        return None
    return str(raw[name])


def _property_error(key: str, item: object) -> FieldError | None:
    """What is wrong with one property value, or ``None`` (the field's name is built only for an error:
    this runs for every property of every ingested event)."""
    typed = _TYPED_PROPERTIES.get(key)
    if typed is not None and item is not None:
        kinds, text = typed
        bad_kind = isinstance(item, bool) or not isinstance(item, kinds)
        bad_price = key == "price" and not bad_kind and not _finite_non_negative(item)  # type: ignore[arg-type]
        if bad_kind or bad_price:  # NaN, infinities and numbers beyond a float are never a price
            return FieldError(f"properties.{key}", text, describe(item))
    if item is not None and not isinstance(item, (str, int, float)):  # bool is an int
        return FieldError(f"properties.{key}", "a string, number, boolean or null", describe(item))
    if isinstance(item, str):
        if len(item) > MAX_PROPERTY_STRING_CHARS:
            return FieldError(
                f"properties.{key}",
                f"a string of at most {MAX_PROPERTY_STRING_CHARS} characters",
                f"{len(item)} characters",
            )
        problem = text_problem(item, _BAD_PROPERTY_TEXT)
        if problem is not None:
            return FieldError(f"properties.{key}", "text without control characters", problem)
    if isinstance(item, float) and not math.isfinite(item):
        return FieldError(f"properties.{key}", "a finite number", describe(item))
    if isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_PROPERTY_INT:
        return FieldError(
            f"properties.{key}", f"an integer within +-{MAX_PROPERTY_INT}", f"an integer of {len(str(item))} digits"
        )
    return None


def _finite_non_negative(value: int | float) -> bool:
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        return False
    return 0 <= number < math.inf  # NaN fails 0 <= x


def _check_properties(value: object, errors: list[FieldError]) -> dict[str, PropertyValue]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        errors.append(FieldError("properties", "an object of string keys to scalar values", describe(value)))
        return {}
    if len(value) > MAX_PROPERTIES:
        errors.append(FieldError("properties", f"at most {MAX_PROPERTIES} entries", f"{len(value)} entries"))
        return {}
    out: dict[str, PropertyValue] = {}
    for key in sorted(value, key=str):
        item = value[key]
        if not isinstance(key, str) or not key or len(key) > MAX_PROPERTY_KEY_CHARS:
            errors.append(FieldError("properties", f"keys of 1 to {MAX_PROPERTY_KEY_CHARS} characters", describe(key)))
            continue
        problem = text_problem(key)
        if problem is not None:
            errors.append(FieldError("properties", "keys without control characters", problem))
            continue
        error = _property_error(key, item)
        if error is not None:
            errors.append(error)
            continue
        out[key] = item
    return out


def validate_event(raw: object) -> tuple[Event | None, list[FieldError]]:
    """Validate one untrusted event; return the event or every problem found.

    The same checks as :func:`check_event` (which takes an :class:`Event` built in Python), after
    the shape and type checks a JSON document needs: HTTP, the Python API, the stream workers and
    the dataset loaders all refuse the same events with the same reasons."""
    quick = _plain_event(raw)
    return (quick, []) if quick is not None else _validate_every_rule(raw)


def _validate_every_rule(raw: object) -> tuple[Event | None, list[FieldError]]:
    """:func:`validate_event` by each of its rules."""
    if not isinstance(raw, Mapping):
        return None, [FieldError("event", "a JSON object", describe(raw))]
    errors: list[FieldError] = []
    for key in raw:
        if key not in _FIELDS:
            name = key if isinstance(key, str) and text_problem(key) is None else describe(key)
            errors.append(FieldError(str(name), f"no such field (allowed: {', '.join(_FIELDS)})", "a value"))
    event_id = _check_id(raw, "event_id", True, errors)
    user_id = _check_id(raw, "user_id", True, errors)
    session_id = _check_id(raw, "session_id", False, errors)
    item_id = _check_id(raw, "item_id", False, errors)
    event_type: EventType | None = None
    raw_type = raw.get("type")
    try:
        event_type = EventType(raw_type) if isinstance(raw_type, str) else None
    except ValueError:
        event_type = None
    if event_type is None:
        allowed = " | ".join(t.value for t in EventType)
        errors.append(
            FieldError("type", f"one of {allowed}", describe(raw_type) if "type" in raw else "nothing (field missing)")
        )
    elif event_type in ITEM_EVENT_TYPES and item_id is None and not any(e.field == "item_id" for e in errors):
        got = "nothing (field missing)" if raw.get("item_id") is None else describe(raw["item_id"])
        errors.append(FieldError("item_id", f"an item id (required for type '{event_type.value}')", got))
    ts: int | None = None
    if "ts" not in raw:
        errors.append(
            FieldError("ts", "epoch milliseconds or an ISO-8601 string with a zone", "nothing (field missing)")
        )
    else:
        ts, ts_error = parse_ts(raw["ts"])
        if ts_error is not None:
            errors.append(ts_error)
    properties = _check_properties(raw.get("properties"), errors)
    if errors or event_id is None or user_id is None or event_type is None or ts is None:
        return None, errors
    return Event(
        event_id=event_id,
        user_id=user_id,
        type=event_type,
        ts=ts,
        item_id=item_id,
        session_id=session_id,
        properties=properties,
    ), []


_TYPES_BY_VALUE = {t.value: t for t in EventType}


def _plain_event(raw: object) -> Event | None:
    """The event :func:`validate_event` makes of ``raw`` when ``raw`` is the usual document (known
    fields, an integer time, and what :func:`_plainly_valid` takes), found without its every
    rule; ``None`` means "run every rule" (``tests/unit/test_properties.py`` holds it to that).
    It is what the log's own records are (so reading the log back is quicker) and what most
    clients send."""
    if type(raw) is not dict or not _FIELD_SET.issuperset(raw):
        return None
    kind, props, session = raw.get("type"), raw.get("properties"), raw.get("session_id")
    if type(kind) is not str or kind not in _TYPES_BY_VALUE or type(raw.get("ts")) is not int:
        return None
    if props is None:
        props = {}
    elif type(props) is not dict or any(type(k) is not str for k in props):
        return None
    event = Event(
        event_id=raw.get("event_id"),  # type: ignore[arg-type]  # _plainly_valid checks every field
        user_id=raw.get("user_id"),  # type: ignore[arg-type]
        type=_TYPES_BY_VALUE[kind],
        ts=raw["ts"],
        item_id=raw.get("item_id"),
        session_id=None if session == "" else session,
        properties=dict(sorted(props.items())),
    )
    return event if _plainly_valid(event) else None


def check_event(event: Event) -> list[FieldError]:
    """Every problem with an :class:`Event` built in Python (the Python API's way in), by the same
    rules and with the same field names as :func:`validate_event` uses for JSON; empty if valid.

    An empty ``session_id`` is a problem here (``Event`` is the normalised form: absent is
    ``None``); :func:`normalise` turns one into ``None``."""
    return [] if _plainly_valid(event) else _every_problem(event)


def _plain_text(value: object, most: int) -> bool:
    return type(value) is str and 0 < len(value) <= most and value.isascii() and value.isprintable()


def _plainly_valid(event: Event) -> bool:
    """A quick yes for the usual event (printable ASCII ids and keys, a known type, an integer time
    in range, plain property values), which every rule of :func:`_every_problem` accepts; ``False``
    means "run every rule", not "invalid" (``tests/unit/test_properties.py`` holds it to that)."""
    item = event.item_id
    if not (_plain_text(event.event_id, MAX_ID_CHARS) and _plain_text(event.user_id, MAX_ID_CHARS)):
        return False
    if (item is not None and not _plain_text(item, MAX_ID_CHARS)) or (
        event.session_id is not None and not _plain_text(event.session_id, MAX_ID_CHARS)
    ):
        return False
    if type(event.type) is not EventType or (item is None and event.type in ITEM_EVENT_TYPES):
        return False
    ts = event.ts
    if type(ts) is not int or not MIN_PLAUSIBLE_TS_MS <= ts <= MAX_PLAUSIBLE_TS_MS:
        return False
    props = event.properties
    if not props:
        return True
    if type(props) is not dict or len(props) > MAX_PROPERTIES:
        return False
    for key, value in props.items():
        if not _plain_text(key, MAX_PROPERTY_KEY_CHARS):
            return False
        kind = type(value)
        if kind is str:
            if (
                key == "price"
                or len(value) > MAX_PROPERTY_STRING_CHARS
                or not (value.isascii() and value.isprintable())
            ):
                return False
        elif kind is float or kind is int:
            if key in _TYPED_PROPERTIES and key != "price":
                return False
            if not (0 <= value < math.inf if key == "price" else -math.inf < value < math.inf):
                return False
            if kind is int and abs(value) > MAX_PROPERTY_INT:
                return False
        else:  # None, bool or anything else: every rule decides
            return False
    return True


def _every_problem(event: Event) -> list[FieldError]:
    """:func:`check_event`'s rules, each of them."""
    errors: list[FieldError] = []
    for name in ("event_id", "user_id"):
        error = _id_error(name, getattr(event, name))
        if error is not None:
            errors.append(error)
    for name in ("session_id", "item_id"):
        value = getattr(event, name)
        if value is not None and (error := _id_error(name, value)) is not None:
            errors.append(error)
    if not isinstance(event.type, EventType):
        allowed = " | ".join(t.value for t in EventType)
        errors.append(FieldError("type", f"one of {allowed}", describe(event.type)))
    elif event.type in ITEM_EVENT_TYPES and event.item_id is None:
        errors.append(
            FieldError("item_id", f"an item id (required for type '{event.type.value}')", "nothing (field missing)")
        )
    if isinstance(event.ts, bool) or not isinstance(event.ts, int):
        errors.append(FieldError("ts", "epoch milliseconds (integer)", describe(event.ts)))
    else:
        _, ts_error = parse_ts(event.ts)
        if ts_error is not None:
            errors.append(ts_error)
    props = event.properties
    if props:
        before = len(errors)
        cleaned = _check_properties(props, errors)
        if len(errors) == before and len(cleaned) != len(props):  # a None key or the like
            errors.append(FieldError("properties", "an object of string keys to scalar values", describe(props)))
    return errors


def normalise(event: Event) -> Event:
    """``event`` with an empty ``session_id`` made absent (``None``), as every way in reads it."""
    return replace(event, session_id=None) if event.session_id == "" else event


def parse_event(raw: object) -> Event:
    """Validate one untrusted event or raise :class:`ValidationError` listing every problem."""
    event, errors = validate_event(raw)
    if event is None:
        raise ValidationError(errors)
    return event
