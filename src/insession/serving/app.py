"""The HTTP app: thin translation between JSON and the engine.

Bodies are validated by pydantic at this edge and converted to domain objects; events are
validated one by one by :func:`insession.events.validate_event` so one bad event never rejects
its batch.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import AbstractContextManager
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from insession.engine import Engine
from insession.errors import FieldError, InsessionError, Overloaded, PayloadTooLarge, StoreUnavailable
from insession.filters import Filters
from insession.freshness import cache_control
from insession.pipeline import RecommendRequest
from insession.serving.admission import RETRY_AFTER_S, Admission, Gate, check_key
from insession.serving.metrics import ServiceMetrics

logger = logging.getLogger(__name__)
STATIC = FsPath(__file__).with_name("static")


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[Any] = Field(description="Events; each is validated on its own.")


class RecommendationContext(BaseModel):
    model_config = ConfigDict(extra="allow")
    item_id: str | None = Field(default=None, max_length=128)
    page: str | None = Field(default=None, max_length=64)
    device: str | None = Field(default=None, max_length=64)


class RecommendationFilters(BaseModel):
    """What the list may hold; checked again by ``insession.filters.Filters``."""

    model_config = ConfigDict(extra="forbid")
    include_categories: list[str] = Field(default_factory=list, max_length=200, description="Any of these categories.")
    exclude_categories: list[str] = Field(default_factory=list, max_length=200, description="None of these.")
    min_price: float | None = Field(default=None, ge=0, description="Items priced at least this (unpriced fail).")
    max_price: float | None = Field(default=None, ge=0, description="Items priced at most this (unpriced fail).")
    exclude_items: list[str] = Field(default_factory=list, max_length=200, description="Items not to show.")
    available_only: bool = Field(default=False, description="Only items known to be available.")


class RecommendationBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, max_length=128)
    surface: str = Field(default="home", min_length=1, max_length=64)
    k: int = Field(default=10, ge=1, le=100)
    context: RecommendationContext | None = None
    filters: RecommendationFilters | None = None


class ItemBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[Any] = Field(
        description="Items to add or change: item_id and any of name, category, brand, price, available; "
        "each is validated on its own."
    )


def _field_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        field = ".".join(loc) or "body"
        got = err.get("input")
        out.append(
            {
                "field": field,
                "expected": str(err.get("msg", "")),
                "got": type(got).__name__ if got is not None else "nothing",
            }
        )
    return out


EXPLAIN_QUEUE_MS = 10_000.0
BARE_ITEMS = [{"item_id": f"bare-{n}", "score": 1.0, "sources": ["bare"]} for n in range(10)]


def create_app(engine: Engine, metrics: ServiceMetrics | None = None, bare_endpoint: bool = False) -> FastAPI:
    """The app. ``bare_endpoint`` adds ``POST /v1/bench/bare``: the same body validation and JSON
    response as ``/v1/recommendations`` but a fixed list and no engine, the floor the framework
    itself costs (``insession bench`` measures both in one run)."""
    metrics = metrics or ServiceMetrics()
    app = FastAPI(title="insession", version="0.1.0", description="Real-time in-session recommendations.")
    app.state.engine = engine
    app.state.metrics = metrics
    settings = engine.settings
    app.add_middleware(Admission, settings=settings, metrics=metrics)

    gate = Gate(settings.max_concurrent, settings.max_queue_ms, metrics)
    # Explaining refolds the event log up to the request (seconds on a long log): one at a time,
    # in a gate of its own, so explanations never hold the slots lists and events are served in.
    explaining = Gate(1, EXPLAIN_QUEUE_MS, metrics)

    def admit(
        request: Request, keys: tuple[str, ...], what: str, through: Gate | None = None
    ) -> AbstractContextManager[None]:
        """The key check (when keys are configured), then a turn in the engine (``Gate``)."""
        try:
            check_key(request.headers, keys, what)
        except InsessionError:
            metrics.refused.labels("auth").inc()
            raise
        return (through or gate).enter(request.scope)

    def may_read(request: Request, through: Gate | None = None) -> AbstractContextManager[None]:
        return admit(request, settings.read_keys, "read recommendations and explanations", through)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc)
        message = "; ".join(f"{e['field']}: {e['expected']}" for e in errors)
        return JSONResponse({"error": message, "errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _framework(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """The framework's own refusals (a body that is not JSON, an unknown path or method) in the
        same shape as ours: what was wrong, named."""
        if exc.status_code == 400:
            error = FieldError("body", "a JSON document (UTF-8)", str(exc.detail))
        elif exc.status_code == 404:
            error = FieldError("path", "one of the API's paths (see /docs)", request.url.path)
        elif exc.status_code == 405:
            error = FieldError("method", f"one of the methods {request.url.path} allows", request.method)
        else:
            error = FieldError("request", str(exc.detail), str(exc.detail))
        return JSONResponse(
            {"error": str(error), "errors": [error.to_dict()]},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(InsessionError)
    async def _known(request: Request, exc: InsessionError) -> JSONResponse:
        body: dict[str, Any] = {"error": exc.message}
        errors = getattr(exc, "errors", None)
        if errors:
            body["errors"] = [e.to_dict() for e in errors]
        headers = {"Retry-After": str(RETRY_AFTER_S)} if isinstance(exc, StoreUnavailable | Overloaded) else None
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(Exception)
    async def _unknown(request: Request, exc: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        logger.exception("unhandled error (incident %s)", incident)
        return JSONResponse({"error": "internal error", "incident": incident}, status_code=500)

    @app.post("/v1/events")
    def post_events(batch: EventBatch, request: Request) -> dict[str, Any]:
        with admit(request, settings.write_keys, "write events"):
            limit = engine.settings.max_batch_events
            if len(batch.events) > limit:
                raise PayloadTooLarge(f"events: expected at most {limit} events per batch, got {len(batch.events)}")
            result = engine.ingest_raw(batch.events)
            metrics.events.labels("accepted").inc(result.accepted)
            metrics.events.labels("duplicate").inc(result.duplicates)
            metrics.events.labels("rejected").inc(len(result.rejected))
            if engine.folds_inline:
                metrics.log_position.set(engine.store.applied_position())
            return result.to_dict()

    def recommend(req: RecommendRequest, if_none_match: str | None) -> Response:
        started = time.perf_counter()
        response = engine.recommend(req)
        metrics.recommend_latency.labels(req.surface, response.tier).observe(time.perf_counter() - started)
        for stage, ms in response.timings_ms.items():
            if stage != "total":
                metrics.stage_latency.labels(stage).observe(ms / 1000.0)
        for stage in response.cut:
            metrics.cuts.labels(stage).inc()
        metrics.lists.labels(req.surface, "cached" if response.cached else "computed").inc()
        if response.churn is not None:
            metrics.churn.labels(req.surface).observe(response.churn)
        surface = engine.settings.surface(req.surface)
        headers = {
            "ETag": response.etag,
            "Cache-Control": cache_control(surface),
            "X-Session-Version": str(response.session_version),
        }
        if if_none_match is not None and response.etag in (t.strip() for t in if_none_match.split(",")):
            return Response(status_code=304, headers=headers)
        return JSONResponse(response.to_dict(), headers=headers)

    @app.post("/v1/recommendations")
    def post_recommendations(body: RecommendationBody, request: Request) -> Response:
        with may_read(request):
            context = {}
            if body.context is not None:
                context = {k: str(v) for k, v in body.context.model_dump().items() if v is not None}
            filters = Filters.from_dict(body.filters.model_dump() if body.filters is not None else None)
            return recommend(RecommendRequest(body.user_id, body.surface, body.k, context, filters=filters), None)

    @app.get("/v1/recommendations")
    def get_recommendations(
        request: Request,
        user_id: Annotated[str, Query(min_length=1, max_length=128)],
        surface: Annotated[str, Query(min_length=1, max_length=64)] = "home",
        k: Annotated[int, Query(ge=1, le=100)] = 10,
        item_id: Annotated[str | None, Query(max_length=128)] = None,
        if_none_match: Annotated[str | None, Header()] = None,
        include_category: Annotated[list[str] | None, Query(max_length=200)] = None,
        exclude_category: Annotated[list[str] | None, Query(max_length=200)] = None,
        min_price: Annotated[float | None, Query(ge=0)] = None,
        max_price: Annotated[float | None, Query(ge=0)] = None,
        exclude_item: Annotated[list[str] | None, Query(max_length=200)] = None,
        available_only: Annotated[bool, Query()] = False,
    ) -> Response:
        """The same list as POST, cacheable: send the ETag back in If-None-Match and an unchanged
        list answers 304 with no body. Filters as query parameters (repeat a list parameter)."""
        with may_read(request):
            context = {"item_id": item_id} if item_id else {}
            filters = Filters(
                tuple(include_category or ()),
                tuple(exclude_category or ()),
                min_price,
                max_price,
                tuple(exclude_item or ()),
                available_only,
            )
            return recommend(RecommendRequest(user_id, surface, k, context, filters=filters), if_none_match)

    @app.post("/v1/items")
    def post_items(batch: ItemBatch, request: Request) -> dict[str, Any]:
        """Add or change catalog items while serving: a new item is recommendable at once, one with
        ``available: false`` is never served. Each item is validated on its own; the refused are
        listed with every field at fault, as for events."""
        with admit(request, settings.write_keys, "change the catalog"):
            limit = engine.settings.max_batch_events
            if len(batch.items) > limit:
                raise PayloadTooLarge(f"items: expected at most {limit} items per batch, got {len(batch.items)}")
            return engine.update_items(batch.items).to_dict()

    if bare_endpoint:

        @app.post("/v1/bench/bare")
        def bare(body: RecommendationBody, request: Request) -> Response:
            with may_read(request):  # the same checks as a real request, so the floor is comparable
                return JSONResponse(
                    {"request_id": "bare", "items": BARE_ITEMS[: body.k], "session_version": 0, "tier": "bare"}
                )

    @app.get("/v1/explain/{request_id}")
    def get_explain(request: Request, request_id: Annotated[str, Path(min_length=1, max_length=128)]) -> dict[str, Any]:
        """The served list recomputed from its manifest and the event log: per item its sources,
        key features, score and contributions, the rules applied, and whether it is identical."""
        with may_read(request, explaining):
            return engine.explain(request_id).to_dict()

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """``status`` is ``degraded`` while the shared store is unavailable (lists come from the
        ``popular`` tier, events are refused with 503); ``ok`` otherwise."""
        store = engine.store_health()
        try:
            position: int | None = engine.store.applied_position()
        except StoreUnavailable:
            position = None
        return {
            "status": "ok" if store["up"] else "degraded",
            "model_version": engine.model.version,
            "log_position": position,
            "live_users": engine.live_users(),
            "store": store,
            "guard": {"capped_events": engine.capped_events()},
            "tiers": {name: t["tier"] for name, t in engine.tiers.snapshot().items()},
        }

    @app.get("/metrics")
    def get_metrics() -> Response:
        users = engine.live_users()
        if users is not None:
            metrics.users.set(users)
        metrics.capped.set(engine.capped_events())
        store = engine.store_health()
        metrics.store_up.set(1 if store["up"] else 0)
        metrics.store_failures.set(float(store.get("failures", 0)))
        if "l1_hit_rate" in store:
            metrics.l1_hit_rate.set(float(store["l1_hit_rate"]))
        for surface, tier in engine.tiers.snapshot().items():
            metrics.tier.labels(surface).set(tier["level"])
            metrics.tier_p99.labels(surface).set(tier["p99_ms"])
            metrics.tier_changes.labels(surface).set(tier["changes"])
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/catalog")
    def get_catalog(
        request: Request,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 48,
        category: Annotated[str | None, Query(max_length=128)] = None,
        item_id: Annotated[list[str] | None, Query(max_length=100)] = None,
    ) -> dict[str, Any]:
        """Catalog items (id, name, category, brand, price), in catalog order, optionally one
        category's or the given ``item_id``s; ``categories`` lists every category."""
        with may_read(request):
            catalog = engine.model.catalog
            if item_id:
                chosen = [found for i in item_id if (found := catalog.get(i)) is not None]
            else:
                chosen = [i for i in catalog.items if category is None or i.category == category]
            page = chosen if item_id else chosen[offset : offset + limit]
            return {
                "total": len(chosen),
                "categories": list(catalog.category_names),
                "items": [i.to_dict() for i in page],
            }

    @app.get("/v1/demo/users")
    def demo_users(request: Request) -> dict[str, Any]:
        """Users for the demo page's switcher: those with the longest history (embedded store)."""
        with may_read(request):
            return {"long_history": engine.users_with_most_history(3)}

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        """The demo shop page (static files, no build step)."""
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    return app
