"""Batch training: from a stream of events to a :class:`~insession.model.ModelBundle`.

Sessions are cut with the same rule the live fold uses (:func:`insession.sessions.split_sessions`),
so what training calls a session is what serving calls one.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from insession.catalog import Item, catalog_from_events
from insession.config import SessionConfig
from insession.events import Event, EventType
from insession.index.ann import AnnIndex
from insession.index.session_index import SessionIndex
from insession.model import CovisitMatrix, ModelBundle
from insession.ranker_training import RankerConfig, ReplayData, fit_ranker, replay_groups
from insession.ranking.features import FEATURE_NAMES
from insession.replay import Prefix, Replay, earliest_request
from insession.sequence.train import SequenceConfig, fit_sequence, torch_missing, user_timelines
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
    embedding_dim: int = 64
    seed: int = 0
    type_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TYPE_WEIGHTS))
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    #: Give the ranker the online factor model's score (``online.factors``) as a feature, and so
    #: run the model wherever this model serves. Off by default: on the Taobao sample it cost 6%
    #: NDCG@20 (docs/architecture.md, online learning).
    online_factors: bool = False
    #: Whether the model will serve with online learning on (``Settings.learn_online``), and so
    #: whether the ranker's replay learns from each window's own events as it replays them (online
    #: co-visitation, the online factor model). Off, it learns only from the events before each
    #: window, as a server that does not learn online (or a batch-only evaluation) would: the
    #: ranker then learns its features as they will be served, not fresher ones.
    learn_online: bool = True

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
    collapse_repeats: bool = True,
) -> SessionArrays:
    """Group by user, order by event time (stable), cut into sessions, keep weighted item events.

    With ``collapse_repeats`` an immediate repeat of the same item is dropped: it adds no sequence
    information to co-visitation.
    """
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
                if collapse_repeats and idx == previous:
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


@dataclass(slots=True)
class PairCounts:
    """Summed directed pair weights: ``rows[i] -> cols[i]`` with weight ``weights[i]``."""

    rows: npt.NDArray[np.int64]
    cols: npt.NDArray[np.int64]
    weights: npt.NDArray[np.float64]


def count_pairs(arr: SessionArrays, n_items: int, cfg: TrainConfig) -> PairCounts:
    """Weighted co-visitation within ``covisit_window`` steps.

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
        empty = np.zeros(0, dtype=np.int64)
        return PairCounts(empty, empty, np.zeros(0, dtype=np.float64))
    uniq, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    summed = np.bincount(inverse, weights=np.concatenate(vals).astype(np.float64)).astype(np.float64)
    return PairCounts(uniq // n_items, uniq % n_items, summed)


def top_k_neighbours(pairs: PairCounts, n_items: int, topk: int) -> CovisitMatrix:
    """Keep the ``topk`` heaviest neighbours of every item as a CSR matrix."""
    rows, cols, summed = pairs.rows, pairs.cols, pairs.weights
    # Top-k per row: order by row, then weight descending, then column (a total order).
    order = np.lexsort((cols, -summed, rows))
    rows, cols, summed = rows[order], cols[order], summed[order]
    starts = np.searchsorted(rows, np.arange(n_items), side="left")
    rank = np.arange(len(rows)) - starts[rows]
    keep = rank < topk
    rows, cols, summed = rows[keep], cols[keep], summed[keep]
    indptr = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_items), out=indptr[1:])
    return CovisitMatrix(indptr, cols.astype(np.int32), summed.astype(np.float32))


def build_covisit(arr: SessionArrays, n_items: int, cfg: TrainConfig) -> CovisitMatrix:
    return top_k_neighbours(count_pairs(arr, n_items, cfg), n_items, cfg.covisit_topk)


def item_embeddings(
    pairs: PairCounts, n_items: int, dim: int, seed: int, shift: float = 1.0
) -> npt.NDArray[np.float32]:
    """Item vectors from co-occurrence: positive PMI, factorised by randomised SVD.

    Factorising shifted PPMI is what skip-gram with negative sampling (item2vec) does implicitly
    (Levy & Goldberg, 2014); doing it in closed form is deterministic for a seed and takes seconds
    on a CPU. Rows are L2-normalised; items without co-occurrences get a zero vector.
    """
    from scipy import sparse

    out = np.zeros((n_items, dim), dtype=np.float32)
    if len(pairs.rows) == 0:
        return out
    m = sparse.coo_matrix((pairs.weights, (pairs.rows, pairs.cols)), shape=(n_items, n_items)).tocsr()
    m = m + m.T  # symmetric co-occurrence
    total = float(m.sum())
    row_sum = np.asarray(m.sum(axis=1)).ravel()
    coo = m.tocoo()
    pmi = np.log(coo.data * total / (row_sum[coo.row] * row_sum[coo.col])) - np.log(shift)
    keep = pmi > 0
    ppmi = sparse.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=(n_items, n_items))
    k = min(dim, n_items - 1)
    if k < 1 or ppmi.nnz == 0:
        return out
    u, s = _randomized_svd(ppmi, k, seed)
    vecs = u * np.sqrt(s)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    out[:, :k] = np.where(norms > 0, vecs / np.maximum(norms, 1e-12), 0.0)
    return out


