"""Training the learned ranker by replaying the event log through the serving code.

For each sampled target event (a view, click, cart add or purchase of a known item) the replay
asks the real ``Recommender`` for its candidates and features at the moment the list before that
event would have been served (``replay.request_points``: right after the user's previous event in
the session): the same ``apply`` and ``bump`` folds, the same profile, the same sources, the same
``feature_matrix``. The target item is the positive; a seeded sample of the other candidates
are the negatives. The candidate models used during replay are trained on the events before the
replayed period only, so no example sees its own future.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from insession.config import SessionConfig, SurfaceConfig
from insession.events import Event, EventType
from insession.model import ModelBundle
from insession.online.factors import for_model
from insession.pipeline import Recommender, RecommendRequest
from insession.ranking.features import FEATURE_NAMES
from insession.replay import Prefix, Replay, request_points

TARGET_GAIN = {EventType.VIEW: 1, EventType.CLICK: 1, EventType.ADD_TO_CART: 2, EventType.PURCHASE: 3}


@dataclass(frozen=True, slots=True)
class RankerConfig:
    enabled: bool = True
    holdout_fraction: float = 0.2
    windows: int = 2
    max_groups: int = 15_000
    negatives: int = 50
    rounds: int = 300
    early_stopping: int = 30
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 40
    l2: float = 0.0
    objective: str = "lambdarank"
    truncation: int = 20
    eval_at: tuple[int, ...] = (10, 20)
    min_events: int = 2_000
    seed: int = 0
    threads: int = 2
    #: One more replay of the latest window, against candidate parts fitted on the events before
    #: an older cut (this fraction of the events earlier), while the online folds learn from all
    #: events: what happened between the two cuts is known online only, as what happens after
    #: training is on a live server. Its groups hold emerging transitions and trends, so the
    #: ranker learns when to trust the online signals. 0: no such window. Used only when the
    #: model serves with online learning (``TrainConfig.learn_online``).
    novelty_lag: float = 0.3

    def __post_init__(self) -> None:
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction: expected 0..1 (exclusive), got {self.holdout_fraction}")
        if self.windows < 1 or self.windows * self.holdout_fraction >= 1:
            raise ValueError(f"windows: expected >= 1 with windows * holdout_fraction < 1, got {self.windows}")
        if self.novelty_lag < 0 or self.holdout_fraction + self.novelty_lag >= 1:
            raise ValueError(
                f"novelty_lag: expected >= 0 with holdout_fraction + novelty_lag < 1, got {self.novelty_lag}"
            )
        if self.max_groups < 10 or self.negatives < 1:
            raise ValueError("max_groups >= 10 and negatives >= 1 expected")


@dataclass(slots=True)
class ReplayData:
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int32]
    groups: list[int]
    targets: int  # sampled target events
    recalled: int  # of which the target was among the candidates

    @staticmethod
    def concat(parts: Sequence[ReplayData]) -> ReplayData:
        if not parts:
            return ReplayData(np.zeros((0, len(FEATURE_NAMES)), np.float32), np.zeros(0, np.int32), [], 0, 0)
        return ReplayData(
            np.concatenate([p.x for p in parts]),
            np.concatenate([p.y for p in parts]),
            [g for p in parts for g in p.groups],
            sum(p.targets for p in parts),
            sum(p.recalled for p in parts),
        )


def replay_groups(
    events: Sequence[Event],
    base: ModelBundle,
    session_cfg: SessionConfig,
    from_ts: int,
    cfg: RankerConfig,
    progress: Callable[[float], None] = lambda f: None,
    learn_online: bool = True,
    prefix: Prefix | None = None,
) -> ReplayData:
    """Build LambdaRank groups from target events at or after ``from_ts`` (``events`` in time order).
    Without ``learn_online`` the replay's online learning stops at ``from_ts``, as it would on a
    server that does not learn online. ``prefix``: the fold of the first events of ``events``, all
    before ``from_ts`` and before any request (``replay.earliest_request``), to continue from
    (used as it is: a caller that replays several windows gives each its own ``Replay.copy``)."""
    recommender = Recommender(base, {"home": SurfaceConfig("home")}, session_cfg.timeout_ms)
    eligible = [
        i for i, e in enumerate(events) if e.ts >= from_ts and e.type in TARGET_GAIN and e.item_id in base.catalog.index
    ]
    rng = np.random.default_rng(cfg.seed)
    if len(eligible) > cfg.max_groups:
        eligible = sorted(rng.choice(eligible, size=cfg.max_groups, replace=False).tolist())
    due = request_points(events, eligible, session_cfg)
    learn = True if learn_online else np.array([e.ts < from_ts for e in events], dtype=np.bool_)
    folded = 0  # events folded before the loop
    if prefix is not None and prefix.events > 0:
        late = events[prefix.events - 1].ts >= from_ts or (due and min(due) < prefix.events - 1)
        if for_model(base) is not None or late:
            raise ValueError("prefix: it must hold no online factors and end before from_ts and the first request")
        replay, folded = prefix.replay, prefix.events
        replay.learn = learn
    else:
        replay = Replay(session_cfg, learn=learn, factors=for_model(base))
    rows: list[npt.NDArray[np.float32]] = []
    labels: list[npt.NDArray[np.int32]] = []
    groups: list[int] = []
    recalled = 0
    done = 0
    for position in range(folded - 1, len(events)):
        if position >= folded:
            replay.apply(position + 1, events[position])
        for point in due.get(position, ()):
            done += 1
            if done % 500 == 0:
                progress(done / len(eligible))
            event = events[point.target]
            req = RecommendRequest(event.user_id, "home", 10, {}, f"replay-{point.target}", point.now_ms)
            ctx = recommender.context(
                req, replay.state(event.user_id), neighbours=replay.neighbours, factors=replay.factors
            )
            merged, _ = recommender.gather(ctx)
            target = base.catalog.index[event.item_id]  # type: ignore[index]
            hit = [n for n, m in enumerate(merged) if m.item == target]
            if not hit:
                continue
            recalled += 1
            others = [n for n in range(len(merged)) if n != hit[0]]
            if len(others) > cfg.negatives:
                others = sorted(rng.choice(others, size=cfg.negatives, replace=False).tolist())
            # Shuffled, so the positive's position carries no signal: with tied scores a
            # stable sort would otherwise credit the tie to whichever row comes first.
            keep = rng.permutation([hit[0], *others]).tolist()
            x = recommender.features(ctx, [merged[n] for n in keep], replay.lookup)
            y = np.zeros(len(keep), dtype=np.int32)
            y[keep.index(hit[0])] = TARGET_GAIN[event.type]
            rows.append(x)
            labels.append(y)
            groups.append(len(keep))
    x_all = np.concatenate(rows) if rows else np.zeros((0, len(FEATURE_NAMES)), np.float32)
    y_all = np.concatenate(labels) if labels else np.zeros(0, np.int32)
    return ReplayData(x_all, y_all, groups, len(eligible), recalled)


def fit_ranker(data: ReplayData, cfg: RankerConfig) -> tuple[str, dict[str, Any]]:
    """LightGBM LambdaRank; the last 10% of groups (the latest in time) validate for early stopping."""
    started = time.perf_counter()
    n_val = max(1, len(data.groups) // 10)
    split = int(sum(data.groups[:-n_val]))
    params = {
        "objective": cfg.objective,
        "metric": "ndcg",
        "ndcg_eval_at": list(cfg.eval_at),
        "learning_rate": cfg.learning_rate,
        "num_leaves": cfg.num_leaves,
        "min_data_in_leaf": cfg.min_data_in_leaf,
        "lambda_l2": cfg.l2,
        "feature_fraction": 0.9,
        "bagging_fraction": 1.0,
        "lambdarank_truncation_level": cfg.truncation,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": cfg.threads,
        "seed": cfg.seed,
        "verbose": -1,
    }
    train_set = lgb.Dataset(
        data.x[:split],
        data.y[:split],
        group=data.groups[:-n_val],
        feature_name=list(FEATURE_NAMES),
        free_raw_data=False,
    )
    valid_set = lgb.Dataset(data.x[split:], data.y[split:], group=data.groups[-n_val:], reference=train_set)
    record: dict[str, Any] = {}
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=cfg.rounds,
        valid_sets=[valid_set],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(cfg.early_stopping, verbose=False), lgb.record_evaluation(record)],
    )
    best = booster.best_iteration or cfg.rounds
    valid = record.get("valid", {})
    stats: dict[str, Any] = {
        "groups": len(data.groups),
        "rows": len(data.y),
        "targets": data.targets,
        "candidate_recall": round(data.recalled / max(data.targets, 1), 4),
        "best_iteration": best,
        "valid_ndcg@10": round(float(valid["ndcg@10"][best - 1]), 4) if "ndcg@10" in valid else None,
        "valid_ndcg@20": round(float(valid["ndcg@20"][best - 1]), 4) if "ndcg@20" in valid else None,
        "fit_seconds": round(time.perf_counter() - started, 2),
    }
    importance = booster.feature_importance(importance_type="gain")
    stats["top_features"] = [FEATURE_NAMES[i] for i in np.argsort(-importance, kind="stable")[:10] if importance[i] > 0]
    return booster.model_to_string(num_iteration=best), stats
