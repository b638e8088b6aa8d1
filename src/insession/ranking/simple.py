"""A transparent scorer: normalised session evidence first, popularity as a small tie-breaker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from insession.candidates.base import RequestContext
from insession.candidates.merge import Merged


@dataclass(frozen=True, slots=True)
class SimpleScorer:
    """A weighted sum of each source's normalised evidence, popularity as the tie-breaker.

    Serves the ``fast`` tier and any model trained without a ranker.
    """

    popularity_weight: float = 0.05
    name: str = "simple"

    def score(self, ctx: RequestContext, merged: Sequence[Merged]) -> list[float]:
        pop = ctx.model.popularity
        cov_max = max((m.sources.get("covisit", 0.0) for m in merged), default=0.0) or 1.0
        pop_max = float(pop.max()) if len(pop) and pop.max() > 0 else 1.0
        return [
            m.sources.get("covisit", 0.0) / cov_max + self.popularity_weight * float(pop[m.item]) / pop_max
            for m in merged
        ]
