"""Training/serving consistency: features rebuilt offline from the log equal what serving computed."""

from __future__ import annotations

import numpy as np

from insession.clock import ManualClock
from insession.datasets.synthetic import SyntheticShop
from insession.engine import Engine
from insession.online.factors import for_model
from insession.pipeline import Recommender, RecommendRequest
from insession.replay import Replay


def test_offline_replay_reproduces_served_features(engine: Engine, clock: ManualClock, shop: SyntheticShop) -> None:
    engine.ingest_all(shop.events[: len(shop.events) // 2])
    user = shop.events[len(shop.events) // 2 - 1].user_id
    # Two other shoppers take the same path first: a transition is read by others only once more
    # than one session made it (``online.covisit.MIN_SHARED_WEIGHT``).
    for who in ("path-a", "path-b", user):
        for n, item in enumerate(shop.items_in("books")[:2] + shop.items_in("toys")[:1]):
            clock.advance(15_000)
            engine.ingest_raw(
                [
                    {
                        "event_id": f"{who}-c{n}",
                        "user_id": who,
                        "type": "click",
                        "item_id": item.item_id,
                        "ts": clock.now_ms(),
                    }
                ]
            )
    served = engine.recommend(
        RecommendRequest(user, "product_page", 10, {"item_id": shop.items[3].item_id, "device": "mobile"})
    )
    assert served.features is not None and len(served.candidate_ids) > 50
    position = engine.store.applied_position()

    # Offline: fold the log up to the request's position with the training code path.
    replay = Replay(engine.settings.session, factors=for_model(engine.model))
    for pos, event in engine.log.read(after=0):
        if pos > position:
            break
        replay.apply(pos, event)
    offline = Recommender(engine.model, engine.settings.surfaces, engine.settings.session.timeout_ms)
    req = RecommendRequest(
        user,
        "product_page",
        10,
        {"item_id": shop.items[3].item_id, "device": "mobile"},
        served.request_id,
        clock.now_ms(),
    )
    ctx = offline.context(req, replay.state(user), neighbours=replay.neighbours, factors=replay.factors)
    assert ctx.online  # the online co-visitation the served request read, rebuilt offline
    merged, _ = offline.gather(ctx)
    x = offline.features(ctx, merged, replay.lookup)
    assert tuple(engine.model.catalog.ids[m.item] for m in merged) == served.candidate_ids
    assert np.array_equal(x, served.features)
    assert replay.state(user).to_bytes() == engine.state(user).to_bytes()  # type: ignore[union-attr]
