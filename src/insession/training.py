"""Batch training: from a stream of events to a :class:`~insession.model.ModelBundle`.

Sessions are cut with the same rule the live fold uses (:func:`insession.sessions.split_sessions`),
so what training calls a session is what serving calls one.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import numpy.typing as npt

from insession.catalog import Item, catalog_from_events
from insession.config import SessionConfig
from insession.events import Event, EventType
from insession.model import CovisitMatrix, ModelBundle
from insession.sessions import split_sessions

Progress = Callable[[str, float], None]

DEFAULT_TYPE_WEIGHTS: Mapping[str, float] = {
    EventType.VIEW.value: 1.0,
    EventType.CLICK.value: 1.0,
    EventType.ADD_TO_CART.value: 3.0,
    EventType.PURCHASE.value: 4.0,
}


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Parameters of batch training; all of them are recorded in the model's params."""

    covisit_window: int = 5
    covisit_topk: int = 50
    forward_weight: float = 1.0
    backward_weight: float = 0.5
    popularity_half_life_days: float = 7.0
    type_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))

    def __post_init__(self) -> None:
        if self.covisit_window < 1:
            raise ValueError(f"covisit_window: expected >= 1, got {self.covisit_window}")
        if self.covisit_topk < 1:
            raise ValueError(f"covisit_topk: expected >= 1, got {self.covisit_topk}")
        if self.popularity_half_life_days <= 0:
            raise ValueError(f"popularity_half_life_days: expected > 0, got {self.popularity_half_life_days}")


@dataclass(slots=True)
class SessionArrays:
    """Every kept interaction of the training data, flattened in session order."""

    items: npt.NDArray[np.int64]
    sessions: npt.NDArray[np.int64]
    weights: npt.NDArray[np.float32]
    ts: npt.NDArray[np.int64]
    n_sessions: int


def _noop(stage: str, fraction: float) -> None:
    return None


def sessionize(
    events: Sequence[Event],
    item_index: Mapping[str, int],
    session_cfg: SessionConfig,
    type_weights: Mapping[str, float],
) -> SessionArrays:
    """Group by user, order by event time (stable), cut into sessions, keep weighted item events."""
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_user[event.user_id].append(event)
    items: list[int] = []
    sessions: list[int] = []
    weights: list[float] = []
    stamps: list[int] = []
    n_sessions = 0
    for user in sorted(by_user):
        user_events = sorted(by_user[user], key=lambda e: e.ts)
        for session in split_sessions(user_events, session_cfg):
            kept = 0
            previous = None
            for event in session:
                w = type_weights.get(event.type.value, 0.0)
                if event.item_id is None or w <= 0:
                    continue
                idx = item_index[event.item_id]
                if idx == previous:  # a repeat of the same item adds no sequence information
                    continue
                previous = idx
                items.append(idx)
                sessions.append(n_sessions)
                weights.append(w)
                stamps.append(event.ts)
                kept += 1
            if kept:
                n_sessions += 1
    return SessionArrays(
        np.asarray(items, dtype=np.int64),
        np.asarray(sessions, dtype=np.int64),
        np.asarray(weights, dtype=np.float32),
        np.asarray(stamps, dtype=np.int64),
        n_sessions,
    )


def build_covisit(arr: SessionArrays, n_items: int, cfg: TrainConfig) -> CovisitMatrix:
    """Weighted co-visitation within ``covisit_window`` steps, top-k per item.

    Item b following item a at distance d adds ``forward_weight * w_b / d`` to (a -> b) and
    ``backward_weight * w_a / d`` to (b -> a): sequential rules and symmetric co-visitation in one
    matrix. Computed with array operations, so a million events take seconds.
    """
    keys: list[npt.NDArray[np.int64]] = []
    vals: list[npt.NDArray[np.float32]] = []
    for d in range(1, cfg.covisit_window + 1):
        if len(arr.items) <= d:
            break
        same = (arr.sessions[:-d] == arr.sessions[d:]) & (arr.items[:-d] != arr.items[d:])
        a, b = arr.items[:-d][same], arr.items[d:][same]
        wa, wb = arr.weights[:-d][same], arr.weights[d:][same]
        keys += [a * n_items + b, b * n_items + a]
        vals += [(cfg.forward_weight / d) * wb, (cfg.backward_weight / d) * wa]
    if not keys:
        empty_ptr = np.zeros(n_items + 1, dtype=np.int64)
        return CovisitMatrix(empty_ptr, np.zeros(0, np.int32), np.zeros(0, np.float32))
    all_keys = np.concatenate(keys)
    all_vals = np.concatenate(vals).astype(np.float64)
    uniq, inverse = np.unique(all_keys, return_inverse=True)
    summed = np.bincount(inverse, weights=all_vals)
    rows, cols = uniq // n_items, uniq % n_items
    # Top-k per row: order by row, then weight descending, then column (a total order).
    order = np.lexsort((cols, -summed, rows))
    rows, cols, summed = rows[order], cols[order], summed[order]
    starts = np.searchsorted(rows, np.arange(n_items), side="left")
    rank = np.arange(len(rows)) - starts[rows]
    keep = rank < cfg.covisit_topk
    rows, cols, summed = rows[keep], cols[keep], summed[keep]
    indptr = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_items), out=indptr[1:])
    return CovisitMatrix(indptr, cols.astype(np.int32), summed.astype(np.float32))


def decayed_popularity(
    arr: SessionArrays, n_items: int, cutoff_ms: int, half_life_days: float
) -> npt.NDArray[np.float32]:
    """Sum of event weights, each halved for every ``half_life_days`` before ``cutoff_ms``."""
    if len(arr.items) == 0:
        return np.zeros(n_items, dtype=np.float32)
    age_days = np.maximum(cutoff_ms - arr.ts, 0) / 86_400_000.0
    w = arr.weights * np.exp(-math.log(2) * age_days / half_life_days)
    return np.bincount(arr.items, weights=w, minlength=n_items).astype(np.float32)


def train(
    events: Iterable[Event],
    cfg: TrainConfig | None = None,
    session_cfg: SessionConfig | None = None,
    items: Iterable[Item] = (),
    progress: Progress = _noop,
) -> ModelBundle:
    """Train every model part from ``events``; ``items`` adds catalog metadata and unseen items."""
    cfg = cfg or TrainConfig()
    session_cfg = session_cfg or SessionConfig()
    started = time.perf_counter()
    event_list = list(events)
    if not event_list:
        raise ValueError("events: expected at least one training event, got none")
    progress("catalog", 0.1)
    catalog = catalog_from_events(event_list, known=items)
    progress("sessions", 0.3)
    arr = sessionize(event_list, catalog.index, session_cfg, cfg.type_weights)
    progress("co-visitation", 0.6)
    covisit = build_covisit(arr, len(catalog), cfg)
    progress("popularity", 0.9)
    cutoff = max(e.ts for e in event_list)
    popularity = decayed_popularity(arr, len(catalog), cutoff, cfg.popularity_half_life_days)
    params = {
        "train": {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(cfg).items()},
        "session_timeout_ms": session_cfg.timeout_ms,
        "cutoff_ms": cutoff,
    }
    stats = {
        "events": len(event_list),
        "users": len({e.user_id for e in event_list}),
        "sessions": arr.n_sessions,
        "items": len(catalog),
        "covisit_pairs": len(covisit.indices),
        "train_seconds": round(time.perf_counter() - started, 3),
    }
    progress("done", 1.0)
    return ModelBundle(catalog, covisit, popularity, params=params, stats=stats)
