"""The HTTP API's bodies as named schemas: what requests may carry and what every answer holds.

Request bodies are validated here (pydantic, at the edge). Response models document what the
handlers send (OpenAPI ``components.schemas``) without validating it again on the request path:
the handlers return the engine's own ``to_dict`` output, and the fuzz test checks every answer
against these schemas (schemathesis, response conformance). ``ERRORS`` maps every status the
server sends for a refusal to its description, in the one error shape (:class:`Error`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field, StrictInt, WithJsonSchema, field_validator, model_validator

from insession.engine import CONTEXT_READ
from insession.events import (
    MAX_ID_CHARS,
    MAX_PROPERTIES,
    MAX_PROPERTY_KEY_CHARS,
    MAX_PROPERTY_STRING_CHARS,
    EventType,
    text_problem,
)

Scalar = str | int | float | bool | None


def _text(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(f"text without control characters or lone surrogates, got {problem}")
    return value


# -- errors -----------------------------------------------------------------------------------
class FieldProblem(BaseModel):
    """One problem with one field: where, what was expected, what arrived."""

    field: str = Field(examples=["k"])
    expected: str = Field(examples=["Input should be a valid integer"])
    got: str = Field(examples=["bool"])


class Error(BaseModel):
    """Every refusal and failure: ``error`` says what was wrong (naming the field), ``errors``
    lists each field at fault where the request had fields, ``incident`` (500 only) is the id the
    server logged the failure under."""

    error: str = Field(examples=["k: Input should be a valid integer"])
    errors: list[FieldProblem] | None = None
    incident: str | None = Field(default=None, description="500 only: the id in the server's log.")


def _error_example(status: int, error: str, field: str | None = None, expected: str = "", got: str = "") -> Any:
    body: dict[str, Any] = {"error": error}
    if field is not None:
        body["errors"] = [{"field": field, "expected": expected, "got": got}]
    return {"model": Error, "content": {"application/json": {"example": body}}}


#: Every status the server sends besides 200, with an example of its body.
ERRORS: dict[int, dict[str, Any]] = {
    400: {
        "description": "The body is not a JSON document in UTF-8.",
        **_error_example(
            400,
            "body: expected a JSON document (UTF-8), got There was an error parsing the body",
            "body",
            "a JSON document (UTF-8)",
            "There was an error parsing the body",
        ),
    },
    401: {
        "description": "API keys are configured and the request carries none allowed for it (checked before the "
        "body is read).",
        **_error_example(401, "X-API-Key: expected a key allowed to write events, got none"),
    },
    404: {
        "description": "No such request_id (explain), or no such path.",
        **_error_example(404, "request_id: no manifest for 'r-1'"),
    },
    410: {
        "description": "The request was served to a user whose data was erased (DELETE /v1/users/{user_id}): "
        "its manifest is gone on purpose.",
        **_error_example(
            410, "request_id: 'r-1' was served to a user whose data was erased at 2026-12-02T15:00:00+00:00 (forget)"
        ),
    },
    408: {
        "description": "The body did not arrive within body_timeout_ms; the connection is closed.",
        **_error_example(
            408,
            "body: expected the whole body within body_timeout_ms = 10000, got 12 bytes",
            "body",
            "the whole body within body_timeout_ms = 10000",
            "12 bytes",
        ),
    },
    413: {
        "description": "The body is over max_body_bytes, or the batch over max_batch_events.",
        **_error_example(
            413,
            "body: expected at most max_body_bytes = 4194304 bytes, got 5000000 bytes",
            "body",
            "at most max_body_bytes = 4194304 bytes",
            "5000000 bytes",
        ),
    },
    422: {
        "description": "The body or a parameter is malformed; every field at fault is listed.",
        **_error_example(422, "k: Input should be a valid integer", "k", "Input should be a valid integer", "bool"),
    },
    500: {
        "description": "An unexpected failure (logged under `incident`); the connection is closed.",
        "model": Error,
        "content": {"application/json": {"example": {"error": "internal error", "incident": "3f2a9c1d0b7e"}}},
    },
    503: {
        "description": "Overloaded (max_inflight, max_queue_ms, the explain share) or storage unavailable (disk "
        "full, read-only data directory, Redis down): nothing was written; retry after Retry-After seconds.",
        "headers": {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}},
        **_error_example(503, "event log insession-data/events.sqlite: could not append 40 events; none was stored"),
    },
}


ERROR_501 = {
    "description": "Not with this configuration (explain needs the embedded event log).",
    **_error_example(501, "explain: needs the embedded event log (store = memory)"),
}


#: What a route with a JSON body can be refused for, besides what every route can.
BODY_ERRORS = (400, 401, 408, 413, 422)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` entries for these statuses (500 and 503 are added to every route)."""
    return {s: ERRORS[s] for s in sorted({*statuses, 500, 503})}


