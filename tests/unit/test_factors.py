"""The online factor model: SGD micro-batches promoted only when held-back events do not get worse,
deterministic given the pairs, the same in the engine and the offline replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import patient_surfaces
from insession.clock import ManualClock
from insession.config import Settings
from insession.datasets.synthetic import SyntheticShop
from insession.engine import Engine
from insession.online.factors import FactorConfig, OnlineFactors, for_model
from insession.pipeline import RecommendRequest
from insession.replay import Replay
from insession.training import TrainConfig, train


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def sequence_pairs(n_items: int, n: int, seed: int) -> list[tuple[int, int]]:
    """A world where item i is followed by item i + 1 (mod n): learnable."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n_items, size=n)
    return [(int(s), int((s + 1) % n_items)) for s in starts]


def test_updates_that_learn_are_promoted_and_the_model_improves() -> None:
    factors = OnlineFactors(unit_vectors(200, 16, 1), {}, FactorConfig(batch=256, lr=0.1))
    reports = [r for p in sequence_pairs(200, 256 * 12, 2) if (r := factors.add(*p)) is not None]
    assert len(reports) == 12 and factors.promotions >= 10
    assert reports[-1].current > 3 * reports[0].current  # the held-back MRR of the promoted model grew
    assert factors.version == f"f{factors.promotions}"


def test_a_harmful_update_is_rolled_back() -> None:
    """A burst that contradicts what the replay buffer and the newest events say is not promoted."""
    factors = OnlineFactors(unit_vectors(100, 16, 3), {}, FactorConfig(batch=200, holdout=0.5, lr=0.5))
    for p in sequence_pairs(100, 200 * 6, 4):
        factors.add(*p)
    before = (factors.u.copy(), factors.v.copy(), factors.promotions)
    # Train half: item 0 -> 50 over and over (a bot); held-back half: the usual i -> i + 1.
    for _ in range(100):
        factors.add(0, 50)
    held = sequence_pairs(100, 100, 5)
    report = None
    for p in held:
        report = factors.add(*p) or report
    assert report is not None and not report.promoted and factors.rollbacks >= 1
    assert factors.promotions == before[2]
    assert np.array_equal(factors.u, before[0]) and np.array_equal(factors.v, before[1])


def test_the_same_pairs_give_the_same_vectors_and_state_round_trips() -> None:
    a = OnlineFactors(unit_vectors(80, 8, 6), {}, FactorConfig(batch=64))
    b = OnlineFactors(unit_vectors(80, 8, 6), {}, FactorConfig(batch=64))
    pairs = sequence_pairs(80, 64 * 5 + 10, 7)
    for p in pairs[:200]:
        a.add(*p)
        b.add(*p)
    c = OnlineFactors(unit_vectors(80, 8, 6), {}, FactorConfig(batch=64))
    c.load(a.to_bytes())
    for p in pairs[200:]:
        a.add(*p)
        b.add(*p)
        c.add(*p)
    assert np.array_equal(a.u, b.u) and np.array_equal(a.v, c.v) and a.version == c.version


def test_a_model_trained_to_read_the_factors_serves_and_explains_them_exactly(
    tmp_path: Path, shop: SyntheticShop, clock: ManualClock
) -> None:
    model = train(shop.events, TrainConfig(online_factors=True), items=shop.items)
    assert "online_factor_score" in model.params["ranker"]["features"]
    settings = Settings(data_dir=tmp_path / "f", surfaces=patient_surfaces())
    engine = Engine.open(settings, model=model, clock=clock)
    engine.ingest_all(shop.events)
    replay = Replay(engine.settings.session, factors=for_model(model))
    for position, event in enumerate(shop.events, start=1):
        replay.apply(position, event)
    live, offline = engine.factors, replay.factors
    assert live is not None and offline is not None and live.step == offline.step >= 5
    assert np.array_equal(live.u, offline.u) and np.array_equal(live.v, offline.v)
    print(f"{live.step} micro-batches: {live.promotions} promoted, {live.rollbacks} rolled back")
    user = sorted(shop.tastes)[3]
    served = engine.recommend(RecommendRequest(user, "home", 10, {}, "with-factors", clock.now_ms()))
    assert served.factors_version == live.version and served.features is not None
    column = list(model.params["ranker"]["features"]).index("online_factor_score")
    assert served.features[:, column].any()  # the factor score reached the ranker
    explained = engine.explain("with-factors")
    assert explained.identical and explained.manifest["factors_version"] == live.version
    # The state survives a restart (written with the snapshot).
    engine.snapshot()
    engine.log.close()
    reopened = Engine.open(settings, model=model, clock=clock)
    assert reopened.factors is not None and np.array_equal(reopened.factors.v, live.v)
    reopened.log.close()


def test_a_default_model_runs_no_factor_model(engine: Engine) -> None:
    assert engine.factors is None and for_model(engine.model) is None
