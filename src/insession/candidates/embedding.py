"""Nearest neighbours of the session embedding and of the long-term user embedding."""

from __future__ import annotations

from insession.candidates.base import Candidate, RequestContext


class SessionEmbeddingSource:
    """Items close to what this session is about (recency-decayed, per-type half-lives)."""

    name = "session_ann"

    def candidates(self, ctx: RequestContext, k: int) -> list[Candidate]:
        ann = ctx.model.ann
        if ann is None or ctx.profile is None or ctx.profile.n_session == 0:
            return []
        items, sims = ann.query(ctx.profile.session_embedding, k)
        return [Candidate(int(i), float(s)) for i, s in zip(items, sims, strict=True)]


class UserEmbeddingSource:
    """Items close to who the user is over earlier sessions."""

    name = "user_ann"

    def candidates(self, ctx: RequestContext, k: int) -> list[Candidate]:
        ann = ctx.model.ann
        if ann is None or ctx.profile is None or ctx.profile.n_history == 0:
            return []
        items, sims = ann.query(ctx.profile.user_embedding, k)
        return [Candidate(int(i), float(s)) for i, s in zip(items, sims, strict=True)]
