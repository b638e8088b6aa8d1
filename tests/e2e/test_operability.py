"""What an operator sees: the version, log levels, one JSON access-log line per request, Prometheus
metrics by Prometheus's conventions, and liveness apart from readiness."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from insession import __version__
from insession.clock import ManualClock
from insession.engine import Engine
from insession.serving.access import ACCESS_LOGGER
from insession.serving.app import create_app
from insession.serving.server import BackgroundServer

CLI = [sys.executable, "-m", "insession"]


def test_version_and_log_level_are_global_options() -> None:
    version = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"insession {__version__}"
    wrong = subprocess.run(
        [*CLI, "--log-level", "loud", "replay", "--help"], capture_output=True, text=True, timeout=60
    )
    assert wrong.returncode == 2 and "--log-level" in wrong.stderr
    fine = subprocess.run(
        [*CLI, "--log-level", "debug", "replay", "--help"], capture_output=True, text=True, timeout=60
    )
    assert fine.returncode == 0 and "--data-dir" in fine.stdout


def test_one_json_access_line_per_request_with_route_status_latency_and_tier(
    engine: Engine, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    event = {"event_id": "acc-1", "user_id": "u-acc", "type": "click", "item_id": "i00001", "ts": clock.now_ms()}
    with BackgroundServer(create_app(engine)) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        c.post("/v1/events", json={"events": [event]}, headers={"X-Request-ID": "client-chosen-1"})
        listed = c.post("/v1/recommendations", json={"user_id": "u-acc", "k": 5})
        c.get(f"/v1/explain/{listed.json()['request_id']}")
        c.get("/no/such/path")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == ACCESS_LOGGER]
    assert [(x["method"], x["route"], x["status"]) for x in lines] == [
        ("POST", "/v1/events", 200),
        ("POST", "/v1/recommendations", 200),
        ("GET", "/v1/explain/{request_id}", 200),
        ("GET", "unmatched", 404),
    ]
    assert lines[0]["request_id"] == "client-chosen-1" and lines[0]["tier"] is None
    assert lines[1]["request_id"] == listed.json()["request_id"] == listed.headers["X-Request-ID"]
    assert lines[1]["tier"] == listed.json()["tier"]
    assert all(x["latency_ms"] > 0 and x["time"] > 0 for x in lines)


def test_metrics_follow_prometheus_conventions(engine: Engine, clock: ManualClock) -> None:
    event = {"event_id": "m-1", "user_id": "u-m", "type": "click", "item_id": "i00001", "ts": clock.now_ms()}
    with BackgroundServer(create_app(engine)) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        c.post("/v1/events", json={"events": [event]})
        c.post("/v1/recommendations", json={"user_id": "u-m"})
        text = c.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for family in families.values():
        names = {s.name for s in family.samples}
        if family.type == "counter":
            assert all(n.endswith(("_total", "_created")) for n in names), (family.name, names)
        else:
            assert not any(n.endswith("_total") for n in names), (family.name, names)
        assert not family.name.endswith(("_ms", "_milliseconds")), family.name
    for counter in ("insession_events_capped", "insession_store_failures", "insession_surface_tier_changes"):
        assert families[counter].type == "counter"
    build = families["insession_build_info"].samples[0]
    assert build.labels["version"] == __version__ and build.value == 1
    model = families["insession_model_info"].samples[0]  # an info metric: a gauge of value 1
    assert model.labels["version"] == engine.model.version and model.value == 1
    http = families["insession_http_request_duration_seconds"]
    assert http.type == "histogram"
    routes = {(s.labels["route"], s.labels["status"]) for s in http.samples if s.name.endswith("_count")}
    assert {("/v1/events", "200"), ("/v1/recommendations", "200")} <= routes
    assert "insession_surface_p99_seconds" in families


def test_liveness_and_readiness(engine: Engine) -> None:
    with BackgroundServer(create_app(engine)) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        health = c.get("/healthz")
        ready = c.get("/readyz")
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["store"]["up"] is True
    assert ready.status_code == 200 and ready.json() == {"ready": True, "reasons": []}
