"""Baselines that learn from the test period (``evaluate --learn-online``): the same lists as the
frozen baselines when nothing is learned, nothing learned before it happened, and the session being
predicted never its own neighbour."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from insession.clock import MINUTE_MS
from insession.config import SessionConfig
from insession.evaluation.baselines import BASELINES, SequentialRules, SessionKNN, TrainingSessions, fit_baselines
from insession.evaluation.protocol import Split, plan
from insession.evaluation.streaming import LivePopular, LiveRules, LiveSessionKNN, learning, run_learning
from insession.events import Event, EventType
from insession.index.session_index import KnnConfig
from insession.training import sessionize

T0 = 1_700_000_000_000
CFG = SessionConfig()
EMPTY = np.array([], dtype=np.int64)


def _events(sessions: list[list[int]], start_minute: float = 0.0, prefix: str = "s") -> list[Event]:
    """One user per session, sessions an hour apart, clicks a minute apart."""
    out = []
    for s, items in enumerate(sessions):
        for j, item in enumerate(items):
            ts = T0 + int((start_minute + 60 * s + j) * MINUTE_MS)
            out.append(Event(f"{prefix}{s}-{j}", f"{prefix}{s}", EventType.CLICK, ts, str(item), None))
    return out


def _data(events: list[Event], n_items: int) -> TrainingSessions:
    index = {str(i): i for i in range(n_items)}
    return TrainingSessions(sessionize(events, index, CFG, {"click": 1.0}, collapse_repeats=False), n_items)


@settings(max_examples=40, deadline=None)
@given(
    sessions=st.lists(st.lists(st.integers(0, 11), min_size=1, max_size=6), min_size=1, max_size=12),
    prefix=st.lists(st.integers(0, 11), min_size=1, max_size=5),
    k=st.integers(1, 4),
    sample=st.integers(1, 6),
)
def test_without_live_sessions_the_lists_are_the_frozen_baselines(
    sessions: list[list[int]], prefix: list[int], k: int, sample: int
) -> None:
    data = _data(_events(sessions), 12)
    for cfg in (KnnConfig(k=k, sample=sample), KnnConfig(k=k, sample=sample, idf=False, position_weight=False)):
        frozen = SessionKNN(data, "knn", cfg)
        live = LiveSessionKNN(frozen, LivePopular(data.popularity))
        p = np.array(prefix, dtype=np.int64)
        assert live.recommend_live(-1, p, EMPTY, 8).tolist() == frozen.recommend(p, EMPTY, 8).tolist()


def test_a_live_session_becomes_a_neighbour_but_never_of_itself() -> None:
    data = _data(_events([[1, 2], [3, 4]]), 10)
    live = LiveSessionKNN(SessionKNN(data, "vs-knn", KnnConfig(k=5, sample=10)), LivePopular(data.popularity))
    assert 9 not in live.scores(np.array([5]), exclude=-1)[0].tolist()
    live.learn(0, 5, T0)
    live.learn(0, 9, T0 + 1)
    items, _ = live.scores(np.array([5]), exclude=-1)
    assert sorted(items.tolist()) == [5, 9]  # session 0, learned live, is now a neighbour
    assert live.scores(np.array([5]), exclude=0)[0].tolist() == []  # ... but not of itself


def test_nothing_is_learned_before_it_happens() -> None:
    """Two test sessions both go 1 -> 7; training never saw 7 follow 1. The first session's
    prediction must not know it (its own 7 comes after it); the second, an hour later, does."""
    train_events = _events([[1, 2], [1, 2], [3, 7]])
    test_events = _events([[1, 7], [1, 7]], start_minute=600, prefix="t")
    split = Split(train_events, test_events, "test")
    index = {str(i): i for i in range(10)}
    data = _data(train_events, 10)
    the_plan = plan(split, index, CFG)
    assert len(the_plan.pairs) == 2
    lists = run_learning(fit_baselines(data, ("sr", "vs-knn")), data.popularity, the_plan, index, CFG, 3)
    for name in ("sr", "vs-knn"):
        first, second = (lists[name][n].tolist() for n in range(2))
        assert 7 not in first, name  # before session t0's 7 happened
        assert 7 in second, name  # after it was learned


def test_every_baseline_can_learn_and_shares_one_popularity_and_one_set_of_rules() -> None:
    data = _data(_events([[1, 2, 3], [2, 3]]), 6)
    live = learning(fit_baselines(data, BASELINES), data.popularity)
    assert [m.name for m in live.models] == list(BASELINES)
    assert len(live.learners) == 4  # popularity, the rules (sr and long-term), two kNNs
    rules = next(x for x in live.learners if isinstance(x, LiveRules))
    for learner in live.learners:
        learner.learn(0, 4, T0)
        learner.learn(0, 5, T0 + 1)
    assert rules.row(4)[0].tolist() == [5]
    assert isinstance(fit_baselines(data, ("sr",))[0], SequentialRules)
    assert live.models[0].recommend_live(0, EMPTY, EMPTY, 2).tolist() == [2, 3]  # 4 and 5: one count each
