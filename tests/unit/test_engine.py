"""Ingest, fold and restart: the log is the source of truth."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from insession import engine as engine_module
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


def test_snapshots_are_spaced_by_what_the_last_one_cost(
    settings: Settings, model: ModelBundle, clock: ManualClock, shop: SyntheticShop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot rewrites the whole state: after one that took ``t`` s, the next waits
    ``SNAPSHOT_SPACING * t`` s as well as ``snapshot_every_events`` events; the log keeps every
    event meanwhile, and a restart folds those after the last snapshot."""
    now = [1000.0]

    class EngineTime:  # the engine module's ``time``, with a monotonic clock the test moves
        def __getattr__(self, name: str) -> object:
            return getattr(time, name)

        def monotonic(self) -> float:
            return now[0]

    monkeypatch.setattr(engine_module, "time", EngineTime())
    engine = Engine.open(settings.with_(snapshot_every_events=10), model=model, clock=clock)
    written: list[int] = []
    store_snapshot = engine.store.snapshot  # type: ignore[attr-defined]

    def slow_snapshot(path: Path) -> None:
        now[0] += 2.0  # this snapshot takes two seconds
        store_snapshot(path)
        written.append(json.loads((settings.data_dir / SNAPSHOT_FILE).read_bytes().split(b"\n")[0])["applied_position"])

    monkeypatch.setattr(engine.store, "snapshot", slow_snapshot)
    events = shop.events[:90]
    engine.ingest(events[:10])
    assert written == [10]  # due by count, nothing before it
    for n in range(1, 6):  # five more batches, one second apart: within 9 x 2 s of the last
        now[0] += 1.0
        engine.ingest(events[10 * n : 10 * n + 10])
    assert written == [10]
    now[0] += 2.0 * engine_module.SNAPSHOT_SPACING
    engine.ingest(events[60:70])
    assert written == [10, 70]
    engine.ingest(events[70:90])
    engine.log.close()  # no final snapshot, as after a crash: the log has the events after it
    assert written == [10, 70]
    monkeypatch.undo()
    reopened = Engine.open(settings, model=model, clock=clock)
    users = sorted({e.user_id for e in events})
    whole = Engine.open(settings.with_(data_dir=settings.data_dir.parent / "whole"), model=model, clock=clock)
    whole.ingest_all(events)
    assert states(reopened, users) == states(whole, users)
    reopened.close()
    whole.close()
