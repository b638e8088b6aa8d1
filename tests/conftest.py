"""Shared fixtures: a small synthetic shop and model, engines on temp dirs, the real data."""

from __future__ import annotations

import os
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
