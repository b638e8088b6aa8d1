from __future__ import annotations

from pathlib import Path

import pytest

from insession.datasets import DataMapping, LoadStats, detect_format, load_events, load_items, read_events
from insession.errors import ValidationError
from insession.events import EventType, check_event


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


SHOP = (
    "customer,sku,cat,action,when,colour\n"
    "c1,p1,shoes,page_view,2026-11-01T10:00:00Z,red\n"
    "c1,p2,shoes,basket,2026-11-01T10:01:00Z,blue\n"
    "c2,p1,shoes,order,2026-11-01T11:00:00+01:00,red\n"
    "c2,p3,bags,wishlist,1761994800,\n"
)
SHOP_COLUMNS = "user_id=customer,item_id=sku,category=cat,event_type=action,timestamp=when"
SHOP_TYPES = "page_view=view,basket=add_to_cart,wishlist=click"


def test_a_shops_own_columns_and_event_names_are_mapped(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text(SHOP)
    mapping = DataMapping.from_options(SHOP_COLUMNS, SHOP_TYPES, properties="colour")
    events, stats = read_events(path, mapping=mapping)
    assert [e.type for e in events] == [EventType.VIEW, EventType.ADD_TO_CART, EventType.PURCHASE, EventType.CLICK]
    assert [e.user_id for e in events] == ["c1", "c1", "c2", "c2"] and all(e.session_id is None for e in events)
    assert events[2].ts == events[0].ts + 0 and events[3].ts == 1_761_994_800_000  # +01:00, and seconds
    assert events[0].properties == {"category": "shoes", "colour": "red"} and "colour" not in events[3].properties
    assert all(check_event(e) == [] for e in events) and stats.skipped_rows == 0


def test_unknown_event_names_fail_naming_the_values_and_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text(SHOP)
    with pytest.raises(ValidationError) as info:
        read_events(path, mapping=DataMapping.from_options(SHOP_COLUMNS))
    message = str(info.value)
    assert "page_view" in message and "--event-types" in message and "basket=add_to_cart" in message
    assert info.value.errors[0].field == "export.csv" and "75.0%" in message


def test_skipped_rows_are_counted_by_reason_and_value_up_to_max_skipped(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    rows = [f"c{n},p{n % 7},view,{1_700_000_000 + n}" for n in range(200)]
    rows[5] = "c5,p5,teleport,1700000005"
    rows[9] = "c9,p9,view,yesterday"
    rows[11] = ",p1,view,1700000011"  # no user
    path.write_text("user_id,item_id,event_type,timestamp\n" + "\n".join(rows) + "\n")
    events, stats = read_events(path, mapping=DataMapping(max_skipped=0.02))
    assert len(events) == 197 and stats.rows == 200
    assert stats.values["unknown event type"] == {"teleport": 1}
    assert stats.values["unreadable timestamp"] == {"yesterday": 1} and stats.skipped["missing user_id"] == 1
    with pytest.raises(ValidationError):
        read_events(path)  # 1.5% > the default 1%


def test_an_empty_session_id_means_none(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("user_id,session_id,item_id,timestamp\nu1,,a,1700000000\nu1,s9,b,1700000060\n")
    events, _ = read_events(path)
    assert [e.session_id for e in events] == [None, "s9"]


def test_ids_come_from_row_content_so_a_later_export_gives_the_same_ids(tmp_path: Path) -> None:
    first, later = tmp_path / "a.csv", tmp_path / "b.csv"
    header = "user_id,item_id,timestamp\n"
    rows = ["u1,a,1700000000", "u1,a,1700000000", "u2,b,1700000100"]
    first.write_text(header + "\n".join(rows) + "\n")
    later.write_text(header + "\n".join(["u0,z,1600000000", *reversed(rows), "u3,c,1700000200"]) + "\n")
    ids_first = {e.event_id for e in read_events(first)[0]}
    ids_later = {e.event_id for e in read_events(later)[0]}
    assert len(ids_first) == 3 and ids_first < ids_later  # two identical rows stay two events


def test_rows_an_event_validation_would_refuse_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    bad_user = "u\x01x"
    path.write_text(
        "user_id,item_id,timestamp\n"
        + "".join(f"u{n},i{n},{1_700_000_000 + n}\n" for n in range(300))
        + f"{bad_user},i1,1700000000\n"
        + f"u1,{'x' * 200},1700000000\nu1,i1,12\n"
    )
    events, stats = read_events(path)
    assert len(events) == 300 and stats.skipped["invalid user_id"] == 1 and stats.skipped["invalid item_id"] == 1
    assert stats.skipped["timestamp out of range (1973..2100)"] == 1


def test_tsv_and_parquet_read_like_csv(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tsv = tmp_path / "t.tsv"
    tsv.write_text("customer\tsku\twhen\nc1\tp1\t1700000000000\n")
    parquet = tmp_path / "t.parquet"
    pq.write_table(
        pa.table({"customer": [1, 2], "sku": ["p1", "p2"], "when": pa.array([1_700_000_000_000] * 2, pa.int64())}),
        parquet,
    )
    mapping = DataMapping.from_options("user_id=customer,item_id=sku,timestamp=when")
    assert read_events(tsv, mapping=mapping)[0][0].ts == 1_700_000_000_000
    events, _ = read_events(parquet, mapping=mapping)
    assert [e.user_id for e in events] == ["1", "2"] and events[1].item_id == "p2"


def test_a_mapping_naming_a_column_the_file_lacks_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text(SHOP)
    with pytest.raises(ValidationError) as info:
        read_events(path, mapping=DataMapping.from_options("user_id=client,item_id=sku,timestamp=when"))
    assert info.value.errors[0].field == "columns.user_id" and "customer" in info.value.errors[0].expected


def test_a_table_without_known_columns_suggests_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text(SHOP)
    with pytest.raises(ValidationError) as info:
        read_events(path)
    assert "--columns user_id=customer,item_id=sku,timestamp=when" in str(info.value)


def test_items_file_with_its_own_column_names(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("sku,title,cat,price,stock\np1,Red shoe,shoes,12.5,3\np2,Bag,bags,,0\np3,Hat,hats,-2,1\n")
    items, stats = load_items(path)
    assert [(i.item_id, i.name, i.price, i.available) for i in items] == [
        ("p1", "Red shoe", 12.5, True),
        ("p2", "Bag", None, False),
    ]
    assert stats.skipped["invalid price"] == 1


def test_unknown_format_is_named(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("hello world\n")
    with pytest.raises(ValidationError) as info:
        detect_format(path)
    assert info.value.errors[0].field == "format"


def test_bytes_that_are_not_utf8_skip_the_row_only_where_the_field_is_needed(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    rows = b"".join(f"u{n},i{n},{1_700_000_000 + n},c\n".encode() for n in range(300))
    path.write_bytes(b"user_id,item_id,timestamp,category\n" + rows + b"u\xff,i1,1700000000,c\nu1,i1,1700000000,\xfe\n")
    events, stats = read_events(path)
    assert len(events) == 301 and stats.skipped_rows == 1 and "category" not in events[-1].properties
    assert stats.skipped["invalid UTF-8 in column user_id"] == 1
