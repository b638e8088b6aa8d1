"""Forgetting a user: nothing of theirs is left in the log, the checkpoints, the snapshot or the
store; their manifests answer 410; every other user's earlier lists still explain identically."""

from __future__ import annotations

import random
import sqlite3
import zlib
from pathlib import Path

import pytest

from insession.checkpoints import CHECKPOINTS_FILE, ITEMS, USERS
from insession.clock import ManualClock
from insession.config import Settings
from insession.datasets.synthetic import SyntheticShop
from insession.engine import SNAPSHOT_FILE, Engine
from insession.errors import Gone
from insession.events import Event, EventType
from insession.explain import Explainer
from insession.features.activity import NAMESPACE as ACTIVITY_NAMESPACE
from insession.features.activity import ItemActivity, user_key
from insession.manifest import REQUEST_LOG_FILE, RequestLog
from insession.model import ModelBundle
from insession.pipeline import RecommendRequest
from insession.store.memory import MemoryFeatureStore

GONE_USER = "erase-me-7f3a"
OTHERS = ("keep-a", "keep-b", "keep-c")


def drive(engine: Engine, clock: ManualClock, shop: SyntheticShop, seed: int) -> dict[str, list[str]]:
    """Interleave the erased user's events (many, on the items the others look at) with the others'
    events and lists; returns the request ids served to each user."""
    rng = random.Random(seed)
    hot = [shop.items[n].item_id for n in range(12)]
    served: dict[str, list[str]] = {u: [] for u in (GONE_USER, *OTHERS)}
    n = 0
    for step in range(90):
        clock.advance(rng.randrange(1_000, 60_000))
        user = GONE_USER if step % 3 == 0 else rng.choice(OTHERS)
        if step % 4 == 3:
            response = engine.recommend(RecommendRequest(user, "home", 10))
            served[user].append(response.request_id)
            continue
        batch = []
        for _ in range(rng.randrange(1, 4)):
            n += 1
            kind = rng.choice((EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART))
            batch.append(Event(f"f{seed}-{n}", user, kind, clock.now_ms(), rng.choice(hot)))
        engine.ingest(batch)
    return served


def test_a_forgotten_user_leaves_nothing_and_others_explain_identically(
    tmp_path: Path, model: ModelBundle, shop: SyntheticShop, settings: Settings
) -> None:
    settings = settings.with_(checkpoint_every_events=15)  # the policy writes some checkpoints too
    clock = ManualClock(shop.events[-1].ts + 3_600_000)
    engine = Engine.open(settings, model=model, clock=clock)
    served = drive(engine, clock, shop, seed=3)
    assert served[GONE_USER] and all(served[u] for u in OTHERS)
    others = [r for u in OTHERS for r in served[u]]
    before = {r: engine.explain(r) for r in others}
    assert all(e.identical for e in before.values())

    result = engine.forget(GONE_USER)
    assert result.events > 0 and result.manifests == len(served[GONE_USER])
    assert result.checkpoints_written == result.events  # one right after each erased event

    # Nothing of the user's left: the log, the checkpoints, the store, the snapshot, the manifests.
    data = settings.data_dir
    engine.log.close()  # type: ignore[attr-defined]
    for name in ("events.sqlite", CHECKPOINTS_FILE, REQUEST_LOG_FILE, SNAPSHOT_FILE):
        raw = b"".join(p.read_bytes() for p in data.glob(name + "*"))
        assert GONE_USER.encode() not in raw, name
    db = sqlite3.connect(data / CHECKPOINTS_FILE)
    assert db.execute("SELECT COUNT(*) FROM entries WHERE ns = ? AND key = ?", (USERS, GONE_USER)).fetchone()[0] == 0
    for (value,) in db.execute("SELECT value FROM entries"):  # values are compressed: look inside too
        assert GONE_USER.encode() not in zlib.decompress(value)
    key = float(user_key(GONE_USER))
    for (value,) in db.execute("SELECT value FROM entries WHERE ns = ?", (ITEMS,)):
        assert key not in ItemActivity.from_bytes(zlib.decompress(value)).recent_users
    db.close()
    store = engine.store
    assert isinstance(store, MemoryFeatureStore)
    assert store.get_session(GONE_USER) is None
    for raw_activity in store.get_many(ACTIVITY_NAMESPACE, store.keys(ACTIVITY_NAMESPACE)):
        assert raw_activity is not None and key not in ItemActivity.from_bytes(raw_activity).recent_users

    # After a restart: the user's lists answer 410 naming why; every other list explains as before.
    engine.requests.close()  # type: ignore[union-attr]
    engine = Engine.open(settings, model=model, clock=clock)
    try:
        with pytest.raises(Gone, match="erased"):
            engine.explain(served[GONE_USER][0])
        assert engine.state(GONE_USER) is None
        for request_id, earlier in before.items():
            now = engine.explain(request_id)
            assert now.identical, now.diff
            assert [(i.item_id, i.score, i.sources, i.features) for i in now.items] == [
                (i.item_id, i.score, i.sources, i.features) for i in earlier.items
            ]
        # The erased events did shape the others' lists: folded from the compacted log alone (no
        # checkpoints), some explanation comes out different. So the checkpoints are what keep them.
        bare = Explainer(model, settings, engine.log, RequestLog(data / REQUEST_LOG_FILE))
        refolded = [bare.explain(r) for r in others]
        assert any(
            [(i.item_id, i.score) for i in e.items] != [(i.item_id, i.score) for i in before[e.request_id].items]
            for e in refolded
        )
    finally:
        engine.close()
