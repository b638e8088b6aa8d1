"""Run models over a :class:`~insession.evaluation.protocol.Plan` and collect their ranked lists.

The engine is evaluated through ``Recommender.recommend``, the method the server calls, on state
folded by the same ``apply`` and item activity folded by the same ``bump`` the engine uses; the
event stream is replayed in time order and each pair is asked right after the user's previous
event. Its ablations are views of that same state:

- ``joint``: the state as served (current session + earlier sessions);
- ``session``: the earlier sessions removed (as if the user were anonymous);
- ``long_term``: the current session removed (as if the user had just arrived).

With two or more workers the replay runs in forked processes, each folding the whole stream and
asking its share of the pairs; results are identical to a single worker's.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from insession.config import SessionConfig, SurfaceConfig
from insession.evaluation.baselines import Baseline
from insession.evaluation.protocol import Plan
from insession.events import EventType
from insession.online.factors import for_model
from insession.pipeline import Recommender, RecommendRequest
from insession.replay import Replay
from insession.sessions import SessionState
from insession.training import end_children

VARIANTS = ("joint", "session", "long_term")
#: Next-item evaluation keeps what the user already saw: re-visits are a large share of targets.
#: No deadline (an infinite budget): evaluation measures the model, not how loaded the machine
#: happened to be, so every list is the full tier's and the same on every run.
EVAL_SURFACE = SurfaceConfig(
    "evaluate", exclude_seen=False, exclude_cart=False, exclude_current_item=False, max_seen=None, budget_ms=math.inf
)

Lists = npt.NDArray[np.int64]
Tick = Callable[[int], None]


def state_view(state: SessionState | None, variant: str) -> SessionState | None:
    """The state a variant of the engine sees (``joint`` is the state itself)."""
    if state is None or variant == "joint":
        return state
    if variant == "session":
        return state if not state.history else replace(state, history=())
    if variant == "long_term":
        if not state.history:
            return None
        added = {i.item_id for i in state.events if i.type is EventType.ADD_TO_CART}
        return replace(
            state,
            events=(),
            cart=tuple(c for c in state.cart if c not in added),
            last_event_ms=state.session_started_ms,
        )
    raise ValueError(f"variant: expected one of {', '.join(VARIANTS)}, got {variant!r}")


def run_baseline(model: Baseline, plan: Plan, k: int, tick: Tick = lambda n: None) -> Lists:
    out = np.full((len(plan.pairs), k), -1, dtype=np.int64)
    for n, pair in enumerate(plan.pairs):
        session = plan.sessions[pair.session]
        top = model.recommend(session.items[: pair.position], session.history, k)
        out[n, : len(top)] = top
        if n % 256 == 255:
            tick(256)
    tick(len(plan.pairs) % 256)
    return out


@dataclass(slots=True)
class EngineRun:
    lists: dict[str, Lists]
    seconds: float
    requests: int
    reused: int  # requests answered by reusing the joint list (the view was the joint state)
    tiers: dict[str, int]


def stability_surface(label: str, keep_top: int, max_new: int | None, keep_margin: float = 0.5) -> SurfaceConfig:
    """The evaluation surface with a churn budget, ``evaluate/<label>``; a variant of that name
    replays the engine on it."""
    return replace(
        EVAL_SURFACE, name=f"{EVAL_SURFACE.name}/{label}", keep_top=keep_top, max_new=max_new, keep_margin=keep_margin
    )


#: The churn budgets of the relevance-vs-churn curve (``evaluate --churn-curve``).
CHURN_CURVE = (
    stability_surface("keep3", keep_top=3, max_new=None),
    stability_surface("new10", keep_top=0, max_new=10),
    stability_surface("new5", keep_top=0, max_new=5),
    stability_surface("keep5-new2", keep_top=5, max_new=2),
    stability_surface("new0", keep_top=0, max_new=0),
)


def _replay(
    recommender: Recommender,
    plan: Plan,
    session_cfg: SessionConfig,
    variants: Sequence[str],
    k: int,
    share: tuple[int, int],
    tick: Tick,
    learn_online: bool = False,
) -> tuple[dict[str, Lists], int, int, dict[str, int]]:
    """Each variant's list for this worker's pairs. A variant named like a churn-budget surface
    (``evaluate/<label>``) is the joint state on that surface, with the list it produced for the
    session's previous pair as what the user saw last."""
    worker, workers = share
    index = recommender.model.catalog.index
    mine = [n for n in range(len(plan.pairs)) if plan.pairs[n].session % workers == worker]
    due: dict[int, list[int]] = defaultdict(list)
    for n in mine:
        due[plan.pairs[n].after].append(n)
    lists = {v: np.full((len(plan.pairs), k), -1, dtype=np.int64) for v in variants}
    factors = for_model(recommender.model)
    replay = Replay(session_cfg, learn=True if learn_online else ~plan.is_test, factors=factors)
    requests = reused = done = 0
    tiers: dict[str, int] = defaultdict(int)
    shown: dict[tuple[str, int], tuple[str, ...]] = {}  # (variant, session) -> the last list
    for position, event in enumerate(plan.stream):
        replay.apply(position + 1, event)
        for n in due.get(position, ()):
            pair = plan.pairs[n]
            state = replay.state(event.user_id)
            answered: dict[int, Lists] = {}
            for variant in variants:
                if variant.startswith(f"{EVAL_SURFACE.name}/"):
                    req = RecommendRequest(event.user_id, variant, k, {}, f"eval-{n}-{variant}", pair.now_ms)
                    previous = shown.get((variant, pair.session), ())
                    response = recommender.recommend(
                        req, state, replay.lookup, previous=previous, neighbours=replay.neighbours, factors=factors
                    )
                    ids = tuple(i.item_id for i in response.items)
                    shown[(variant, pair.session)] = ids
                    lists[variant][n, : len(ids)] = [index[i] for i in ids]
                    requests += 1
                    continue
                view = state_view(state, variant)
                if id(view) in answered:
                    lists[variant][n] = answered[id(view)]
                    reused += 1
                    continue
                req = RecommendRequest(event.user_id, EVAL_SURFACE.name, k, {}, f"eval-{n}-{variant}", pair.now_ms)
                response = recommender.recommend(
                    req, view, replay.lookup, neighbours=replay.neighbours, factors=factors
                )
                row = np.array([index[i.item_id] for i in response.items], dtype=np.int64)
                lists[variant][n, : len(row)] = row
                answered[id(view)] = lists[variant][n]
                requests += 1
                tiers[response.tier] += 1
            done += 1
            if done % 64 == 0:
                tick(64)
    tick(done % 64)
    return lists, requests, reused, dict(tiers)


