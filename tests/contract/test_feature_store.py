"""The FeatureStore contract; every implementation is added to ``STORES``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from insession.clock import ManualClock
from insession.config import SessionConfig
from insession.errors import SnapshotCorrupt
from insession.events import Event, EventType
from insession.sessions import SessionState, apply
from insession.store import FeatureStore
from insession.store.memory import MemoryFeatureStore

STORES = ("memory", "redis", "redis_l1", "cluster", "cluster_l1")


def state(user: str = "u1") -> SessionState:
    return apply(None, Event("e1", user, EventType.CLICK, 1_767_225_600_000, "i1"), SessionConfig(), 1)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, clock: ManualClock) -> Iterator[FeatureStore]:
    """Every implementation; the Redis one against a server (and a 3-node Cluster) of the test
    session's own, emptied before each test."""
    if request.param == "memory":
        yield MemoryFeatureStore(clock)
        return
    from conftest import fresh_client
    from insession.store.cached import CachedStore
    from insession.store.redis import RedisFeatureStore

    url = request.getfixturevalue("cluster_redis_url" if request.param.startswith("cluster") else "single_redis_url")
    client = fresh_client(url)
    l2 = RedisFeatureStore(client, clock)
    # The L1 cache serves values up to max_age old by design; with max_age 0 it must be exact.
    yield CachedStore(l2, max_age_ms=0) if request.param.endswith("_l1") else l2
    client.close()


def test_session_round_trip(store: FeatureStore) -> None:
    assert store.get_session("u1") is None
    store.put_session("u1", state(), ttl_s=60)
    assert store.get_session("u1") == state()


def test_session_expires_after_ttl(store: FeatureStore, clock: ManualClock) -> None:
    store.put_session("u1", state(), ttl_s=60)
    clock.advance(59_999)
    assert store.get_session("u1") is not None
    clock.advance(1)
    assert store.get_session("u1") is None


def test_last_write_wins(store: FeatureStore) -> None:
    first, second = (
        state(),
        apply(state(), Event("e2", "u1", EventType.VIEW, 1_767_225_600_500, "i2"), SessionConfig(), 2),
    )
    store.put_session("u1", first, 60)
    store.put_session("u1", second, 60)
    assert store.get_session("u1") == second


def test_get_many_keeps_order_and_marks_missing(store: FeatureStore, clock: ManualClock) -> None:
    store.put_many("item", {"a": b"1", "b": b"2"}, ttl_s=10)
    assert store.get_many("item", ["b", "x", "a"]) == [b"2", None, b"1"]
    clock.advance(10_000)
    assert store.get_many("item", ["a"]) == [None]


def test_applied_position(store: FeatureStore) -> None:
    assert store.applied_position() == 0
    store.set_applied_position(42)
    assert store.applied_position() == 42


def test_memory_snapshot_round_trip(tmp_path: Path, clock: ManualClock) -> None:
    store = MemoryFeatureStore(clock)
    store.put_session("u1", state("u1"), 60)
    store.put_many("item", {"a": b"\x00\x01"}, 60)
    store.set_applied_position(7)
    store.snapshot(tmp_path / "snap")
    loaded = MemoryFeatureStore(clock)
    loaded.load(tmp_path / "snap")
    assert loaded.get_session("u1") == state("u1")
    assert loaded.get_many("item", ["a"]) == [b"\x00\x01"] and loaded.applied_position() == 7


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_damaged_snapshot_is_detected(tmp_path: Path, clock: ManualClock, damage: str) -> None:
    store = MemoryFeatureStore(clock)
    store.put_session("u1", state(), 60)
    path = tmp_path / "snap"
    store.snapshot(path)
    raw = path.read_bytes()
    broken = {
        "truncate": raw[: len(raw) // 2],
        "flip": raw.replace(b'"u1"', b'"u2"', 1),
        "empty": b"",
        "garbage": b"\x00\xff not a snapshot",
    }[damage]
    path.write_bytes(broken)
    with pytest.raises(SnapshotCorrupt):
        MemoryFeatureStore(clock).load(path)


def test_memory_store_lists_live_users_sorted() -> None:
    clock = ManualClock(0)
    store = MemoryFeatureStore(clock)
    for user in ("b", "a", "c"):
        store.put_session(user, SessionState(user, f"{user}#1", 1, 1, 0, 0), ttl_s=10 if user != "c" else 1)
    clock.advance(2_000)
    assert store.users() == ["a", "b"]


def test_get_many_of_hundreds_of_keys_keeps_their_order(store: FeatureStore) -> None:
    """A request reads the activity of hundreds of candidates at once; on a Cluster they span
    every value partition (and node) and come back in the order asked."""
    values = {f"item-{n}": f"v{n}".encode() for n in range(0, 600, 2)}
    store.put_many("item_activity", values, ttl_s=60)
    asked = [f"item-{n}" for n in range(600)][::-1]
    assert store.get_many("item_activity", asked) == [values.get(k) for k in asked]


def test_user_values_are_read_with_the_session_and_expire(store: FeatureStore, clock: ManualClock) -> None:
    assert store.get_user("u1", ["shown", "kept"]) == (None, [None, None])
    store.put_session("u1", state(), ttl_s=60)
    store.put_user("u1", {"shown": b"a", "kept": b"b"}, ttl_s=30)
    store.put_user("u2", {"shown": b"c"}, ttl_s=90)
    assert store.get_user("u1", ["kept", "shown"]) == (state(), [b"b", b"a"])
    assert store.get_user_values("shown", ["u2", "u1", "u3"]) == [b"c", b"a", None]
    clock.advance(30_000)
    assert store.get_user("u1", ["shown"]) == (state(), [None])
    assert store.get_user_values("shown", ["u2"]) == [b"c"]


def test_counts_add_up_and_expire(store: FeatureStore, clock: ManualClock) -> None:
    store.add_counts("bandit", {"a|n": 2, "b|n": 1}, ttl_s=60)
    store.add_counts("bandit", {"a|n": 3}, ttl_s=60)
    assert store.get_counts("bandit", ["a|n", "b|n", "c|n"]) == [5, 1, 0]
    if isinstance(store, MemoryFeatureStore):  # Redis expires counters by its own clock (PEXPIRE)
        clock.advance(60_000)
        assert store.get_counts("bandit", ["a|n"]) == [0]


def test_user_values_survive_a_snapshot(tmp_path: Path, clock: ManualClock) -> None:
    store = MemoryFeatureStore(clock)
    store.put_user("u1", {"shown": b"\x00list"}, ttl_s=60)
    store.add_counts("bandit", {"a|n": 2}, ttl_s=60)
    store.snapshot(tmp_path / "s")
    again = MemoryFeatureStore(clock)
    again.load(tmp_path / "s")
    assert again.get_user_values("shown", ["u1"]) == [b"\x00list"]
    assert again.get_counts("bandit", ["a|n"]) == [2]
