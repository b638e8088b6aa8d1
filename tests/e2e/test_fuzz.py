"""The API fuzzed from its own OpenAPI spec (schemathesis): whatever arrives, no 5xx, and every
4xx says what was wrong, naming the field."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings

from insession.engine import Engine
from insession.serving.app import create_app


@pytest.fixture
def api(engine: Engine) -> Iterator[Any]:
    app: FastAPI = create_app(engine)
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


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_gives_a_server_error_and_every_refusal_names_the_field(case: Any) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
    if 400 <= response.status_code < 500:
        assert names_the_field(response.json()), (case.method, case.path, response.status_code, response.text[:300])
