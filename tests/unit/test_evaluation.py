"""The evaluation harness: which pairs are scored and when, the metrics, the baselines, the runner."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from insession.clock import MINUTE_MS, ManualClock
from insession.config import SessionConfig, Settings
from insession.datasets.synthetic import SyntheticShop
from insession.engine import Engine
from insession.evaluation import EvalOptions, Split, evaluate, report, time_split
from insession.evaluation import metrics as m
from insession.evaluation.baselines import Popular, SequentialRules, SessionKNN, TrainingSessions
from insession.evaluation.protocol import plan
from insession.evaluation.runner import EVAL_SURFACE, run_engine, state_view
from insession.events import Event, EventType
from insession.index.session_index import KnnConfig
from insession.model import ModelBundle
from insession.pipeline import Recommender, RecommendRequest
from insession.sessions import fold
from insession.training import sessionize, train

T0 = 1_700_000_000_000
CFG = SessionConfig()


def ev(n: int, user: str, item: str | None, minute: float, kind: EventType = EventType.CLICK) -> Event:
    return Event(f"e{n}", user, kind, T0 + int(minute * MINUTE_MS), item, None)


def test_a_session_of_n_known_items_gives_n_minus_1_pairs_asked_after_the_previous_event() -> None:
    train_events = [ev(1, "a", "x", 0), ev(2, "a", "y", 1), ev(3, "b", "z", 2), ev(4, "b", "x", 3)]
    test_events = [
        ev(10, "c", "x", 100),
        ev(11, "c", "y", 101),
        ev(12, "c", "unknown", 102),  # not in training: dropped from the pairs, still folded
        ev(13, "c", "z", 103),
        ev(14, "c", None, 103.5, EventType.SEARCH),
        ev(15, "c", "x", 104),
        ev(20, "d", "y", 100.5),  # one known item: no pair
        ev(21, "d", "nope", 101.5),
        ev(30, "a", "z", 200),  # user a's second session, with a history
        ev(31, "a", "z", 201),
    ]
    split = Split(train_events, test_events, "test")
    index = {"x": 0, "y": 1, "z": 2}
    p = plan(split, index, CFG)
    assert len(p.sessions) == 2 and p.dropped_short_sessions == 1 and p.dropped_unknown_items == 2
    by_user = {s.user_id: s for s in p.sessions}
    assert by_user["c"].items.tolist() == [0, 1, 2, 0]
    assert by_user["a"].history.tolist() == [0, 1] and by_user["c"].history.tolist() == []
    assert len(p.pairs) == 3 + 1
    stream_ids = [e.event_id for e in p.stream]
    asked = {(p.sessions[q.session].user_id, q.position): (stream_ids[q.after], q.now_ms) for q in p.pairs}
    # The request before "z" comes right after the unknown-item click, the one before the last "x"
    # right after the search: the user's previous event, whatever it was, at its time.
    assert asked[("c", 2)] == ("e12", T0 + 102 * MINUTE_MS)
    assert asked[("c", 3)] == ("e14", T0 + int(103.5 * MINUTE_MS))
    assert asked[("a", 1)] == ("e30", T0 + 200 * MINUTE_MS)
    assert [q.target for q in p.pairs if p.sessions[q.session].user_id == "c"] == [1, 2, 0]


def test_time_split_keeps_sessions_whole() -> None:
    events = [ev(n, "u", f"i{n}", n * 10) for n in range(10)]  # one session: 10-minute gaps
    events += [ev(100 + n, "v", f"i{n}", 24 * 60 * 5 + n) for n in range(3)]
    split = time_split(events, test_days=1, session_cfg=CFG)
    assert {e.user_id for e in split.test} == {"v"} and len(split.train) == 10
    straddling = [ev(n, "w", "i", 24 * 60 * 5 - 20 + n * 10) for n in range(4)]  # crosses the cut
    split = time_split(events + straddling, test_days=1, session_cfg=CFG)
    assert all(e.user_id != "w" for e in split.train)


def test_metrics_by_hand() -> None:
    lists = np.array([[5, 3, 9], [1, 2, 4], [7, 8, 6]], dtype=np.int64)
    targets = np.array([3, 0, 6], dtype=np.int64)
    ranks = m.ranks_of(lists, targets)
    assert ranks.tolist() == [2, 0, 3]
    acc = m.accuracy(ranks, (2, 3))
    assert acc["HR@2"] == pytest.approx(1 / 3) and acc["HR@3"] == pytest.approx(2 / 3)
    assert acc["MRR@3"] == pytest.approx((1 / 2 + 1 / 3) / 3)
    assert acc["NDCG@3"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 3)
    pop = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 10], dtype=np.float64)
    beyond = m.beyond_accuracy(np.array([[9, -1], [9, 1]]), pop, n_items=10, k=2)
    assert beyond["coverage@2"] == pytest.approx(0.2)
    assert beyond["popularity@2"] == pytest.approx((1.0 + (1.0 + 0.1) / 2) / 2)
    rows = m.by_bucket(ranks, np.array([2, 2, 5]), (2, 3, 5))
    assert [(r["bucket"], r["pairs"]) for r in rows] == [("2", 2), ("5+", 1)]


def _sessions(seqs: list[list[int]], n_items: int) -> TrainingSessions:
    events = [
        Event(f"s{s}-{n}", f"user{s}", EventType.CLICK, T0 + s * 10 * 60 * MINUTE_MS + n * MINUTE_MS, str(i), None)
        for s, seq in enumerate(seqs)
        for n, i in enumerate(seq)
    ]
    index = {str(i): i for i in range(n_items)}
    return TrainingSessions(sessionize(events, index, CFG, {"click": 1.0}, collapse_repeats=False), n_items)


def test_sequential_rules_weigh_by_distance_and_keep_repeats() -> None:
    data = _sessions([[1, 2, 3], [1, 2], [4, 4]], n_items=6)
    sr = SequentialRules(data)
    cols, weights = sr.row(1)
    assert dict(zip(cols.tolist(), weights.tolist(), strict=True)) == {2: 2.0, 3: 0.5}
    assert sr.row(4)[0].tolist() == [4]  # a repeated click is a rule too
    top = sr.recommend(np.array([3, 1]), np.array([], dtype=np.int64), 4)
    assert top[:2].tolist() == [2, 3] and len(set(top.tolist())) == 4  # completed by popularity
    assert Popular(data).recommend(np.array([1]), np.array([], dtype=np.int64), 2).tolist() == [1, 2]


def test_session_knn_votes_with_the_most_similar_sessions() -> None:
    data = _sessions([[1, 2, 7], [1, 3, 8], [2, 3, 9], [5, 6]], n_items=10)
    knn = SessionKNN(data, "v-sknn", KnnConfig(k=2, sample=10, idf=False, position_weight=False))
    nbrs, sims = knn.index.neighbours(np.array([1, 2]), knn.cfg)  # weights 0.5 for 1, 1.0 for 2
    assert nbrs.tolist()[0] == 0 and sims[0] == pytest.approx(1.5)
    # Neighbours: session 0 (1.5) and session 2 (1.0); session 1 (0.5) is outside k=2.
    top = knn.recommend(np.array([1, 2]), np.array([], dtype=np.int64), 3).tolist()
    assert top == [2, 1, 7]  # 2: 1.5 + 1.0; 1 and 7: 1.5 each, tie broken by index
    vs = SessionKNN(data, "vs-knn", KnnConfig(k=3, sample=10))
    assert len(vs.recommend(np.array([1, 2]), np.array([], dtype=np.int64), 5)) == 5


def test_state_views_strip_one_side() -> None:
    events = [ev(1, "u", "a", 0), ev(2, "u", "b", 1), ev(3, "u", "c", 120), ev(4, "u", "d", 121)]
    state = fold(events, CFG)["u"]
    assert state_view(state, "joint") is state
    session = state_view(state, "session")
    assert session is not None and not session.history and len(session.events) == 2
    long_term = state_view(state, "long_term")
    assert long_term is not None and not long_term.events and len(long_term.history) == 2
    fresh = fold(events[:2], CFG)["u"]
    assert state_view(fresh, "session") is fresh and state_view(fresh, "long_term") is None


@pytest.fixture(scope="module")
def shop_split(shop: SyntheticShop) -> tuple[Split, ModelBundle]:
    split = time_split(shop.events, test_days=3, session_cfg=CFG)
    return split, train(split.train, items=shop.items)


def test_the_evaluated_path_is_the_served_path(shop_split: tuple[Split, ModelBundle], tmp_path: Path) -> None:
    """Lists from the runner equal what a live Engine serves after ingesting the same events."""
    split, model = shop_split
    p = plan(split, model.catalog.index, CFG)
    recommender = Recommender(model, {}, CFG.timeout_ms)
    run = run_engine(recommender, p, CFG, ("joint",), k=20, workers=1, learn_online=True)  # as live: every event
    checked = 0
    pairs = p.pairs[:: max(1, len(p.pairs) // 12)][:12]
    settings = Settings(data_dir=tmp_path / "d", surfaces={EVAL_SURFACE.name: EVAL_SURFACE})
    engine = Engine.open(settings, model=model, clock=ManualClock(T0))
    ingested = 0
    for n, pair in sorted(((p.pairs.index(q), q) for q in pairs), key=lambda t: t[1].after):
        engine.ingest(p.stream[ingested : pair.after + 1])
        ingested = pair.after + 1
        user = p.stream[pair.after].user_id
        served = engine.recommend(RecommendRequest(user, EVAL_SURFACE.name, 20, {}, "check", pair.now_ms))
        assert [model.catalog.index[i.item_id] for i in served.items] == run.lists["joint"][n].tolist()
        checked += 1
    engine.log.close()
    assert checked >= 10


def test_two_workers_give_the_same_lists_as_one(shop_split: tuple[Split, ModelBundle]) -> None:
    split, model = shop_split
    p = plan(split, model.catalog.index, CFG)
    one = run_engine(Recommender(model, {}, CFG.timeout_ms), p, CFG, k=20, workers=1)
    two = run_engine(Recommender(model, {}, CFG.timeout_ms), p, CFG, k=20, workers=2)
    for variant, lists in one.lists.items():
        assert np.array_equal(lists, two.lists[variant]), variant
    assert one.requests == two.requests and (one.lists["joint"] >= 0).all()


def test_evaluate_scores_every_model_with_the_same_pairs(shop_split: tuple[Split, ModelBundle]) -> None:
    split, model = shop_split
    result = evaluate(split, model=model, options=EvalOptions(workers=1))
    assert set(result.metrics) == {
        "insession",
        "insession/session-only",
        "insession/long-term-only",
        "popular",
        "sr",
        "v-sknn",
        "vs-knn",
        "long-term",
    }
    pairs = result.run["pairs"]
    assert pairs > 100
    for name, rows in result.by_length.items():
        assert sum(int(r["pairs"]) for r in rows) == pairs, name
    # Synthetic users browse one category per session: the session carries the signal.
    joint, long_term = result.metrics["insession"], result.metrics["insession/long-term-only"]
    assert joint["NDCG@20"] > long_term["NDCG@20"] > 0
    assert result.run["comparisons"]["in_session_lift_NDCG@20"] == pytest.approx(
        joint["NDCG@20"] / long_term["NDCG@20"] - 1
    )


def test_a_model_that_saw_the_test_period_is_refused(shop_split: tuple[Split, ModelBundle], model: ModelBundle) -> None:
    split, _ = shop_split
    with pytest.raises(ValueError, match="reaches into the test period"):
        evaluate(split, model=model, options=EvalOptions(workers=1))


def test_churn_between_consecutive_lists_of_a_session_by_hand() -> None:
    lists = np.array([[1, 2, 3, 4], [1, 2, 5, 6], [7, 8, 9, 10], [1, 2, 3, -1]], dtype=np.int64)
    sessions = np.array([0, 0, 1, 0], dtype=np.int64)
    positions = np.array([1, 2, 1, 3], dtype=np.int64)
    # session 0: [1,2,3,4] -> [1,2,5,6] (2 of 4 new) -> [1,2,3] (1 of 3 new); session 1 has one list
    assert m.churn(lists, sessions, positions, 4) == pytest.approx((0.5 + 1 / 3) / 2)


def test_a_churn_budget_lowers_churn_in_the_evaluation(shop_split: tuple[Split, ModelBundle], tmp_path: Path) -> None:
    split, model = shop_split
    options = EvalOptions(workers=2, baselines=(), variants=("joint",), churn_curve=True)
    result = evaluate(split, model=model, options=options)
    curve = {p["budget"]: p for p in result.run["churn_curve"]}
    assert set(curve) == {"none", "keep3", "new10", "new5", "keep5-new2", "new0"}
    assert curve["none"]["churn@20"] == pytest.approx(result.metrics["insession"]["churn@20"], abs=1e-4)
    assert curve["new0"]["churn@20"] < curve["new5"]["churn@20"] <= curve["none"]["churn@20"]
    assert curve["new5"]["churn@20"] <= 5 / 20 + 1e-9  # at most 5 of 20 new per list
    assert curve["new0"]["HR@20"] <= curve["none"]["HR@20"]  # nothing new: the price is relevance
    written = report.write(result, tmp_path / "out")
    assert "plot_churn" in written and "Relevance vs churn" in (tmp_path / "out" / "report.md").read_text()


def test_learning_online_the_baselines_learn_from_the_same_test_events(shop_split: tuple[Split, ModelBundle]) -> None:
    split, model = shop_split
    frozen = evaluate(split, model=model, options=EvalOptions(workers=1, variants=("joint",), baselines=("sr",)))
    learned = evaluate(
        split, model=model, options=EvalOptions(workers=1, variants=("joint",), baselines=("sr",), learn_online=True)
    )
    assert "every baseline" in learned.run["learning"] and "baselines_learning_online_s" in learned.run["timings_s"]
    assert learned.run["pairs"] == frozen.run["pairs"]
    assert learned.metrics["sr"] != frozen.metrics["sr"]  # the rules grew during the test period
