"""Time-decayed popularity: the fallback that always has an answer."""

from __future__ import annotations

from insession.candidates.base import Candidate, RequestContext, from_arrays


class PopularitySource:
    name = "popular"

    def candidates(self, ctx: RequestContext, k: int) -> list[Candidate]:
        model = ctx.model
        top = model.popular_order[:k]
        return from_arrays(top, model.popularity[top])