# -- events -----------------------------------------------------------------------------------
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]


class Event(BaseModel):
    """One thing a user did. Each event of a batch is validated on its own: an invalid one is listed
    under ``rejected`` with every field at fault, the others are accepted."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "event_id": "e-1",
                "user_id": "u0001",
                "type": "click",
                "item_id": "i00042",
                "ts": "2026-11-22T10:00:00Z",
                "properties": {"category": "shoes", "page": "home"},
            }
        },
    )

    event_id: Id = Field(description="Unique per event: a re-sent event_id is a duplicate, never applied twice.")
    user_id: Id = Field(description="The user, or an anonymous session key.")
    session_id: Id | None = Field(default=None, description="A new value starts a new session.")
    type: EventType
    item_id: Id | None = Field(default=None, description="Required except for `search`.")
    ts: int | str = Field(description="Event time: epoch milliseconds, or ISO-8601 with a zone.")
    properties: dict[Annotated[str, Field(min_length=1, max_length=MAX_PROPERTY_KEY_CHARS)], Scalar] | None = Field(
        default=None,
        max_length=MAX_PROPERTIES,
        description=f"Scalars (strings up to {MAX_PROPERTY_STRING_CHARS} characters): category, brand, price, "
        "query, page, device, ...",
    )


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: Parsed as any JSON values, so one malformed event is rejected alone (by the engine's
    #: validation), not the whole batch; documented as events.
    events: Annotated[
        list[Any],
        WithJsonSchema({"type": "array", "items": {"$ref": "#/components/schemas/Event"}}),
    ] = Field(description="Events; each is validated on its own (at most max_batch_events, 1000 by default).")


class RejectedEvent(BaseModel):
    index: int = Field(description="The event's position in the batch.")
    errors: list[FieldProblem]
    message: str


class IngestResult(BaseModel):
    accepted: int = Field(examples=[1])
    duplicates: int = Field(examples=[0])
    rejected: list[RejectedEvent]


# -- recommendations --------------------------------------------------------------------------
class RecommendationContext(BaseModel):
    """Where the list is shown. ``item_id``, ``page`` and ``device`` are read by the ranker; other
    keys are accepted within the same limits as event properties and not kept."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "maxProperties": MAX_PROPERTIES,
            "additionalProperties": {
                "anyOf": [
                    {"type": "string", "maxLength": MAX_PROPERTY_STRING_CHARS},
                    {"type": "number"},
                    {"type": "boolean"},
                    {"type": "null"},
                ]
            },
        },
    )
    item_id: str | None = Field(default=None, max_length=MAX_ID_CHARS, description="The item on the page.")
    page: str | None = Field(default=None, max_length=64)
    device: str | None = Field(default=None, max_length=64)

    @field_validator("item_id", "page", "device")
    @classmethod
    def _plain_text(cls, value: str | None) -> str | None:
        return None if value is None else _text(value)

    @model_validator(mode="after")
    def _bounded(self) -> RecommendationContext:
        extra = self.model_extra or {}
        entries = len(extra) + sum(1 for k in CONTEXT_READ if getattr(self, k) is not None)
        if entries > MAX_PROPERTIES:
            raise ValueError(f"at most {MAX_PROPERTIES} entries, got {entries}")
        for key, value in extra.items():
            if not key or len(key) > MAX_PROPERTY_KEY_CHARS or text_problem(key) is not None:
                raise ValueError(f"keys of 1 to {MAX_PROPERTY_KEY_CHARS} characters of text, got {key[:80]!r}")
            if value is not None and not isinstance(value, str | int | float):
                raise ValueError(f"{key}: a string, number, boolean or null, got {type(value).__name__}")
            if isinstance(value, str) and len(value) > MAX_PROPERTY_STRING_CHARS:
                raise ValueError(
                    f"{key}: a string of at most {MAX_PROPERTY_STRING_CHARS} characters, got {len(value)} characters"
                )
        return self

    def read(self) -> dict[str, str]:
        """What the pipeline reads (the other keys are validated, then dropped)."""
        return {k: v for k in CONTEXT_READ if (v := getattr(self, k)) is not None}


