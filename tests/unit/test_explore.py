"""Exploration: a bounded, seeded share of the list for items the ranker would not show yet."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from conftest import patient_surfaces
from insession.clock import MINUTE_MS, ManualClock
from insession.config import Settings
from insession.datasets.synthetic import SyntheticShop
from insession.engine import Engine
from insession.events import Event, EventType
from insession.model import ModelBundle
from insession.online import bandit
from insession.pipeline import RecommendRequest
from insession.store.memory import MemoryFeatureStore


def test_thompson_choice_is_reproducible_from_the_seed_and_learns_from_clicks() -> None:
    pool = [f"i{n}" for n in range(20)]
    fresh = [(0, 0)] * 20
    assert bandit.choose(pool, fresh, 2, seed=7) == bandit.choose(pool, fresh, 2, seed=7)
    picks = {tuple(bandit.choose(pool, fresh, 2, seed=s)) for s in range(50)}
    assert len(picks) > 10  # different requests explore different items
    # Shown 200 times and never clicked: almost never drawn; clicked half the time: almost always.
    counts = [(200, 0)] * 19 + [(200, 100)]
    wins = sum("i19" in bandit.choose(pool, counts, 1, seed=s) for s in range(200))
    assert wins >= 190
    clock = ManualClock()
    stats = bandit.BanditStats(MemoryFeatureStore(clock), ttl_s=60)
    stats.shown(["a", "b", "c", "d", "d"])
    clock.advance(30_000)
    stats.shown(["d"])
    stats.clicked(["d", "x"])  # "x" never shown: no click counted
    assert stats.counts(["a", "d", "x"]) == [(1, 0), (3, 1), (0, 0)]
    clock.advance(30_000)
    assert stats.counts(["a", "d"]) == [(0, 0), (3, 1)]  # "a" expired (bounded); "d" lives on


def exploring(tmp_path: Path, model: ModelBundle, clock: ManualClock, share: float) -> Engine:
    surfaces = {n: replace(s, explore_share=share) for n, s in patient_surfaces().items()}
    return Engine.open(Settings(data_dir=tmp_path / f"x{share}", surfaces=surfaces), model=model, clock=clock)


def test_explored_slots_are_bounded_tagged_and_explain_identically(
    tmp_path: Path, model: ModelBundle, clock: ManualClock, shop: SyntheticShop
) -> None:
    engine = exploring(tmp_path, model, clock, 0.2)
    plain = exploring(tmp_path, model, clock, 0.0)
    engine.ingest_all(shop.events)
    plain.ingest_all(shop.events)
    now = clock.now_ms()
    explored_items: set[str] = set()
    for n, user in enumerate(sorted(shop.tastes)[:20]):
        req = RecommendRequest(user, "home", 10, {}, f"x-{n}", now + n)
        got, base = engine.recommend(req), plain.recommend(req)
        explored = [i.item_id for i in got.items if "explore" in i.sources]
        assert len(explored) == bandit.slots(10, 0.2) == 2
        # The first 8 are the ranker's; the last 2 come from below its top 10.
        assert [i.item_id for i in got.items[:8]] == [i.item_id for i in base.items[:8]]
        assert not set(explored) & {i.item_id for i in base.items}
        explored_items.update(explored)
        explanation = engine.explain(req.request_id)
        assert explanation.identical, explanation.note
    assert len(explored_items) > 10  # exploration spreads exposure


def test_an_item_shown_and_clicked_is_drawn_more(
    tmp_path: Path, model: ModelBundle, clock: ManualClock, shop: SyntheticShop
) -> None:
    engine = exploring(tmp_path, model, clock, 0.1)
    engine.ingest_all(shop.events)
    now = clock.now_ms()
    user = sorted(shop.tastes)[0]
    first = engine.recommend(RecommendRequest(user, "home", 10, {}, "first", now))
    explored = next(i.item_id for i in first.items if "explore" in i.sources)
    click = Event("clk-1", user, EventType.CLICK, now + 1000, explored)
    engine.ingest([click])
    assert engine.bandit.counts([explored]) == [(1, 1)]
    assert engine.bandit.counts([first.items[0].item_id])[0][0] >= 1  # every shown item counts
    later = engine.recommend(RecommendRequest(user, "home", 10, {}, "later", now + MINUTE_MS))
    assert later.items  # still serves
