"""An online factor model: item vectors updated by SGD from the stream, promoted only when a
held-back slice of the newest events says the update did not make things worse.

Two vectors per item: ``U[i]`` (the item as the context: what was looked at) and ``V[i]`` (the
item as the target: what was looked at next), both starting at the trained item embeddings, so
before any update the score ``U[p] . V[q]`` is the trained embedding similarity. Training pairs
are the consecutive counted item events of a session (``p`` then ``q``, as online co-visitation
counts them with ``d = 1``).

Every ``batch`` pairs are a micro-batch. Its newest ``holdout`` share is held back; a candidate
update is trained (BPR, one sampled negative per pair) on the rest plus as many pairs drawn from a
replay buffer of earlier pairs (so one burst cannot drag every vector its way), then scored with
the current vectors on the held-back pairs (the rank of the true next item among sampled
negatives). Promoted when its score is not worse; otherwise rolled back. Either way the batch's
pairs enter the buffer (reservoir sampling over everything seen). Each promotion is a new version
(``version``), recorded in request manifests.

Everything is a pure function of the pairs in order: randomness is seeded per micro-batch from
``(seed, step)``, so the offline replay (``replay.Replay``) and the engine reach the same vectors
at the same log position, and ``explain`` recomputes the scores a request saw.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from insession.model import ModelBundle

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class FactorConfig:
    batch: int = 256
    holdout: float = 0.25
    lr: float = 0.05
    reg: float = 1e-4
    buffer: int = 20_000
    negatives_eval: int = 50
    #: Promote when the held-back score is at least the current one minus this.
    tolerance: float = 0.0
    seed: int = 17


@dataclass(frozen=True, slots=True)
class StepReport:
    step: int
    promoted: bool
    current: float  # held-back score of the vectors before the update (mean reciprocal rank)
    candidate: float


class OnlineFactors:
    """``index`` maps item ids to rows of ``embeddings`` (the trained catalog's dense indices)."""

    def __init__(self, embeddings: Vectors, index: Mapping[str, int], cfg: FactorConfig | None = None) -> None:
        self.cfg = cfg or FactorConfig()
        self.index = index
        self.u = np.array(embeddings, dtype=np.float32, copy=True)
        self.v = np.array(embeddings, dtype=np.float32, copy=True)
        self.pending: list[tuple[int, int]] = []
        self.buffer = np.zeros((0, 2), dtype=np.int64)
        self.seen = 0  # pairs offered to the buffer so far (reservoir sampling)
        self.step = 0
        self.promotions = 0
        self.rollbacks = 0
        self.last: StepReport | None = None

    @property
    def version(self) -> str:
        """``f<promotions>`` after ``<steps>`` micro-batches: changes only on promotion."""
        return f"f{self.promotions}"

    @property
    def n_items(self) -> int:
        return len(self.u)

    def add_ids(self, context: str, target: str) -> StepReport | None:
        """``add`` by item id; pairs with an item the trained catalog lacks are skipped."""
        a, b = self.index.get(context), self.index.get(target)
        return None if a is None or b is None else self.add(a, b)

    def add(self, context: int, target: int) -> StepReport | None:
        """One training pair; runs a micro-batch when ``batch`` are pending."""
        if context == target or max(context, target) >= self.n_items:
            return None
        self.pending.append((context, target))
        if len(self.pending) < self.cfg.batch:
            return None
        return self._step()

    def scores(self, anchors: list[tuple[int, float]], items: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """Per candidate: the anchors' weighted ``U[anchor] . V[item]``."""
        known = [(a, w) for a, w in anchors if a < self.n_items]
        if not known:
            return np.zeros(len(items), dtype=np.float64)
        ctx = np.zeros(self.u.shape[1], dtype=np.float64)
        for a, w in known:
            ctx += w * self.u[a]
        ok = items < self.n_items
        out = np.zeros(len(items), dtype=np.float64)
        out[ok] = self.v[items[ok]] @ ctx
        return out

    def _step(self) -> StepReport:
        cfg = self.cfg
        pairs = np.array(self.pending, dtype=np.int64)
        self.pending = []
        rng = np.random.default_rng([cfg.seed, self.step])
        n_hold = max(1, int(len(pairs) * cfg.holdout))
        train, held = pairs[:-n_hold], pairs[-n_hold:]
        if len(self.buffer):
            replayed = self.buffer[rng.integers(0, len(self.buffer), size=len(train))]
            train = np.concatenate([train, replayed])
        u, v = self.u.copy(), self.v.copy()
        self._sgd(u, v, train[rng.permutation(len(train))], rng)
        negatives = rng.integers(0, self.n_items, size=(len(held), cfg.negatives_eval))
        current = _mrr(self.u, self.v, held, negatives)
        candidate = _mrr(u, v, held, negatives)
        promoted = candidate >= current - cfg.tolerance
        if promoted:
            self.u, self.v = u, v
            self.promotions += 1
        else:
            self.rollbacks += 1
        self._remember(pairs, rng)
        self.step += 1
        self.last = StepReport(self.step, promoted, current, candidate)
        return self.last

    def _sgd(self, u: Vectors, v: Vectors, pairs: npt.NDArray[np.int64], rng: np.random.Generator) -> None:
        """BPR with one uniform negative per pair, in mini-batches of 64 (vectorised)."""
        cfg = self.cfg
        for lo in range(0, len(pairs), 64):
            p, q = pairs[lo : lo + 64, 0], pairs[lo : lo + 64, 1]
            n = rng.integers(0, self.n_items, size=len(p))
            up, vq, vn = u[p], v[q], v[n]
            x = np.einsum("ij,ij->i", up, vq - vn)
            g = (1.0 / (1.0 + np.exp(np.clip(x, -30, 30)))).astype(np.float32)[:, None]
            np.add.at(u, p, cfg.lr * (g * (vq - vn) - cfg.reg * up))
            np.add.at(v, q, cfg.lr * (g * up - cfg.reg * vq))
            np.add.at(v, n, cfg.lr * (-g * up - cfg.reg * vn))

    def _remember(self, pairs: npt.NDArray[np.int64], rng: np.random.Generator) -> None:
        """Reservoir sampling: the buffer is a uniform sample of every pair seen so far."""
        room = self.cfg.buffer - len(self.buffer)
        if room > 0:
            take = pairs[:room]
            self.buffer = np.concatenate([self.buffer, take])
            self.seen += len(take)
            pairs = pairs[room:]
        for pair in pairs:
            self.seen += 1
            slot = int(rng.integers(0, self.seen))
            if slot < len(self.buffer):
                self.buffer[slot] = pair

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        counters = np.array([self.seen, self.step, self.promotions, self.rollbacks], dtype=np.int64)
        pending = np.array(self.pending, dtype=np.int64).reshape(-1, 2)
        np.savez(buf, u=self.u, v=self.v, buffer=self.buffer, pending=pending, counters=counters)
        return buf.getvalue()

    def load(self, raw: bytes) -> None:
        arrays = np.load(io.BytesIO(raw))
        self.u, self.v, self.buffer = arrays["u"], arrays["v"], arrays["buffer"]
        self.pending = [(int(a), int(b)) for a, b in arrays["pending"]]
        self.seen, self.step, self.promotions, self.rollbacks = (int(c) for c in arrays["counters"])


def _mrr(u: Vectors, v: Vectors, held: npt.NDArray[np.int64], negatives: npt.NDArray[np.int64]) -> float:
    """Mean reciprocal rank of each held-back next item among its sampled negatives."""
    ctx = u[held[:, 0]]
    pos = np.einsum("ij,ij->i", ctx, v[held[:, 1]])
    neg = np.einsum("ij,ikj->ik", ctx, v[negatives])
    rank = 1 + (neg > pos[:, None]).sum(axis=1)
    return float(np.mean(1.0 / rank))


def for_model(model: ModelBundle) -> OnlineFactors | None:
    """The online factor model a model's ranker was trained to read (``TrainConfig.online_factors``),
    over its trained catalog; ``None`` when it reads none."""
    if not model.params.get("train", {}).get("online_factors", False):
        return None
    base = model.base or model
    return OnlineFactors(base.embeddings, base.catalog.index)
