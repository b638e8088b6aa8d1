"""Session co-visitation and sequential rules: neighbours of the items the session touched."""

from __future__ import annotations

import numpy as np

from insession.candidates.base import Candidate, RequestContext, from_arrays


class CovisitSource:
    name = "covisit"

    def candidates(self, ctx: RequestContext, k: int) -> list[Candidate]:
        if not ctx.anchors:
            return []
        cov = ctx.model.covisit
        parts_i, parts_w = [], []
        for item, weight in ctx.anchors:
            cols, ws = cov.row(item)
            if len(cols):  # rows are normalised so every anchor speaks with its own weight
                parts_i.append(cols)
                parts_w.append(ws.astype(np.float64) * (weight / float(ws[0])))
        if not parts_i:
            return []
        items = np.concatenate(parts_i)
        uniq, inverse = np.unique(items, return_inverse=True)
        scores = np.bincount(inverse, weights=np.concatenate(parts_w))
        order = np.lexsort((uniq, -scores))[:k]
        return from_arrays(uniq[order], scores[order])


class OnlineCovisitSource:
    """The followers learned online (``online.covisit``): what people went on to since training,
    including items the model was trained without."""

    name = "covisit_online"

    def candidates(self, ctx: RequestContext, k: int) -> list[Candidate]:
        ranked = sorted(ctx.online.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return [Candidate(item, score) for item, score in ranked]
