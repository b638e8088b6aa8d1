"""Session kNN: items from the training sessions most similar to the current one.

``SessionIndex`` keeps the training sessions (flat item arrays) and an item -> sessions index.
Scoring a session prefix follows the VS-kNN family (Ludewig & Jannach, 2018; Ludewig et al.,
2019):

1. prefix weights decay linearly: the latest item weighs 1, the one before ``(L-1)/L``, ...;
2. candidate neighbours are the training sessions sharing an item with the prefix, of which the
   ``sample`` most recent are kept;
3. a neighbour's similarity is the sum of the weights of the prefix items it contains (times
   each item's IDF when ``idf`` is on), and the ``k`` most similar are kept;
4. each neighbour votes its similarity for every item it holds (times ``1 / (1 + distance)``
   from where it matched the prefix's latest item when ``position_weight`` is on).

The engine uses it as a candidate source (``candidates.knn``) and a ranker feature; the evaluation
uses the same class as the ``v-sknn`` and ``vs-knn`` baselines.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class KnnConfig:
    k: int = 100
    sample: int = 500
    idf: bool = True
    position_weight: bool = True


def select(sessions: IntArray, sims: FloatArray, recency: IntArray, cfg: KnnConfig) -> tuple[IntArray, FloatArray]:
    """Steps 2-3 on candidate ``sessions`` with their similarity and recency rank (0 = newest): the
    ``sample`` most recent, then the ``k`` most similar (ties: the more recent)."""
    if len(sessions) > cfg.sample:
        recent = np.argsort(recency, kind="stable")[: cfg.sample]
        sessions, sims, recency = sessions[recent], sims[recent], recency[recent]
    best = np.lexsort((recency, -sims))[: cfg.k]
    return sessions[best], sims[best]


@dataclass(slots=True)
class SessionIndex:
    items: npt.NDArray[np.int32]  # every session's items, sessions contiguous
    starts: IntArray  # session s is items[starts[s]:starts[s + 1]]
    last_ts: IntArray  # each session's last event time (ms)
    n_items: int
    recency: IntArray = field(init=False)  # 0 = the most recent session
    item_ptr: IntArray = field(init=False)
    item_sessions: IntArray = field(init=False)
    idf: FloatArray = field(init=False)

    def __post_init__(self) -> None:
        n_sess = len(self.starts) - 1
        order = np.lexsort((-np.arange(n_sess), -self.last_ts))  # newest first; later session number wins ties
        self.recency = np.empty(n_sess, dtype=np.int64)
        self.recency[order] = np.arange(n_sess)
        owner = np.repeat(np.arange(n_sess, dtype=np.int64), np.diff(self.starts))
        keys = np.unique(self.items.astype(np.int64) * max(n_sess, 1) + owner)
        item_of, self.item_sessions = keys // max(n_sess, 1), keys % max(n_sess, 1)
        self.item_ptr = np.searchsorted(item_of, np.arange(self.n_items + 1))
        self.idf = _idf(self.item_ptr, n_sess)

    def widened(self, n_items: int) -> SessionIndex:
        """This index over a catalog grown to ``n_items`` (items appended, in no trained session):
        what ``SessionIndex(items, starts, last_ts, n_items)`` computes, without going over every
        trained session again. Items join the catalog with the events that name them, batch by
        batch; rebuilding cost 2.5 s a batch at 3M training events."""
        if n_items < self.n_items:
            raise ValueError(f"n_items: {n_items} is fewer than the {self.n_items} this index covers")
        k = n_items - self.n_items
        out: SessionIndex = object.__new__(SessionIndex)
        out.items, out.starts, out.last_ts, out.n_items = self.items, self.starts, self.last_ts, n_items
        out.recency, out.item_sessions = self.recency, self.item_sessions
        out.item_ptr = np.concatenate([self.item_ptr, np.full(k, self.item_ptr[-1], dtype=self.item_ptr.dtype)])
        out.idf = _idf(out.item_ptr, len(self.starts) - 1)
        return out

    @staticmethod
    def build(items: IntArray, sessions: IntArray, ts: npt.NDArray[np.int64], n_items: int) -> SessionIndex:
        """From flat arrays where ``sessions`` numbers each item's session (contiguous, from 0)."""
        n_sess = int(sessions.max()) + 1 if len(sessions) else 0
        starts = np.searchsorted(sessions, np.arange(n_sess + 1)).astype(np.int64)
        last_ts = np.zeros(n_sess, dtype=np.int64)
        np.maximum.at(last_ts, sessions, ts)
        return SessionIndex(items.astype(np.int32), starts, last_ts, n_items)

    @property
    def n_sessions(self) -> int:
        return len(self.starts) - 1

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, items=self.items, starts=self.starts, last_ts=self.last_ts)
        return buf.getvalue()

    @staticmethod
    def from_bytes(data: bytes, n_items: int) -> SessionIndex:
        arrays = np.load(io.BytesIO(data))
        return SessionIndex(arrays["items"], arrays["starts"], arrays["last_ts"], n_items)

    @staticmethod
    def _prefix(prefix: IntArray) -> tuple[IntArray, FloatArray, IntArray]:
        """Unique prefix items, their decay weight (latest occurrence wins) and latest position."""
        length = len(prefix)
        uniq, first_rev = np.unique(prefix[::-1], return_index=True)
        latest = length - 1 - first_rev
        return uniq, (latest + 1) / length, latest

    def neighbours(self, prefix: IntArray, cfg: KnnConfig) -> tuple[IntArray, FloatArray]:
        items, weights, _ = self._prefix(prefix)
        lo, hi = self.item_ptr[items], self.item_ptr[items + 1]
        counts = hi - lo
        if counts.sum() == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        sess = self.item_sessions[np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)])]
        factor = weights * self.idf[items] if cfg.idf else weights
        uniq, inverse = np.unique(sess, return_inverse=True)
        sims = np.bincount(inverse, weights=np.repeat(factor, counts)).astype(np.float64)
        return select(uniq, sims, self.recency[uniq], cfg)

    def scores(self, prefix: IntArray, cfg: KnnConfig) -> tuple[IntArray, FloatArray]:
        """Every item the neighbours hold, with its vote (unsorted)."""
        if len(prefix) == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        nbrs, sims = self.neighbours(prefix, cfg)
        if len(nbrs) == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        lo, hi = self.starts[nbrs], self.starts[nbrs + 1]
        lens = hi - lo
        flat = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)])
        return self.votes(prefix, cfg, self.items[flat].astype(np.int64), lens, flat - np.repeat(lo, lens), sims)

    def votes(
        self, prefix: IntArray, cfg: KnnConfig, items: IntArray, lens: IntArray, pos: IntArray, sims: FloatArray
    ) -> tuple[IntArray, FloatArray]:
        """Step 4: neighbour ``n`` holds ``lens[n]`` of ``items`` (contiguous, at positions ``pos``
        in it) and votes ``sims[n]`` for each; the votes summed per item."""
        owner = np.repeat(np.arange(len(sims)), lens)
        vote = np.repeat(sims, lens)
        if cfg.position_weight:
            vote = vote * self._closeness(prefix, items, owner, pos, len(sims))
        uniq, inverse = np.unique(items, return_inverse=True)
        return uniq, np.bincount(inverse, weights=vote).astype(np.float64)

    def _closeness(self, prefix: IntArray, items: IntArray, owner: IntArray, pos: IntArray, n: int) -> FloatArray:
        """``1 / (1 + distance)`` from each item to where its session matched the latest prefix item."""
        p_items, _, p_latest = self._prefix(prefix)
        where = np.minimum(np.searchsorted(p_items, items), len(p_items) - 1)
        rank = np.where(p_items[where] == items, p_latest[where], -1)
        # Per neighbour, the match with the latest prefix position (then the latest own position).
        order = np.lexsort((pos, rank, owner))
        last = np.searchsorted(owner[order], np.arange(n), side="right") - 1
        anchor = pos[order][last]
        return 1.0 / (1.0 + np.abs(pos - anchor[owner]))  # type: ignore[no-any-return]


def _idf(item_ptr: IntArray, n_sess: int) -> FloatArray:
    """Per item, log(sessions / the sessions holding it), a session-less item counted as one."""
    idf: FloatArray = np.log(max(n_sess, 1) / np.maximum(np.diff(item_ptr).astype(np.float64), 1.0))
    return idf
