"""The EventLog contract; every implementation is added to ``LOGS``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from insession.events import Event, EventType
from insession.log import EventLog
from insession.log.sqlite import SqliteEventLog

T0 = 1_767_225_600_000
LOGS: dict[str, Callable[[Path], EventLog]] = {"sqlite": lambda d: SqliteEventLog(d / "events.sqlite")}
# Order is per user (per partition), not across users; on one Redis and on a 3-node Cluster.
PARTITIONED = {"redis_stream": "single_redis_url", "redis_stream_cluster": "cluster_redis_url"}


def ev(n: int, user: str = "u1") -> Event:
    return Event(f"e{n}", user, EventType.CLICK, T0 + n, f"i{n}")


@pytest.fixture(params=sorted(LOGS) + list(PARTITIONED))
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventLog]:
    if request.param in PARTITIONED:
        from conftest import fresh_client
        from insession.log.redis_stream import RedisStreamEventLog

        client = fresh_client(request.getfixturevalue(PARTITIONED[request.param]))
        yield RedisStreamEventLog(client, partitions=4)
        client.close()
        return
    made = LOGS[request.param](tmp_path)
    yield made
    made.close()


def test_append_assigns_increasing_positions(log: EventLog) -> None:
    result = log.append([ev(1), ev(2), ev(3)])
    positions = [p for p, _ in result.accepted]
    assert positions == sorted(positions) and len(set(positions)) == 3
    assert log.last_position() == positions[-1] and log.count() == 3


def test_resent_event_is_a_duplicate_never_written_twice(log: EventLog) -> None:
    log.append([ev(1), ev(2)])
    again = log.append([ev(2), ev(3)])
    assert again.duplicates == 1 and again.duplicate_ids == ["e2"]
    assert [e.event_id for _, e in again.accepted] == ["e3"]
    assert [e.event_id for _, e in log.read()] == ["e1", "e2", "e3"]


def test_duplicate_within_one_batch(log: EventLog) -> None:
    result = log.append([ev(1), ev(1)])
    assert len(result.accepted) == 1 and result.duplicates == 1 and log.count() == 1


def test_a_large_batch_mixing_new_stored_and_repeated_ids(log: EventLog) -> None:
    """More events than one SQLite statement inserts, with ids already stored and ids repeated in the
    batch: each new id accepted once, in batch order, at increasing positions; the rest duplicates."""
    log.append([ev(n) for n in range(0, 1500, 7)])
    batch = [ev(n % 1300) for n in range(1400)]  # 0..99 twice
    result = log.append(batch)
    new = [n for n in range(1300) if n % 7 != 0]
    assert [e.event_id for _, e in result.accepted] == [f"e{n}" for n in new]
    positions = [p for p, _ in result.accepted]
    assert positions == sorted(positions) and len(set(positions)) == len(new)
    assert result.duplicate_ids == [e.event_id for n, e in enumerate(batch) if n % 1300 % 7 == 0 or n >= 1300]
    assert log.count() == len(range(0, 1500, 7)) + len(new)


def test_read_from_a_position(log: EventLog) -> None:
    result = log.append([ev(n) for n in range(1, 11)])
    middle = result.accepted[4][0]
    assert [e.event_id for _, e in log.read(after=middle)] == [f"e{n}" for n in range(6, 11)]
    assert [e.event_id for _, e in log.read(after=0, limit=3)] == ["e1", "e2", "e3"]
    assert list(log.read(after=log.last_position())) == []


def test_span_counts_what_read_would_yield(log: EventLog) -> None:
    """``span`` (explain's catch-up asks it before folding) is the count and last position of
    ``read(after, limit)``, across users (partitions) and pages, without reading the events."""
    log.append([ev(n, f"u{n % 5}") for n in range(1, 41)])
    positions = [p for p, _ in log.read()]
    for after in (0, positions[0], positions[17], positions[-2], positions[-1]):
        for limit in (1, 3, 25, 100):
            expected = [p for p, _ in log.read(after=after, limit=limit)]
            assert log.span(after, limit) == (len(expected), expected[-1] if expected else 0)


def test_events_read_back_equal_what_was_written(log: EventLog) -> None:
    event = Event("x", "u", EventType.ADD_TO_CART, T0, "i9", "s1", {"price": 3.5, "category": "c"})
    log.append([event])
    assert [e for _, e in log.read()] == [event]


def test_empty_append_is_a_no_op(log: EventLog) -> None:
    assert log.append([]).accepted == [] and log.last_position() == 0


def test_sqlite_log_survives_reopen(tmp_path: Path) -> None:
    first = SqliteEventLog(tmp_path / "log.sqlite")
    first.append([ev(1), ev(2)])
    first.close()
    second = SqliteEventLog(tmp_path / "log.sqlite")
    assert second.append([ev(2)]).duplicates == 1
    assert [e.event_id for _, e in second.read()] == ["e1", "e2"]
    second.close()


def test_partitioned_log_keeps_each_users_order_and_spreads_users(log: EventLog) -> None:
    events = [ev(n, user=f"u{n % 7}") for n in range(1, 50)]
    result = log.append(events)
    assert sorted(e.event_id for _, e in result.accepted) == sorted(e.event_id for e in events)
    read = [e for _, e in log.read()]
    assert sorted(e.event_id for e in read) == sorted(e.event_id for e in events)
    for user in {e.user_id for e in events}:
        assert [e for e in read if e.user_id == user] == [e for e in events if e.user_id == user]
    positions = [p for p, _ in log.read()]
    assert positions == sorted(positions) and log.last_position() == positions[-1] and log.count() == 49
