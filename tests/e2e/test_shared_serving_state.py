"""Per-user serving state shared through the store (one Redis and a 3-node Cluster; every test runs
on both): the list a user was shown last (the churn budget's reference), the lists kept for reuse
and the exploration counts live in Redis, so a user whose requests alternate between servers gets
the lists one server gives for the same sequence."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from test_redis_engine import wait_until
from test_scale_out import Processes, backlog, start_servers

from conftest import fresh_client, patient_surfaces
from insession.clock import ManualClock
from insession.config import Settings, SurfaceConfig
from insession.datasets.synthetic import SyntheticShop
from insession.engine import Engine
from insession.events import Event, EventType
from insession.model import ModelBundle
from insession.pipeline import RecommendRequest
from insession.redis_backend import Keys, _hash_tag
from insession.store.redis import RedisFeatureStore
from insession.worker import StreamWorker

PARTITIONS = 4
STEPS = 12


def churn_budgeted() -> dict[str, SurfaceConfig]:
    """``home`` keeps its first 3 positions unless beaten, lets at most 2 newcomers in per refresh,
    serves a list again while the session's intent holds, and explores 2 of 10 positions."""
    surfaces = patient_surfaces()
    surfaces["home"] = replace(
        surfaces["home"], keep_top=3, keep_margin=0.05, max_new=2, freshness="session", explore_share=0.2
    )
    return surfaces


@dataclass(frozen=True)
class Served:
    items: tuple[str, ...]
    explored: tuple[str, ...]
    churn: float | None
    cached: bool
    stabilised: tuple[str, ...]


def run(url: str, tmp_path: Path, model: ModelBundle, start: int, users: Sequence[str], servers: int) -> list[Served]:
    """The same script of events and requests, each request answered by server ``n % servers``:
    each step clicks an item of the list just served (so a different list changes what follows),
    a worker folds the events, and every third step asks again with no event in between."""
    client = fresh_client(url)
    clock = ManualClock(start)
    # No L1 cache: item activity read through a cache up to a second old would differ by server.
    settings = Settings(
        data_dir=tmp_path / "unused",
        store=url,
        stream_partitions=PARTITIONS,
        surfaces=churn_budgeted(),
        store_timeout_ms=5_000.0,
        l1_max_age_ms=0,
    )
    engines = [
        Engine.on_redis(settings.with_(data_dir=tmp_path / f"s{servers}-{n}"), model, clock) for n in range(servers)
    ]
    worker = StreamWorker(client, settings, clock=clock)
    out: list[Served] = []
    turn = 0
    for step in range(STEPS):
        for user in users:
            engine = engines[turn % servers]
            turn += 1
            req = RecommendRequest(user, "home", 10, {}, f"{user}-{step}", clock.now_ms())
            got = engine.recommend(req)
            assert (got.tier, got.cut, got.degraded) == ("full", (), None), got
            out.append(Served(tuple(i.item_id for i in got.items), got.explored, got.churn, got.cached, got.stabilised))
            if step % 3 != 2:  # every third step: no event, so the kept list may be served again
                item = got.items[(step * 3) % len(got.items)].item_id
                event = Event(f"{user}-e{step}", user, EventType.CLICK, clock.now_ms(), item)
                assert len(engines[turn % servers].ingest([event]).accepted) == 1
            worker.drain()
            clock.advance(5_000)
    client.close()
    return out


def test_alternating_servers_serve_the_lists_one_server_serves(
    redis_url: str, tmp_path: Path, model: ModelBundle, shop: SyntheticShop
) -> None:
    start = shop.events[-1].ts + 60_000
    users = sorted(shop.tastes)[:3]
    one = run(redis_url, tmp_path, model, start, users, servers=1)
    two = run(redis_url, tmp_path, model, start, users, servers=2)
    assert two == one
    # The script exercised what is shared: the churn budget held or moved items, lists were
    # served again from the kept ones, exploration drew items, and churn stayed within budget.
    assert any(s.stabilised for s in one) and any(s.cached for s in one) and all(len(s.explored) == 2 for s in one)
    # From the third step on (the first click may start a new session) every list was measured
    # against the one shown before, whichever server showed it; newcomers stay within max_new plus
    # the explored positions.
    later = two[2 * len(users) :]
    assert all(s.churn is not None and s.churn <= 0.4 + 1e-9 for s in later)


def test_a_users_serving_values_sit_in_the_slot_of_their_session() -> None:
    keys = Keys("is", PARTITIONS)
    for user in ("u1", "a:b}{c", "ü" * 3):
        names = {keys.session(user), keys.user_value("shown", user), keys.user_value("kept", user)}
        assert len(names) == 3 and {_hash_tag(n) for n in names} == {f"s:{keys.user_partition(user)}"}


