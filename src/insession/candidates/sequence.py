"""The items the sequence model expects next, through its inner-product ANN index."""

from __future__ import annotations

from insession.candidates.base import Candidate, RequestContext, from_arrays


class SequenceSource:
    name = "sequence"

    def candidates(self, ctx: RequestContext, k: int) -> list[Candidate]:
        ann, profile = ctx.model.sequence_ann, ctx.profile
        if ann is None or profile is None or not len(profile.sequence_vector):
            return []
        items, scores = ann.query(profile.sequence_vector, k)
        return from_arrays(items, scores)
