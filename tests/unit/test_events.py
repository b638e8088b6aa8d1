from __future__ import annotations

from typing import Any

import pytest

from insession.errors import ValidationError
from insession.events import MAX_ID_CHARS, MAX_PROPERTIES, Event, EventType, check_event, parse_event, validate_event

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


@pytest.mark.parametrize("field", ["event_id", "user_id", "session_id", "item_id"])
@pytest.mark.parametrize("bad", ["\ud800", "a\udfffb", "tab\there", "nul\x00", "\x85next-line"])
def test_ids_with_lone_surrogates_or_control_characters_are_refused_by_field(field: str, bad: str) -> None:
    assert field in fields_of(good(**{field: bad}))


@pytest.mark.parametrize(
    ("properties", "field"),
    [
        ({"category": "\ud800"}, "properties.category"),
        ({"query": "red\x00shoes"}, "properties.query"),
        ({"note": float("inf")}, "properties.note"),
        ({"note": float("-inf")}, "properties.note"),
        ({"note": 10**40}, "properties.note"),
        ({"price": 10**400}, "properties.price"),
        ({"\ud800": 1}, "properties"),
    ],
)
def test_properties_that_could_not_be_stored_or_sent_are_refused(properties: dict[str, Any], field: str) -> None:
    assert field in fields_of(good(properties=properties))


def test_text_that_is_fine_stays_fine() -> None:
    event = parse_event(good(user_id="Zoë-🛒", properties={"query": "red\tshoes\nsize 9", "name": "Ａｂｃ"}))
    assert event.user_id == "Zoë-🛒" and event.to_json().encode("utf-8")


def test_an_empty_session_id_means_none() -> None:
    assert parse_event(good(session_id="")).session_id is None


def test_events_built_in_python_are_checked_by_the_same_rules() -> None:
    ok = parse_event(good())
    assert check_event(ok) == []
    assert [e.field for e in check_event(Event("e", "u\ud800", EventType.CLICK, TS, "i"))] == ["user_id"]
    assert [e.field for e in check_event(Event("e", "u", EventType.CLICK, TS))] == ["item_id"]
    assert [e.field for e in check_event(Event("e", "u", EventType.VIEW, 1_767_225_600, "i"))] == ["ts"]
    bad_props = Event("e", "u", EventType.VIEW, TS, "i", None, {"price": float("nan"), "x": [1]})
    assert {e.field for e in check_event(bad_props)} == {"properties.price", "properties.x"}
    # the same reasons, field for field, as the JSON way in
    raw = good(user_id="u\x07", properties={"price": -1})
    assert [str(e) for e in check_event(Event("e1", "u\x07", EventType.CLICK, TS, "i1", None, {"price": -1}))] == [
        str(e) for e in validate_event(raw)[1]
    ]


def test_the_log_gets_standard_json_only() -> None:
    with pytest.raises(ValueError):
        Event("e", "u", EventType.VIEW, TS, "i", None, {"x": float("inf")}).to_json()


def test_an_item_event_with_a_null_item_is_refused() -> None:
    """Found by the hostile-input property test: ``"item_id": null`` passed as 'present' and put a
    view without an item in the log, which then failed to open."""
    assert fields_of(good(item_id=None)) == ["item_id"]
