"""Baselines that learn from the test period as it is replayed, for ``evaluate --learn-online``.

With ``--learn-online`` the engine learns from each test event after the predictions made before
it. Comparing that engine with baselines frozen at the end of training would credit the engine
with what is only access to more data, so under that flag every baseline learns from the same
events, in the same order, at the same moments:

- ``popular`` counts each test event;
- ``sr`` adds the rules from each test event's up to ``steps`` previous items in its session
  (``1 / distance``, as in training);
- ``v-sknn`` / ``vs-knn`` add each test session, as it grows, to the sessions neighbours are
  drawn from (the session being predicted excluded: it would match itself). Neighbour sampling,
  IDF and the position vote follow ``SessionIndex`` exactly, over training and live sessions
  together; with no live session the lists are the frozen baseline's.
- ``long-term`` reads the learning rules.

Sessions are cut as the engine cuts them (``sessions.advance``), per user.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from insession.config import SessionConfig
from insession.evaluation.baselines import Baseline, LongTerm, Popular, SequentialRules, SessionKNN, top_k
from insession.evaluation.protocol import TARGET_TYPES, Plan
from insession.index.session_index import KnnConfig, SessionIndex, select
from insession.sessions import SessionState, advance

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class LearningBaseline(Baseline, Protocol):
    def learn(self, session: int, item: int, ts: int) -> None:
        """Take in one test event of live session ``session`` (numbered from 0 in order of start)."""
        ...

    def recommend_live(self, session: int, prefix: IntArray, history: IntArray, k: int) -> IntArray:
        """``recommend`` for a prefix of live session ``session``."""
        ...


class LivePopular:
    def __init__(self, counts: FloatArray) -> None:
        self.name = "popular"
        self.counts = counts.astype(np.float64).copy()
        self.order = Popular.ranking(self.counts)
        self.stale = False

    def learn(self, session: int, item: int, ts: int) -> None:
        self.counts[item] += 1.0
        self.stale = True

    def ranking(self) -> IntArray:
        if self.stale:
            self.order = Popular.ranking(self.counts)
            self.stale = False
        return self.order

    def recommend(self, prefix: IntArray, history: IntArray, k: int) -> IntArray:
        return self.ranking()[:k]

    def recommend_live(self, session: int, prefix: IntArray, history: IntArray, k: int) -> IntArray:
        return self.recommend(prefix, history, k)


class LiveRules:
    """Sequential rules plus the rules learned from test events."""

    def __init__(self, base: SequentialRules, popular: LivePopular) -> None:
        self.name = base.name
        self.base = base
        self.popular = popular
        self.steps = base.steps
        self.extra: dict[int, dict[int, float]] = defaultdict(dict)
        self.sessions: dict[int, list[int]] = defaultdict(list)

    def learn(self, session: int, item: int, ts: int) -> None:
        before = self.sessions[session]
        for d, prev in enumerate(reversed(before[-self.steps :]), start=1):
            row = self.extra[prev]
            row[item] = row.get(item, 0.0) + 1.0 / d
        before.append(item)

    def row(self, item: int) -> tuple[IntArray, FloatArray]:
        cols, weights = self.base.row(item)
        extra = self.extra.get(item)
        if not extra:
            return cols, weights
        all_c = np.concatenate([cols, np.fromiter(extra.keys(), np.int64, len(extra))])
        all_w = np.concatenate([weights, np.fromiter(extra.values(), np.float64, len(extra))])
        uniq, inverse = np.unique(all_c, return_inverse=True)
        return uniq, np.bincount(inverse, weights=all_w).astype(np.float64)

    @property
    def fallback(self) -> IntArray:
        return self.popular.ranking()

    def recommend(self, prefix: IntArray, history: IntArray, k: int) -> IntArray:
        if len(prefix) == 0:
            return self.fallback[:k]
        cands, scores = self.row(int(prefix[-1]))
        return top_k(cands, scores, self.fallback, k)

    def recommend_live(self, session: int, prefix: IntArray, history: IntArray, k: int) -> IntArray:
        return self.recommend(prefix, history, k)


class LiveLongTerm:
    def __init__(self, rules: LiveRules) -> None:
        self.name = "long-term"
        self.inner = LongTerm(rules)  # type: ignore[arg-type]

    def recommend(self, prefix: IntArray, history: IntArray, k: int) -> IntArray:
        return self.inner.recommend(prefix, history, k)

    def recommend_live(self, session: int, prefix: IntArray, history: IntArray, k: int) -> IntArray:
        return self.recommend(prefix, history, k)


class LiveSessionKNN:
    """Session kNN over the training sessions and the live ones, scored as ``SessionIndex`` scores."""

    def __init__(self, base: SessionKNN, popular: LivePopular) -> None:
        self.name = base.name
        self.cfg: KnnConfig = base.cfg
        self.index: SessionIndex = base.index
        self.popular = popular
        self.live_items: list[list[int]] = []  # per live session (numbered after training's)
        self.live_last: list[int] = []
        self.item_live: dict[int, list[int]] = defaultdict(list)  # item -> live sessions holding it
        self.live_n = 0  # live sessions holding an item
        self.base_df = np.diff(self.index.item_ptr).astype(np.float64)

    def learn(self, session: int, item: int, ts: int) -> None:
        while len(self.live_items) <= session:
            self.live_items.append([])
            self.live_last.append(0)
        if not self.live_items[session]:
            self.live_n += 1
        if item not in self.live_items[session]:
            self.item_live[item].append(session)
        self.live_items[session].append(item)
        self.live_last[session] = max(self.live_last[session], ts)

    def recommend(self, prefix: IntArray, history: IntArray, k: int) -> IntArray:
        return self.recommend_live(-1, prefix, history, k)

    def recommend_live(self, session: int, prefix: IntArray, history: IntArray, k: int) -> IntArray:
        items, votes = self.scores(prefix, exclude=session)
        return top_k(items, votes, self.popular.ranking(), k)

    def scores(self, prefix: IntArray, exclude: int) -> tuple[IntArray, FloatArray]:
        if len(prefix) == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        nbrs, sims = self._neighbours(prefix, exclude)
        if len(nbrs) == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        base_n = self.index.n_sessions
        parts = [self._session_items(int(s), base_n) for s in nbrs]
        lens = np.array([len(p) for p in parts], dtype=np.int64)
        pos = np.concatenate([np.arange(n) for n in lens])
        return self.index.votes(prefix, self.cfg, np.concatenate(parts), lens, pos, sims)

    def _session_items(self, s: int, base_n: int) -> IntArray:
        if s < base_n:
            return self.index.items[self.index.starts[s] : self.index.starts[s + 1]].astype(np.int64)
        return np.array(self.live_items[s - base_n], dtype=np.int64)

    def _neighbours(self, prefix: IntArray, exclude: int) -> tuple[IntArray, FloatArray]:
        index, cfg = self.index, self.cfg
        base_n = index.n_sessions
        p_items, weights, _ = SessionIndex._prefix(prefix)
        live_of = [[s for s in self.item_live.get(int(i), ()) if s != exclude] for i in p_items]
        live_n = self.live_n - (1 if 0 <= exclude < len(self.live_items) and self.live_items[exclude] else 0)
        if cfg.idf:
            df = self.base_df[p_items] + np.array([len(x) for x in live_of], dtype=np.float64)
            factor = weights * np.log(max(base_n + live_n, 1) / np.maximum(df, 1.0))
        else:
            factor = weights
        lo, hi = index.item_ptr[p_items], index.item_ptr[p_items + 1]
        sess = [index.item_sessions[a:b] for a, b in zip(lo, hi, strict=True)]
        sess += [base_n + np.array(x, dtype=np.int64) for x in live_of]
        counts = np.array([len(x) for x in sess], dtype=np.int64)
        if counts.sum() == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        uniq, inverse = np.unique(np.concatenate(sess), return_inverse=True)
        sims = np.bincount(inverse, weights=np.repeat(np.concatenate([factor, factor]), counts)).astype(np.float64)
        last = np.zeros(len(uniq), dtype=np.int64)
        trained = uniq < base_n
        last[trained] = index.last_ts[uniq[trained]]
        last[~trained] = [self.live_last[s - base_n] for s in uniq[~trained].tolist()]
        recent = np.lexsort((-uniq, -last))  # newest first; the later session wins ties
        rank = np.empty(len(uniq), dtype=np.int64)
        rank[recent] = np.arange(len(uniq))
        return select(uniq, sims, rank, cfg)


@dataclass(slots=True)
class Learning:
    """The learning baselines in the order asked, and the parts to feed each test event once."""

    models: list[LearningBaseline]
    learners: list[LivePopular | LiveRules | LiveSessionKNN]


def learning(baselines: Sequence[Baseline], popularity: FloatArray) -> Learning:
    """Each fitted baseline wrapped to learn from test events; ``sr`` and ``long-term`` share one
    set of rules and every model one popularity order (its fallback)."""
    popular = LivePopular(popularity)
    learners: list[LivePopular | LiveRules | LiveSessionKNN] = [popular]
    rules: LiveRules | None = None
    models: list[LearningBaseline] = []
    for b in baselines:
        if isinstance(b, Popular):
            models.append(popular)
        elif isinstance(b, SequentialRules | LongTerm):
            if rules is None:
                rules = LiveRules(b if isinstance(b, SequentialRules) else b.rules, popular)
                learners.append(rules)
            models.append(rules if isinstance(b, SequentialRules) else LiveLongTerm(rules))  # type: ignore[arg-type]
        elif isinstance(b, SessionKNN):
            knn = LiveSessionKNN(b, popular)
            learners.append(knn)
            models.append(knn)
        else:
            raise ValueError(f"baseline {b.name!r} cannot learn online")
    return Learning(models, learners)


def run_learning(
    baselines: Sequence[Baseline],
    popularity: FloatArray,
    plan: Plan,
    item_index: Mapping[str, int],
    session_cfg: SessionConfig,
    k: int,
    tick: Callable[[int], None] = lambda n: None,
) -> dict[str, npt.NDArray[np.int64]]:
    """Every baseline's lists (by name), learning each test event of a known item before the
    predictions made after it, as the engine's predict-then-learn replay does."""
    live = learning(baselines, popularity)
    out = {m.name: np.full((len(plan.pairs), k), -1, dtype=np.int64) for m in live.models}
    due: dict[int, list[int]] = defaultdict(list)
    for n, pair in enumerate(plan.pairs):
        due[pair.after].append(n)
    markers: dict[str, SessionState] = {}
    current: dict[str, int] = {}
    started = 0
    done = 0
    learnable = {t.value for t in TARGET_TYPES}
    for position, event in enumerate(plan.stream):
        if plan.is_test[position]:
            new_session, markers[event.user_id] = advance(markers.get(event.user_id), event, session_cfg)
            if new_session or event.user_id not in current:
                current[event.user_id] = started
                started += 1
            item = item_index.get(event.item_id) if event.item_id is not None else None
            if item is not None and event.type.value in learnable:
                for learner in live.learners:
                    learner.learn(current[event.user_id], item, event.ts)
        for n in due.get(position, ()):
            pair = plan.pairs[n]
            test_session = plan.sessions[pair.session]
            prefix = test_session.items[: pair.position]
            own = current.get(event.user_id, -1)
            for model in live.models:
                top = model.recommend_live(own, prefix, test_session.history, k)
                out[model.name][n, : len(top)] = top
            done += 1
            if done % 256 == 0:
                tick(256)
    tick(done % 256)
    return out
