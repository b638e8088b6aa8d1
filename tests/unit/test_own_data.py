"""A shop's own data through the engine: one validation for every way in, bad records in a log,
catalog changes while serving, request-time filters."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from insession.catalog import Item
from insession.clock import ManualClock
from insession.config import Settings
from insession.datasets.synthetic import SyntheticShop
from insession.engine import LOG_FILE, Engine
from insession.errors import CorruptRecord, DataDirInUse, ValidationError
from insession.events import Event, EventType
from insession.filters import Filters
from insession.model import ModelBundle
from insession.pipeline import TIERS, RecommendRequest


def test_the_python_api_refuses_what_http_refuses_with_the_same_reasons(
    settings: Settings, model: ModelBundle, clock: ManualClock
) -> None:
    engine = Engine.open(settings, model=model, clock=clock)
    ts = clock.now_ms()
    good = Event("ok-1", "u1", EventType.CLICK, ts, "i00001")
    bad = [
        Event("bad-1", "u\ud800", EventType.CLICK, ts, "i00001"),
        Event("bad-2", "u1", EventType.CLICK, ts, None),
        Event("bad-3", "u1", EventType.VIEW, ts // 1000, "i00001"),  # seconds, not ms
        Event("bad-4", "u1", EventType.VIEW, ts, "i00001", None, {"note": float("inf")}),
    ]
    result = engine.ingest([bad[0], good, *bad[1:]])
    assert [e.event_id for _, e in result.accepted] == ["ok-1"]
    assert [n for n, _ in result.refused] == [0, 2, 3, 4]
    by_http = engine.ingest_raw([b.to_dict() | {"event_id": f"http-{n}"} for n, b in enumerate(bad[1:])])
    from_http = [[str(e) for e in r.errors] for r in by_http.rejected]
    assert from_http == [[str(e) for e in reasons] for _, reasons in result.refused[1:]]
    # an empty session id is absent, as over HTTP
    engine.ingest([Event("ok-2", "u1", EventType.CLICK, ts + 1, "i00002", "")])
    assert engine.log.count() == 2 and all(e.session_id is None for _, e in engine.log.read())
    engine.close()
    reopened = Engine.open(settings, model=model, clock=clock)  # nothing refused reached the log
    assert reopened.state("u1") is not None and reopened.state("u1").session_version == 2  # type: ignore[union-attr]
    reopened.close()


def _plant(data_dir: Path, body: str) -> int:
    db = sqlite3.connect(data_dir / LOG_FILE)
    with db:
        cur = db.execute("INSERT INTO events (event_id, user_id, ts, body) VALUES (?,?,?,?)", ("x", "u", 0, body))
    db.close()
    return int(cur.lastrowid or 0)


def test_a_bad_record_in_the_log_is_named_on_open_and_quarantine_recovers(
    settings: Settings, model: ModelBundle, clock: ManualClock, shop: SyntheticShop
) -> None:
    engine = Engine.open(settings, model=model, clock=clock)
    engine.ingest_all(shop.events[:300])
    engine.close()
    record = json.dumps({"event_id": "x", "user_id": "", "type": "click", "item_id": "i00001", "ts": 1_767_225_600_000})
    position = _plant(settings.data_dir, record)
    with pytest.raises(CorruptRecord) as info:
        Engine.open(settings, model=model, clock=clock)
    message = str(info.value)
    assert f"position {position}" in message and "user_id" in message and '"user_id": ""' in message
    assert "replay --quarantine" in message

    done = subprocess.run(
        [sys.executable, "-m", "insession.cli", "replay", "--quarantine", "--data-dir", str(settings.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    kept = [json.loads(line) for line in (settings.data_dir / "quarantine.jsonl").read_text().splitlines()]
    assert [(k["position"], k["record"]) for k in kept] == [(position, record)]
    assert any("user_id" in reason for reason in kept[0]["reasons"])
    reopened = Engine.open(settings, model=model, clock=clock)
    assert reopened.log.count() == 300
    reopened.close()


def test_a_second_process_cannot_fold_the_same_log(settings: Settings, model: ModelBundle, clock: ManualClock) -> None:
    engine = Engine.open(settings, model=model, clock=clock)
    code = (
        "import sys; from insession.log.sqlite import SqliteEventLog\n"
        "try:\n    SqliteEventLog(sys.argv[1], exclusive=True)\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
    )
    other = subprocess.run(
        [sys.executable, "-c", code, str(settings.data_dir / LOG_FILE)], capture_output=True, text=True, timeout=60
    )
    assert "DataDirInUse" in other.stdout and "in use by process" in other.stdout, other.stdout + other.stderr
    engine.close()
    assert DataDirInUse.status == 503


def test_items_join_and_change_while_serving_and_survive_a_restart(
    settings: Settings, model: ModelBundle, clock: ManualClock, shop: SyntheticShop
) -> None:
    engine = Engine.open(settings, model=model, clock=clock)
    engine.ingest_all(shop.events)
    user = shop.events[-1].user_id
    before = engine.recommend(RecommendRequest(user, "home", 10))
    top = before.items[0].item_id
    result = engine.update_items(
        [
            {"item_id": top, "available": False},
            {"item_id": "brand-new", "category": "shoes", "price": 10.0, "name": "New shoe"},
            {"item_id": "brand-new", "category": "shoes", "price": 10.0, "name": "New shoe"},  # no change
            {"item_id": "x\ud800", "price": -1},
        ]
    )
    assert (result.changed, result.unchanged) == (2, 1)
    assert [e.field for e in result.rejected[0].errors] == ["item_id", "price"] and result.rejected[0].index == 3
    after = engine.recommend(RecommendRequest(user, "home", 10))
    assert top not in [i.item_id for i in after.items] and after.model_version == result.model_version
    shoes = engine.recommend(RecommendRequest(user, "home", 50, filters=Filters(include_categories=("shoes",))))
    assert "brand-new" in engine.model.catalog.index and len(shoes.items) == 50
    version = engine.model.version
    engine.close()
    reopened = Engine.open(settings, model=model, clock=clock)
    assert reopened.model.version == version and reopened.model.catalog.get(top).available is False  # type: ignore[union-attr]
    assert reopened.explain(after.request_id).identical
    reopened.close()


def test_filters_hold_k_items_when_enough_pass_and_explain_recomputes_them(
    settings: Settings, model: ModelBundle, clock: ManualClock, shop: SyntheticShop
) -> None:
    engine = Engine.open(settings, model=model, clock=clock)
    engine.ingest_all(shop.events)
    user = shop.events[-1].user_id
    catalog = engine.model.catalog
    rare = Counter(i.category for i in shop.items).most_common()[-1][0]
    cheap = float(sorted(i.price for i in shop.items if i.price is not None)[len(shop.items) // 4])
    filters = Filters(include_categories=(rare,), max_price=cheap * 4, exclude_items=(shop.items[0].item_id,))
    for tier in ("full", "popular"):
        engine.tiers._get("home").level = TIERS.index(tier)  # as a slow spell would
        response = engine.recommend(RecommendRequest(user, "home", 20, filters=filters))
        assert len(response.items) == 20
        for item in response.items:
            found = catalog.get(item.item_id)
            assert found is not None and found.category == rare and found.price is not None
            assert found.price <= cheap * 4 and item.item_id != shop.items[0].item_id
        assert engine.explain(response.request_id).identical
    none_pass = engine.recommend(RecommendRequest(user, "home", 10, filters=Filters(min_price=1e12)))
    assert none_pass.items == ()
    with pytest.raises(ValidationError) as info:
        Filters(min_price=5, max_price=1)
    assert info.value.errors[0].field == "filters.min_price"
    engine.close()


def test_an_unavailable_item_is_never_served_in_any_tier(
    settings: Settings, model: ModelBundle, clock: ManualClock, shop: SyntheticShop
) -> None:
    engine = Engine.open(settings, model=model, clock=clock)
    popular = [engine.model.catalog.ids[i] for i in engine.model.popular_order[:30]]
    engine.update_items([Item(i, available=False) for i in popular])
    for response in (
        engine.recommend(RecommendRequest("nobody", "home", 20)),
        engine.recommend(RecommendRequest(shop.events[-1].user_id, "home", 20)),
    ):
        assert len(response.items) == 20 and not set(popular) & {i.item_id for i in response.items}
    only = engine.recommend(RecommendRequest("nobody", "home", 5, filters=Filters(available_only=True)))
    assert only.items == ()  # no item is known to be available
    engine.close()
