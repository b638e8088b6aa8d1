"""An emerging pattern on the demo shop: many distinct shoppers going A -> X move X into the next
A-clicker's list, on ``home`` and on A's product page; one user (a bot) doing the same does not.

Nothing here tells the ranker about the pattern: it learned when to trust the online signals
(``online.novelty``) from the replay windows training gives it (``RankerConfig.novelty_lag``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import patient_surfaces
from insession.clock import MINUTE_MS, ManualClock
from insession.config import Settings
from insession.datasets.synthetic import SyntheticShop, demo_config, generate
from insession.engine import Engine
from insession.events import Event, EventType
from insession.model import ModelBundle
from insession.pipeline import RecommendRequest
from insession.ranker_training import RankerConfig
from insession.training import train


@pytest.fixture(scope="module")
def demo() -> tuple[SyntheticShop, ModelBundle]:
    shop = generate(demo_config())
    # Fewer replayed groups than the default, to fit a CI minute; the same windows and features.
    return shop, train(shop.events, items=shop.items, ranker=RankerConfig(max_groups=2_000))


def pick(shop: SyntheticShop, model: ModelBundle) -> tuple[str, str]:
    """A: a popular item; X: the first of the less viewed half that A's trained lists lack."""
    ranked = [i for i, _ in Counter(e.item_id for e in shop.events).most_common()]
    a = ranked[20]
    cols, _ = model.covisit.row(model.catalog.index[a])
    near = {model.catalog.ids[c] for c in cols}
    x = next(i for i in ranked[len(ranked) // 2 :] if i not in near and i != a)
    return a, x


def top10_after(demo: tuple[SyntheticShop, ModelBundle], tmp_path: Path, users: list[str]) -> dict[str, list[str]]:
    """Each of ``users[n]`` goes A -> X (one session each, 90 s apart; a repeated name is one user
    going on in one session); then a fresh user clicks A: its top 10 on ``home`` and A's page."""
    shop, model = demo
    a, x = pick(shop, model)
    clock = ManualClock(shop.events[-1].ts + 3_600_000)
    settings = Settings(data_dir=tmp_path / "data", surfaces=patient_surfaces(), max_queue_ms=60_000.0)
    engine = Engine.open(settings, model=model, clock=clock)
    try:
        engine.ingest_all(shop.events)
        now = clock.now_ms()
        pairs: list[Event] = []
        for n, user in enumerate(users):
            t0 = now - 50 * MINUTE_MS + n * 90_000
            pairs += [
                Event(f"a{n}", user, EventType.CLICK, t0, a),
                Event(f"x{n}", user, EventType.CLICK, t0 + 20_000, x),
            ]
        engine.ingest(pairs)
        engine.ingest([Event("fresh-a", "fresh", EventType.CLICK, now, a)])
        out = {}
        for surface, context in (("home", {}), ("product_page", {"item_id": a})):
            req = RecommendRequest("fresh", surface, 10, context, f"{surface}-{len(set(users))}", now)
            out[surface] = [r.item_id for r in engine.recommend(req).items]
        return out
    finally:
        engine.close()


def test_thirty_distinct_sessions_a_to_x_put_x_in_the_next_a_clickers_top_10(
    demo: tuple[SyntheticShop, ModelBundle], tmp_path: Path
) -> None:
    _, x = pick(*demo)
    before = top10_after(demo, tmp_path / "before", [])
    assert x not in before["home"] and x not in before["product_page"]  # X had no place there
    after = top10_after(demo, tmp_path / "after", [f"shopper-{n}" for n in range(30)])
    assert x in after["home"], after
    assert x in after["product_page"], after


def test_thirty_pairs_a_to_x_from_one_user_leave_x_out_of_the_next_a_clickers_top_10(
    demo: tuple[SyntheticShop, ModelBundle], tmp_path: Path
) -> None:
    _, x = pick(*demo)
    after = top10_after(demo, tmp_path, ["bot-1"] * 30)
    assert x not in after["home"], after
    assert x not in after["product_page"], after


def test_the_demo_shop_has_its_trends_apart_from_the_other_events() -> None:
    plain = generate(replace(demo_config(), trends=0))
    shop = generate(demo_config())
    trend = [e for e in shop.events if e.user_id.startswith("t")]
    assert len(trend) == 12 * 40 * 3
    assert [e for e in shop.events if not e.user_id.startswith("t")] == plain.events
