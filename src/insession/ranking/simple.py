"""A transparent scorer: normalised session evidence first, popularity as a small tie-breaker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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
        n = len(merged)
        covisit = np.fromiter((m.sources.get("covisit", 0.0) for m in merged), dtype=np.float64, count=n)
        items = np.fromiter((m.item for m in merged), dtype=np.int64, count=n)
        cov_max = float(covisit.max()) if n and covisit.max() > 0 else 1.0
        pop_max = float(pop.max()) if len(pop) and pop.max() > 0 else 1.0
        scores = covisit / cov_max + self.popularity_weight * pop[items].astype(np.float64) / pop_max
        return [float(v) for v in scores]
