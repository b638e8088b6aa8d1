"""The compiled ranker (lleaves, the ``fast`` extra) scores real candidates as LightGBM does, keeps
its object code next to the model, and a server falls back to LightGBM without it (issue 26)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from conftest import unavailable
from insession.clock import ManualClock
from insession.datasets.synthetic import SyntheticShop
from insession.engine import Engine
from insession.model import ModelBundle
from insession.pipeline import RecommendRequest
from insession.ranking import compiled
from insession.ranking.learned import LearnedScorer


def real_candidates(engine: Engine, shop: SyntheticShop, clock: ManualClock) -> np.ndarray:
    """The feature rows of the candidates served to a few shoppers mid-session."""
    engine.ingest_all(shop.events)
    rows = []
    for user in sorted(shop.tastes)[:5]:
        clock.advance(10_000)
        served = engine.recommend(RecommendRequest(user, "home", 10, {"device": "mobile"}))
        assert served.features is not None
        rows.append(served.features)
    x = np.concatenate(rows)
    assert len(x) > 200
    return x


def test_compiled_scores_equal_lightgbm_on_real_candidates_and_are_cached(
    engine: Engine, shop: SyntheticShop, clock: ManualClock, model: ModelBundle, tmp_path: Path
) -> None:
    if not compiled.available():
        unavailable("lleaves not installed (pip install 'insession[fast]')")
    assert model.ranker is not None
    x = real_candidates(engine, shop, clock)
    lightgbm = LearnedScorer(model.ranker, model.params["ranker"]["features"])  # no directory: LightGBM only
    assert lightgbm.compiled is None
    expected = lightgbm.score(x)

    predict = compiled.compile_ranker(model.ranker, tmp_path)
    scores = predict(x)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-9)
    assert np.array_equal(np.argsort(-scores, kind="stable"), np.argsort(-expected, kind="stable"))
    assert compiled.cache_file(model.ranker, tmp_path).is_file()

    started = time.perf_counter()
    again = compiled.compile_ranker(model.ranker, tmp_path)  # from the cached object code
    assert time.perf_counter() - started < 5.0
    np.testing.assert_array_equal(again(x), scores)

    scorer = LearnedScorer(model.ranker, model.params["ranker"]["features"], tmp_path)  # cached: ready at once
    assert scorer.compiled is not None
    np.testing.assert_array_equal(scorer.score(x), scores)
    np.testing.assert_array_equal(scorer.contributions(x), lightgbm.contributions(x))  # explain: LightGBM's


def test_a_model_from_disk_is_served_by_lightgbm_until_compiled(model: ModelBundle, tmp_path: Path) -> None:
    if not compiled.available():
        unavailable("lleaves not installed (pip install 'insession[fast]')")
    assert model.ranker is not None
    model.save(tmp_path / "model")
    loaded = ModelBundle.load(tmp_path / "model")
    assert loaded.directory == tmp_path / "model"
    scorer = LearnedScorer(loaded.ranker or "", loaded.params["ranker"]["features"], loaded.directory)
    x = np.zeros((3, scorer.booster.num_feature()), dtype=np.float32)
    first = scorer.score(x)  # LightGBM, or already compiled: the same scores either way
    deadline = time.monotonic() + 300
    while scorer.compiled is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert scorer.compiled is not None and compiled.cache_file(model.ranker, tmp_path / "model").is_file()
    np.testing.assert_array_equal(scorer.score(x), first)