class RecommendationFilters(BaseModel):
    """What the list may hold; checked again by ``insession.filters.Filters``."""

    model_config = ConfigDict(extra="forbid")
    include_categories: list[str] = Field(default_factory=list, max_length=200, description="Any of these categories.")
    exclude_categories: list[str] = Field(default_factory=list, max_length=200, description="None of these.")
    min_price: float | None = Field(default=None, ge=0, description="Items priced at least this (unpriced fail).")
    max_price: float | None = Field(default=None, ge=0, description="Items priced at most this (unpriced fail).")
    exclude_items: list[str] = Field(default_factory=list, max_length=200, description="Items not to show.")
    available_only: bool = Field(default=False, description="Only items known to be available.")


class RecommendationRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"example": {"user_id": "u0001", "surface": "home", "k": 10, "context": {"page": "home"}}},
    )
    user_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    surface: str = Field(default="home", min_length=1, max_length=64, description="A configured surface.")
    k: StrictInt = Field(default=10, ge=1, le=100, description="List length: an integer (true is not 1).")
    context: RecommendationContext | None = None
    filters: RecommendationFilters | None = None

    @field_validator("user_id", "surface")
    @classmethod
    def _plain_text(cls, value: str) -> str:
        return _text(value)


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    sources: list[str] = Field(description="The candidate sources that proposed it, e.g. covisit, popular.")


class Recommendation(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "request_id": "5b0f3c2e9d8a4f61a2b3c4d5e6f70812",
                "user_id": "u0001",
                "surface": "home",
                "items": [{"item_id": "i00042", "score": 1.01, "sources": ["covisit", "popular"]}],
                "session_id": "u0001#3",
                "session_version": 57,
                "model_version": "256aabf6d620ee29",
                "tier": "full",
                "cut": [],
                "cached": False,
                "churn": 0.3,
                "degraded": None,
                "timings_ms": {"features": 0.4, "candidates": 1.0, "ranking": 4.2, "rerank": 0.05, "total": 5.6},
            }
        }
    )
    request_id: str = Field(description="Pass to /v1/explain/{request_id}.")
    user_id: str
    surface: str
    items: list[RecommendedItem]
    session_id: str | None
    session_version: int = Field(description="Events applied to this user: cache until it changes.")
    model_version: str
    tier: Literal["full", "fast", "popular"]
    cut: list[str] = Field(description="Stages that ran out of their share of the budget (partial results).")
    cached: bool = Field(description="Served again from the surface's freshness cache.")
    churn: float | None = Field(description="Share of the top k new since this user's previous list here.")
    degraded: str | None = Field(description="Why the store was skipped (tier popular), if it was.")
    timings_ms: dict[str, float]


# -- explanations -----------------------------------------------------------------------------
class ExplainedItem(BaseModel):
    item_id: str
    position: int
    score: float
    sources: dict[str, float] = Field(description="Each source that proposed it, with that source's score.")
    features: dict[str, float] = Field(description="The features that moved its score most.")
    contributions: dict[str, float] = Field(description="Their contributions to the ranker's score (SHAP).")
    moved_by: list[str]


