"""The ``Recommender``: candidates -> ranking -> re-ranking for one request, under a deadline.

It is given the user's state and the model and does no I/O. Its only clock is a monotonic one
(``time.perf_counter`` unless a test injects another) for stage timings and deadlines. A surface's
``budget_ms`` is shared out among the stages (``STAGE_SHARES``, cumulative): candidate sources
stop being asked once the candidates deadline has passed, and the learned ranker scores only as
many candidates as its measured cost per row lets it finish by the ranking deadline (or none:
then the transparent scorer ranks them and the tier is ``fast``). Re-ranking always runs: its
rules are what keeps purchased and dismissed items out. The response names the tier that served
it and every stage that was cut, so a degraded list is never mistaken for a full one.

Tiers, best first: ``full`` (all stages, learned ranker), ``fast`` (candidates and the
transparent scorer, no feature matrix), ``popular`` (no personalisation: popularity, then the
re-ranking rules). The caller picks the tier (``insession.tiers.TierMonitor`` steps it down
while a surface's p99 is over its threshold); a request may still end up lower than asked.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from insession.candidates.base import Candidate, CandidateSource, RequestContext
from insession.candidates.content import ContentSource
from insession.candidates.covisit import CovisitSource, OnlineCovisitSource
from insession.candidates.embedding import EmbeddingSource
from insession.candidates.knn import SessionKnnSource
from insession.candidates.merge import Merged, merge
from insession.candidates.popularity import PopularitySource
from insession.candidates.recent import RecentSource
from insession.candidates.sequence import SequenceSource
from insession.config import SurfaceConfig
from insession.errors import FieldError, ValidationError, describe
from insession.features.activity import ItemActivity
from insession.features.profile import ProfileConfig, build_profile
from insession.features.streaming import AnchorConfig, session_anchors
from insession.filters import NO_FILTERS, Filters, allowed, restricts
from insession.model import ModelBundle
from insession.online import bandit, covisit
from insession.online.factors import OnlineFactors
from insession.online.novelty import followers_at, latest_item
from insession.ranking.features import feature_matrix
from insession.ranking.learned import LearnedScorer
from insession.ranking.simple import SimpleScorer
from insession.rerank import Ranked, apply_rules, stabilise
from insession.sessions import SessionState

#: Reads the live activity of items (by id) from wherever state is kept; ``None`` where unknown.
ActivityLookup = Callable[[Sequence[str]], list[ItemActivity | None]]


def no_activity(items: Sequence[str]) -> list[ItemActivity | None]:
    return [None] * len(items)


#: Reads the exploration feedback of items (by id): (impressions, clicks) each.
FeedbackLookup = Callable[[Sequence[str]], list[tuple[int, int]]]


def no_feedback(items: Sequence[str]) -> list[tuple[int, int]]:
    return [(0, 0)] * len(items)


#: Reads the online co-visitation lists of items (by id); ``None`` where none is kept.
NeighbourLookup = Callable[[Sequence[str]], list[covisit.Neighbours | None]]


def no_neighbours(items: Sequence[str]) -> list[covisit.Neighbours | None]:
    return [None] * len(items)


TIERS = ("full", "fast", "popular")
#: Share of a surface's budget each stage may use; a stage's deadline is the request's start plus
#: the budget times the shares of it and every stage before it.
STAGE_SHARES = {"features": 0.15, "candidates": 0.35, "ranking": 0.4, "rerank": 0.1}
#: Sources asked even past the candidates deadline: popularity is a slice of a precomputed order,
#: and it keeps a cut request's list full.
FLOOR_SOURCES = frozenset({"popular"})
#: The learned ranker scores at least this many candidates when it runs at all.
MIN_RANKED = 50


@dataclass(frozen=True, slots=True)
class Forced:
    """The moment-dependent decisions of a served request, replayed instead of re-decided: the
    tier it was served at, the sources its deadline skipped, how many candidates the learned
    ranker scored (``None``: all), and the stages it reported cut."""

    tier: str
    skipped_sources: tuple[str, ...] = ()
    ranked_rows: int | None = None
    cut: tuple[str, ...] = ()
    explored: tuple[str, ...] = ()  # the items exploration put in the list


@dataclass(frozen=True, slots=True)
class RecommendRequest:
    user_id: str
    surface: str = "home"
    k: int = 10
    context: Mapping[str, str] = field(default_factory=dict)
    request_id: str = ""
    now_ms: int = 0  # request (processing) time; decides whether the session is still live
    #: What the list may hold (categories, a price range, items to leave out, in stock only).
    filters: Filters = NO_FILTERS


@dataclass(frozen=True, slots=True)
class RecommendedItem:
    item_id: str
    score: float
    sources: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "score": round(self.score, 6), "sources": list(self.sources)}


@dataclass(frozen=True, slots=True)
class RecommendResponse:
    request_id: str
    user_id: str
    surface: str
    items: tuple[RecommendedItem, ...]
    session_id: str | None
    session_version: int
    model_version: str
    tier: str
    timings_ms: Mapping[str, float]
    removed_by_rule: Mapping[str, list[str]] = field(default_factory=dict)
    #: Stages that ran out of time and returned partial results, e.g. ``("candidates",)``.
    cut: tuple[str, ...] = ()
    #: Candidate sources not asked because the candidates deadline had passed.
    skipped_sources: tuple[str, ...] = ()
    #: Items the surface's churn budget moved or held against the list shown before.
    stabilised: tuple[str, ...] = ()
    #: Items exploration put in the last positions (tagged ``explore`` in their sources).
    explored: tuple[str, ...] = ()
    #: The online factor model's version the ranker read (``""``: none).
    factors_version: str = ""
    #: How many candidates the learned ranker scored when the ranking deadline truncated them.
    ranked_rows: int | None = None
    #: Served again from the freshness cache (``session``/``batch`` surfaces) instead of computed.
    cached: bool = False
    #: Share of the top k that is new since the list last shown in this session (None: first list).
    churn: float | None = None
    #: Why the list is degraded beyond load shedding, e.g. the store was unavailable (else None).
    degraded: str | None = None
    #: The session embedding the list was computed for (freshness decisions; not serialised).
    intent: npt.NDArray[np.float32] | None = None
    #: The candidates in merge order and their feature rows (not serialised; for explain and tests).
    candidate_ids: tuple[str, ...] = ()
    features: npt.NDArray[np.float32] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "user_id": self.user_id,
            "surface": self.surface,
            "items": [i.to_dict() for i in self.items],
            "session_id": self.session_id,
            "session_version": self.session_version,
            "model_version": self.model_version,
            "tier": self.tier,
            "cut": list(self.cut),
            "cached": self.cached,
            "churn": self.churn,
            "degraded": self.degraded,
            "timings_ms": dict(self.timings_ms),
        }

    @property
    def etag(self) -> str:
        """Equal for equal lists (same model, surface and items in order): a client that holds the
        list under this tag need not redraw it."""
        h = hashlib.sha256(f"{self.model_version}|{self.surface}|".encode())
        for item in self.items:
            h.update(item.item_id.encode() + b"\0")
        return f'"{h.hexdigest()[:20]}"'


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    candidate_limit: int = 730
    quotas: Mapping[str, int] = field(
        default_factory=lambda: {
            "covisit": 200,
            "covisit_online": 50,
            "session_ann": 100,
            "user_ann": 60,
            "content": 80,
            "popular": 60,
            "recent": 30,
            "sequence": 100,
        }
    )
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    #: How many of the heaviest anchors the online co-visitation lists are read for.
    online_anchors: int = 10
    profile: ProfileConfig = field(default_factory=ProfileConfig)


class Recommender:
    def __init__(
        self,
        model: ModelBundle,
        surfaces: Mapping[str, SurfaceConfig],
        session_timeout_ms: int,
        cfg: PipelineConfig | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.model = model
        self.clock = clock
        #: Measured cost of the learned ranker per candidate row (seconds), a moving average. When
        #: it says nothing fits, it is lowered a little on every request that skipped the ranker,
        #: so the ranker is tried again (and re-measured) once a slow spell has passed.
        self.rank_cost_s = 2e-6
        #: Test hook: called where the learned ranker runs (a fault test makes it sleep).
        self.ranking_hook: Callable[[], None] | None = None
        self.session_timeout_ms = session_timeout_ms
        self.surfaces = surfaces
        self.cfg = cfg or PipelineConfig()
        self.sources: tuple[CandidateSource, ...] = (
            RecentSource(),
            CovisitSource(),
            OnlineCovisitSource(),
            SessionKnnSource(),
            SequenceSource(),
            EmbeddingSource("session_ann", "session"),
            EmbeddingSource("user_ann", "user"),
            ContentSource(),
            PopularitySource(),
        )
        self.simple = SimpleScorer()
        self.adopt(model)
        self.learned = (
            LearnedScorer(model.ranker, model.params.get("ranker", {}).get("features", ()), model.directory)
            if model.ranker is not None
            else None
        )

    def adopt(self, model: ModelBundle) -> None:
        """Serve ``model`` from now on: the same trained model with items that joined since
        (``ModelBundle.with_items``); the ranker is the same."""
        self.model = model
        pop = np.asarray(model.popularity, dtype=np.float64)
        relative = pop / max(float(pop.max()) if len(pop) else 1.0, 1e-12)
        self._log_relative_popularity = np.log(np.maximum(relative, 1e-12))

    def surface(self, name: str) -> SurfaceConfig:
        found = self.surfaces.get(name)
        if found is None:
            raise ValidationError([FieldError("surface", f"one of {', '.join(sorted(self.surfaces))}", describe(name))])
        return found

    def context(
        self,
        req: RecommendRequest,
        state: SessionState | None,
        personal: bool = True,
        neighbours: NeighbourLookup = no_neighbours,
        factors: OnlineFactors | None = None,
    ) -> RequestContext:
        """What every stage reads. ``personal=False`` (the ``popular`` tier) skips the anchors and
        the profile: the state is still there for the rules that keep purchases and dismissals out."""
        anchors: tuple[tuple[int, float], ...] = ()
        online: dict[int, float] = {}
        last: tuple[dict[int, float], float] = ({}, 0.0)
        profile = None
        if personal:
            index = self.model.catalog.index
            weighted = session_anchors(state, self.cfg.anchors, req.now_ms, self.session_timeout_ms)
            anchors = tuple((index[item_id], w) for item_id, w in weighted if item_id in index)
            profile = build_profile(state, self.model, req.now_ms, self.session_timeout_ms, self.cfg.profile)
            latest = latest_item(profile)
            read = [i for i, _ in weighted[: self.cfg.online_anchors]]
            if latest is not None and latest not in read:
                read.append(latest)  # one read for both: the anchors' followers and the latest's
            found = dict(zip(read, neighbours(read), strict=True)) if read else {}
            online = self._followers(weighted, lambda ids: [found.get(i) for i in ids], req.now_ms)
            last = followers_at(found.get(latest) if latest is not None else None, index, req.now_ms)
        return RequestContext(
            user_id=req.user_id,
            surface=req.surface,
            k=req.k,
            state=state,
            model=self.model,
            anchors=anchors,
            online=online,
            online_last=last[0],
            online_last_total=last[1],
            factors=factors if personal else None,
            now_ms=req.now_ms,
            current_item=req.context.get("item_id"),
            context=req.context,
            profile=profile,
        )

    def _followers(
        self, weighted: Sequence[tuple[str, float]], neighbours: NeighbourLookup, now_ms: int
    ) -> dict[int, float]:
        """Online co-visitation from the anchors (also those the model does not know yet): each
        anchor's followers, scaled by its heaviest so every anchor speaks with its own weight."""
        weighted = weighted[: self.cfg.online_anchors]
        if not weighted:
            return {}
        index = self.model.catalog.index
        out: dict[int, float] = {}
        for (_, w), found in zip(weighted, neighbours([i for i, _ in weighted]), strict=True):
            if found is None or not found.weights or found.weights[0] <= 0:
                continue
            shared = found.shared(now_ms)  # decayed, only what other users may read
            if not shared:
                continue
            scale = w / max(shared.values())
            for item_id, weight in shared.items():
                idx = index.get(item_id)
                if idx is not None:
                    out[idx] = out.get(idx, 0.0) + weight * scale
        return out

    def gather(
        self, ctx: RequestContext, deadline: float = math.inf, skip: tuple[str, ...] = ()
    ) -> tuple[list[Merged], tuple[str, ...]]:
        """Every source's candidates, merged under the per-source quotas; sources not yet asked
        when ``deadline`` (on ``self.clock``) passes, and those in ``skip``, are skipped and
        returned as the second value."""
        lists: list[tuple[str, list[Candidate]]] = []
        skipped: list[str] = []
        for src in self.sources:
            if src.name in skip or (lists and src.name not in FLOOR_SOURCES and self.clock() > deadline):
                skipped.append(src.name)
                continue
            lists.append((src.name, src.candidates(ctx, self.cfg.quotas.get(src.name, self.cfg.candidate_limit))))
        return merge(lists, self.cfg.quotas, self.cfg.candidate_limit), tuple(skipped)

    def features(
        self, ctx: RequestContext, merged: Sequence[Merged], activity: ActivityLookup
    ) -> npt.NDArray[np.float32]:
        ids = self.model.catalog.ids
        return feature_matrix(ctx, merged, activity([ids[m.item] for m in merged]))

    def recommend(
        self,
        req: RecommendRequest,
        state: SessionState | None,
        activity: ActivityLookup = no_activity,
        tier: str = "full",
        previous: Sequence[str] = (),
        forced: Forced | None = None,
        neighbours: NeighbourLookup = no_neighbours,
        feedback: FeedbackLookup = no_feedback,
        seed: int = 0,
        factors: OnlineFactors | None = None,
    ) -> RecommendResponse:
        """One list. ``tier`` is the best tier to try; ``previous`` is what this user was last
        shown on this surface in this session, for the surface's churn budget. ``forced`` replays
        a served request's moment-dependent decisions (no clock, no deadline): explain uses it."""
        surface = self.surface(req.surface)
        if not 1 <= req.k <= surface.max_k:
            raise ValidationError([FieldError("k", f"an integer 1..{surface.max_k}", describe(req.k))])
        if tier not in TIERS:
            raise ValueError(f"tier: expected one of {', '.join(TIERS)}, got {tier!r}")
        clock = self.clock
        t0 = clock()
        deadlines: dict[str, float] = {}
        share = 0.0
        for stage, part in STAGE_SHARES.items():
            share += part
            deadlines[stage] = math.inf if forced else t0 + surface.budget_ms / 1000.0 * share
        if forced is not None:
            tier = forced.tier
        timings: dict[str, float] = {}
        cut: list[str] = []
        skipped: tuple[str, ...] = ()
        x: npt.NDArray[np.float32] | None = None
        if tier == "popular":
            ctx = self.context(req, state, personal=False)
            t1 = clock()
            merged, _ = self._popular(ctx)
        else:
            ctx = self.context(req, state, neighbours=neighbours, factors=factors)
            t1 = clock()
            if t1 > deadlines["features"]:
                cut.append("features")
            merged, skipped = self.gather(ctx, deadlines["candidates"], forced.skipped_sources if forced else ())
            if skipped:
                cut.append("candidates")
        if previous and (surface.keep_top > 0 or surface.max_new is not None):
            merged = self._with_shown(merged, previous)
        if restricts(self.model.catalog, req.filters):
            merged = self._filtered(merged, req.filters, req.k, state)
        t2 = clock()
        timings["features"] = (t1 - t0) * 1000
        timings["candidates"] = (t2 - t1) * 1000
        served = tier
        ranked_rows: int | None = None
        if forced is not None:
            if forced.ranked_rows is not None:
                merged = merged[: forced.ranked_rows]
                ranked_rows = forced.ranked_rows
        elif tier == "full" and self.learned is not None:
            room = deadlines["ranking"] - t2
            fits = len(merged) if math.isinf(room) else int(room / self.rank_cost_s)
            if fits < MIN_RANKED:
                served = "fast"  # no time left for the learned ranker at all
                cut.append("ranking")
                self.rank_cost_s *= 0.9
            elif fits < len(merged):
                merged = merged[:fits]  # merge order: the sources' best first
                ranked_rows = fits
                cut.append("ranking")
        elif tier == "full":
            served = "fast"  # a model trained without a ranker
        if served == "full":
            assert self.learned is not None
            if self.ranking_hook is not None:
                self.ranking_hook()
            x = self.features(ctx, merged, activity)
            scores = self.learned.score(x).tolist()
            if forced is None:
                measured = (clock() - t2) / max(len(merged), 1)
                # Pessimistic: a slower measurement is believed at once, a faster one gradually.
                slower = measured > self.rank_cost_s
                self.rank_cost_s = measured if slower else 0.9 * self.rank_cost_s + 0.1 * measured
        elif served == "fast":
            scores = self.simple.score(ctx, merged)
        else:
            pop = self.model.popularity
            scores = [float(pop[m.item]) for m in merged]
        if surface.hot_threshold is not None and served != "popular":
            scores = self._cool(merged, scores, surface.hot_threshold, surface.hot_discount)
        ids = self.model.catalog.ids
        n_explore = bandit.slots(req.k, surface.explore_share) if served != "popular" else 0
        ranked = [
            Ranked(ids[merged[n].item], merged[n].item, scores[n], tuple(sorted(merged[n].sources)))
            for n in self._best(merged, scores, req.k + (bandit.POOL if n_explore else 0), state, previous)
        ]
        t3 = clock()
        timings["ranking"] = (t3 - t2) * 1000
        kept, removed = apply_rules(ctx, surface, ranked)
        kept, moved = stabilise(kept, previous, req.k, surface.keep_top, surface.keep_margin, surface.max_new)
        explored: tuple[str, ...] = ()
        if n_explore:
            kept, explored = self._explore(kept, req.k, n_explore, feedback, seed, forced)
        items = tuple(RecommendedItem(r.item_id, r.score, r.sources) for r in kept[: req.k])
        t4 = clock()
        timings["rerank"] = (t4 - t3) * 1000
        timings["total"] = (t4 - t0) * 1000
        return RecommendResponse(
            request_id=req.request_id,
            user_id=req.user_id,
            surface=req.surface,
            items=items,
            session_id=state.session_id if state else None,
            session_version=state.session_version if state else 0,
            model_version=self.model.version,
            tier=served,
            timings_ms={k: round(v, 3) for k, v in timings.items()},
            removed_by_rule=removed,
            cut=forced.cut if forced is not None else tuple(cut),
            skipped_sources=skipped,
            stabilised=tuple(moved),
            explored=explored,
            factors_version=factors.version if factors is not None else "",
            ranked_rows=ranked_rows,
            intent=ctx.profile.session_embedding if ctx.profile is not None else None,
            candidate_ids=tuple(ids[m.item] for m in merged),
            features=x,
        )

    @staticmethod
    def _explore(
        kept: list[Ranked], k: int, n: int, feedback: FeedbackLookup, seed: int, forced: Forced | None
    ) -> tuple[list[Ranked], tuple[str, ...]]:
        """The last ``n`` of the top ``k`` given to the bandit's picks from the next-best
        ``bandit.POOL`` (which passed every rule); ``forced`` replays a served request's picks."""
        pool = kept[k : k + bandit.POOL]
        if not pool:
            return kept, ()
        ids = [r.item_id for r in pool]
        chosen = set(forced.explored if forced is not None else bandit.choose(ids, feedback(ids), n, seed))
        picked = [replace(r, sources=(*r.sources, "explore")) for r in pool if r.item_id in chosen]
        return kept[: k - len(picked)] + picked, tuple(r.item_id for r in picked)

    def _cool(
        self, merged: Sequence[Merged], scores: Sequence[float], threshold: float, discount: float
    ) -> list[float]:
        """Hot-spot control: scores less ``discount * ln(relative popularity / threshold)`` for
        items above ``threshold`` (relative to the most popular item's training popularity)."""
        items = np.fromiter((m.item for m in merged), dtype=np.int64, count=len(merged))
        over = np.maximum(self._log_relative_popularity[items] - math.log(threshold), 0.0)
        cooled: list[float] = (np.asarray(scores, dtype=np.float64) - discount * over).tolist()
        return cooled

    def _best(
        self,
        merged: Sequence[Merged],
        scores: Sequence[float],
        k: int,
        state: SessionState | None,
        previous: Sequence[str],
    ) -> list[int]:
        """Positions in ``merged`` of the candidates re-ranking can need, best first (ties by item
        index): the top ``k`` plus one for every item a rule could remove (purchased, dismissed,
        cart, seen, the current item), plus every item shown before (for the churn budget). The
        rules then keep exactly the top ``k`` they would keep from the whole list, without a
        Python object for each of hundreds of candidates."""
        n = len(merged)
        items = np.fromiter((m.item for m in merged), dtype=np.int64, count=n)
        order = np.lexsort((items, -np.asarray(scores, dtype=np.float64)))
        need = k + 1
        if state is not None:
            need += len(state.purchased) + len(state.dismissed) + len(state.cart) + len(state.events)
            need += len(state.history)
        if need >= n:
            return [int(p) for p in order]
        top: list[int] = order[:need].tolist()
        if previous:  # score order is kept: these all rank below the first ``need``
            index = self.model.catalog.index
            wanted = {index[i] for i in previous if i in index}
            top += [int(p) for p in order[need:] if int(items[p]) in wanted]
        return top

    def _with_shown(self, merged: list[Merged], previous: Sequence[str]) -> list[Merged]:
        """The items shown last, as candidates too (tagged ``shown``): a churn budget can only keep
        an item the ranker has scored."""
        index = self.model.catalog.index
        have = {m.item for m in merged}
        extra = [
            Merged(index[i], {"shown": 0.0}) for i in dict.fromkeys(previous) if i in index and index[i] not in have
        ]
        return merged + extra

    def _filtered(self, merged: list[Merged], filters: Filters, k: int, state: SessionState | None) -> list[Merged]:
        """The candidates a list under ``filters`` may hold (never an unavailable item), topped up
        from the most popular items that pass when too few are left for ``k`` after the rules."""
        catalog = self.model.catalog
        items = np.fromiter((m.item for m in merged), dtype=np.int64, count=len(merged))
        keep = allowed(catalog, items, filters).tolist() if merged else []
        out = [m for m, ok in zip(merged, keep, strict=True) if ok]
        need = k + 30 + (len(state.purchased) + len(state.dismissed) + len(state.cart) if state else 0)
        if len(out) >= need:
            return out
        have = set(items.tolist())
        order, pop = self.model.popular_order, self.model.popularity
        for start in range(0, len(order), 4096):
            chunk = order[start : start + 4096]
            for i in chunk[allowed(catalog, chunk, filters)].tolist():
                if i not in have:
                    out.append(Merged(i, {"popular": float(pop[i])}))
                    if len(out) >= need:
                        return out
        return out

    def _popular(self, ctx: RequestContext) -> tuple[list[Merged], tuple[str, ...]]:
        """The ``popular`` tier's candidates: enough of the most popular items to survive the rules."""
        k = ctx.k + len(ctx.state.purchased) + len(ctx.state.dismissed) + 30 if ctx.state else ctx.k + 30
        return merge([("popular", PopularitySource().candidates(ctx, k))], {"popular": k}, k), ()
