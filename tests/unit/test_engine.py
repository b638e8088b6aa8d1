"""Ingest, fold and restart: the log is the source of truth."""

from __future__ import annotations

from insession.clock import ManualClock
from insession.config import Settings
from insession.datasets.synthetic import SyntheticShop
from insession.engine import SNAPSHOT_FILE, Engine
from insession.log.sqlite import SqliteEventLog
from insession.model import ModelBundle
from insession.pipeline import RecommendRequest


def states(engine: Engine, users: list[str]) -> dict[str, bytes]:
    out = {}
    for user in users:
        state = engine.state(user)
        assert state is not None
        out[user] = state.to_bytes()
    return out


def test_ingest_counts_accepted_duplicates_and_rejected(engine: Engine) -> None:
    raw = [
        {"event_id": "a", "user_id": "u", "type": "click", "item_id": "i00001", "ts": 1_767_225_600_000},
        {"event_id": "a", "user_id": "u", "type": "click", "item_id": "i00001", "ts": 1_767_225_600_000},
        {"event_id": "b", "user_id": "u", "type": "teleport", "item_id": "i00001", "ts": 1_767_225_600_000},
    ]
    result = engine.ingest_raw(raw)
    assert (result.accepted, result.duplicates) == (1, 1)
    assert [r.index for r in result.rejected] == [2] and result.rejected[0].errors[0].field == "type"
    again = engine.ingest_raw(raw[:1])
    assert (again.accepted, again.duplicates) == (0, 1)
    state = engine.state("u")
    assert state is not None and state.session_version == 1


def test_restart_with_log_and_snapshot_gives_the_same_state(
    settings: Settings, model: ModelBundle, clock: ManualClock, shop: SyntheticShop
) -> None:
    first = Engine.open(settings, model=model, clock=clock)
    half = len(shop.events) // 2
    first.ingest_all(shop.events[:half])
    first.snapshot()
    first.ingest_all(shop.events[half:])  # after the snapshot: only in the log
    users = sorted(shop.tastes)
    before = states(first, users)
    first.log.close()  # no final snapshot: as after a crash

    second = Engine.open(settings, model=model, clock=clock)
    assert states(second, users) == before
    assert second.store.applied_position() == second.log.last_position()
    second.close()

    third = Engine.open(settings, model=model, clock=clock)  # clean snapshot, nothing to replay
    assert third.catch_up() == 0 and states(third, users) == before
    third.log.close()


def test_event_in_log_but_not_folded_is_applied_on_restart(
    settings: Settings, model: ModelBundle, clock: ManualClock, shop: SyntheticShop
) -> None:
    first = Engine.open(settings, model=model, clock=clock)
    first.ingest_all(shop.events[:100])
    first.close()
    log = SqliteEventLog(settings.data_dir / "events.sqlite")  # crash between append and fold
    log.append(shop.events[100:200])
    log.close()
    second = Engine.open(settings, model=model, clock=clock)
    reference = Engine.open(settings.with_(data_dir=settings.data_dir.parent / "ref"), model=model, clock=clock)
    reference.ingest_all(shop.events[:200])
    users = sorted({e.user_id for e in shop.events[:200]})
    assert states(second, users) == states(reference, users)
    second.log.close()
    reference.log.close()


def test_corrupt_snapshot_is_rebuilt_from_the_log(
    settings: Settings, model: ModelBundle, clock: ManualClock, shop: SyntheticShop
) -> None:
    first = Engine.open(settings, model=model, clock=clock)
    first.ingest_all(shop.events[:500])
    users = sorted({e.user_id for e in shop.events[:500]})
    before = states(first, users)
    first.close()
    snap = settings.data_dir / SNAPSHOT_FILE
    snap.write_bytes(snap.read_bytes()[:-40])
    second = Engine.open(settings, model=model, clock=clock)
    assert states(second, users) == before
    second.log.close()


def test_expired_users_leave_memory(settings: Settings, model: ModelBundle, clock: ManualClock) -> None:
    """State past its TTL is dropped from the embedded store (not only hidden), so memory follows
    the live users: the soak benchmark's bound depends on it."""
    engine = Engine.open(settings.with_(state_ttl_s=120), model=model, clock=clock)
    ts = clock.now_ms()
    engine.ingest_raw(
        [
            {"event_id": f"e{n}", "user_id": f"old-{n}", "type": "click", "item_id": "i00001", "ts": ts}
            for n in range(50)
        ]
    )
    assert len(engine.store._sessions) == 50  # type: ignore[attr-defined]
    for n in range(5):
        engine.recommend(RecommendRequest(f"old-{n}", "home", 5, {}, f"r{n}", clock.now_ms()))
    assert engine.store.user_values() == 5  # type: ignore[attr-defined]
    clock.advance(3 * 60_000)  # past the TTL and the purge interval
    engine.ingest_raw([{"event_id": "new", "user_id": "new", "type": "click", "item_id": "i00001", "ts": ts + 1}])
    assert list(engine.store._sessions) == ["new"]  # type: ignore[attr-defined]
    assert engine.store.user_values() == 0  # type: ignore[attr-defined]  # nor what they were shown
    engine.log.close()
