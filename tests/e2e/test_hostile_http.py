"""Lone surrogates in every id field and in properties, sent over HTTP to a real server: each bad event
is refused naming its field, the good events of the same batch are stored, and every user's lists,
the catalog and explanations keep answering 200, before and after a restart on the same directory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from insession.clock import ManualClock
from insession.config import Settings
from insession.engine import Engine
from insession.model import ModelBundle
from insession.serving.app import create_app
from insession.serving.server import BackgroundServer

BAD = "x\ud800y"  # a lone UTF-16 surrogate: json.dumps escapes it as \ud800, which JSON allows


@contextmanager
def serving(settings: Settings, model: ModelBundle, clock: ManualClock) -> Iterator[httpx.Client]:
    engine = Engine.open(settings, model=model, clock=clock)
    try:
        with BackgroundServer(create_app(engine)) as server, httpx.Client(base_url=server.url, timeout=30) as c:
            yield c
    finally:
        engine.close()


def post_json(client: httpx.Client, path: str, body: Any) -> httpx.Response:
    # ensure_ascii: the lone surrogate travels as the escape a hostile client would send.
    content = json.dumps(body, ensure_ascii=True).encode("ascii")
    return client.post(path, content=content, headers={"Content-Type": "application/json"})


def hostile_batch(ts: int) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """Good clicks interleaved with one bad event per field; returns the batch and, by index, the
    field each bad event must be refused for."""

    def click(n: int, **over: Any) -> dict[str, Any]:
        event: dict[str, Any] = {
            "event_id": f"h{n}",
            "user_id": f"good-{n % 3}",
            "session_id": f"s{n % 3}",
            "type": "click",
            "item_id": f"i0000{1 + n % 5}",
            "ts": ts + n,
        }
        event.update(over)
        return event

    batch: list[dict[str, Any]] = []
    expected: dict[int, str] = {}
    bad_fields = {
        "event_id": {"event_id": BAD},
        "user_id": {"user_id": BAD},
        "session_id": {"session_id": BAD},
        "item_id": {"item_id": BAD},
        "properties.category": {"properties": {"category": BAD}},
        "properties.note": {"properties": {"note": BAD}},
        "properties": {"properties": {BAD: "key"}},
    }
    n = 0
    for field, over in bad_fields.items():
        batch.append(click(n))
        n += 1
        expected[len(batch)] = field
        batch.append(click(n, **over))
        n += 1
    batch.append(click(n))
    return batch, expected


def everything_answers(client: httpx.Client, users: list[str]) -> None:
    for user in users:
        for surface, context in (("home", {}), ("product_page", {"item_id": "i00001"})):
            served = post_json(client, "/v1/recommendations", {"user_id": user, "surface": surface, "context": context})
            assert served.status_code == 200, (user, surface, served.text)
            explained = client.get(f"/v1/explain/{served.json()['request_id']}")
            assert explained.status_code == 200, (user, surface, explained.text)
            assert explained.json()["identical"] is True
    catalog = client.get("/v1/catalog")
    assert catalog.status_code == 200, catalog.text
    # A request naming a user by a lone surrogate is the client's error, named, never a 500.
    hostile = post_json(client, "/v1/recommendations", {"user_id": BAD, "surface": "home"})
    assert hostile.status_code == 422 and "user_id" in hostile.text, hostile.text


def test_lone_surrogates_are_refused_by_field_and_nothing_stops_answering(
    settings: Settings, model: ModelBundle, clock: ManualClock
) -> None:
    batch, expected = hostile_batch(clock.now_ms())
    good = len(batch) - len(expected)
    users = ["fresh", "good-0", "good-1", "good-2"]
    with serving(settings, model, clock) as client:
        response = post_json(client, "/v1/events", {"events": batch})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["accepted"] == good and body["duplicates"] == 0
        refused = {r["index"]: r for r in body["rejected"]}
        assert set(refused) == set(expected), body["rejected"]
        for index, field in expected.items():
            named = {e["field"] for e in refused[index]["errors"]}
            assert any(f == field or f.startswith(field) for f in named), (field, refused[index])
        # The same good events a second time are duplicates: they were stored, not lost with the batch.
        again = post_json(client, "/v1/events", {"events": [batch[0]]}).json()
        assert again["duplicates"] == 1
        everything_answers(client, users)
    with serving(settings, model, clock) as client:  # restarted on the same data directory
        again = post_json(client, "/v1/events", {"events": [batch[-1]]}).json()
        assert again["duplicates"] == 1
        everything_answers(client, users)