def _randomized_svd(
    m: Any,
    k: int,
    seed: int,
    oversample: int = 10,
    iters: int = 4,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Left singular vectors and values of a symmetric sparse matrix (Halko et al., 2011)."""
    rng = np.random.default_rng(seed)
    n = m.shape[0]
    q = np.linalg.qr(m @ rng.standard_normal((n, min(n, k + oversample))))[0]
    for _ in range(iters):
        q = np.linalg.qr(m @ np.linalg.qr(m.T @ q)[0])[0]
    small = np.asarray(q.T @ m @ q)  # m is symmetric, so this is (k+p) x (k+p)
    u_small, s, _ = np.linalg.svd(small)
    return (q @ u_small)[:, :k], s[:k]


def decayed_popularity(
    arr: SessionArrays, n_items: int, cutoff_ms: int, half_life_days: float
) -> npt.NDArray[np.float32]:
    """Sum of event weights, each halved for every ``half_life_days`` before ``cutoff_ms``."""
    if len(arr.items) == 0:
        return np.zeros(n_items, dtype=np.float32)
    age_days = np.maximum(cutoff_ms - arr.ts, 0) / 86_400_000.0
    w = arr.weights * np.exp(-math.log(2) * age_days / half_life_days)
    return np.bincount(arr.items, weights=w, minlength=n_items).astype(np.float32)


def train_parts(
    event_list: Sequence[Event],
    cfg: TrainConfig,
    session_cfg: SessionConfig,
    items: Iterable[Item] = (),
    progress: Progress = _noop,
    sequence_init: ModelBundle | None = None,
) -> ModelBundle:
    """The candidate-generation parts: catalog, co-visitation, popularity, embeddings, ANN index,
    and the sequence model (continued from ``sequence_init``'s where it has one)."""
    progress("catalog", 0.05)
    catalog = catalog_from_events(event_list, known=items)
    progress("sessions", 0.1)
    arr = sessionize(event_list, catalog.index, session_cfg, cfg.type_weights)
    progress("co-visitation", 0.15)
    pairs = count_pairs(arr, len(catalog), cfg)
    covisit = top_k_neighbours(pairs, len(catalog), cfg.covisit_topk)
    cutoff = max(e.ts for e in event_list)
    popularity = decayed_popularity(arr, len(catalog), cutoff, cfg.popularity_half_life_days)
    progress("embeddings", 0.2)
    embeddings = item_embeddings(pairs, len(catalog), cfg.embedding_dim, cfg.seed)
    progress("ANN index", 0.3)
    ann = AnnIndex.build(embeddings, seed=cfg.seed + 1)
    params = {
        "train": {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(cfg).items()},
        "session_timeout_ms": session_cfg.timeout_ms,
        "cutoff_ms": cutoff,
    }
    stats: dict[str, Any] = {
        "events": len(event_list),
        "users": len({e.user_id for e in event_list}),
        "sessions": arr.n_sessions,
        "items": len(catalog),
        "covisit_pairs": len(covisit.indices),
        "items_with_embedding": int((np.linalg.norm(embeddings, axis=1) > 0).sum()),
    }
    sessions = SessionIndex.build(arr.items, arr.sessions, arr.ts, len(catalog))
    sequence, sequence_ann = None, None
    off = "disabled" if not cfg.sequence.enabled else torch_missing()
    if off is None:
        progress("sequence model", 0.4)
        init = None
        if sequence_init is not None and sequence_init.sequence is not None:
            init = (sequence_init.sequence, sequence_init.catalog)
        timelines = user_timelines(event_list, catalog.index)
        sequence, stats["sequence"] = fit_sequence(
            timelines, catalog, cfg.sequence, init, lambda s, f: progress(s, 0.4 + 0.5 * f), embeddings
        )
        sequence_ann = AnnIndex.build(sequence.item_vectors, seed=cfg.seed + 2)
    else:
        stats["sequence"] = {"off": off}
    return ModelBundle(
        catalog,
        covisit,
        popularity,
        embeddings,
        ann,
        sessions=sessions,
        sequence=sequence,
        sequence_ann=sequence_ann,
        params=params,
        stats=stats,
    )


def _replay_window(
    event_list: Sequence[Event],
    w: int,
    cfg: TrainConfig,
    session_cfg: SessionConfig,
    items: Sequence[Item],
    ranker: RankerConfig,
    progress: Progress,
    previous: ModelBundle | None,
    lag: float = 0.0,
    prefix: Prefix | None = None,
) -> tuple[ReplayData, ModelBundle] | None:
    """Ranking groups from the ``w``-th latest slice of the events, replayed against parts fitted
    before it (with ``lag`` > 0: fitted before a cut that fraction of the events earlier, while the
    replay's online folds learn from every event: a window with novelty in it), continuing from
    ``prefix`` (``_shared_prefix``) when given."""
    n = len(event_list)
    start = _window_start(event_list, w, ranker)
    end = event_list[int(n * (1 - (w - 1) * ranker.holdout_fraction))].ts if w > 1 else None
    fit_before = event_list[int(n * (1 - w * ranker.holdout_fraction - lag))].ts if lag > 0 else start
    seen = [e for e in event_list if end is None or e.ts < end]
    early = [e for e in seen if e.ts < fit_before]
    if not early:
        return None
    done = 0.7 * (ranker.windows - w) / ranker.windows
    span = 0.7 / ranker.windows

    def model_progress(stage: str, f: float) -> None:
        progress(f"replay model: {stage}", done + span * 0.4 * f)

    def replay_progress(f: float) -> None:
        progress("replaying events for the ranker", done + span * (0.4 + 0.6 * f))

    base = train_parts(early, cfg, session_cfg, items, model_progress, sequence_init=previous)
    groups = replay_groups(seen, base, session_cfg, start, ranker, replay_progress, cfg.learn_online, prefix)
    return groups, base


def _window_start(event_list: Sequence[Event], w: int, ranker: RankerConfig) -> int:
    """The time the ``w``-th latest window's requests start at (``_replay_window``'s ``start``)."""
    return event_list[int(len(event_list) * (1 - w * ranker.holdout_fraction))].ts


def _shared_prefix(
    event_list: Sequence[Event], cfg: TrainConfig, session_cfg: SessionConfig, ranker: RankerConfig
) -> Prefix | None:
    """The events every replay window folds before its first request, folded once: up to the
    earliest request any window may ask (the oldest window's start, or the same user's event
    before it in one session). At 1M events the windows folded 2.8 times the log between them,
    nearly all of it the same events again; from a shared prefix, 1.6 times (issue 25). ``None``
    where the windows' folds differ from the start (an online factor model per window's parts)."""
    if cfg.online_factors:
        return None
    first_ts = min(_window_start(event_list, w, ranker) for w, _ in _windows(cfg, ranker))
    first = bisect_left(event_list, first_ts, key=lambda e: e.ts)
    k = earliest_request(event_list, first, session_cfg) + 1
    if k <= 0:
        return None
    replay = Replay(session_cfg)
    for position in range(k):
        replay.apply(position + 1, event_list[position])
    return Prefix(replay, k)


def default_workers() -> int:
    """Processes for the parallel parts of training and evaluation: the cores, at most 2."""
    return max(1, min(2, os.cpu_count() or 1))


_FORK_STATE: dict[str, Any] = {}


def end_children(procs: Sequence[Any], state: dict[str, Any]) -> None:
    """Join the forked children this process started (terminating any still running after 5 s)
    and drop the state they inherited."""
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
    state.clear()


def _windows(cfg: TrainConfig, ranker: RankerConfig) -> list[tuple[int, float]]:
    """The replay windows as ``(w, lag)``, in the order their groups are kept: the novelty window
    first (its groups are as recent as the latest window's, so that window stays last and
    validates), then the windows oldest first."""
    novelty = [(1, ranker.novelty_lag)] if ranker.novelty_lag > 0 and cfg.learn_online else []
    return novelty + [(w, 0.0) for w in range(ranker.windows, 0, -1)]


def _window_child(key: tuple[int, float], queue: Any) -> None:
    s = _FORK_STATE
    w, lag = key
    try:
        window = _replay_window(
            s["events"], w, s["cfg"], s["session_cfg"], s["items"], s["ranker"], _noop, None, lag, s["prefix"]
        )
        queue.put((key, None if window is None else window[0], None))
    except BaseException as exc:  # reported, so the parent fails with the reason instead of hanging
        queue.put((key, None, f"{type(exc).__name__}: {exc}"))


def _replay_windows_forked(
    event_list: Sequence[Event],
    cfg: TrainConfig,
    session_cfg: SessionConfig,
    items: Sequence[Item],
    ranker: RankerConfig,
    progress: Progress,
) -> tuple[list[ReplayData], ModelBundle]:
    """Every replay window in its own forked process, and meanwhile the served parts here; the
    windows' groups in time order (oldest first), as the sequential loop gives them."""
    ctx = mp.get_context("fork")
    progress("folding the events every ranker window replays first", 0.02)
    prefix = _shared_prefix(event_list, cfg, session_cfg, ranker)  # each child continues its own copy
    _FORK_STATE.update(events=event_list, cfg=cfg, session_cfg=session_cfg, items=items, ranker=ranker, prefix=prefix)
    del prefix
    queue = ctx.Queue()
    windows = _windows(cfg, ranker)
    procs = [ctx.Process(target=_window_child, args=(w, queue), daemon=True) for w in windows]
    try:
        for p in procs:
            p.start()
        _FORK_STATE.pop("prefix")  # the children hold it; this process fits the served parts
        progress(f"replaying {len(windows)} windows for the ranker in parallel; fitting the served parts", 0.05)
        final = train_parts(event_list, cfg, session_cfg, items, lambda st, f: progress(st, 0.05 + 0.25 * f))
        found: dict[tuple[int, float], ReplayData | None] = {}
        while len(found) < len(windows):
            try:
                w, data, error = queue.get(timeout=1.0)
            except Exception:  # queue.Empty: check the children are alive
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise RuntimeError("a ranker replay process died; train with workers=1 to see why") from None
                continue
            if error is not None:
                raise RuntimeError(f"replaying ranker window {w}: {error}")
            found[w] = data
            progress("replaying events for the ranker", 0.3 + 0.4 * len(found) / len(windows))
    finally:
        end_children(procs, _FORK_STATE)
    return [d for w in windows if (d := found[w]) is not None], final


def train(
    events: Iterable[Event],
    cfg: TrainConfig | None = None,
    session_cfg: SessionConfig | None = None,
    items: Iterable[Item] = (),
    progress: Progress = _noop,
    ranker: RankerConfig | None = None,
    workers: int | None = None,
) -> ModelBundle:
    """Train every model part from ``events``; ``items`` adds catalog metadata and unseen items.
    ``workers`` (default: up to 2 cores) > 1 replays the ranker's windows in forked processes.

    With enough events, the learned ranker is trained by replay: the last ``windows`` slices of
    ``holdout_fraction`` of the events (by time) are each replayed against candidate parts fitted
    on the events before that slice, so no example sees its own future; the served candidate parts
    are then refitted on all events.
    """
    cfg = cfg or TrainConfig()
    session_cfg = session_cfg or SessionConfig()
    ranker = ranker or RankerConfig(seed=cfg.seed)  # one seed for the whole model unless given apart
    workers = default_workers() if workers is None else workers
    started = time.perf_counter()
    event_list = sorted(events, key=lambda e: e.ts)  # stable: file order breaks ties
    if not event_list:
        raise ValueError("events: expected at least one training event, got none")
    items = list(items)
    model_text: str | None = None
    ranker_stats: dict[str, Any] = {}
    previous: ModelBundle | None = None  # the sequence model is continued from one cut to the next
    final: ModelBundle | None = None
    if ranker.enabled and len(event_list) >= ranker.min_events:
        parts: list[ReplayData] = []
        forked = workers > 1 and not cfg.sequence.enabled and "fork" in mp.get_all_start_methods()
        if forked:
            # The windows do not depend on each other (no sequence model to continue), so each is
            # replayed in a forked process while this one fits the served parts: the same
            # computations, the same results, on every core.
            parts, final = _replay_windows_forked(event_list, cfg, session_cfg, items, ranker, progress)
        else:
            progress("folding the events every ranker window replays first", 0.02)
            shared = _shared_prefix(event_list, cfg, session_cfg, ranker)
            for w, lag in _windows(cfg, ranker):  # oldest window last but one: groups stay in time order
                init = None if lag else previous
                own = None if shared is None else Prefix(shared.replay.copy(True), shared.events)
                window = _replay_window(event_list, w, cfg, session_cfg, items, ranker, progress, init, lag, own)
                if window is not None:
                    parts.append(window[0])
                    if not lag:
                        previous = window[1]
        data = ReplayData.concat(parts)
        if len(data.groups) >= 20:
            progress("fitting the ranker", 0.7)
            model_text, ranker_stats = fit_ranker(data, ranker)
        else:
            ranker_stats = {"skipped": f"only {len(data.groups)} usable ranking groups"}
    else:
        ranker_stats = {
            "skipped": f"{len(event_list)} events (< {ranker.min_events})" if ranker.enabled else "disabled"
        }
    if final is None:
        final = train_parts(
            event_list, cfg, session_cfg, items, lambda s, f: progress(s, 0.75 + 0.25 * f), sequence_init=previous
        )
    final.params["ranker"] = {"features": list(FEATURE_NAMES) if model_text else [], "config": asdict(ranker)}
    final.stats["ranker"] = ranker_stats
    final.stats["train_seconds"] = round(time.perf_counter() - started, 3)
    progress("done", 1.0)
    return replace(final, ranker=model_text, version="")
