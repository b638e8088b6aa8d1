"""Batch ingest does batch work and nothing else: the same events give the same state, byte for
byte, folded one at a time or in batches of any size (issue 26)."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from insession.clock import ManualClock
from insession.config import Settings
from insession.datasets.synthetic import SyntheticShop
from insession.engine import SNAPSHOT_FILE, Engine
from insession.events import Event, EventType
from insession.features.activity import ActivityDecoder
from insession.fold import FoldBatch, FoldMemos, FoldStats, fold_event
from insession.memo import DecodeMemo
from insession.model import ModelBundle
from insession.online import covisit
from insession.replay import Replay
from insession.store.memory import MemoryFeatureStore


def stream(shop: SyntheticShop, n: int) -> list[Event]:
    """The shop's first ``n`` events plus what batching could get wrong: a bot hammering one item
    (capped by the guard rail), late events, a duplicate, and events of one user inside a batch."""
    events = list(shop.events[:n])
    bot_item = events[0].item_id
    end = events[-1].ts
    events += [Event(f"bot{k}", "bot", EventType.VIEW, end + k * 1000, item_id=bot_item) for k in range(12)]
    last = events[-30]
    events += [
        replace(last, event_id="late-1", ts=last.ts - 5_000),  # late, inside the allowed lateness
        replace(last, event_id="late-2", ts=last.ts - 86_400_000),  # too late: refused
        events[5],  # a duplicate
    ]
    return events


def snapshot_bytes(engine: Engine, tmp: Path) -> bytes:
    engine.snapshot()
    return (tmp / "data" / SNAPSHOT_FILE).read_bytes()


def open_engine(tmp: Path, model: ModelBundle, shop: SyntheticShop) -> Engine:
    return Engine.open(Settings(data_dir=tmp / "data"), model=model, clock=ManualClock(shop.events[-1].ts + 3_600_000))


def test_batches_of_any_size_give_the_state_of_one_event_at_a_time(
    tmp_path: Path, model: ModelBundle, shop: SyntheticShop
) -> None:
    events = stream(shop, 2500)
    one = open_engine(tmp_path / "one", model, shop)
    for event in events:
        one.ingest([event])
    expected = snapshot_bytes(one, tmp_path / "one")
    assert one.fold_stats.capped > 0  # the guard rail took part
    rng = random.Random(3)
    for name, sizes in (("whole", [len(events)]), ("random", [rng.randint(1, 400) for _ in range(200)])):
        other = open_engine(tmp_path / name, model, shop)
        at = 0
        for size in sizes:
            other.ingest(events[at : at + size])
            at += size
        other.ingest(events[at:])
        assert snapshot_bytes(other, tmp_path / name) == expected
        assert other.fold_stats.capped == one.fold_stats.capped
        other.log.close()
    one.log.close()


def test_restart_folds_the_log_in_pages_to_the_same_state(
    tmp_path: Path, model: ModelBundle, shop: SyntheticShop
) -> None:
    first = open_engine(tmp_path, model, shop)
    first.ingest_all(shop.events)
    expected = snapshot_bytes(first, tmp_path)
    first.log.close()
    (tmp_path / "data" / SNAPSHOT_FILE).unlink()  # the whole log is folded again on start
    second = open_engine(tmp_path, model, shop)
    assert snapshot_bytes(second, tmp_path) == expected
    second.log.close()


def test_fold_batch_equals_fold_event_in_turn_and_the_offline_replay(shop: SyntheticShop) -> None:
    cfg = Settings().session
    clock = ManualClock(shop.events[-1].ts)
    each, batched = MemoryFeatureStore(clock), MemoryFeatureStore(clock)
    each_stats, batch_stats = FoldStats(), FoldStats()
    pairs_each: list[tuple[str, str]] = []
    pairs_batch: list[tuple[str, str]] = []
    batch = FoldBatch(batched, cfg, 3600, batch_stats, on_pair=lambda a, b: pairs_batch.append((a, b)))
    replay = Replay(cfg)  # the offline fold, which keeps its values decoded and touches no store
    for position, event in enumerate(stream(shop, len(shop.events)), start=1):
        replay.apply(position, event)
        a = fold_event(each, position, event, cfg, 3600, each_stats, on_pair=lambda a, b: pairs_each.append((a, b)))
        assert batch.fold(position, event) == a
        if position % 997 == 0:
            batch.flush()
    batch.flush()
    assert pairs_batch == pairs_each and batch_stats.capped == each_stats.capped > 0
    assert batched.users() == each.users() == sorted(replay.states)
    for user in sorted(replay.states):
        assert batched.get_session(user) == each.get_session(user) == replay.states[user]
    for ns, offline in (("item_activity", replay.activity), ("covisit_online", replay.followers)):
        keys = each.keys(ns)
        assert keys and batched.keys(ns) == keys == sorted(offline)
        assert batched.get_many(ns, keys) == each.get_many(ns, keys) == [offline[k].to_bytes() for k in keys]


def test_decoded_values_kept_across_batches_give_the_same_bytes(shop: SyntheticShop) -> None:
    """The engine's fold keeps decoded values between batches (``fold.FoldMemos``), checked against
    the stored bytes: a value changed in the store meanwhile (here put back as it was before a
    batch) is decoded again, and every batch ends with the bytes of a fold that keeps nothing."""
    cfg = Settings().session
    clock = ManualClock(shop.events[-1].ts)
    plain, kept = MemoryFeatureStore(clock), MemoryFeatureStore(clock)
    small = 8  # small memos: they are cleared and refilled along the way
    memos = FoldMemos(ActivityDecoder(max_entries=small), DecodeMemo(covisit.Neighbours.from_bytes, small))
    events = stream(shop, len(shop.events))
    rng = random.Random(5)
    namespaces = ("item_activity", "covisit_online")
    at = 0
    while at < len(events):
        size = rng.randint(1, 300)
        before = {ns: dict(zip(plain.keys(ns), plain.get_many(ns, plain.keys(ns)), strict=True)) for ns in namespaces}
        a, b = FoldBatch(plain, cfg, 3600), FoldBatch(kept, cfg, 3600, memos=memos)
        for position, event in enumerate(events[at : at + size], start=at + 1):
            assert b.fold(position, event) == a.fold(position, event)
        a.flush()
        b.flush()
        at += size
        if rng.random() < 0.3:  # the store changes outside the fold: values put back as they were
            for ns in namespaces:
                older = dict(rng.sample(sorted(before[ns].items()), min(len(before[ns]), 30)))
                plain.put_many(ns, older, 3600)
                kept.put_many(ns, older, 3600)
        for ns in namespaces:
            keys = plain.keys(ns)
            assert kept.keys(ns) == keys and kept.get_many(ns, keys) == plain.get_many(ns, keys)
    assert len(memos.activity) <= small and len(memos.followers) <= small