_FORK_STATE: dict[str, Any] = {}


def _worker(worker: int, workers: int, counter: Any, queue: Any) -> None:
    s = _FORK_STATE

    def tick(n: int) -> None:
        with counter.get_lock():
            counter.value += n

    result = _replay(
        s["recommender"], s["plan"], s["session_cfg"], s["variants"], s["k"], (worker, workers), tick, s["learn"]
    )
    queue.put((worker, result))


def run_engine(
    recommender: Recommender,
    plan: Plan,
    session_cfg: SessionConfig,
    variants: Sequence[str] = VARIANTS,
    k: int = 20,
    workers: int = 1,
    tick: Tick = lambda n: None,
    learn_online: bool = False,
) -> EngineRun:
    """The engine's lists for every pair under each variant: a view of the state, or the name of a
    churn-budget surface of ``CHURN_CURVE``."""
    extra = {s.name: s for s in (EVAL_SURFACE, *CHURN_CURVE) if s.name not in recommender.surfaces}
    if extra:
        recommender.surfaces = {**recommender.surfaces, **extra}
    started = time.perf_counter()
    workers = max(1, min(workers, len(plan.pairs) // 200 + 1))
    if workers == 1 or "fork" not in mp.get_all_start_methods():
        lists, requests, reused, tiers = _replay(
            recommender, plan, session_cfg, variants, k, (0, 1), tick, learn_online
        )
        return EngineRun(lists, time.perf_counter() - started, requests, reused, tiers)
    ctx = mp.get_context("fork")
    _FORK_STATE.update(
        recommender=recommender, plan=plan, session_cfg=session_cfg, variants=variants, k=k, learn=learn_online
    )
    counter = ctx.Value("l", 0)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(w, workers, counter, queue), daemon=True) for w in range(workers)]
    try:
        for p in procs:
            p.start()
        results: dict[int, tuple[dict[str, Lists], int, int, dict[str, int]]] = {}
        reported = 0
        while len(results) < workers:
            try:
                worker, result = queue.get(timeout=0.2)
                results[worker] = result
            except Exception:  # queue.Empty: report progress and check the workers are alive
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise RuntimeError("an evaluation worker died; run with --workers 1 to see its error") from None
            with counter.get_lock():
                now = counter.value
            tick(now - reported)
            reported = now
    finally:
        end_children(procs, _FORK_STATE)
    merged = {v: np.full((len(plan.pairs), k), -1, dtype=np.int64) for v in variants}
    requests = reused = 0
    all_tiers: dict[str, int] = defaultdict(int)
    for worker, (lists, req, reu, tier) in results.items():
        rows = np.array([n for n, p in enumerate(plan.pairs) if p.session % workers == worker], dtype=np.int64)
        for v in variants:
            merged[v][rows] = lists[v][rows]
        requests += req
        reused += reu
        for name, count in tier.items():
            all_tiers[name] += count
    return EngineRun(merged, time.perf_counter() - started, requests, reused, dict(all_tiers))
