"""``evaluate``: train on the training side, replay the test side, score every model the same way."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from insession.config import SessionConfig, Settings
from insession.evaluation import metrics as m
from insession.evaluation.baselines import BASELINES, TrainingSessions, fit_baselines
from insession.evaluation.protocol import TARGET_TYPES, Plan, Split, plan
from insession.evaluation.runner import (
    CHURN_CURVE,
    EVAL_SURFACE,
    VARIANTS,
    Lists,
    Tick,
    run_baseline,
    run_engine,
)
from insession.evaluation.streaming import run_learning
from insession.model import ModelBundle
from insession.pipeline import Recommender
from insession.training import TrainConfig, default_workers, sessionize, train

#: What each engine variant is called in ``metrics.json``.
ENGINE_NAMES = {
    "joint": "insession",
    "session": "insession/session-only",
    "long_term": "insession/long-term-only",
    "no_sequence": "insession/no-sequence",
}
#: Every variant: the state views of one model, and ``no_sequence``, a second model trained
#: without the sequence model (only run when the first one has it).
ALL_VARIANTS = (*VARIANTS, "no_sequence")

#: ``stage(description, total)`` starts a progress stage and returns its tick function.
Stage = Callable[[str, int | None], Tick]


def _quiet(description: str, total: int | None) -> Tick:
    return lambda n: None


@dataclass(frozen=True, slots=True)
class EvalOptions:
    baselines: Sequence[str] = BASELINES
    variants: Sequence[str] = ALL_VARIANTS
    workers: int = field(default_factory=default_workers)
    k: int = 20
    train: TrainConfig = field(default_factory=TrainConfig)  # how the engine is trained when no model is given
    churn_curve: bool = False  # also replay the engine under each churn budget of CHURN_CURVE
    #: Hot-spot control on the evaluated surface: (hot_threshold, hot_discount), or None (off).
    hot: tuple[float, float] | None = None
    #: Predict, then learn: the engine's online co-visitation also learns from the test period's
    #: events as they are replayed (each only after the predictions made before it). Off, it
    #: learns from training events only, like the baselines (the "batch-only" model).
    learn_online: bool = False

    def __post_init__(self) -> None:
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise ValueError(f"baselines: expected any of {', '.join(BASELINES)}, got {', '.join(bad)}")
        bad = [v for v in self.variants if v not in ALL_VARIANTS]
        if bad:
            raise ValueError(f"variants: expected any of {', '.join(ALL_VARIANTS)}, got {', '.join(bad)}")
        if self.k < max(m.CUTOFFS):
            raise ValueError(f"k: expected >= {max(m.CUTOFFS)}, got {self.k}")


@dataclass(slots=True)
class EvalResult:
    metrics: dict[str, dict[str, float]]
    by_length: dict[str, list[dict[str, Any]]]
    by_position: dict[str, list[dict[str, Any]]]
    run: dict[str, Any]


def score(name: str, lists: Lists, plan_: Plan, popularity: np.ndarray, n_items: int, result: EvalResult) -> None:
    ranks = m.ranks_of(lists, plan_.targets())
    sessions = np.array([p.session for p in plan_.pairs], dtype=np.int64)
    churn = {"churn@20": m.churn(lists, sessions, plan_.positions(), 20)}
    result.metrics[name] = {**m.accuracy(ranks), **m.beyond_accuracy(lists, popularity, n_items), **churn}
    result.by_length[name] = m.by_bucket(ranks, plan_.session_lengths(), m.LENGTH_EDGES)
    result.by_position[name] = m.by_bucket(ranks, plan_.positions(), m.POSITION_EDGES)


def evaluate(
    split: Split,
    settings: Settings | None = None,
    model: ModelBundle | None = None,
    options: EvalOptions | None = None,
    stage: Stage = _quiet,
) -> EvalResult:
    """Fit (or take) the engine's model on ``split.train`` and score every model on ``split.test``."""
    settings = settings or Settings()
    options = options or EvalOptions()
    session_cfg: SessionConfig = settings.session
    if not split.train or not split.test:
        raise ValueError(f"split: expected training and test events, got {len(split.train)} and {len(split.test)}")
    started = time.perf_counter()
    timings: dict[str, float] = {}
    if model is None:
        t0 = time.perf_counter()
        # The ranker learns its features as this evaluation serves them: learning online or not.
        cfg = replace(options.train, learn_online=options.learn_online)
        model = _train(split, session_cfg, cfg, stage, "training the engine on the training side", options.workers)
        timings["train_engine_s"] = time.perf_counter() - t0
    else:
        cutoff = int(model.params.get("cutoff_ms", 0))
        first_test = min(e.ts for e in split.test)
        if cutoff >= first_test:
            raise ValueError(
                f"model: trained on events up to ts={cutoff}, which reaches into the test period (from ts="
                f"{first_test}); train it on the training side only"
            )

    t0 = time.perf_counter()
    plan_ = plan(split, model.catalog.index, session_cfg)
    timings["plan_s"] = time.perf_counter() - t0
    if not plan_.pairs:
        raise ValueError("test: no session has two or more items known to training; nothing to evaluate")
    n_items = len(model.catalog)
    weights = {t.value: 1.0 for t in TARGET_TYPES}
    arr = sessionize(split.train, model.catalog.index, session_cfg, weights, collapse_repeats=False)
    data = TrainingSessions(arr, n_items)
    popularity = data.popularity

    result = EvalResult({}, {}, {}, {})
    engine_run = None
    churn_curve: list[dict[str, Any]] = []
    views = [v for v in options.variants if v in VARIANTS]
    stable = [s.name for s in CHURN_CURVE] if options.churn_curve else []
    if stable and "joint" not in views:
        views.insert(0, "joint")
    if views:
        surfaces = dict(settings.surfaces)
        if options.hot is not None:
            surfaces[EVAL_SURFACE.name] = replace(
                EVAL_SURFACE, hot_threshold=options.hot[0], hot_discount=options.hot[1]
            )
        recommender = Recommender(model, surfaces, session_cfg.timeout_ms)
        title = f"insession ({', '.join(views)}{', churn budgets' if stable else ''})"
        tick = stage(title, len(plan_.pairs))
        engine_run = run_engine(
            recommender, plan_, session_cfg, views + stable, options.k, options.workers, tick, options.learn_online
        )
        timings["insession_s"] = engine_run.seconds
        for variant in views:
            score(ENGINE_NAMES[variant], engine_run.lists[variant], plan_, popularity, n_items, result)
        sessions = np.array([p.session for p in plan_.pairs], dtype=np.int64)
        positions = plan_.positions()
        joint_name = ENGINE_NAMES["joint"]
        if stable:
            curve = [{"budget": "none", **_point(result.metrics[joint_name])}]
            for variant, surface in zip(stable, CHURN_CURVE, strict=True):
                lists = engine_run.lists[variant]
                point = m.accuracy(m.ranks_of(lists, plan_.targets()))
                point["churn@20"] = m.churn(lists, sessions, positions, 20)
                curve.append(
                    {
                        "budget": variant.split("/", 1)[1],
                        "keep_top": surface.keep_top,
                        "max_new": surface.max_new,
                    }
                    | _point(point)
                )
            churn_curve = curve
    if "no_sequence" in options.variants and model.sequence is not None:
        t0 = time.perf_counter()
        cfg = replace(
            options.train,
            sequence=replace(options.train.sequence, enabled=False),
            learn_online=options.learn_online,
        )
        plain = _train(
            split, session_cfg, cfg, stage, "training the engine without the sequence model", options.workers
        )
        timings["train_no_sequence_s"] = time.perf_counter() - t0
        recommender = Recommender(plain, settings.surfaces, session_cfg.timeout_ms)
        tick = stage("insession (no sequence model)", len(plan_.pairs))
        plain_run = run_engine(
            recommender, plan_, session_cfg, ["joint"], options.k, options.workers, tick, options.learn_online
        )
        timings["insession_no_sequence_s"] = plain_run.seconds
        score(ENGINE_NAMES["no_sequence"], plain_run.lists["joint"], plan_, popularity, n_items, result)

    t0 = time.perf_counter()
    baselines = fit_baselines(data, options.baselines)
    timings["fit_baselines_s"] = time.perf_counter() - t0
    if options.learn_online and baselines:
        # The engine learned from the test period; so do the baselines, from the same events.
        tick = stage(f"baselines, learning online ({', '.join(b.name for b in baselines)})", len(plan_.pairs))
        t0 = time.perf_counter()
        learned = run_learning(baselines, popularity, plan_, model.catalog.index, session_cfg, options.k, tick)
        timings["baselines_learning_online_s"] = time.perf_counter() - t0
        for name, lists in learned.items():
            score(name, lists, plan_, popularity, n_items, result)
        baselines = []
    for baseline in baselines:
        tick = stage(baseline.name, len(plan_.pairs))
        t0 = time.perf_counter()
        lists = run_baseline(baseline, plan_, options.k, tick)
        timings[f"{baseline.name}_s"] = time.perf_counter() - t0
        score(baseline.name, lists, plan_, popularity, n_items, result)

    timings["total_s"] = time.perf_counter() - started
    lengths = np.array([len(s.items) for s in plan_.sessions])
    users_with_history = sum(1 for s in plan_.sessions if len(s.history))
    result.run = {
        "split": split.description,
        "train_events": len(split.train),
        "test_events": len(split.test),
        "test_sessions": len(plan_.sessions),
        "test_sessions_with_earlier_history": users_with_history,
        "pairs": len(plan_.pairs),
        "mean_test_session_length": round(float(lengths.mean()), 3),
        "dropped_unknown_item_events": plan_.dropped_unknown_items,
        "dropped_short_sessions": plan_.dropped_short_sessions,
        "items": n_items,
        "model_version": model.version,
        "ranker": "learned" if model.ranker is not None else "simple (no learned ranker)",
        "sequence_model": {k: v for k, v in model.stats.get("sequence", {}).items() if k != "epochs"},
        "workers": options.workers,
        "learning": (
            "predict, then learn: the engine's online co-visitation and every baseline also learn from "
            "test events as they are replayed"
            if options.learn_online
            else "batch-only: online co-visitation learns from training events only"
        ),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "protocol": (
            "next item: each test session of n known items gives n-1 pairs; each pair is asked right "
            "after the user's previous event, at its time"
        ),
    }
    if engine_run is not None:
        result.run["engine_requests"] = engine_run.requests
        result.run["engine_requests_reused"] = engine_run.reused
        result.run["engine_tiers"] = engine_run.tiers
    result.run["comparisons"] = comparisons(result.metrics)
    if churn_curve:
        result.run["churn_curve"] = churn_curve
    return result


