"""Reproducibility: every served list is recomputed exactly from its manifest after a restart, and
a changed event in the log shows up as a difference."""

from __future__ import annotations

import random
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from insession.clock import ManualClock
from insession.config import Settings, SurfaceConfig
from insession.datasets.synthetic import SyntheticShop
from insession.engine import Engine
from insession.errors import NotFound
from insession.events import Event, EventType
from insession.explain import Explainer
from insession.log.sqlite import SqliteEventLog
from insession.manifest import REQUEST_LOG_FILE, Manifest, RequestLog
from insession.model import ModelBundle
from insession.pipeline import RecommendRequest

SURFACES = {
    "home": SurfaceConfig("home"),
    "product_page": SurfaceConfig("product_page", keep_top=2, max_new=4),  # a churn budget: needs `previous`
    "cart": SurfaceConfig("cart", exclude_cart=True, freshness="session"),  # lists served again from cache
}
KINDS = (EventType.VIEW, EventType.CLICK, EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE, EventType.DISMISS)


def drive(engine: Engine, clock: ManualClock, shop: SyntheticShop, n_requests: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    users = [f"u{n:04d}" for n in range(40)]
    served: list[str] = []
    n_events = 0
    while len(served) < n_requests:
        clock.advance(rng.randrange(500, 120_000))
        if rng.random() < 0.55:
            batch = []
            for _ in range(rng.randrange(1, 4)):
                n_events += 1
                item = shop.items[rng.randrange(len(shop.items))].item_id
                kind = rng.choice(KINDS)
                batch.append(Event(f"e{seed}-{n_events}", rng.choice(users), kind, clock.now_ms(), item))
            engine.ingest(batch)
        else:
            surface = rng.choice(list(SURFACES))
            context = (
                {"item_id": shop.items[rng.randrange(len(shop.items))].item_id} if surface == "product_page" else {}
            )
            response = engine.recommend(RecommendRequest(rng.choice(users), surface, rng.choice((5, 10)), context))
            served.append(response.request_id)
    return served


@pytest.fixture
def live(tmp_path: Path, model: ModelBundle, shop: SyntheticShop) -> tuple[Settings, list[str]]:
    settings = Settings(data_dir=tmp_path / "data", surfaces=SURFACES)
    clock = ManualClock(shop.events[-1].ts + 86_400_000)
    engine = Engine.open(settings, model=model, clock=clock)
    served = drive(engine, clock, shop, 500, seed=7)
    assert engine.requests is not None and len(engine.requests) == 500
    engine.close()  # snapshot + SQLite logs: all a restart has
    return settings, served


def test_every_served_list_is_recomputed_identically_after_a_restart(
    live: tuple[Settings, list[str]], model: ModelBundle
) -> None:
    settings, served = live
    restarted = Engine.open(settings, model=model, clock=ManualClock(0))
    assert restarted.requests is not None
    explainer = Explainer(model, settings, restarted.log, restarted.requests)
    explanations = explainer.explain_all(served)
    different = [(e.request_id, e.diff) for e in explanations if not e.identical]
    assert not different, different[:3]
    assert len(explanations) == 500
    cached = [e for e in explanations if e.note.startswith("served from the freshness cache")]
    stabilised = [e for e in explanations if e.manifest["previous"]]
    assert cached and stabilised  # the cache and the churn budget were both exercised
    learned = [e for e in explanations if e.tier == "full" and e.items]
    assert learned
    first = learned[0].items[0]
    assert first.sources and first.contributions and "(bias)" in first.contributions
    one = restarted.explain(served[123])  # the engine's own entry point (what GET /v1/explain calls)
    assert one.identical and one.request_id == served[123]
    restarted.close()


def test_one_changed_event_in_the_log_shows_up_in_explain(
    live: tuple[Settings, list[str]], model: ModelBundle, shop: SyntheticShop
) -> None:
    settings, served = live
    requests = RequestLog(settings.data_dir / REQUEST_LOG_FILE)
    db = sqlite3.connect(str(settings.data_dir / "events.sqlite"))
    # The first personalised request whose user clicked something before it: move that one click
    # to an item of another category.
    target = position = None
    for request_id in served:
        m = requests.get(request_id)
        assert m is not None
        if m.cached_from is not None or m.tier != "full":
            continue
        row = db.execute(
            "SELECT position, body FROM events WHERE user_id = ? AND position <= ? AND body LIKE '%\"click\"%' "
            "ORDER BY position DESC LIMIT 1",
            (m.user_id, m.log_position),
        ).fetchone()
        if row is not None:
            target, (position, body) = m, row
            break
    assert target is not None and position is not None
    event = Event.from_json(body)
    clicked = model.catalog.category_of(event.item_id or "")
    other = next(i for i in shop.items if i.category != clicked)
    db.execute(
        "UPDATE events SET body = ? WHERE position = ?", (replace(event, item_id=other.item_id).to_json(), position)
    )
    db.commit()
    db.close()
    log = SqliteEventLog(settings.data_dir / "events.sqlite")
    explanation = Explainer(model, settings, log, requests).explain(target.request_id)
    assert not explanation.identical
    assert explanation.diff and all(line.startswith("position ") for line in explanation.diff)
    log.close()
    requests.close()


def test_the_request_log_keeps_at_most_its_retention(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "r.sqlite", retention=50, prune_every=10)
    base = dict(user_id="u", surface="home", k=5, context={}, now_ms=1, log_position=1, session_version=1)
    for n in range(205):
        log.write(
            Manifest(
                request_id=f"r{n}",
                **base,
                model_version="m",
                config="c",
                seed=n,
                tier_asked="full",
                tier="full",
                cut=[],
                skipped_sources=[],
                ranked_rows=None,
                previous=[],
                items=["a"],
            )
        )
    assert len(log) <= 60 and log.get("r204") is not None and log.get("r0") is None
    assert Manifest.from_json(log.get("r204").to_json()) == log.get("r204")  # type: ignore[union-attr]
    log.close()


def test_unknown_request_is_404_with_the_field(engine: Engine) -> None:
    with pytest.raises(NotFound, match="request_id"):
        engine.explain("no-such-request")
