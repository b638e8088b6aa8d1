"""The API fuzzed from its own OpenAPI document (schemathesis): whatever arrives, no 5xx, every
answer conforms to the documented schema and status codes, and every 4xx says what was wrong,
naming the field. The document itself passes an OpenAPI validator, names its schemas, and its
Swagger UI is served by the server (no CDN)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis import checks

from insession.clock import ManualClock
from insession.engine import Engine
from insession.serving.app import create_app
from insession.serving.server import BackgroundServer


@pytest.fixture
def api(engine: Engine, clock: ManualClock) -> Iterator[Any]:
    app: FastAPI = create_app(engine)
    # Some state, so lists, the catalog and explanations have something to show.
    engine.ingest_raw(
        [
            {"event_id": f"f{n}", "user_id": "u", "type": "click", "item_id": f"i0000{n}", "ts": clock.now_ms() + n}
            for n in range(1, 6)
        ]
    )
    yield schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api")


def names_the_field(body: Any) -> bool:
    """A 4xx body: an ``error`` message, and per field ``errors`` where the request had fields."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), str) or not body["error"]:
        return False
    errors = body.get("errors")
    if errors is None:
        return ":" in body["error"]  # "<field>: expected ..., got ..." or "<what>: <why>"
    return all(isinstance(e, dict) and e.get("field") and e.get("expected") for e in errors)


CONFORMANCE = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_conforms_to_the_document_and_every_refusal_names_the_field(case: Any) -> None:
    response = case.call_and_validate(checks=CONFORMANCE)
    if 400 <= response.status_code < 500:
        assert names_the_field(response.json()), (case.method, case.path, response.status_code, response.text[:300])


def test_the_document_is_valid_names_its_schemas_and_lists_every_status(engine: Engine) -> None:
    doc = create_app(engine).openapi()
    validate(doc)  # openapi-spec-validator: raises on any violation of OpenAPI 3.1
    named = set(doc["components"]["schemas"])
    assert {"Event", "EventBatch", "IngestResult", "RecommendationRequest", "Recommendation", "Explanation"} <= named
    assert {"Error", "FieldProblem", "Health", "Readiness", "CatalogPage"} <= named
    assert "HTTPValidationError" not in named  # FastAPI's own 422 shape is not what the server sends
    batch = doc["components"]["schemas"]["EventBatch"]["properties"]["events"]
    assert batch["items"] == {"$ref": "#/components/schemas/Event"}
    paths = doc["paths"]
    for path, method, statuses in (
        ("/v1/events", "post", {"200", "400", "401", "408", "413", "422", "500", "503"}),
        ("/v1/recommendations", "post", {"200", "400", "401", "408", "413", "422", "500", "503"}),
        ("/v1/recommendations", "get", {"200", "304", "401", "422", "500", "503"}),
        ("/v1/explain/{request_id}", "get", {"200", "401", "404", "410", "422", "500", "501", "503"}),
        ("/v1/users/{user_id}", "delete", {"200", "401", "422", "500", "503"}),
        ("/readyz", "get", {"200", "503"}),
    ):
        responses = paths[path][method]["responses"]
        assert statuses <= set(responses), (path, method, set(responses))
        for status in statuses - {"200", "304"}:
            content = responses[status].get("content", {}).get("application/json", {})
            assert (content.get("schema") and content.get("example") is not None) or (
                status == "503" and path == "/readyz"
            )
    error = paths["/v1/events"]["post"]["responses"]["422"]["content"]["application/json"]
    assert error["schema"] == {"$ref": "#/components/schemas/Error"}


def test_the_422_sent_is_the_422_documented(engine: Engine) -> None:
    doc = create_app(engine).openapi()
    documented = doc["components"]["schemas"]["Error"]
    with BackgroundServer(create_app(engine)) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        sent = c.post("/v1/recommendations", json={"user_id": "u", "k": True}).json()
    assert set(sent) <= set(documented["properties"]) and set(documented["required"]) <= set(sent)
    problem = doc["components"]["schemas"]["FieldProblem"]
    assert set(sent["errors"][0]) == set(problem["properties"]) and sent["errors"][0]["field"] == "k"


def test_swagger_ui_is_served_from_the_server_itself(engine: Engine) -> None:
    with BackgroundServer(create_app(engine)) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        page = c.get("/docs")
        assert page.status_code == 200 and "swagger" in page.text.lower()
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(r"url: '([^']+)'", page.text)
        assert assets and all(a.startswith("/") for a in assets), assets  # nothing from another host
        for asset in assets:
            assert c.get(asset).status_code == 200, asset
        assert "cdn" not in page.text.lower()
