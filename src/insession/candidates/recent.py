"""The user's own recent items: this session's, latest first, then earlier sessions'.

People go back to what they just looked at (on YOOCHOOSE a quarter of next clicks repeat the
current item). Whether a recent item deserves a slot is the ranker's call, from the recency
features; whether a surface may show seen items at all is its re-ranking rules' call.
"""

from __future__ import annotations

from insession.candidates.base import Candidate, RequestContext


class RecentSource:
    name = "recent"

    def candidates(self, ctx: RequestContext, k: int) -> list[Candidate]:
        profile = ctx.profile
        if profile is None:
            return []
        index = ctx.model.catalog.index
        out: list[Candidate] = []
        seen: set[int] = set()
        ranked = sorted(profile.session_recency.items(), key=lambda kv: (kv[1], kv[0]))
        ranked += sorted(profile.history_recency.items(), key=lambda kv: (kv[1], kv[0]))
        offset = 0
        for n, (item_id, rank) in enumerate(ranked):
            if n == len(profile.session_recency):
                offset = len(profile.session_recency)
            idx = index.get(item_id)
            if idx is None or idx in seen:
                continue
            seen.add(idx)
            out.append(Candidate(idx, 1.0 / (offset + rank)))
            if len(out) >= k:
                break
        return out
