"""Replay checkpoints: a fold started from the nearest checkpoint reaches exactly the state a fold
from the start of the log reaches, and only reads the events after that checkpoint."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from insession import checkpoints as checkpoints_module
from insession.checkpoints import (
    CHECKPOINTS_FILE,
    FOLLOW_SPACING,
    FOLLOWERS,
    ITEMS,
    USERS,
    CheckpointedReplay,
    CheckpointStore,
    Layered,
    fingerprint,
    fingerprint_of,
    fold_with_checkpoints,
)
from insession.clock import ManualClock
from insession.config import SessionConfig, Settings
from insession.datasets.synthetic import SyntheticShop
from insession.engine import Engine
from insession.events import Event
from insession.log.sqlite import SqliteEventLog
from insession.model import ModelBundle
from insession.replay import Replay


class CountingLog(SqliteEventLog):
    """A log that counts the events read from it."""

    read_count = 0

    def read(self, after: int = 0, limit: int | None = None):  # type: ignore[no-untyped-def]
        for pair in super().read(after, limit):
            self.read_count += 1
            yield pair


CFG = SessionConfig()
FP = fingerprint(CFG, True, False, "m")


def opened(tmp_path: Path, shop: SyntheticShop, n: int) -> tuple[CountingLog, CheckpointStore, list[Event]]:
    """A log of the shop's first ``n`` events (in time order) and an empty checkpoint file."""
    log = CountingLog(tmp_path / "events.sqlite")
    events = sorted(shop.events, key=lambda e: e.ts)[:n]
    log.append(events)
    return log, CheckpointStore(tmp_path / "checkpoints.sqlite"), events


def test_a_fold_from_the_nearest_checkpoint_reaches_the_state_of_a_fold_from_the_start(
    tmp_path: Path, shop: SyntheticShop
) -> None:
    cfg, fp = CFG, FP
    log, store, _ = opened(tmp_path, shop, 3000)
    first = CheckpointedReplay(store, fp, 0, cfg, every_events=400, every_ms=10**12)
    fold_with_checkpoints(log, first, 2000)
    written = store.positions(fp)
    assert written == [400 * n for n in range(1, 6)]  # the size policy, up to where it folded

    for target in (399, 400, 1234, 2000, 2999):
        full = Replay(cfg)
        for position, event in log.read():
            if position > target:
                break
            full.apply(position, event)
        base = store.nearest(fp, target)
        replay = CheckpointedReplay(store, fp, base, cfg, every_events=400, every_ms=10**12)
        log.read_count = 0
        fold_with_checkpoints(log, replay, target)
        assert log.read_count <= target - base + 1  # the events after the checkpoint (and one to stop)
        for user in sorted(full.states):
            got = replay.state(user)
            assert got is not None and got.to_bytes() == full.states[user].to_bytes(), (target, user)
        for item in sorted(full.activity):
            assert replay.lookup([item])[0] == full.activity[item], (target, item)
        for item in sorted(full.followers):
            assert replay.neighbours([item])[0] == full.followers[item], (target, item)
    # Folding past 2000 from there left the policy's checkpoints beyond the newest one only.
    assert store.positions(fp)[:5] == written and store.positions(fp)[-1] <= 2999
    store.close()
    log.close()


def test_a_fold_started_before_an_erasure_writes_no_checkpoint_after_it(tmp_path: Path, shop: SyntheticShop) -> None:
    cfg, fp = CFG, FP
    log, store, events = opened(tmp_path, shop, 600)
    replay = CheckpointedReplay(store, fp, 0, cfg, every_events=200, every_ms=10**12)
    fold_with_checkpoints(log, replay, 300)
    assert store.positions(fp) == [200]
    user = events[0].user_id
    store.erase_user(user, [])  # meanwhile: its in-memory state may hold the erased user
    fold_with_checkpoints(log, replay, 600)
    assert store.positions(fp) == [200] and not store.holds_user(user)
    store.close()
    log.close()


def test_a_fold_holding_few_values_drops_them_at_checkpoints_and_still_reaches_the_same_state(
    tmp_path: Path, shop: SyntheticShop
) -> None:
    log, store, _ = opened(tmp_path, shop, 3000)
    full = Replay(CFG)
    for position, event in log.read():
        full.apply(position, event)
    small = CheckpointedReplay(store, FP, 0, CFG, every_events=300, every_ms=10**12, max_loaded=100)
    most = trimmed = 0
    for position, event in log.read():
        small.advance(position, event)
        most = max(most, small.loaded)
        if small.pending == 0:  # a checkpoint was just taken: at most the bound is held, the newest kept
            assert small.loaded <= 100
            assert event.user_id in dict.keys(small.states)
            trimmed += small.loaded > 50
    assert most > 100  # it did hold more between checkpoints: the bound is what dropped them
    assert trimmed >= 5  # ... and only the values used longest ago
    for user in sorted(full.states):
        assert small.state(user) == full.states[user], user
    items = sorted(full.activity)
    assert small.lookup(items) == full.lookup(items)
    assert small.neighbours(sorted(full.followers)) == full.neighbours(sorted(full.followers))


