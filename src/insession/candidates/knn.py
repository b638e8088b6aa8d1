"""The session kNN candidate source: the engine's live session scored against training sessions."""

from __future__ import annotations

import numpy as np

from insession.candidates.base import Candidate, RequestContext, from_arrays
from insession.events import EventType
from insession.index.session_index import KnnConfig


class SessionKnnSource:
    name = "session_knn"

    def __init__(self, cfg: KnnConfig | None = None) -> None:
        self.cfg = cfg or KnnConfig()

    def candidates(self, ctx: RequestContext, k: int) -> list[Candidate]:
        index = ctx.model.sessions
        if index is None or ctx.state is None or ctx.profile is None or not ctx.profile.live:
            return []
        lookup = ctx.model.catalog.index
        prefix = np.array(
            [lookup[i.item_id] for i in ctx.state.events if i.item_id in lookup and i.type is not EventType.DISMISS],
            dtype=np.int64,
        )
        items, votes = index.scores(prefix, self.cfg)
        order = np.lexsort((items, -votes))[:k]
        return from_arrays(items[order], votes[order])
