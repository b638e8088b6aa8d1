"""The engine with its state in Redis: the same lists as embedded, and a restart folds nothing twice."""

from __future__ import annotations

from pathlib import Path

import redis

from insession.clock import ManualClock
from insession.config import Settings
from insession.datasets.synthetic import SyntheticShop
from insession.engine import Engine
from insession.model import ModelBundle
from insession.pipeline import RecommendRequest


def test_redis_state_serves_the_same_lists_and_survives_a_restart(
    redis_url: str, tmp_path: Path, model: ModelBundle, shop: SyntheticShop
) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    start = shop.events[-1].ts + 60_000
    user = shop.events[-1].user_id
    events = [e for e in shop.events if e.user_id == user][-8:]
    lists = {}
    for name, store in (("memory", "memory"), ("redis", redis_url)):
        engine = Engine.open(Settings(data_dir=tmp_path / name, store=store), model=model, clock=ManualClock(start))
        engine.ingest(events)
        lists[name] = engine.recommend(RecommendRequest(user, "home", 10, {}, "same", start + 1000))
        engine.close()
    assert [i.item_id for i in lists["redis"].items] == [i.item_id for i in lists["memory"].items]
    assert lists["redis"].session_version == lists["memory"].session_version == len(events)
    client = redis.Redis.from_url(redis_url)
    assert client.exists(f"is:{{u:{user}}}:session") and int(client.get("is:position") or 0) == len(events)
    restarted = Engine.open(
        Settings(data_dir=tmp_path / "redis", store=redis_url), model=model, clock=ManualClock(start)
    )
    assert restarted.catch_up() == 0  # Redis already holds everything the log has
    again = restarted.recommend(RecommendRequest(user, "home", 10, {}, "again", start + 1000))
    assert again.items == lists["redis"].items and again.session_version == len(events)
    assert restarted.live_users() is None
    restarted.close()
