"""The HTTP API through a real uvicorn server on loopback."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from insession.clock import ManualClock
from insession.datasets.synthetic import SyntheticShop
from insession.engine import Engine
from insession.serving.app import create_app
from insession.serving.server import BackgroundServer


@pytest.fixture
def client(engine: Engine) -> Iterator[httpx.Client]:
    with BackgroundServer(create_app(engine)) as server, httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def categories(client: httpx.Client, engine: Engine, user: str) -> tuple[Counter[str | None], dict[str, object]]:
    response = client.post("/v1/recommendations", json={"user_id": user, "surface": "home", "k": 10})
    assert response.status_code == 200, response.text
    body = response.json()
    return Counter(engine.model.catalog.category_of(i["item_id"]) for i in body["items"]), body


def test_click_in_an_untouched_category_changes_the_next_recommendation(
    client: httpx.Client, engine: Engine, clock: ManualClock, shop: SyntheticShop
) -> None:
    engine.ingest_all(shop.events)
    # A user with real history, and a category that user never touched.
    user = max(sorted(shop.tastes), key=lambda u: engine.state(u).session_version)  # type: ignore[union-attr]
    state = engine.state(user)
    assert state is not None
    touched = {engine.model.catalog.category_of(i.item_id) for i in state.history + state.events}
    new_category = sorted({i.category for i in shop.items} - touched)[0]
    before, before_body = categories(client, engine, user)
    assert before[new_category] == 0

    item = shop.items_in(new_category)[7]
    posted = client.post(
        "/v1/events",
        json={
            "events": [
                {
                    "event_id": "http-click-1",
                    "user_id": user,
                    "type": "click",
                    "item_id": item.item_id,
                    "ts": clock.now_ms(),
                    "properties": {"category": new_category},
                }
            ]
        },
    )
    assert posted.json() == {"accepted": 1, "duplicates": 0, "rejected": []}

    after, after_body = categories(client, engine, user)
    assert after[new_category] >= 6, after
    assert after_body["session_version"] == before_body["session_version"] + 1  # type: ignore[operator]
    assert after_body["model_version"] == engine.model.version and after_body["tier"] == "full"
    assert set(after_body["timings_ms"]) >= {"candidates", "ranking", "rerank", "total"}  # type: ignore[arg-type]


def test_events_batch_mixes_accepted_duplicates_and_rejected(client: httpx.Client, clock: ManualClock) -> None:
    ts = clock.now_ms()
    batch = {
        "events": [
            {"event_id": "a", "user_id": "u", "type": "view", "item_id": "i00001", "ts": ts},
            {"event_id": "b", "user_id": "u", "type": "view", "ts": ts},
            {"event_id": "a", "user_id": "u", "type": "view", "item_id": "i00001", "ts": ts},
            "not an event",
            {"event_id": "c", "user_id": "u", "type": "view", "item_id": "i00002", "ts": ts // 1000},
        ]
    }
    body = client.post("/v1/events", json=batch).json()
    assert body["accepted"] == 1 and body["duplicates"] == 1
    assert {r["index"]: r["errors"][0]["field"] for r in body["rejected"]} == {1: "item_id", 3: "event", 4: "ts"}
    assert "milliseconds" in body["rejected"][2]["message"]


@pytest.mark.parametrize("payload", [[1, 2], {"event": []}, {"events": "x"}, {}])
def test_a_body_that_is_not_a_batch_is_422(client: httpx.Client, payload: object) -> None:
    response = client.post("/v1/events", json=payload)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"]


def test_oversized_batch_is_413_with_the_limit(client: httpx.Client, engine: Engine) -> None:
    limit = engine.settings.max_batch_events
    response = client.post("/v1/events", json={"events": [{}] * (limit + 1)})
    assert response.status_code == 413 and str(limit) in response.json()["error"]


def test_bad_recommendation_requests_name_the_field(client: httpx.Client) -> None:
    r = client.post("/v1/recommendations", json={"user_id": "u", "surface": "nowhere"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "surface"
    r = client.post("/v1/recommendations", json={"user_id": "u", "k": 1000})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "k"
    r = client.post("/v1/recommendations", json={"k": 5})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "user_id"


def test_healthz_and_metrics(client: httpx.Client, clock: ManualClock) -> None:
    client.post(
        "/v1/events",
        json={
            "events": [{"event_id": "m1", "user_id": "u", "type": "view", "item_id": "i00001", "ts": clock.now_ms()}]
        },
    )
    client.post("/v1/recommendations", json={"user_id": "u"})
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["log_position"] >= 1
    text = client.get("/metrics").text
    assert 'insession_events_total{outcome="accepted"} 1.0' in text
    assert "insession_recommend_seconds_count" in text


def test_explain_over_http_recomputes_the_served_list(client: httpx.Client, clock: ManualClock) -> None:
    events = [
        {"event_id": f"x{n}", "user_id": "explained", "type": "click", "item_id": f"i0000{n}", "ts": clock.now_ms() + n}
        for n in range(1, 4)
    ]
    assert client.post("/v1/events", json={"events": events}).status_code == 200
    served = client.post("/v1/recommendations", json={"user_id": "explained", "k": 5}).json()
    explained = client.get(f"/v1/explain/{served['request_id']}")
    assert explained.status_code == 200, explained.text
    body = explained.json()
    assert body["identical"] is True and body["served"] == [i["item_id"] for i in served["items"]]
    assert body["items"][0]["sources"] and body["manifest"]["log_position"] >= 3
    missing = client.get("/v1/explain/unknown-request")
    assert missing.status_code == 404 and "request_id" in missing.json()["error"]