def test_a_spaced_fold_takes_a_due_checkpoint_only_after_nine_times_the_last_ones_duration(
    tmp_path: Path, shop: SyntheticShop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``spacing`` (what ``Explainer.follow`` sets): a checkpoint that took 1 s holds the next due
    one back for 9 s of the fold; the fold's state is the same either way."""
    log, store, _ = opened(tmp_path, shop, 2000)
    now = [100.0]
    monkeypatch.setattr(checkpoints_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    write = store.write

    def slow_write(*args: Any) -> bool:
        now[0] += 1.0  # each checkpoint takes a second
        return write(*args)

    monkeypatch.setattr(store, "write", slow_write)
    replay = CheckpointedReplay(store, FP, 0, CFG, every_events=200, every_ms=10**12)
    replay.spacing = FOLLOW_SPACING
    fold_with_checkpoints(log, replay, 1000)
    assert store.positions(FP) == [200]  # due again at 400, 600, ...: the clock has not moved 9 s
    now[0] += 8.9
    fold_with_checkpoints(log, replay, 1500)
    assert store.positions(FP) == [200]
    now[0] += 0.1
    fold_with_checkpoints(log, replay, 2000)
    assert store.positions(FP) == [200, 1501]  # the first event past 9 s, with 1,300 due since 200
    full = Replay(CFG)
    for position, event in log.read():
        full.apply(position, event)
    for user in sorted(full.states):
        assert replay.state(user) == full.states[user], user


def test_trim_drops_the_values_written_longest_ago_and_reads_them_back() -> None:
    stored = {"a": 1, "b": 2, "c": 3, "d": 4}
    reads: list[str] = []
    table: Layered[int] = Layered(lambda k: reads.append(k) or stored.get(k))
    for key in "abc":
        table[key] = stored[key]
    table["a"] = 10  # written again: the newest
    assert table.get("d") == 4  # read from the checkpoint: newer still
    with pytest.raises(ValueError, match="would be lost"):
        table.trim(2)
    table.dirty.clear()  # as a checkpoint does once it holds them
    table.trim(2)
    assert list(table) == ["a", "d"]
    assert table.get("b") == 2 and reads == ["d", "b"]
    table.trim(0)
    assert not table


def test_checkpoints_written_while_importing_hold_what_a_fold_of_the_log_holds(
    tmp_path: Path, shop: SyntheticShop, model: ModelBundle, clock: ManualClock
) -> None:
    """``ingest_all(checkpoint=True)`` (what ``insession import`` runs) takes explain's checkpoints
    from the serving fold: at each one, every user state, item activity and followers list equals
    a replay of the log to that position, byte for byte, and nothing else is stored; a second
    import continues them; a state that is not the fold up to the newest checkpoint takes none."""
    settings = Settings(data_dir=tmp_path / "data", checkpoint_every_events=700, checkpoint_every_s=1e9)
    events = sorted(shop.events, key=lambda e: e.ts)[:4000]
    engine = Engine.open(settings, model=model, clock=clock)
    first = engine.ingest_all(events[:2500], batch=300, checkpoint=True)
    second = engine.ingest_all(events[2500:], batch=300, checkpoint=True)
    assert engine.checkpoints is not None
    fp = fingerprint_of(settings, model)
    positions = engine.checkpoints.positions(fp)
    # After the batches reaching 700 events since the last: 900, 1800, 2500; then 3400 and the end.
    assert first.checkpoints == 3 and second.checkpoints == 2
    assert positions[-1] == engine.log.last_position() and engine.write_checkpoints() == 0

    replay, folded = Replay(settings.session, learn=settings.learn_online), 0
    db = sqlite3.connect(tmp_path / "data" / CHECKPOINTS_FILE)
    for c in positions:
        for position, event in engine.log.read(after=folded, limit=c - folded):
            replay.apply(position, event)
        folded = c
        for ns, table in ((USERS, replay.states), (ITEMS, replay.activity), (FOLLOWERS, replay.followers)):
            for key, value in table.items():
                assert engine.checkpoints.get(fp, ns, key, c) == value.to_bytes(), (c, ns, key)
            stored = db.execute(
                "SELECT COUNT(DISTINCT key) FROM entries WHERE fingerprint = ? AND ns = ? AND position <= ?",
                (fp, ns, c),
            ).fetchone()[0]
            assert stored == len(table), (c, ns)
    db.close()
    engine.close()

    other = Settings(data_dir=tmp_path / "other", checkpoint_every_events=700)
    elsewhere = Engine.open(other, model=model, clock=clock)
    elsewhere.ingest_all(events[:1000])  # folded without checkpoints: the next import cannot take them
    assert elsewhere.ingest_all(events[1000:2000], checkpoint=True).checkpoints == 0
    assert elsewhere.write_checkpoints() == 2000  # explain's own fold does it instead
    elsewhere.close()
