"""Hot-spot control: items far above the popularity threshold give up places; evaluation reports
the share of impressions the most-shown 1% of the catalog takes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from insession.clock import ManualClock
from insession.config import Settings, SurfaceConfig
from insession.datasets.synthetic import SyntheticShop
from insession.engine import Engine
from insession.errors import ValidationError
from insession.evaluation.metrics import beyond_accuracy
from insession.model import ModelBundle
from insession.pipeline import RecommendRequest


def test_hot_items_give_up_places(tmp_path: Path, model: ModelBundle, shop: SyntheticShop, clock: ManualClock) -> None:
    relative = model.popularity / model.popularity.max()
    threshold = float(np.sort(relative)[::-1][12])  # about the top 2.5% of this flat synthetic catalog
    hot = {model.catalog.ids[n] for n in np.flatnonzero(relative > threshold)}
    assert 0 < len(hot) <= 12
    surfaces = {
        "plain": SurfaceConfig("plain", max_seen=None),
        "cooled": SurfaceConfig("cooled", max_seen=None, hot_threshold=threshold, hot_discount=20.0),
    }
    engine = Engine.open(Settings(data_dir=tmp_path / "d", surfaces=surfaces), model=model, clock=clock)
    engine.ingest_all(shop.events)
    lists: dict[str, list[list[int]]] = {"plain": [], "cooled": []}
    for user in sorted(shop.tastes)[:40]:
        for surface in lists:
            req = RecommendRequest(user, surface, 10, {}, f"{surface}-{user}", clock.now_ms())
            lists[surface].append([model.catalog.index[i.item_id] for i in engine.recommend(req).items])
    shown = {s: sum(model.catalog.ids[i] in hot for row in rows for i in row) for s, rows in lists.items()}
    assert shown["cooled"] < shown["plain"] / 2, shown
    engine.close()


def test_top_share_counts_the_most_shown_percent_of_the_catalog() -> None:
    lists = np.array([[0, 1], [0, 2], [0, 3], [0, -1]])  # item 0 takes 4 of 7 impressions
    out = beyond_accuracy(lists, np.ones(100), 100, 2)
    assert out["top1%share@2"] == pytest.approx(4 / 7)


def test_hot_threshold_is_validated() -> None:
    with pytest.raises(ValidationError, match=r"surfaces\.x\.hot_threshold"):
        SurfaceConfig("x", hot_threshold=1.5)
