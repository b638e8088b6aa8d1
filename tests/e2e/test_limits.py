"""What the server refuses before the engine sees a request: oversized bodies, requests without
the right API key, and load beyond capacity; and that keys never reach the logs."""

from __future__ import annotations

import json
import logging
import socket
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


@pytest.fixture
def eight_slots(settings: Settings, model: ModelBundle, clock: ManualClock) -> Iterator[Engine]:
    eng = Engine.open(settings.with_(max_inflight=8, body_timeout_ms=1000.0), model=model, clock=clock)
    yield eng
    eng.log.close()


def _stalled(port: int, path: str = "/v1/events", headers: str = "") -> socket.socket:
    """A client that sends the headers and the start of a body, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}"
        'Content-Length: 1000\r\n\r\n{"events": ['.encode()
    )
    return sock


def _answer_of(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_slow_bodies_up_to_max_inflight_lose_their_slots_at_the_deadline(
    eight_slots: Engine, clock: ManualClock
) -> None:
    with served(eight_slots) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        opened = time.monotonic()
        stalled = [_stalled(srv.port) for _ in range(8)]
        try:
            time.sleep(0.3)
            during = c.post("/v1/events", json={"events": [event(1, clock.now_ms())]})
            assert during.status_code == 503  # every slot is held by a stalled sender, for now
            answers = [_answer_of(s) for s in stalled]  # each gets its 408, then the server closes
            waited = time.monotonic() - opened
        finally:
            for s in stalled:
                s.close()
        after = c.post("/v1/events", json={"events": [event(2, clock.now_ms())]})
        listed = c.post("/v1/recommendations", json={"user_id": "u-limits", "k": 5})
        metrics = c.get("/metrics").text
    assert 1.0 <= waited < 5.0
    for raw in answers:
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower()
        assert json.loads(body)["errors"][0]["field"] == "body" and b"body_timeout_ms = 1000" in body
    assert after.status_code == 200 and after.json()["accepted"] == 1
    assert listed.status_code == 200
    assert 'insession_refused_requests_total{reason="body_timeout"} 8.0' in metrics
    assert eight_slots.log.count() == 1  # nothing of the stalled bodies was written


def test_the_key_is_checked_before_the_body_is_read(keyed: Engine) -> None:
    with served(keyed) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        malformed = c.post("/v1/events", content=b'{"events": [', headers={"content-type": "application/json"})
        assert malformed.status_code == 401 and malformed.json()["error"].startswith("X-API-Key")
        keyed_malformed = c.post(
            "/v1/events",
            content=b'{"events": [',
            headers={"content-type": "application/json", "X-API-Key": WRITE_KEY},
        )
        assert keyed_malformed.status_code == 422
        # A keyless sender that never sends its body is refused at once, not at the body deadline.
        started = time.monotonic()
        sock = _stalled(srv.port)
        try:
            raw = _answer_of(sock)
        finally:
            sock.close()
        assert raw.startswith(b"HTTP/1.1 401") and time.monotonic() - started < 2.0


def test_context_is_bounded_and_the_manifest_keeps_only_what_explain_reads(engine: Engine, clock: ManualClock) -> None:
    base = {"user_id": "u-ctx", "surface": "product_page", "k": 5}
    with served(engine) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        c.post("/v1/events", json={"events": [event(1, clock.now_ms(), "u-ctx")]})
        too_many = c.post("/v1/recommendations", json=base | {"context": {f"k{n}": "v" for n in range(40)}})
        too_long = c.post("/v1/recommendations", json=base | {"context": {"campaign": "x" * 600}})
        not_scalar = c.post("/v1/recommendations", json=base | {"context": {"campaign": {"a": 1}}})
        for refused in (too_many, too_long, not_scalar):
            assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "context", refused.text
        context = {"item_id": "i00003", "page": "product", "device": "mobile", "campaign": "y" * 500}
        ok = c.post("/v1/recommendations", json=base | {"context": context})
        assert ok.status_code == 200, ok.text
        explained = c.get(f"/v1/explain/{ok.json()['request_id']}").json()
    assert explained["identical"] is True
    assert explained["manifest"]["context"] == {"item_id": "i00003", "page": "product", "device": "mobile"}
    assert engine.requests is not None
    stored = engine.requests.get(ok.json()["request_id"])
    assert stored is not None and stored.context == explained["manifest"]["context"]


@pytest.mark.parametrize("k", [True, 5.0, "5", None])
def test_k_accepts_integers_only(engine: Engine, k: object) -> None:
    with served(engine) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        response = c.post("/v1/recommendations", json={"user_id": "u", "k": k})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "k"


def test_a_500_says_connection_close_and_the_next_request_succeeds(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = engine.recommend
    calls = []

    def failing_once(request: Any) -> Any:
        calls.append(request)
        if len(calls) == 1:
            raise RuntimeError("boom: not for the client's eyes")
        return real(request)

    monkeypatch.setattr(engine, "recommend", failing_once)
    with served(engine) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        failed = c.post("/v1/recommendations", json={"user_id": "u"})
        again = c.post("/v1/recommendations", json={"user_id": "u"})
    assert failed.status_code == 500 and failed.headers["connection"] == "close"
    assert "boom" not in failed.text and failed.json()["incident"]
    assert again.status_code == 200


def test_explanations_beyond_their_share_are_refused_with_retry_after(
    settings: Settings, model: ModelBundle, clock: ManualClock
) -> None:
    eng = Engine.open(settings.with_(explain_share=0.01, explain_window_s=5.0), model=model, clock=clock)
    try:
        with served(eng) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
            c.post("/v1/events", json={"events": [event(n, clock.now_ms() + n) for n in range(20)]})
            rid = c.post("/v1/recommendations", json={"user_id": "u-limits"}).json()["request_id"]
            answers = []
            started = time.monotonic()
            while time.monotonic() - started < 4.0 and len(answers) < 200:
                answers.append(c.get(f"/v1/explain/{rid}"))
                if answers[-1].status_code == 503:
                    break
            listed = c.post("/v1/recommendations", json={"user_id": "u-limits"})
    finally:
        eng.log.close()
    assert answers[0].status_code == 200 and answers[-1].status_code == 503, [a.status_code for a in answers]
    refused = answers[-1]
    assert int(refused.headers["Retry-After"]) >= 1 and "explain" in refused.json()["error"]
    assert listed.status_code == 200  # lists are not part of the explanations' share
