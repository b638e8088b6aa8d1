"""Learning online without retraining: co-visitation counted per event (the same in the engine's
fold and the offline replay), and items the model was trained without joining the catalog."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from insession.clock import MINUTE_MS, ManualClock
from insession.config import Settings
from insession.datasets.synthetic import SyntheticShop
from insession.engine import Engine
from insession.events import Event, EventType
from insession.model import ModelBundle
from insession.online import covisit
from insession.pipeline import RecommendRequest
from insession.replay import Replay

T0 = 1_767_225_600_000


def test_followers_are_bounded_decay_and_round_trip() -> None:
    n = None
    for k in range(covisit.MAX_NEIGHBOURS + 20):
        n = covisit.add(n, f"i{k:03d}", 1.0 + k, T0)
    assert n is not None and len(n.items) == covisit.MAX_NEIGHBOURS
    assert n.items[0] == f"i{covisit.MAX_NEIGHBOURS + 19:03d}" and "i000" not in n.items  # lightest dropped
    later = covisit.add(n, "x", 1.0, T0 + covisit.HALF_LIFE_MS)
    assert later.weights[later.items.index(n.items[0])] == n.weights[0] / 2  # halved over one half-life
    assert covisit.Neighbours.from_bytes(later.to_bytes()) == later


def test_the_engine_fold_and_the_offline_replay_learn_the_same_followers(engine: Engine, shop: SyntheticShop) -> None:
    engine.ingest_all(shop.events)
    replay = Replay(engine.settings.session)
    for position, event in enumerate(shop.events, start=1):
        replay.apply(position, event)
    store = engine.store
    keys = store.keys(covisit.NAMESPACE)  # type: ignore[attr-defined]
    assert len(keys) > 100
    live = dict(zip(keys, store.get_many(covisit.NAMESPACE, keys), strict=True))
    assert live == {k: v.to_bytes() for k, v in replay.followers.items()}


def view(n: int, user: str, item: str, ts: int, **props: object) -> Event:
    return Event(f"n{n}-{user}", user, EventType.VIEW, ts, item, properties=props)  # type: ignore[arg-type]


def top(engine: Engine, user: str, item: str, now: int, k: int = 10) -> list[str]:
    req = RecommendRequest(user, "product_page", k, {"item_id": item}, f"r-{user}-{now}", now)
    return [i.item_id for i in engine.recommend(req).items]


def run_new_item(engine: Engine, shop: SyntheticShop, now: int, shoppers: int) -> tuple[int | None, str]:
    """Shoppers view an anchor item, then a brand-new item of its category; after each, a relevant
    user (who is looking at the anchor) asks. Returns how many shoppers it took (None: never)."""
    engine.ingest_all(shop.events)
    anchor = shop.items[5]
    new_item = "brand-new-1"
    assert new_item not in engine.model.catalog.index
    for n in range(shoppers):
        t = now + n * MINUTE_MS
        user = f"shopper-{n}"
        engine.ingest([view(1, user, anchor.item_id, t), view(2, user, new_item, t + 20_000, category=anchor.category)])
        asker = f"asker-{n}"
        engine.ingest([view(1, asker, anchor.item_id, t + 40_000)])
        if new_item in top(engine, asker, anchor.item_id, t + 41_000):
            return n + 1, new_item
    return None, new_item


BOUND = 5  # genuine shoppers (view anchor -> view new item) before a relevant user is shown it


def test_a_new_item_reaches_relevant_users_within_a_bound_without_retraining(
    engine: Engine, shop: SyntheticShop, clock: ManualClock, model: ModelBundle
) -> None:
    took, new_item = run_new_item(engine, shop, clock.now_ms(), BOUND)
    assert took is not None and took <= BOUND, took
    print(f"new item in a relevant user's top 10 after {took} shoppers")
    # No retrain: the trained model with one item joined; the ranker is the trained one.
    assert engine.model.base is model and engine.model.ranker == model.ranker
    assert [i.item_id for i in engine.model.added] == [new_item]
    assert engine.model.catalog.get(new_item).category == shop.items[5].category  # type: ignore[union-attr]
    # Someone unrelated (no anchor in the session) is not shown it.
    assert new_item not in top(engine, "stranger", shop.items[300].item_id, clock.now_ms() + 3_600_000)


def test_with_learning_off_a_new_item_stays_out(
    tmp_path: Path, shop: SyntheticShop, clock: ManualClock, model: ModelBundle
) -> None:
    from conftest import patient_surfaces

    settings = Settings(data_dir=tmp_path / "off", surfaces=patient_surfaces(), learn_online=False)
    engine = Engine.open(settings, model=model, clock=clock)
    took, new_item = run_new_item(engine, shop, clock.now_ms(), BOUND)
    assert took is None and new_item not in engine.model.catalog.index and engine.model is model


def test_a_joined_item_survives_a_restart_and_old_lists_still_explain(
    engine: Engine, shop: SyntheticShop, clock: ManualClock, model: ModelBundle
) -> None:
    now = clock.now_ms()
    engine.ingest_all(shop.events)
    anchor = shop.items[5]
    served = []
    for n in range(4):
        user = f"shopper-{n}"
        t = now + n * MINUTE_MS
        engine.ingest([view(1, user, anchor.item_id, t), view(2, user, f"late-{n}", t + 1000)])
        req = RecommendRequest(user, "home", 10, {}, f"after-{n}", t + 2000)
        served.append((req.request_id, engine.recommend(req).model_version))
    assert len({v for _, v in served}) == 4  # one more item each time: four versions
    for request_id, _ in served:
        explained = engine.explain(request_id)
        assert explained.identical, (request_id, explained.note)
    engine.snapshot()
    version = engine.model.version
    engine.log.close()
    reopened = Engine.open(engine.settings, model=model, clock=clock)
    assert reopened.model.version == version and [i.item_id for i in reopened.model.added] == [
        f"late-{n}" for n in range(4)
    ]
    reopened.log.close()


def test_events_add_at_most_max_joined_items_to_the_catalog_and_the_rest_are_counted(
    settings: Settings, model: ModelBundle, clock: ManualClock
) -> None:
    engine = Engine.open(settings.with_(max_joined_items=3), model=model, clock=clock)
    now = clock.now_ms()
    result = engine.ingest([view(n, f"u{n}", f"new-{n}", now + n) for n in range(5)])
    assert len(result.accepted) == 5  # every event is stored and folded ...
    assert [i.item_id for i in engine.model.added] == ["new-0", "new-1", "new-2"]  # ... three items join
    assert engine.items_not_joined == 2 and engine.store_health()["items_not_joined"] == 2
    engine.ingest([view(9, "u9", "new-0", now + 9)])  # a joined item is still known
    assert len(engine.model.added) == 3 and engine.items_not_joined == 2
    engine.log.close()


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    st.integers(-(2**63), 2**63 - 1),
    st.lists(
        st.tuples(st.text(max_size=12), st.floats(allow_nan=False) | st.just(math.nan)), max_size=covisit.MAX_NEIGHBOURS
    ),
)
def test_followers_bytes_give_back_the_list_exactly(last_ts: int, pairs: list[tuple[str, float]]) -> None:
    """Any list, odd ids (NUL, empty, non-ASCII) and floats (negative zero, infinities, NaN's bits)
    included, decodes to what was encoded; as does the JSON earlier versions wrote."""
    n = covisit.Neighbours(last_ts, tuple(i for i, _ in pairs), tuple(w for _, w in pairs))
    for raw in (n.to_bytes(), json.dumps([n.last_ts, n.items, n.weights], separators=(",", ":")).encode()):
        back = covisit.Neighbours.from_bytes(raw)
        assert back.last_ts == n.last_ts and back.items == n.items
        assert [struct.pack("<d", w) for w in back.weights] == [struct.pack("<d", w) for w in n.weights]
    if not any("\x00" in i for i in n.items):
        assert n.to_bytes()[:1] == b"\x01"  # the binary form: JSON only for what it cannot hold


def test_followers_bytes_refuse_what_they_cannot_read() -> None:
    good = covisit.Neighbours(T0, ("a", "b"), (2.0, 1.0)).to_bytes()
    with pytest.raises(ValueError, match="followers: unknown format"):
        covisit.Neighbours.from_bytes(b"\x07" + good[1:])
    with pytest.raises(ValueError, match="followers: 3 items but 2 weights"):
        covisit.Neighbours.from_bytes(good + b"\x00c")
