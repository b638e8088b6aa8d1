"""DELETE /v1/users/{user_id} through a real server: the write key is required, the answer counts
what was erased, and the user's lists then answer 410 naming the reason."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from insession.clock import ManualClock
from insession.config import Settings
from insession.engine import Engine
from insession.events import Event, EventType
from insession.model import ModelBundle
from insession.serving.app import create_app
from insession.serving.server import BackgroundServer

WRITE_KEY = "w" * 20


@pytest.fixture
def keyed(settings: Settings, model: ModelBundle, clock: ManualClock) -> Iterator[tuple[Engine, httpx.Client]]:
    engine = Engine.open(settings.with_(write_keys=(WRITE_KEY,)), model=model, clock=clock)
    with BackgroundServer(create_app(engine)) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        yield engine, c
    engine.close()


def test_delete_user_needs_the_write_key_and_then_the_users_lists_answer_410(
    keyed: tuple[Engine, httpx.Client], clock: ManualClock
) -> None:
    engine, client = keyed
    item = engine.model.catalog.items[0].item_id
    engine.ingest([Event(f"h-{n}", "leaving", EventType.VIEW, clock.now_ms() - 1000 + n, item) for n in range(3)])
    served = client.post("/v1/recommendations", json={"user_id": "leaving", "surface": "home", "k": 5}).json()

    refused = client.delete("/v1/users/leaving")
    assert refused.status_code == 401, refused.text
    assert engine.state("leaving") is not None  # nothing erased without the key

    done = client.delete("/v1/users/leaving", headers={"X-API-Key": WRITE_KEY})
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["events"], body["manifests"], body["session"]) == (3, 1, True)
    assert engine.state("leaving") is None

    gone = client.get(f"/v1/explain/{served['request_id']}")
    assert gone.status_code == 410 and "erased" in gone.json()["error"], gone.text
    unknown = client.get("/v1/explain/never-served")
    assert unknown.status_code == 404

    doc = client.get("/openapi.json").json()
    assert {"200", "401", "422", "503"} <= set(doc["paths"]["/v1/users/{user_id}"]["delete"]["responses"])
    assert "410" in doc["paths"]["/v1/explain/{request_id}"]["get"]["responses"]
