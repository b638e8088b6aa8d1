from __future__ import annotations

from collections import Counter

import pytest

from insession.clock import ManualClock
from insession.datasets.synthetic import SyntheticShop
from insession.engine import Engine
from insession.errors import ValidationError
from insession.pipeline import RecommendRequest


def click(engine: Engine, clock: ManualClock, user: str, item: str, kind: str = "click") -> None:
    clock.advance(1000)
    result = engine.ingest_raw(
        [
            {
                "event_id": f"{user}-{item}-{kind}-{clock.now_ms()}",
                "user_id": user,
                "type": kind,
                "item_id": item,
                "ts": clock.now_ms(),
            }
        ]
    )
    assert result.accepted == 1


def ids(engine: Engine, user: str, surface: str = "home", k: int = 10, **context: str) -> list[str]:
    return [i.item_id for i in engine.recommend(RecommendRequest(user, surface, k, context)).items]


def test_new_user_gets_popular_items(engine: Engine) -> None:
    response = engine.recommend(RecommendRequest("nobody", k=5))
    assert len(response.items) == 5 and response.session_version == 0
    assert all(i.sources == ("popular",) for i in response.items)
    top = {engine.model.catalog.ids[i] for i in engine.model.popular_order[:60]}
    assert {i.item_id for i in response.items} <= top


def test_session_click_pulls_in_its_category(engine: Engine, clock: ManualClock, shop: SyntheticShop) -> None:
    item = shop.items_in("books")[3]
    click(engine, clock, "fresh-user", item.item_id)
    cats = Counter(engine.model.catalog.category_of(i) for i in ids(engine, "fresh-user"))
    assert cats["books"] >= 8


def test_purchased_and_dismissed_items_are_removed(engine: Engine, clock: ManualClock, shop: SyntheticShop) -> None:
    item = shop.items_in("shoes")[0]
    click(engine, clock, "u-x", item.item_id)
    first = ids(engine, "u-x")
    click(engine, clock, "u-x", first[0], "purchase")
    click(engine, clock, "u-x", first[1], "dismiss")
    after = ids(engine, "u-x")
    assert first[0] not in after and first[1] not in after


def test_exclude_seen_only_where_the_surface_says_so(engine: Engine, clock: ManualClock, shop: SyntheticShop) -> None:
    items = shop.items_in("toys")[:6]
    for item in items:
        click(engine, clock, "u-y", item.item_id)
    seen = {i.item_id for i in items}
    assert seen & set(ids(engine, "u-y", "home", 30))
    assert not seen & set(ids(engine, "u-y", "continue", 30))


def test_current_item_is_not_recommended_on_a_product_page(
    engine: Engine, clock: ManualClock, shop: SyntheticShop
) -> None:
    item = shop.items_in("coffee")[0]
    click(engine, clock, "u-z", item.item_id)
    top = ids(engine, "u-z", "product_page", 10, item_id=item.item_id)
    assert item.item_id not in top and len(top) == 10


def test_same_request_same_list(engine: Engine, clock: ManualClock, shop: SyntheticShop) -> None:
    click(engine, clock, "u-d", shop.items_in("garden")[2].item_id)
    req = RecommendRequest("u-d", "home", 20, {}, "r1", clock.now_ms())
    assert engine.recommend(req).items == engine.recommend(req).items


def test_unknown_surface_and_bad_k_name_the_field(engine: Engine) -> None:
    with pytest.raises(ValidationError) as info:
        engine.recommend(RecommendRequest("u", "nowhere"))
    assert info.value.errors[0].field == "surface" and "home" in info.value.errors[0].expected
    with pytest.raises(ValidationError) as info:
        engine.recommend(RecommendRequest("u", "home", 0))
    assert info.value.errors[0].field == "k"
