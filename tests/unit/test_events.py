from __future__ import annotations

from typing import Any

import pytest

from insession.errors import ValidationError
from insession.events import MAX_ID_CHARS, MAX_PROPERTIES, EventType, parse_event, validate_event

TS = 1_767_225_600_000


def good(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"event_id": "e1", "user_id": "u1", "type": "click", "item_id": "i1", "ts": TS}
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not ...}


def fields_of(raw: object) -> list[str]:
    event, errors = validate_event(raw)
    assert event is None
    return [e.field for e in errors]


def test_valid_event_round_trips_through_canonical_json() -> None:
    event = parse_event(good(session_id="s1", properties={"category": "shoes", "price": 12.5, "page": "home"}))
    assert event.type is EventType.CLICK
    assert event.properties == {"category": "shoes", "price": 12.5, "page": "home"}
    assert type(event).from_json(event.to_json()) == event
    assert event.to_json() == parse_event(event.to_dict()).to_json()


def test_iso_timestamp_with_zone_is_converted_to_epoch_ms() -> None:
    assert parse_event(good(ts="2026-01-01T00:00:00Z")).ts == TS
    assert parse_event(good(ts="2026-01-01T01:00:00+01:00")).ts == TS


def test_search_needs_no_item() -> None:
    event = parse_event(good(type="search", item_id=..., properties={"query": "red shoes"}))
    assert event.item_id is None


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (good(event_id=...), "event_id"),
        (good(event_id=""), "event_id"),
        (good(event_id=7), "event_id"),
        (good(event_id="x" * (MAX_ID_CHARS + 1)), "event_id"),
        (good(user_id=...), "user_id"),
        (good(user_id=["u"]), "user_id"),
        (good(session_id=12), "session_id"),
        (good(type=...), "type"),
        (good(type="like"), "type"),
        (good(type=3), "type"),
        (good(item_id=...), "item_id"),
        (good(item_id=5), "item_id"),
        (good(ts=...), "ts"),
        (good(ts=1_767_225_600), "ts"),  # seconds, not milliseconds
        (good(ts="2026-01-01T00:00:00"), "ts"),  # no zone
        (good(ts="yesterday"), "ts"),
        (good(ts=True), "ts"),
        (good(ts=99_999_999_999_999), "ts"),
        (good(properties="shoes"), "properties"),
        (good(properties={f"k{i}": i for i in range(MAX_PROPERTIES + 1)}), "properties"),
        (good(properties={"price": -1}), "properties.price"),
        (good(properties={"price": "12"}), "properties.price"),
        (good(properties={"price": float("nan")}), "properties.price"),
        (good(properties={"category": 3}), "properties.category"),
        (good(properties={"tags": ["a", "b"]}), "properties.tags"),
        (good(properties={"note": "x" * 10_000}), "properties.note"),
        (good(colour="red"), "colour"),
    ],
)
def test_each_malformed_field_is_named(raw: dict[str, Any], field: str) -> None:
    assert field in fields_of(raw)


def test_every_problem_is_reported_not_just_the_first() -> None:
    fields = fields_of({"event_id": "", "type": "nope", "ts": "never"})
    assert {"event_id", "user_id", "type", "ts"} <= set(fields)


def test_error_message_says_what_was_expected_and_what_arrived() -> None:
    with pytest.raises(ValidationError) as info:
        parse_event(good(ts=1_767_225_600))
    message = str(info.value)
    assert "ts" in message and "milliseconds" in message and "1767225600" in message


def test_non_object_event_is_rejected() -> None:
    assert fields_of(["not", "an", "object"]) == ["event"]
