"""The guard rail on learning from events: one user moves one item's activity by at most
``MAX_EVENTS_PER_USER`` events per ``USER_WINDOW_MS``; a bot burst does not move the item for others."""

from __future__ import annotations

import numpy as np
import pytest

from insession.clock import MINUTE_MS, ManualClock
from insession.datasets.synthetic import SyntheticShop
from insession.engine import Engine
from insession.events import Event, EventType
from insession.features import activity as act
from insession.features.activity import MAX_EVENTS_PER_USER, ItemActivity, bump, capped
from insession.pipeline import RecommendRequest

T0 = 1_767_225_600_000


def click(n: int, user: str, ts: int, item: str = "i") -> Event:
    return Event(f"e{n}", user, EventType.CLICK, ts, item)


def test_one_user_moves_an_item_by_at_most_its_share_per_window() -> None:
    a = None
    for n in range(10):
        a = bump(a, click(n, "bot", T0 + n * 1000))
    assert a is not None and len(a.recent) == MAX_EVENTS_PER_USER
    assert capped(a, click(99, "bot", T0 + 20_000)) and not capped(a, click(99, "human", T0 + 20_000))
    b = bump(a, click(11, "human", T0 + 20_000))
    assert b is not None and len(b.recent) == MAX_EVENTS_PER_USER + 1
    later = bump(b, click(12, "bot", T0 + 11 * MINUTE_MS))  # the bot's window has passed
    assert later is not None and len(later.recent) == MAX_EVENTS_PER_USER + 2


def test_activity_round_trips_with_its_users_and_reads_the_old_format() -> None:
    a = bump(bump(None, click(1, "u1", T0)), click(2, "u2", T0 + 5))
    assert a is not None and ItemActivity.from_bytes(a.to_bytes()) == a
    old = np.array((2.0, T0 + 5, T0, T0 + 5), dtype=np.float64).tobytes()  # before users were kept
    legacy = ItemActivity.from_bytes(old)
    assert (legacy.decayed, legacy.last_ts, legacy.recent, legacy.recent_users) == (2.0, T0 + 5, (T0, T0 + 5), ())
    grown = bump(legacy, click(3, "u3", T0 + 9))
    assert grown is not None and grown.recent_users == (-1, -1, act.user_key("u3"))


def positions(engine: Engine, users: list[str], item: str, now: int) -> list[int]:
    out = []
    for user in users:
        ids = [i.item_id for i in engine.recommend(RecommendRequest(user, "home", 100, {}, f"{user}-{now}", now)).items]
        out.append(ids.index(item) if item in ids else 100)
    return out


@pytest.mark.parametrize("guarded", [True, False])
def test_a_bot_burst_does_not_move_the_item_for_other_users(
    guarded: bool, engine: Engine, shop: SyntheticShop, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not guarded:
        monkeypatch.setattr(act, "MAX_EVENTS_PER_USER", 0)  # the same run with the guard rail off
    engine.ingest_all(shop.events)
    now = clock.now_ms()
    others = sorted(shop.tastes)[:30]
    # The item: in most of the other users' top 100, but not near the top (room to climb).
    counts: dict[str, list[int]] = {}
    for user in others:
        req = RecommendRequest(user, "home", 100, {}, f"pick-{user}", now)
        for pos, rec in enumerate(engine.recommend(req).items):
            counts.setdefault(rec.item_id, []).append(pos)
    item = min((i for i, p in counts.items() if len(p) >= 20), key=lambda i: (-float(np.median(counts[i])), i))
    burst = [click(n, "bot-7", now - 5 * MINUTE_MS + n * 100, item) for n in range(3000)]  # 10 clicks/s
    engine.ingest(burst[:MAX_EVENTS_PER_USER])  # what one keen shopper may contribute
    share = positions(engine, others, item, now)
    capped_before = engine.fold_stats.capped  # shoppers re-viewing an item often are capped too
    engine.ingest(burst[MAX_EVENTS_PER_USER:])
    after = positions(engine, others, item, now)
    if guarded:
        # The bound: the rest of the burst moves the item by nothing at all for anyone else; the
        # bot weighs exactly what one shopper clicking it MAX_EVENTS_PER_USER times weighs.
        assert engine.fold_stats.capped - capped_before == 3000 - MAX_EVENTS_PER_USER
        assert after == share
    else:
        assert engine.fold_stats.capped == capped_before == 0
        climbed = [a - b for a, b in zip(share, after, strict=True)]
        assert after != share and sum(climbed) > 0, climbed  # unguarded, the rest of the burst lifts it
