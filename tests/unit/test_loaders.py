from __future__ import annotations

from pathlib import Path

import pytest

from insession.datasets import LoadStats, detect_format, load_events
from insession.errors import ValidationError
from insession.events import EventType


@pytest.mark.parametrize(
    ("relative", "fmt", "events"),
    [
        ("yoochoose-100k/yoochoose-clicks-100k_test.txt", "yoochoose", 13_568),
        ("taobao-sample/UserBehavior.csv", "taobao", 84_475),
        ("diginetica-sample", "diginetica", 12_391),
        ("otto-fixture", "otto", 862),
        ("rees46-head", "rees46", 1_000),
    ],
)
def test_real_formats_load_completely(shared_data: Path, relative: str, fmt: str, events: int) -> None:
    assert detect_format(shared_data / relative) == fmt
    stats = LoadStats()
    loaded = list(load_events(shared_data / relative, stats=stats))
    assert stats.rows == events and len(loaded) + sum(stats.skipped.values()) == events
    assert len({e.event_id for e in loaded}) == len(loaded)


def test_taobao_types_and_categories(shared_data: Path) -> None:
    events = list(load_events(shared_data / "taobao-sample/UserBehavior.csv"))
    kinds = {e.type for e in events}
    assert {EventType.VIEW, EventType.ADD_TO_CART, EventType.PURCHASE} <= kinds
    assert all(e.prop_str("category") for e in events[:100])
    assert events[0].user_id == "1" and events[0].ts == 1_511_544_070_000


def test_otto_carts_and_orders(shared_data: Path) -> None:
    kinds = {e.type for e in load_events(shared_data / "otto-fixture")}
    assert kinds == {EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE}


def test_rees46_price_brand_category(shared_data: Path) -> None:
    first = next(iter(load_events(shared_data / "rees46-head")))
    assert first.prop_float("price") == 35.79 and first.prop_str("brand") == "shiseido"
    assert first.prop_str("category") == "2103807459595387724" and first.session_id


def test_generic_table_with_optional_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(
        "session_id,item_id,timestamp,user_id,event_type,category,price\n"
        "s1,a,1700000000,u1,view,shoes,9.5\ns1,b,1700000060000,u1,cart,shoes,\n"
        "s2,c,2023-11-14T22:13:20Z,,buy,,\n"
    )
    events = list(load_events(path))
    assert [e.type for e in events] == [EventType.VIEW, EventType.ADD_TO_CART, EventType.PURCHASE]
    assert events[0].ts == 1_700_000_000_000 and events[1].ts == 1_700_000_060_000
    assert events[2].user_id == "s:s2" and events[0].prop_float("price") == 9.5


def test_generic_table_missing_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("session_id,timestamp\ns1,1700000000\n")
    with pytest.raises(ValidationError) as info:
        list(load_events(path, "generic"))
    assert info.value.errors[0].field == "item_id"


def test_unknown_format_is_named(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("hello world\n")
    with pytest.raises(ValidationError) as info:
        detect_format(path)
    assert info.value.errors[0].field == "format"
