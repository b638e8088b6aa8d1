"""Forgetting a user on one Redis and on a Redis Cluster: the user's events leave their stream
partition (rewritten, not just marked deleted), with their dedup keys and session; no key or value
holds the user's id or key; the workers go on folding; everyone else is served as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import all_keys, fresh_client, patient_surfaces
from insession.clock import ManualClock
from insession.config import Settings
from insession.datasets.synthetic import SyntheticShop
from insession.engine import Engine
from insession.errors import Overloaded
from insession.events import Event, EventType
from insession.features.activity import NAMESPACE, ItemActivity, user_key
from insession.model import ModelBundle
from insession.pipeline import RecommendRequest
from insession.worker import StreamWorker


def every_value(client: Any, key: bytes) -> bytes:
    """What ``key`` holds, as bytes (strings; a stream's entries)."""
    kind = client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind == "string":
        return bytes(client.get(key) or b"")
    if kind == "stream":
        return b"".join(v for _, fields in client.xrange(key) for v in fields.values())
    return b""


def test_a_forgotten_user_is_gone_from_streams_and_state_and_the_rest_is_served_as_before(
    redis_url: str, tmp_path: Path, model: ModelBundle, shop: SyntheticShop
) -> None:
    client = fresh_client(redis_url)
    start = shop.events[-1].ts + 60_000
    users = sorted({e.user_id for e in shop.events})[:10]
    events = [e for e in shop.events if e.user_id in users]
    gone, kept = users[0], users[1:]
    settings = Settings(
        data_dir=tmp_path / "redis",
        store=redis_url,
        stream_partitions=2,  # the erased user shares a partition with others: they must stay
        surfaces=patient_surfaces(),
        store_timeout_ms=5_000.0,
    )
    engine = Engine.open(settings, model=model, clock=ManualClock(start))
    worker = StreamWorker(client, settings, clock=ManualClock(start))
    try:
        engine.ingest(events)
        with pytest.raises(Overloaded, match="retry"):  # not folded yet: the streams hold the user's events
            engine.forget(gone)
        assert worker.drain() == len(events)
        served = engine.recommend(RecommendRequest(gone, "home", 10, {}, "r-gone", start + 1000))
        before = {u: engine.recommend(RecommendRequest(u, "home", 10, {}, f"r-{u}", start + 1000)) for u in kept}
        states = {u: engine.state(u) for u in kept}

        result = engine.forget(gone)
        assert result.events == sum(e.user_id == gone for e in events) > 0
        assert result.session and result.manifests == 1

        key = float(user_key(gone))
        names = all_keys(client, "is:*")
        assert not [k for k in names if gone.encode() in k]
        for name in names:
            assert gone.encode() not in every_value(client, name), name
        assert all(e.user_id != gone for _, e in engine.log.read())
        assert engine.log.count() == len(events) - result.events
        items = sorted({e.item_id for e in events if e.item_id})
        for raw in engine.store.get_many(NAMESPACE, items):
            assert raw is None or key not in ItemActivity.from_bytes(raw).recent_users
        assert engine.requests is not None and engine.requests.get(served.request_id) is None
        assert engine.requests.erased_at(served.request_id) is not None

        # Everyone else: the same state and the same lists; and the workers go on folding.
        for u in kept:
            assert engine.state(u) == states[u], u
            again = engine.recommend(RecommendRequest(u, "home", 10, {}, f"r2-{u}", start + 1000))
            assert again.items == before[u].items, u
        later = [
            Event(f"after-{n}", kept[n % 3], EventType.VIEW, start + 2000 + n, events[n].item_id) for n in range(6)
        ]
        engine.ingest(later)
        assert worker.drain() == len(later)
        assert engine.store_health()["fold_backlog"] == 0
    finally:
        engine.close()
