"""The HTTP app: thin translation between JSON and the engine.

Bodies are validated by pydantic at this edge (``serving/schemas.py``, which also names every
schema and error status in the OpenAPI document) and converted to domain objects; events are
validated one by one by :func:`insession.events.validate_event` so one bad event never rejects
its batch. The middleware, outermost first: ``AccessLog`` (request id, access line, duration
histogram), ``Admission`` (shedding, API keys, body limits and deadline).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from contextlib import AbstractContextManager
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from swagger_ui_bundle import swagger_ui_path

from insession import __version__
from insession.engine import Engine
from insession.errors import (
    FieldError,
    InsessionError,
    Overloaded,
    PayloadTooLarge,
    StorageFault,
    StoreUnavailable,
)
from insession.filters import Filters
from insession.freshness import cache_control
from insession.pipeline import RecommendRequest
from insession.serving import schemas
from insession.serving.access import TIER, UNMATCHED, AccessLog
from insession.serving.admission import (
    RETRY_AFTER_S,
    Admission,
    ExplainBusy,
    Gate,
    KeyRule,
    Scope,
    TimeShare,
    check_key,
)
from insession.serving.explaining import ExplainProcess
from insession.serving.metrics import ServiceMetrics, engine_metrics
from insession.serving.schemas import (
    BODY_ERRORS,
    ERROR_501,
    EventBatch,
    ItemBatch,
    RecommendationRequest,
    document,
    errors,
)

logger = logging.getLogger(__name__)
STATIC = FsPath(__file__).with_name("static")


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


BARE_ITEMS = [{"item_id": f"bare-{n}", "score": 1.0, "sources": ["bare"]} for n in range(10)]


def create_app(engine: Engine, metrics: ServiceMetrics | None = None, bare_endpoint: bool = False) -> FastAPI:
    """The app. ``bare_endpoint`` adds ``POST /v1/bench/bare``: the same body validation and JSON
    response as ``/v1/recommendations`` but a fixed list and no engine, the floor the framework
    itself costs (``insession bench`` measures both in one run)."""
    metrics = metrics or ServiceMetrics()
    app = FastAPI(
        title="insession",
        version=__version__,
        description="Real-time in-session recommendations: events in, lists out, every list explainable.",
        docs_url=None,  # served below from the swagger-ui-bundle package: no CDN
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.metrics = metrics
    metrics.watch(lambda: engine_metrics(engine))
    settings = engine.settings
    write = KeyRule(settings.write_keys, "write events")
    read = KeyRule(settings.read_keys, "read recommendations and explanations")
    # Each keyed route, checked by Admission before the body is read (routes not listed are open).
    key_rules = {
        "/v1/events": write,
        "/v1/items": KeyRule(settings.write_keys, "change the catalog"),
        "/v1/admin/model": KeyRule(settings.write_keys, "swap the model"),
        "/v1/users/{user_id}": KeyRule(settings.write_keys, "erase users"),
        "/v1/recommendations": read,
        "/v1/explain/{request_id}": read,
        "/v1/catalog": read,
        "/v1/demo/users": read,
        "/v1/bench/bare": read,
    }

    def route_of(scope: Scope) -> str:
        for route in app.router.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return str(getattr(route, "path", UNMATCHED))
        return UNMATCHED

    gate = Gate(settings.max_concurrent, settings.max_queue_ms, metrics)
    # Explaining refolds the event log up to the request (about a second of CPU on a long log):
    # one at a time, within its share of the server's time, outside the slots lists are served in.
    explaining = TimeShare(settings.explain_share, settings.explain_window_s, metrics)
    guards = {"/v1/explain/{request_id}": explaining.refusal}
    app.add_middleware(Admission, settings=settings, metrics=metrics, key_rules=key_rules, guards=guards)
    app.add_middleware(AccessLog, metrics=metrics, route_of=route_of)
    # ... and, served from a model directory, in a process of its own (serving/explaining.py).
    apart = None
    if (
        settings.explain_process
        and settings.model_dir is not None
        and engine.folds_inline
        and engine.requests is not None
    ):
        apart = app.state.explainer = ExplainProcess(settings.model_dir, settings)

    def admit(
        request: Request, keys: tuple[str, ...], what: str, through: Gate | None = None
    ) -> AbstractContextManager[None]:
        """The key check (Admission made it already for the routes in ``key_rules``), then a turn
        in the engine (``Gate``)."""
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
        field_errors = getattr(exc, "errors", None)
        if field_errors:
            body["errors"] = [e.to_dict() for e in field_errors]
        headers = None
        if isinstance(exc, StoreUnavailable | Overloaded):
            retry = exc.retry_after_s if isinstance(exc, ExplainBusy) else RETRY_AFTER_S
            headers = {"Retry-After": str(retry)}
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(Exception)
    async def _unknown(request: Request, exc: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        logger.exception("unhandled error (incident %s)", incident)
        # The server closes the connection after a failure: say so, so the client opens a new one.
        return JSONResponse(
            {"error": "internal error", "incident": incident}, status_code=500, headers={"Connection": "close"}
        )

    @app.post(
        "/v1/events",
        response_model=None,
        responses={200: {"model": schemas.IngestResult}, **errors(*BODY_ERRORS)},
    )
    def post_events(batch: EventBatch, request: Request) -> dict[str, Any]:
        """Append a batch of events (each validated on its own) and fold them into state."""
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

    def recommend(request: Request, req: RecommendRequest, if_none_match: str | None) -> Response:
        started = time.perf_counter()
        try:
            response = engine.recommend(req)
        except sqlite3.DatabaseError as exc:  # the manifest could not be written (disk full, read-only)
            engine.disk.failed(f"request log: {exc}")
            raise StorageFault(
                f"request log: could not record the list's manifest ({exc}); a list that cannot be explained "
                "is not served"
            ) from exc
        request.scope[TIER] = response.tier
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
            "X-Request-ID": response.request_id,
            "ETag": response.etag,
            "Cache-Control": cache_control(surface),
            "X-Session-Version": str(response.session_version),
        }
        if if_none_match is not None and response.etag in (t.strip() for t in if_none_match.split(",")):
            return Response(status_code=304, headers=headers)
        return JSONResponse(response.to_dict(), headers=headers)

    @app.post(
        "/v1/recommendations",
        response_model=None,
        responses={200: {"model": schemas.Recommendation}, **errors(*BODY_ERRORS)},
    )
    def post_recommendations(body: RecommendationRequest, request: Request) -> Response:
        """A list for a user on a surface, computed now from the user's session."""
        with may_read(request):
            context = body.context.read() if body.context is not None else {}
            filters = Filters.from_dict(body.filters.model_dump() if body.filters is not None else None)
            req = RecommendRequest(body.user_id, body.surface, body.k, context, filters=filters)
            return recommend(request, req, None)

    @app.get(
        "/v1/recommendations",
        response_model=None,
        responses={
            200: {"model": schemas.Recommendation},
            304: {"description": "The list is unchanged since the ETag sent in If-None-Match (no body)."},
            **errors(401, 422),
        },
    )
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
            return recommend(request, RecommendRequest(user_id, surface, k, context, filters=filters), if_none_match)

    @app.post(
        "/v1/items",
        response_model=None,
        responses={200: {"model": schemas.ItemsResult}, **errors(*BODY_ERRORS)},
    )
    def post_items(batch: ItemBatch, request: Request) -> dict[str, Any]:
        """Add or change catalog items while serving: a new item is recommendable at once, one with
        ``available: false`` is never served. Each item is validated on its own; the refused are
        listed with every field at fault, as for events."""
        with admit(request, settings.write_keys, "change the catalog"):
            limit = engine.settings.max_batch_events
            if len(batch.items) > limit:
                raise PayloadTooLarge(f"items: expected at most {limit} items per batch, got {len(batch.items)}")
            return engine.update_items(batch.items).to_dict()

    @app.post(
        "/v1/admin/model",
        response_model=None,
        responses={200: {"model": schemas.ModelStatus}, **errors(*BODY_ERRORS, 404, 503)},
    )
    def post_model(body: schemas.ModelSwapRequest, request: Request) -> dict[str, Any]:
        """Serve another model without a restart (write key): the model directory at ``path``, or
        a ``version`` loaded before (``previous`` restores the one active before). Requests in
        flight finish on their model; explain uses the model that served each list; on Redis
        every server follows within a second (``model_swap.py``)."""
        check_key(request.headers, settings.write_keys, "swap the model")
        path = FsPath(body.path) if body.path is not None else None
        return engine.models.swap(path=path, version=body.version)

    @app.delete(
        "/v1/users/{user_id}",
        response_model=None,
        responses={200: {"model": schemas.Forgotten}, **errors(401, 422), 501: ERROR_501},
    )
    def delete_user(request: Request, user_id: Annotated[str, Path(min_length=1, max_length=128)]) -> dict[str, Any]:
        """Forget a user (an erasure request): their events leave the event log (compacted), the
        replay checkpoints and the live state; their request manifests go (explaining one answers
        410). Their share of item aggregates stays, anonymised; every other user's lists still
        explain identically. 503 on Redis while the workers have events to fold: retry."""
        with admit(request, settings.write_keys, "erase users"):
            return engine.forget(user_id).to_dict()

    if bare_endpoint:

        @app.post("/v1/bench/bare", response_model=None, responses=errors(*BODY_ERRORS))
        def bare(body: RecommendationRequest, request: Request) -> Response:
            with may_read(request):  # the same checks as a real request, so the floor is comparable
                return JSONResponse(
                    {"request_id": "bare", "items": BARE_ITEMS[: body.k], "session_version": 0, "tier": "bare"}
                )

    @app.get(
        "/v1/explain/{request_id}",
        response_model=None,
        responses={200: {"model": schemas.Explanation}, **errors(401, 404, 410, 422), 501: ERROR_501},
    )
    async def get_explain(
        request: Request, request_id: Annotated[str, Path(min_length=1, max_length=128)]
    ) -> dict[str, Any]:
        """The served list recomputed from its manifest and the event log: per item its sources,
        key features, score and contributions, the rules applied, and whether it is identical.
        Explanations share at most ``explain_share`` of the server's time (503 beyond it)."""
        # On the event loop up to the share's verdict, so a refusal costs no worker thread; the
        # explanation itself waits in a thread (for the child process, or computing it here).
        check_key(request.headers, settings.read_keys, "read recommendations and explanations")
        with explaining.enter():
            if apart is not None:
                return await asyncio.to_thread(apart.explain, request_id, *engine.model_serving(request_id))
            return (await asyncio.to_thread(engine.explain, request_id)).to_dict()

    @app.get("/healthz", response_model=None, responses={200: {"model": schemas.Health}})
    def healthz() -> dict[str, Any]:
        """Liveness: answers while the process does. ``status`` is ``degraded`` while the store
        cannot take writes (Redis unavailable; a full disk or read-only data directory): lists
        may come from the ``popular`` tier, events are refused with 503."""
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

    @app.get(
        "/readyz",
        response_model=None,
        responses={
            200: {"model": schemas.Readiness},
            503: {"model": schemas.Readiness, "description": "Not ready: the reasons say why."},
        },
    )
    def readyz() -> JSONResponse:
        """Readiness: 200 once the state is loaded (the server listens only after that) and while
        the store takes writes; 503 with the reasons otherwise (take it out of the balancer)."""
        store = engine.store_health()
        reasons = [] if store["up"] else [f"store down: {store.get('last_error') or 'unavailable'}"]
        return JSONResponse({"ready": not reasons, "reasons": reasons}, status_code=503 if reasons else 200)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
    )
    def get_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get(
        "/v1/catalog",
        response_model=None,
        responses={200: {"model": schemas.CatalogPage}, **errors(401, 422)},
    )
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

    @app.get("/v1/demo/users", response_model=None, responses={200: {"model": schemas.DemoUsers}, **errors(401)})
    def demo_users(request: Request) -> dict[str, Any]:
        """Users for the demo page's switcher: those with the longest history (embedded store)."""
        with may_read(request):
            return {"long_history": engine.users_with_most_history(3)}

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        """Swagger UI from the swagger-ui-bundle package, served here: no CDN, no internet."""
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="insession API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )

    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="swagger-ui")
    document(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        """The demo shop page (static files, no build step)."""
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    return app
