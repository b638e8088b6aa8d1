"""The ``Recommender``: candidates -> ranking -> re-ranking for one request.

It is given the user's state and the model; it does no I/O and reads no clock except
``time.perf_counter`` to report stage timings, which never influence the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from insession.candidates.base import Candidate, CandidateSource, RequestContext
from insession.candidates.content import ContentSource
from insession.candidates.covisit import CovisitSource
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
from insession.model import ModelBundle
from insession.ranking.features import feature_matrix
from insession.ranking.learned import LearnedScorer
from insession.ranking.simple import SimpleScorer
from insession.rerank import Ranked, apply_rules
from insession.sessions import SessionState

#: Reads the live activity of items (by id) from wherever state is kept; ``None`` where unknown.
ActivityLookup = Callable[[Sequence[str]], list[ItemActivity | None]]


def no_activity(items: Sequence[str]) -> list[ItemActivity | None]:
    return [None] * len(items)


@dataclass(frozen=True, slots=True)
class RecommendRequest:
    user_id: str
    surface: str = "home"
    k: int = 10
    context: Mapping[str, str] = field(default_factory=dict)
    request_id: str = ""
    now_ms: int = 0  # request (processing) time; decides whether the session is still live


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
            "timings_ms": dict(self.timings_ms),
        }


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    candidate_limit: int = 730
    quotas: Mapping[str, int] = field(
        default_factory=lambda: {
            "covisit": 200,
            "session_ann": 100,
            "user_ann": 60,
            "content": 80,
            "popular": 60,
            "recent": 30,
            "sequence": 100,
        }
    )
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)


class Recommender:
    def __init__(
        self,
        model: ModelBundle,
        surfaces: Mapping[str, SurfaceConfig],
        session_timeout_ms: int,
        cfg: PipelineConfig | None = None,
    ) -> None:
        self.model = model
        self.session_timeout_ms = session_timeout_ms
        self.surfaces = surfaces
        self.cfg = cfg or PipelineConfig()
        self.sources: tuple[CandidateSource, ...] = (
            RecentSource(),
            CovisitSource(),
            SessionKnnSource(),
            SequenceSource(),
            EmbeddingSource("session_ann", "session"),
            EmbeddingSource("user_ann", "user"),
            ContentSource(),
            PopularitySource(),
        )
        self.simple = SimpleScorer()
        self.learned = (
            LearnedScorer(model.ranker, model.params.get("ranker", {}).get("features", ()))
            if model.ranker is not None
            else None
        )

    def surface(self, name: str) -> SurfaceConfig:
        found = self.surfaces.get(name)
        if found is None:
            raise ValidationError([FieldError("surface", f"one of {', '.join(sorted(self.surfaces))}", describe(name))])
        return found

    def context(self, req: RecommendRequest, state: SessionState | None) -> RequestContext:
        index = self.model.catalog.index
        anchors = tuple(
            (index[item_id], w)
            for item_id, w in session_anchors(state, self.cfg.anchors, req.now_ms, self.session_timeout_ms)
            if item_id in index
        )
        return RequestContext(
            user_id=req.user_id,
            surface=req.surface,
            k=req.k,
            state=state,
            model=self.model,
            anchors=anchors,
            now_ms=req.now_ms,
            current_item=req.context.get("item_id"),
            context=req.context,
            profile=build_profile(state, self.model, req.now_ms, self.session_timeout_ms, self.cfg.profile),
        )

    def gather(self, ctx: RequestContext) -> list[Merged]:
        """Every source's candidates, merged under the per-source quotas."""
        lists: list[tuple[str, list[Candidate]]] = [
            (src.name, src.candidates(ctx, self.cfg.quotas.get(src.name, self.cfg.candidate_limit)))
            for src in self.sources
        ]
        return merge(lists, self.cfg.quotas, self.cfg.candidate_limit)

    def features(
        self, ctx: RequestContext, merged: Sequence[Merged], activity: ActivityLookup
    ) -> npt.NDArray[np.float32]:
        ids = self.model.catalog.ids
        return feature_matrix(ctx, merged, activity([ids[m.item] for m in merged]))

    def recommend(
        self, req: RecommendRequest, state: SessionState | None, activity: ActivityLookup = no_activity
    ) -> RecommendResponse:
        surface = self.surface(req.surface)
        if not 1 <= req.k <= surface.max_k:
            raise ValidationError([FieldError("k", f"an integer 1..{surface.max_k}", describe(req.k))])
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        ctx = self.context(req, state)
        t1 = time.perf_counter()
        timings["features"] = (t1 - t0) * 1000
        merged = self.gather(ctx)
        t2 = time.perf_counter()
        timings["candidates"] = (t2 - t1) * 1000
        x = self.features(ctx, merged, activity)
        if self.learned is not None:
            scores = self.learned.score(x).tolist()
            tier = "full"
        else:
            scores = self.simple.score(ctx, merged)
            tier = "fast"
        ids = self.model.catalog.ids
        ranked = [Ranked(ids[m.item], m.item, s, tuple(sorted(m.sources))) for m, s in zip(merged, scores, strict=True)]
        ranked.sort(key=lambda r: (-r.score, r.item))
        t3 = time.perf_counter()
        timings["ranking"] = (t3 - t2) * 1000
        kept, removed = apply_rules(ctx, surface, ranked)
        items = tuple(RecommendedItem(r.item_id, r.score, r.sources) for r in kept[: req.k])
        t4 = time.perf_counter()
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
            tier=tier,
            timings_ms={k: round(v, 3) for k, v in timings.items()},
            removed_by_rule=removed,
            candidate_ids=tuple(ids[m.item] for m in merged),
            features=x,
        )
