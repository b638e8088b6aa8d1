"""What the server refuses before the engine sees a request: oversized bodies, requests without
the right API key, and load beyond capacity; and that keys never reach the logs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from insession.clock import ManualClock
from insession.config import Settings
from insession.engine import Engine
from insession.errors import Overloaded
from insession.model import ModelBundle
from insession.serving.admission import ARRIVED, Gate
from insession.serving.app import create_app
from insession.serving.metrics import ServiceMetrics
from insession.serving.server import BackgroundServer

READ_KEY = "read-key-0123456789abcdef"
WRITE_KEY = "write-key-0123456789abcdef"


def served(engine: Engine) -> BackgroundServer:
    return BackgroundServer(create_app(engine))


def event(n: int, ts: int, user: str = "u-limits") -> dict[str, Any]:
    return {"event_id": f"lim-{n}", "user_id": user, "type": "click", "item_id": "i1", "ts": ts}


@pytest.fixture
def small_body_engine(settings: Settings, model: ModelBundle, clock: ManualClock) -> Iterator[Engine]:
    eng = Engine.open(settings.with_(max_body_bytes=4096), model=model, clock=clock)
    yield eng
    eng.log.close()


def test_a_body_over_the_limit_is_413_naming_the_limit(small_body_engine: Engine, clock: ManualClock) -> None:
    big = {"events": [event(n, clock.now_ms()) for n in range(200)]}
    with served(small_body_engine) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        declared = c.post("/v1/events", json=big)
        assert declared.status_code == 413
        assert "max_body_bytes = 4096" in declared.json()["error"]
        assert declared.json()["errors"][0]["field"] == "body"

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as it streams
            import json

            raw = json.dumps(big).encode()
            for start in range(0, len(raw), 1000):
                yield raw[start : start + 1000]

        streamed = c.post("/v1/events", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413 and "4096" in streamed.json()["error"]
        small = c.post("/v1/events", json={"events": [event(0, clock.now_ms())]})
        assert small.status_code == 200 and small.json()["accepted"] == 1
    assert small_body_engine.log.count() == 1  # nothing of the refused bodies was written


def test_per_field_limits_name_the_limit(engine: Engine, clock: ManualClock) -> None:
    too_many = event(1, clock.now_ms()) | {"properties": {f"p{n}": n for n in range(40)}}
    long_id = event(2, clock.now_ms()) | {"user_id": "u" * 500}
    with served(engine) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        body = c.post("/v1/events", json={"events": [too_many, long_id]}).json()
        messages = [r["message"] for r in body["rejected"]]
        assert "properties: expected at most 32 entries" in messages[0]
        assert "user_id: expected a non-empty string of at most 128 characters" in messages[1]
        batch = c.post("/v1/events", json={"events": [event(n, clock.now_ms()) for n in range(1001)]})
        assert batch.status_code == 413 and "at most 1000 events" in batch.json()["error"]
        k = c.post("/v1/recommendations", json={"user_id": "u", "k": 101})
        assert k.status_code == 422 and k.json()["errors"][0]["field"] == "k"


@pytest.fixture
def keyed(settings: Settings, model: ModelBundle, clock: ManualClock) -> Iterator[Engine]:
    eng = Engine.open(settings.with_(read_keys=(READ_KEY,), write_keys=(WRITE_KEY,)), model=model, clock=clock)
    yield eng
    eng.log.close()


def test_keys_separate_writing_events_from_reading_lists_and_never_reach_the_logs(
    keyed: Engine, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rec = {"user_id": "u-keys", "surface": "home", "k": 5}
    with served(keyed) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        batch = {"events": [event(1, clock.now_ms(), "u-keys")]}
        refused = [
            c.post("/v1/events", json=batch),
            c.post("/v1/events", json=batch, headers={"X-API-Key": READ_KEY}),  # a read key cannot write
            c.post("/v1/events", json=batch, headers={"X-API-Key": WRITE_KEY + "x"}),
        ]
        assert [r.status_code for r in refused] == [401, 401, 401]
        assert all(r.json()["error"].startswith("X-API-Key: expected a key allowed to write events") for r in refused)
        assert keyed.log.count() == 0
        ok = c.post("/v1/events", json=batch, headers={"Authorization": f"Bearer {WRITE_KEY}"})
        assert ok.status_code == 200 and ok.json()["accepted"] == 1

        assert c.post("/v1/recommendations", json=rec).status_code == 401
        assert c.post("/v1/recommendations", json=rec, headers={"X-API-Key": WRITE_KEY}).status_code == 401
        served_list = c.post("/v1/recommendations", json=rec, headers={"X-API-Key": READ_KEY})
        assert served_list.status_code == 200
        request_id = served_list.json()["request_id"]
        # Another user's explanation (or anyone's) needs the read key.
        assert c.get(f"/v1/explain/{request_id}").status_code == 401
        assert c.get(f"/v1/explain/{request_id}", headers={"X-API-Key": WRITE_KEY}).status_code == 401
        assert c.get(f"/v1/explain/{request_id}", headers={"X-API-Key": READ_KEY}).status_code == 200
        assert c.get("/v1/recommendations", params={"user_id": "u-keys"}).status_code == 401
        assert c.get("/healthz").status_code == 200  # health stays open: it holds no user's data
        metrics = c.get("/metrics").text
    assert 'insession_refused_requests_total{reason="auth"} 8.0' in metrics
    logged = "\n".join(r.getMessage() for r in caplog.records) + repr(keyed.settings)
    assert READ_KEY not in logged and WRITE_KEY not in logged and "read_keys" not in repr(keyed.settings)


def test_short_keys_are_refused_at_start_without_echoing_them() -> None:
    with pytest.raises(Exception) as info:
        Settings(read_keys=("short-secret",))
    assert "read_keys" in str(info.value) and "short-secret" not in str(info.value)


@pytest.fixture
def one_at_a_time(settings: Settings, model: ModelBundle, clock: ManualClock) -> Iterator[Engine]:
    eng = Engine.open(settings.with_(max_inflight=1), model=model, clock=clock)
    yield eng
    eng.log.close()


def test_beyond_max_inflight_a_request_is_503_with_retry_after(
    one_at_a_time: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    real = one_at_a_time.recommend

    def held(request: Any) -> Any:
        entered.set()
        release.wait(10)
        return real(request)

    monkeypatch.setattr(one_at_a_time, "recommend", held)
    rec = {"user_id": "u-load", "surface": "home", "k": 5}
    with served(one_at_a_time) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        first: list[httpx.Response] = []
        worker = threading.Thread(target=lambda: first.append(c.post("/v1/recommendations", json=rec)))
        worker.start()
        assert entered.wait(10)
        shed = c.post("/v1/recommendations", json=rec)
        health = c.get("/healthz")  # never shed
        release.set()
        worker.join(10)
    assert shed.status_code == 503 and shed.headers["Retry-After"] == "1"
    assert "max_inflight = 1" in shed.json()["error"]
    assert health.status_code == 200 and first[0].status_code == 200


def test_a_request_that_cannot_start_within_max_queue_ms_is_refused() -> None:
    gate = Gate(max_concurrent=1, max_queue_ms=25.0, metrics=ServiceMetrics())
    with gate.enter({ARRIVED: time.perf_counter()}):  # just arrived, a free slot: runs
        started = time.perf_counter()
        with pytest.raises(Overloaded, match="max_queue_ms = 25"), gate.enter({ARRIVED: time.perf_counter()}):
            pass  # the only slot is taken: waits its 25 ms, then is refused
        assert 0.02 <= time.perf_counter() - started < 1.0
        with pytest.raises(Overloaded), gate.enter({ARRIVED: time.perf_counter() - 0.2}):  # no wait left
            pass
    with gate.enter({ARRIVED: time.perf_counter() - 0.2}):  # late, but a slot is free: nobody gains from a refusal
        pass
    with gate.enter({ARRIVED: time.perf_counter()}):  # the slot was given back
        pass