CONFIG = """
[surfaces.home]
keep_top = 3
keep_margin = 0.05
max_new = 2
freshness = "session"
budget_ms = 60000
degrade_p99_ms = 60000
"""


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()


def test_two_serve_processes_alternating_give_a_user_the_lists_one_server_gives(
    redis_url: str, tmp_path: Path, model: ModelBundle, processes: Processes
) -> None:
    """Real ``insession serve`` processes on wall-clock time: user ``alt`` alternates between
    servers A and B, user ``one`` (the same script, step by step at the same moments) only talks
    to A; they get the same lists, churn and reuse."""
    client = fresh_client(redis_url)
    model_dir, config = tmp_path / "model", tmp_path / "insession.toml"
    model.save(model_dir)
    config.write_text(CONFIG)
    ports = start_servers(processes, redis_url, model_dir, tmp_path, "--config", str(config))
    processes.start("worker", "worker", "--store", redis_url, "--name", "w", "--lease-ms", "1000")
    a, b = (httpx.Client(base_url=f"http://127.0.0.1:{ports[n]}", timeout=30) for n in ("a", "b"))
    store = RedisFeatureStore(client)
    try:
        folded = 0
        for step in range(9):
            lists = {}
            for user, server in (("alt", (a, b)[step % 2]), ("one", a)):
                got = server.post("/v1/recommendations", json={"user_id": user, "surface": "home", "k": 10})
                assert got.status_code == 200, got.text
                body = got.json()
                assert (body["tier"], body["cut"], body["degraded"]) == ("full", [], None), body
                lists[user] = ([i["item_id"] for i in body["items"]], body["churn"], body["cached"])
            assert lists["alt"] == lists["one"], step
            if step % 3 == 2:
                continue  # no event: the kept list may be served again
            now = int(time.time() * 1000)
            for user, server in (("alt", (b, a)[step % 2]), ("one", a)):
                item = lists[user][0][(step * 3) % 10]
                event = {"event_id": f"{user}-{step}", "user_id": user, "type": "click", "item_id": item, "ts": now}
                assert server.post("/v1/events", json={"events": [event]}).json()["accepted"] == 1
            folded += 1

            def caught_up(n: int = folded) -> bool:
                states = [store.get_session(u) for u in ("alt", "one")]
                return all(s is not None and s.session_version == n for s in states) and backlog(client) == 0

            wait_until(caught_up, timeout_s=20)
    finally:
        a.close()
        b.close()
        client.close()


def test_late_events_are_refused_on_redis_as_embedded_and_a_racing_one_is_not_folded(
    redis_url: str, tmp_path: Path, model: ModelBundle, shop: SyntheticShop
) -> None:
    client = fresh_client(redis_url)
    start = shop.events[-1].ts + 60_000
    clock = ManualClock(start)
    settings = Settings(data_dir=tmp_path / "r", store=redis_url, stream_partitions=PARTITIONS)
    on_redis = Engine.on_redis(settings, model, clock)
    embedded = Engine.open(Settings(data_dir=tmp_path / "m"), model=model, clock=clock)
    worker = StreamWorker(client, settings, clock=clock)
    item = model.catalog.items[0].item_id
    hour = 3_600_000
    newest = Event("n-1", "late-user", EventType.CLICK, start, item)
    late = Event("n-0", "late-user", EventType.CLICK, start - 2 * hour, item)  # beyond allowed lateness
    for engine in (on_redis, embedded):
        assert len(engine.ingest([newest]).accepted) == 1
    worker.drain()
    refusals = [engine.ingest([late]).refused for engine in (on_redis, embedded)]
    assert refusals[0] == refusals[1] and refusals[0][0][1][0].field == "ts", refusals
    # An event admitted before the newer one was folded (two servers, one behind) reaches the
    # stream; the worker skips it, so the user's state is the embedded one.
    racing = Event("n-2", "racer", EventType.CLICK, start - 2 * hour, item)
    first = Event("n-3", "racer", EventType.CLICK, start, item)
    assert len(on_redis.log.append([first, racing]).accepted) == 2
    embedded.ingest([first, racing])
    worker.drain()
    assert worker.stats.late == 1
    got, want = on_redis.state("racer"), embedded.state("racer")
    assert got is not None and want is not None and replace(got, log_position=0) == replace(want, log_position=0)
    embedded.close()
    on_redis.close()
    client.close()
