"""Content similarity on item metadata: the categories this session (or user) is in.

It reaches items nothing else can: items with no co-occurrence yet (cold items) and users with a
single click. Each category's items come in popularity order, the category's quota in proportion
to its share of the session (else of the user's history).
"""

from __future__ import annotations

from insession.candidates.base import Candidate, RequestContext


class ContentSource:
    name = "content"

    def candidates(self, ctx: RequestContext, k: int) -> list[Candidate]:
        profile = ctx.profile
        if profile is None:
            return []
        shares = profile.cat_session or profile.cat_history
        if not shares:
            return []
        out: list[Candidate] = []
        for code, share in sorted(shares.items(), key=lambda kv: (-kv[1], kv[0])):
            quota = max(1, round(k * share))
            for rank, item in enumerate(ctx.model.category_items.get(code, ())[:quota]):
                out.append(Candidate(int(item), share / (1.0 + rank)))
            if len(out) >= k:
                break
        out.sort(key=lambda c: (-c.score, c.item))
        return out[:k]
