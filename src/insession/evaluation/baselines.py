"""Baselines, fitted on the same training events and scored by the same code as the engine.

- ``popular``: the most frequent training items, the same list for everyone.
- ``sr``: sequential rules (Ludewig & Jannach, 2018): item b following item a within ``steps``
  positions of a training session adds ``1 / distance`` to the rule a -> b (a -> a included, so a
  repeated click is a rule too); a prefix is scored by the rules of its last item.
- ``v-sknn``: session kNN over the prefix with a linear decay (the latest item weighs 1, the one
  before ``(L-1)/L``, ...); among the ``sample`` (500) most recent training sessions that share
  an item with the prefix, the ``k`` (100) most similar vote for their items with their similarity.
- ``vs-knn``: v-sknn plus IDF weighting of the matching items and a vote that favours items close
  (in the neighbour session) to where the neighbour matched the prefix's latest item (Ludewig et
  al., 2019). Both are ``insession.candidates.knn.SessionIndex``, the engine's own kNN source.
- ``long-term``: the user's earlier sessions only, no current session: the sequential rules of
  the user's 20 latest earlier items, weighted ``1 / recency rank``.

Every list is completed with the popularity order when a model has fewer than K items to say, so
all models are compared on full lists; ties always break by item index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from scipy import sparse

from insession.index.session_index import KnnConfig, SessionIndex
from insession.training import SessionArrays

IntArray = npt.NDArray[np.int64]


class Baseline(Protocol):
    name: str

    def recommend(self, prefix: IntArray, history: IntArray, k: int) -> IntArray:
        """The top ``k`` dense item indices for a session prefix and the user's earlier items."""
        ...


@dataclass(frozen=True, slots=True)
class TrainingSessions:
    """Training sessions as flat arrays, every item event kept (repeats too), as the papers do."""

    arr: SessionArrays
    n_items: int

    @property
    def popularity(self) -> npt.NDArray[np.float64]:
        return np.bincount(self.arr.items, minlength=self.n_items).astype(np.float64)


def top_k(cands: IntArray, scores: npt.NDArray[np.float64], fallback: IntArray, k: int) -> IntArray:
    """The ``k`` best of ``cands`` by score (ties by item index), completed from ``fallback``."""
    keep = scores > 0
    cands, scores = cands[keep], scores[keep]
    order = np.lexsort((cands, -scores))[:k]
    best = cands[order]
    if len(best) >= k:
        return best
    extra = fallback[: k + len(best)]
    extra = extra[~np.isin(extra, best)][: k - len(best)]
    return np.concatenate([best, extra])


class Popular:
    name = "popular"

    def __init__(self, data: TrainingSessions) -> None:
        self.order = Popular.ranking(data.popularity)

    @staticmethod
    def ranking(counts: npt.NDArray[np.float64]) -> IntArray:
        """Items by count, most first; ties by item index."""
        return np.lexsort((np.arange(len(counts)), -counts)).astype(np.int64)

    def recommend(self, prefix: IntArray, history: IntArray, k: int) -> IntArray:
        return self.order[:k]


class SequentialRules:
    name = "sr"

    def __init__(self, data: TrainingSessions, steps: int = 10) -> None:
        self.steps = steps
        items, sessions = data.arr.items, data.arr.sessions
        rows, cols, weights = [], [], []
        for d in range(1, steps + 1):
            same = sessions[:-d] == sessions[d:]
            rows.append(items[:-d][same])
            cols.append(items[d:][same])
            weights.append(np.full(int(same.sum()), 1.0 / d))
        n = data.n_items
        # Duplicate (row, col) entries are summed by the conversion to CSR.
        self.rules = sparse.coo_matrix(
            (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
        ).tocsr()
        self.fallback = Popular(data).order

    def row(self, item: int) -> tuple[IntArray, npt.NDArray[np.float64]]:
        lo, hi = self.rules.indptr[item], self.rules.indptr[item + 1]
        return self.rules.indices[lo:hi].astype(np.int64), self.rules.data[lo:hi].astype(np.float64)

    def recommend(self, prefix: IntArray, history: IntArray, k: int) -> IntArray:
        if len(prefix) == 0:
            return self.fallback[:k]
        cands, scores = self.row(int(prefix[-1]))
        return top_k(cands, scores, self.fallback, k)


class LongTerm:
    name = "long-term"

    def __init__(self, rules: SequentialRules, depth: int = 20) -> None:
        self.rules = rules
        self.depth = depth

    def recommend(self, prefix: IntArray, history: IntArray, k: int) -> IntArray:
        recent = history[::-1][: self.depth]
        if len(recent) == 0:
            return self.rules.fallback[:k]
        cands: list[IntArray] = []
        scores: list[npt.NDArray[np.float64]] = []
        for rank, item in enumerate(recent, start=1):
            c, s = self.rules.row(int(item))
            cands.append(c)
            scores.append(s / rank)
        all_c = np.concatenate(cands)
        uniq, inverse = np.unique(all_c, return_inverse=True)
        summed = np.bincount(inverse, weights=np.concatenate(scores)).astype(np.float64)
        return top_k(uniq, summed, self.rules.fallback, k)


class SessionKNN:
    """v-sknn and vs-knn: the engine's session kNN (``candidates.knn``) alone, on every training event."""

    def __init__(self, data: TrainingSessions, name: str, cfg: KnnConfig) -> None:
        self.name = name
        self.cfg = cfg
        arr = data.arr
        self.index = SessionIndex.build(arr.items, arr.sessions, arr.ts, data.n_items)
        self.fallback = Popular(data).order

    def recommend(self, prefix: IntArray, history: IntArray, k: int) -> IntArray:
        items, votes = self.index.scores(prefix, self.cfg)
        return top_k(items, votes, self.fallback, k)


def fit_baselines(data: TrainingSessions, names: Sequence[str]) -> list[Baseline]:
    """The baselines named in ``names`` (any of ``BASELINES``), fitted on ``data``."""
    rules = SequentialRules(data) if {"sr", "long-term"} & set(names) else None
    made: dict[str, Baseline] = {}
    for name in names:
        if name == "popular":
            made[name] = Popular(data)
        elif name == "sr" and rules is not None:
            made[name] = rules
        elif name == "long-term" and rules is not None:
            made[name] = LongTerm(rules)
        elif name == "v-sknn":
            made[name] = SessionKNN(data, name, KnnConfig(idf=False, position_weight=False))
        elif name == "vs-knn":
            made[name] = SessionKNN(data, name, KnnConfig(idf=True, position_weight=True))
        else:
            raise ValueError(f"baseline: expected one of {', '.join(BASELINES)}, got {name!r}")
    return [made[n] for n in names]


BASELINES = ("popular", "sr", "v-sknn", "vs-knn", "long-term")