class Explanation(BaseModel):
    """A served list recomputed from its manifest and the event log."""

    request_id: str
    identical: bool = Field(description="The recomputed list is the served one.")
    served: list[str]
    recomputed: list[str]
    diff: list[str]
    tier: str
    cut: list[str]
    items: list[ExplainedItem]
    removed_by_rule: dict[str, list[str]]
    manifest: dict[str, Any] = Field(description="What was recorded when the list was served.")
    note: str


# -- catalog, health --------------------------------------------------------------------------
class ItemBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[Any] = Field(
        description="Items to add or change: item_id and any of name, category, brand, price, available; "
        "each is validated on its own."
    )


class ItemsResult(BaseModel):
    changed: int
    unchanged: int
    rejected: list[RejectedEvent] = Field(description="Each refused item: its index and every field at fault.")
    model_version: str


class Forgotten(BaseModel):
    """What ``DELETE /v1/users/{user_id}`` erased: counts only (nothing about the user is kept)."""

    events: int = Field(description="The user's events removed from the event log (compacted).")
    manifests: int = Field(description="The user's request manifests removed; explaining them answers 410.")
    checkpoints_written: int = Field(
        description="Replay checkpoints at the user's events, so every other list still explains identically."
    )
    checkpoint_entries: int = Field(description="Checkpoint entries removed (the user's states) or anonymised.")
    items_anonymised: int = Field(description="Items whose recent events no longer carry the user's key.")
    session: bool = Field(description="Whether the user had live state (now removed).")
    notes: list[str]


class CatalogItem(BaseModel):
    item_id: str
    name: str | None
    category: str | None
    brand: str | None
    price: float | None


class CatalogPage(BaseModel):
    total: int
    categories: list[str]
    items: list[CatalogItem]


class DemoUsers(BaseModel):
    long_history: list[str]


class ModelSwapRequest(BaseModel):
    """Which model to serve: a model directory to load, or a version loaded before (``previous``:
    the one active before the current). Exactly one of the two."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"path": "/srv/models/2026-12-02"}, {"version": "previous"}]},
    )
    path: str | None = Field(
        default=None, min_length=1, max_length=4096, description="A model directory (insession train --out DIR)."
    )
    version: str | None = Field(
        default=None, min_length=1, max_length=200, description="A trained version loaded before, or previous."
    )

    @model_validator(mode="after")
    def _one(self) -> ModelSwapRequest:
        if (self.path is None) == (self.version is None):
            raise ValueError("exactly one of path and version")
        for value in (self.path, self.version):
            if value is not None:
                _text(value)
        return self


class ModelStatus(BaseModel):
    active: str = Field(description="The model version serving now (with the catalog changes made while serving).")
    trained_version: str
    directory: str = Field(description="Where the active model was loaded from (empty: built in memory).")
    loaded: list[str] = Field(description="Trained versions loaded in this server (explain uses them).")
    history: list[str] = Field(description="Trained versions made active in this server, oldest first.")
    swaps: int


class StoreHealth(BaseModel):
    kind: Literal["memory", "redis"]
    up: bool = Field(description="false while writes fail (disk full, read-only directory) or Redis is down.")
    last_error: str | None = None


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    model_version: str
    log_position: int | None
    live_users: int | None
    store: StoreHealth
    guard: dict[str, int]
    tiers: dict[str, str]


class Readiness(BaseModel):
    ready: bool
    reasons: list[str] = Field(description="Why not ready: empty when ready.")


def document(app: FastAPI) -> None:
    """Build the app's OpenAPI document once, with the schemas no route names directly (``Event``:
    the batch parses events as any JSON so one bad event is rejected alone) among its components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = doc.setdefault("components", {}).setdefault("schemas", {})
            event = Event.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(event.pop("$defs", {}))
            components["Event"] = event
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
