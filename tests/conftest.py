"""Shared fixtures: a small synthetic shop and model, engines on temp dirs, the real data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from insession.clock import ManualClock
from insession.config import Settings
from insession.datasets.synthetic import ShopConfig, SyntheticShop, generate
from insession.engine import Engine
from insession.model import ModelBundle
from insession.training import train

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IN_CI = os.environ.get("CI") == "true"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; skipped with a reason when absent, a failure under CI."""
    if not SHARED_DATA.is_dir():
        message = f"real data not found at {SHARED_DATA} (tests reading ../shared/data need it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
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


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def engine(settings: Settings, model: ModelBundle, clock: ManualClock) -> Engine:
    eng = Engine.open(settings, model=model, clock=clock)
    yield eng  # type: ignore[misc]
    eng.log.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of our own on a free loopback port, stopped by its PID at the end. Skipped
    (with the reason) when redis-server or the redis package is missing; a failure under CI."""
    import shutil
    import socket
    import subprocess
    import time

    binary = shutil.which("redis-server")
    missing = None if binary else "redis-server is not installed (apt-get install redis-server)"
    try:
        import redis
    except ImportError:
        missing = missing or "the redis package is not installed (pip install -e '.[redis]')"
    if missing is not None:
        if IN_CI:
            pytest.fail(missing)
        pytest.skip(missing)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path_factory.mktemp("redis")
    cmd = [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = subprocess.Popen([*cmd, "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            pytest.fail(f"redis-server on port {port} did not answer")
        yield url
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=10)
