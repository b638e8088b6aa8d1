"""Shared fixtures: a small synthetic shop and model, engines on temp dirs, the real data."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from insession.clock import ManualClock
from insession.config import Settings, SurfaceConfig
from insession.datasets.synthetic import ShopConfig, SyntheticShop, generate
from insession.engine import Engine
from insession.model import ModelBundle
from insession.training import train

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IN_CI = os.environ.get("CI") == "true"


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


class RedisProcess:
    """A redis-server of a test's own on a loopback port, stopped (by its PID) with ``stop``."""

    def __init__(self, binary: str, port: int, workdir: Path) -> None:
        import subprocess

        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [*cmd, "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._wait()

    def _wait(self) -> None:
        import time

        import redis

        client = redis.Redis.from_url(self.url)
        try:
            for _ in range(200):
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    time.sleep(0.025)
            pytest.fail(f"redis-server on port {self.port} did not answer")
        finally:
            client.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_binary() -> str:
    """redis-server's path; skipped (with the reason) when it or the redis package is missing, a
    failure under CI."""
    import shutil

    binary = shutil.which("redis-server")
    missing = None if binary else "redis-server is not installed (apt-get install redis-server)"
    try:
        import redis  # noqa: F401
    except ImportError:
        missing = missing or "the redis package is not installed (pip install -e '.[redis]')"
    if missing is not None or binary is None:
        unavailable(missing or "redis-server is missing")
    assert binary is not None
    return binary


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The test session's shared redis-server (tests empty it with FLUSHDB before use)."""
    server = RedisProcess(_redis_binary(), free_port(), tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[[int | None], RedisProcess]]:
    """Start private redis-servers (e.g. to stop and restart one); all are stopped afterwards."""
    binary = _redis_binary()
    started: list[RedisProcess] = []

    def start(port: int | None = None) -> RedisProcess:
        server = RedisProcess(binary, port or free_port(), tmp_path)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
