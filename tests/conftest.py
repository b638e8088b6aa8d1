"""Shared fixtures: a small synthetic shop and model, engines on temp dirs, the real data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from insession.bench_scale import LocalCluster, LocalRedis
from insession.clock import ManualClock
from insession.config import Settings, SurfaceConfig
from insession.datasets.synthetic import ShopConfig, SyntheticShop, generate
from insession.engine import Engine
from insession.model import ModelBundle
from insession.training import train

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IN_CI = os.environ.get("CI") == "true"
# Models saved by tests are served by LightGBM: a compile of the ranker (lleaves, 10-15 s of CPU) per
# saved model would slow the whole suite. tests/unit/test_compiled_ranker.py turns it on for itself.
os.environ["INSESSION_COMPILE_RANKER"] = "0"


def unavailable(reason: str) -> None:
    """A test's requirement is missing: skip with the reason, or fail under CI (where the CI
    script installs every requirement, so a missing one is a defect)."""
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; skipped with a reason when absent, a failure under CI."""
    if not SHARED_DATA.is_dir():
        unavailable(f"real data not found at {SHARED_DATA} (tests reading ../shared/data need it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shop() -> SyntheticShop:
    return generate(ShopConfig(n_categories=8, items_per_category=60, n_users=150, seed=11))


@pytest.fixture(scope="session")
def model(shop: SyntheticShop) -> ModelBundle:
    return train(shop.events, items=shop.items)


@pytest.fixture
def clock(shop: SyntheticShop) -> ManualClock:
    return ManualClock(shop.events[-1].ts + 3_600_000)


def patient_surfaces() -> dict[str, SurfaceConfig]:
    """The default surfaces with a budget no loaded CI machine can miss: a test about what a list
    holds must not see a stage cut because the machine was busy (tests of the budget set their own)."""
    return {name: replace(s, budget_ms=60_000.0, degrade_p99_ms=60_000.0) for name, s in Settings().surfaces.items()}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Patient budgets, and a queue no loaded machine fills: tests of overload set their own."""
    return Settings(data_dir=tmp_path / "data", surfaces=patient_surfaces(), max_queue_ms=60_000.0)


@pytest.fixture
def engine(settings: Settings, model: ModelBundle, clock: ManualClock) -> Engine:
    eng = Engine.open(settings, model=model, clock=clock)
    yield eng  # type: ignore[misc]
    eng.log.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_requirements(cluster: bool = False) -> None:
    """Skip (with the reason) when redis-server, redis-cli (for a cluster) or the redis package is
    missing; a failure under CI."""
    import shutil

    missing = None if shutil.which("redis-server") else "redis-server is not installed (apt-get install redis-server)"
    if cluster and missing is None and not shutil.which("redis-cli"):
        missing = "redis-cli is not installed (apt-get install redis-tools)"
    try:
        import redis  # noqa: F401
    except ImportError:
        missing = missing or "the redis package is not installed (pip install -e '.[redis]')"
    if missing is not None:
        unavailable(missing)


def fresh_client(url: str) -> Any:
    """A client of ``url`` (one Redis or a Cluster) after emptying it (every primary)."""
    from insession.redis_backend import connect

    client = connect(url, 5000.0, retries=1)
    client.flushdb()
    return client


def all_keys(client: Any, pattern: str) -> list[bytes]:
    """Every key matching ``pattern``, on every node of a Cluster."""
    from insession.redis_backend import is_cluster

    if is_cluster(client):
        return sorted(client.keys(pattern, target_nodes=client.PRIMARIES))
    return sorted(client.keys(pattern))


class PrivateRedis:
    """One Redis or a 3-node Cluster of a test's own, to stop, start again or freeze."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.server: LocalRedis | LocalCluster = (
            LocalRedis(workdir / "redis") if kind == "redis" else LocalCluster(workdir / "cluster")
        )
        self.url: str = self.server.url

    @property
    def pids(self) -> list[int]:
        server = self.server
        return [server.pid] if isinstance(server, LocalRedis) else server.pids

    def pids_serving(self, key: str) -> list[int]:
        """The redis-server holding ``key``: the only one, or the Cluster node serving its slot."""
        server = self.server
        if isinstance(server, LocalRedis):
            return [server.pid]
        from insession.redis_backend import connect

        client = connect(self.url, 5000.0)
        try:
            port = int(client.get_node_from_key(key).port)
        finally:
            client.close()
        return [node.pid for node in server.nodes if node.port == port]

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


@pytest.fixture(scope="session")
def single_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The test session's own redis-server (tests empty it before use), stopped by its PID."""
    _redis_requirements()
    server = LocalRedis(tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cluster_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The test session's own 3-node Redis Cluster (``redis-cli --cluster create``, no replicas;
    tests empty it before use), every node stopped by its PID."""
    _redis_requirements(cluster=True)
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture(scope="session", params=["redis", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """One Redis, then the 3-node Cluster: every test that takes it runs on both."""
    return str(request.getfixturevalue(f"{'single' if request.param == 'redis' else 'cluster'}_redis_url"))


@pytest.fixture(params=["redis", "cluster"])
def private_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis (then a Cluster) of the test's own, e.g. to stop and restart; stopped afterwards."""
    _redis_requirements(cluster=request.param == "cluster")
    server = PrivateRedis(request.param, tmp_path)
    yield server
    server.stop()