def _point(values: dict[str, float]) -> dict[str, float]:
    return {key: round(values[key], 4) for key in ("churn@20", "HR@20", "MRR@20", "NDCG@20")}


def _train(
    split: Split, session_cfg: SessionConfig, cfg: TrainConfig, stage: Stage, title: str, workers: int = 1
) -> ModelBundle:
    tick = stage(title, 100)
    done = [0]

    def progress(name: str, fraction: float) -> None:
        now = int(fraction * 100)
        tick(now - done[0])
        done[0] = now

    return train(split.train, cfg, session_cfg=session_cfg, progress=progress, workers=workers)


def comparisons(metrics: dict[str, dict[str, float]]) -> dict[str, float | None]:
    """Relative differences the issue asks for: in-session lift and the engine vs each baseline."""
    out: dict[str, float | None] = {}
    joint = metrics.get(ENGINE_NAMES["joint"])
    if joint is None:
        return out
    long_term = metrics.get(ENGINE_NAMES["long_term"])
    if long_term is not None:
        for key in ("NDCG@20", "MRR@20", "HR@20"):
            out[f"in_session_lift_{key}"] = m.relative(joint[key], long_term[key])
    plain = metrics.get(ENGINE_NAMES["no_sequence"])
    if plain is not None:
        for key in ("NDCG@20", "MRR@20", "HR@20"):
            out[f"sequence_lift_{key}"] = m.relative(joint[key], plain[key])
    for name, values in metrics.items():
        if name.startswith("insession"):
            continue
        for key in ("HR@20", "MRR@20", "NDCG@20"):
            out[f"vs_{name}_{key}"] = m.relative(joint[key], values[key])
    return out
