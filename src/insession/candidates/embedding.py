"""Nearest neighbours (through the ANN index) of the session embedding or the user embedding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from insession.candidates.base import Candidate, RequestContext, from_arrays


@dataclass(frozen=True, slots=True)
class EmbeddingSource:
    """``of="session"``: what this session is about (recency-decayed, per-type half-lives);
    ``of="user"``: who the user is over earlier sessions."""

    name: str
    of: Literal["session", "user"]

    def candidates(self, ctx: RequestContext, k: int) -> list[Candidate]:
        ann, profile = ctx.model.ann, ctx.profile
        if ann is None or profile is None:
            return []
        if self.of == "session":
            vector, evidence = profile.session_embedding, profile.n_session
        else:
            vector, evidence = profile.user_embedding, profile.n_history
        if evidence == 0:
            return []
        items, sims = ann.query(vector, k)
        return from_arrays(items, sims)
