"""Scale-out on one Redis and on a 3-node Redis Cluster (every test runs on both), as real
processes: two servers (the real ``insession serve``) and two stream workers, and a worker killed
with SIGKILL mid-stream. Every process is started here and stopped by its PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_redis_engine import assert_same_state, reference, wait_until

from conftest import free_port, fresh_client  # tests/ is on sys.path (pytest's rootdir conftest)
from insession.clock import ManualClock
from insession.config import Settings
from insession.datasets.synthetic import ShopConfig, SyntheticShop, generate
from insession.log.redis_stream import RedisStreamEventLog
from insession.model import ModelBundle
from insession.store.redis import RedisFeatureStore
from insession.worker import GROUP, item_backlog, lease_holder

PARTITIONS = 16  # the default


class Processes:
    """Child processes of this test, each stopped by its PID at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "INSESSION_LOG_LEVEL": "WARNING"}
        cmd = [sys.executable, "-m", "insession", *args]
        with (self.logs / f"{name}.log").open("wb") as log:  # the child keeps its own descriptor
            child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.children.append(child)
        return child

    def output(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop_all(self) -> None:
        for child in self.children:
            if child.poll() is None:
                os.kill(child.pid, signal.SIGTERM)
        for child in self.children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(child.pid, signal.SIGKILL)
                child.wait(timeout=5)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()


def server_ready(port: int, child: subprocess.Popen[bytes], procs: Processes, name: str) -> Callable[[], bool]:
    def check() -> bool:
        assert child.poll() is None, procs.output(name)
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def start_servers(
    processes: Processes, redis_url: str, model_dir: Path, tmp_path: Path, *options: str
) -> dict[str, int]:
    """Servers ``a`` and ``b`` (``insession serve`` on ``redis_url``, no workers of their own),
    each on a free loopback port, once both answer ``/healthz``; returns their ports."""
    ports = {}
    for name in ("a", "b"):
        ports[name] = free_port()
        child = processes.start(
            f"server-{name}",
            *("serve", "--model", str(model_dir), "--store", redis_url, "--workers", "0", *options),
            *("--port", str(ports[name]), "--data-dir", str(tmp_path / f"data-{name}")),
        )
        wait_until(server_ready(ports[name], child, processes, f"server-{name}"), timeout_s=60)
    return ports


def test_events_posted_to_server_a_change_the_next_list_server_b_serves(
    redis_url: str, tmp_path: Path, model: ModelBundle, processes: Processes
) -> None:
    client = fresh_client(redis_url)
    model_dir = tmp_path / "model"
    model.save(model_dir)
    ports = start_servers(processes, redis_url, model_dir, tmp_path)
    for name in ("w1", "w2"):
        processes.start(name, "worker", "--store", redis_url, "--name", name, "--lease-ms", "1000")

    def owners() -> Counter[str | None]:
        return Counter(lease_holder(client.get(f"is:{{s:{p}}}:lease")) for p in range(PARTITIONS))

    # The two workers share the partitions (the first to start gives back what is above its share).
    wait_until(lambda: set(owners()) == {"w1", "w2"}, timeout_s=30)

    a, b = (httpx.Client(base_url=f"http://127.0.0.1:{ports[n]}", timeout=10) for n in ("a", "b"))
    try:
        user = "scale-out-newcomer"
        body = {"user_id": user, "surface": "home", "k": 10}
        before = b.post("/v1/recommendations", json=body).json()
        assert before["session_version"] == 0
        shown = Counter(model.catalog.category_of(i["item_id"]) for i in before["items"])
        # The category the newcomer's list shows least (a top 10 can hold all 8 of the shop's).
        category = min(sorted({i.category for i in model.catalog.items if i.category}), key=lambda c: shown[c])
        picks = [i.item_id for i in model.catalog.items if i.category == category][:4]
        now = int(time.time() * 1000)
        events = [
            {"event_id": f"so-{n}", "user_id": user, "type": "click", "item_id": item, "ts": now + n * 1000}
            for n, item in enumerate(picks)
        ]
        assert a.post("/v1/events", json={"events": events}).json()["accepted"] == 4

        store = RedisFeatureStore(client)
        wait_until(lambda: (s := store.get_session(user)) is not None and s.session_version == 4, timeout_s=10)
        after = b.post("/v1/recommendations", json=body).json()  # the next request server B serves
        assert after["session_version"] == 4 and after["degraded"] is None
        assert [i["item_id"] for i in after["items"]] != [i["item_id"] for i in before["items"]]
        shares = [
            Counter(model.catalog.category_of(i["item_id"]) for i in r["items"])[category] for r in (before, after)
        ]
        assert shares[1] > shares[0], shares
        health = b.get("/healthz").json()
        assert health["status"] == "ok" and health["store"]["kind"] == "redis"
        assert health["store"]["cluster"] is redis_url.startswith("redis+cluster://")
    finally:  # closed even when an assertion fails, so no socket outlives the test
        a.close()
        b.close()
        client.close()


def pending_of(client: Any, consumer: str) -> int:
    total = 0
    for p in range(PARTITIONS):
        for row in client.xinfo_consumers(f"is:{{s:{p}}}:events", GROUP):
            if row["name"] in (consumer, consumer.encode()):
                total += int(row["pending"])
    return total


def backlog(client: Any) -> int:
    """What the workers have still to fold: stream entries not yet acknowledged by their group
    (pending or never delivered), and outbox entries of item updates not yet folded."""
    log = RedisStreamEventLog(client, PARTITIONS)
    return int(log.backlog(GROUP)) + item_backlog(client, log.keys)


@pytest.mark.slow
def test_a_worker_killed_mid_stream_loses_nothing_and_applies_nothing_twice(
    redis_url: str, processes: Processes
) -> None:
    client = fresh_client(redis_url)
    shop: SyntheticShop = generate(ShopConfig(n_categories=6, items_per_category=50, n_users=500, seed=5))
    log = RedisStreamEventLog(client, PARTITIONS)
    acknowledged = 0
    for n in range(0, len(shop.events), 1000):  # what servers acknowledge to clients
        acknowledged += len(log.append(shop.events[n : n + 1000]).accepted)
    assert acknowledged == len(shop.events) > 20_000

    worker_args = ("worker", "--store", redis_url, "--batch", "25", "--lease-ms", "1000")
    first = processes.start("w1", *worker_args, "--name", "w1")
    wait_until(lambda: backlog(client) < 0.8 * acknowledged, timeout_s=60)  # a fifth is folded
    for _ in range(50):  # freeze it while it holds a batch it read but has not applied
        os.kill(first.pid, signal.SIGSTOP)
        if pending_of(client, "w1") > 0:
            break
        os.kill(first.pid, signal.SIGCONT)
        time.sleep(0.01)
    held = pending_of(client, "w1")
    left = backlog(client)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    assert held > 0 and 0 < left < acknowledged, (held, left)
    print(f"SIGKILL: w1 held {held} read-but-unapplied entries; {left} of {acknowledged} not yet applied")

    processes.start("w2", *worker_args, "--name", "w2")
    wait_until(lambda: backlog(client) == 0, timeout_s=120)
    assert pending_of(client, "w1") == 0  # its unapplied batch was claimed

    settings = Settings(store=redis_url, stream_partitions=PARTITIONS)
    clock = ManualClock(int(time.time() * 1000))
    users = sorted({e.user_id for e in shop.events})
    items = sorted({e.item_id for e in shop.events if e.item_id})
    assert_same_state(reference(log, settings, clock), RedisFeatureStore(client, clock), users, items)
    client.close()
