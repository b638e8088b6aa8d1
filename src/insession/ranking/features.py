"""The ranker's feature matrix: one row per candidate, joint long-term + in-session + request-time.

``feature_matrix`` is the only place features are computed. Serving calls it per request; training
calls it while replaying the event log, with state and item activity folded only up to the moment
of each training example (point-in-time correct), so the two cannot skew.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from insession.candidates.base import RequestContext
from insession.candidates.merge import Merged
from insession.features.activity import ItemActivity

FEATURE_NAMES: tuple[str, ...] = (
    "covisit_score",
    "session_ann_sim",
    "user_ann_sim",
    "content_score",
    "from_popular",
    "n_sources",
    "popularity_trained_log",
    "popularity_live_log",
    "item_events_5m",
    "item_events_1h",
    "item_events_24h",
    "sim_session_embedding",
    "sim_user_embedding",
    "category_share_session",
    "category_share_history",
    "brand_share_session",
    "brand_share_history",
    "price_log_ratio_session",
    "price_z_session",
    "in_cart",
    "seen_count_session",
    "seen_in_history",
    "is_current_item",
    "same_category_as_current",
    "session_live",
    "session_events",
    "session_ctr",
    "log_secs_since_last_event",
    "log_secs_since_session_start",
    "history_events",
    "user_events_5m",
    "user_events_1h",
    "user_events_24h",
    "hour_of_day",
    "weekday",
    "cart_size",
    "device",
    "page_type",
    "session_clicks",
    "session_carts",
    "from_recent",
    "session_recency_inv",
    "history_recency_inv",
    "is_last_session_item",
)
DEVICES = {"mobile": 1.0, "desktop": 2.0, "tablet": 3.0, "app": 4.0}
PAGES = {"home": 1.0, "product": 2.0, "product_page": 2.0, "cart": 3.0, "search": 4.0, "category": 5.0}


def feature_matrix(
    ctx: RequestContext, merged: Sequence[Merged], activity: Sequence[ItemActivity | None]
) -> npt.NDArray[np.float32]:
    profile = ctx.profile
    if profile is None:
        raise ValueError("feature_matrix needs a request context with a profile")
    model = ctx.model
    catalog = model.catalog
    n = len(merged)
    x = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float32)
    if n == 0:
        return x
    items = np.fromiter((m.item for m in merged), dtype=np.int64, count=n)
    cov_max = max((m.sources.get("covisit", 0.0) for m in merged), default=0.0) or 1.0
    current = catalog.index.get(ctx.current_item) if ctx.current_item else None
    current_cat = int(catalog.category_codes[current]) if current is not None else -2
    for row, m in enumerate(merged):
        src = m.sources
        meta = catalog.items[m.item]
        code = int(catalog.category_codes[m.item])
        x[row, 0] = src.get("covisit", 0.0) / cov_max
        x[row, 1] = src.get("session_ann", 0.0)
        x[row, 2] = src.get("user_ann", 0.0)
        x[row, 3] = src.get("content", 0.0)
        x[row, 4] = 1.0 if "popular" in src else 0.0
        x[row, 5] = len(src)
        act = activity[row]
        if act is not None:
            x[row, 7] = math.log1p(act.popularity_at(ctx.now_ms))
            x[row, 8:11] = act.window_counts(ctx.now_ms)
        x[row, 13] = profile.cat_session.get(code, 0.0)
        x[row, 14] = profile.cat_history.get(code, 0.0)
        if meta.brand:
            x[row, 15] = profile.brand_session.get(meta.brand, 0.0)
            x[row, 16] = profile.brand_history.get(meta.brand, 0.0)
        if meta.price is not None and meta.price > 0 and profile.price_mean > 0:
            x[row, 17] = math.log(meta.price / profile.price_mean)
            if profile.price_std > 0:
                x[row, 18] = (meta.price - profile.price_mean) / profile.price_std
        item_id = meta.item_id
        x[row, 19] = 1.0 if item_id in profile.cart else 0.0
        x[row, 20] = profile.session_items.get(item_id, 0)
        x[row, 21] = 1.0 if item_id in profile.history_items else 0.0
        x[row, 22] = 1.0 if item_id == ctx.current_item else 0.0
        x[row, 23] = 1.0 if code >= 0 and code == current_cat else 0.0
        x[row, 40] = 1.0 if "recent" in src else 0.0
        s_rank = profile.session_recency.get(item_id)
        if s_rank is not None:
            x[row, 41] = 1.0 / s_rank
            x[row, 43] = 1.0 if s_rank == 1 else 0.0
        h_rank = profile.history_recency.get(item_id)
        if h_rank is not None:
            x[row, 42] = 1.0 / h_rank
    x[:, 6] = np.log1p(model.popularity[items])
    emb = model.embeddings[items]
    x[:, 11] = emb @ profile.session_embedding
    x[:, 12] = emb @ profile.user_embedding
    when = datetime.fromtimestamp(ctx.now_ms / 1000, tz=UTC)
    x[:, 24:40] = (
        1.0 if profile.live else 0.0,
        profile.n_session,
        profile.ctr,
        math.log1p(profile.secs_since_last),
        math.log1p(profile.secs_since_start),
        profile.n_history,
        *profile.user_windows,
        when.hour,
        when.weekday(),
        len(profile.cart),
        DEVICES.get(ctx.context.get("device", ""), 0.0),
        PAGES.get(ctx.context.get("page", ""), 0.0),
        profile.counts.get("click", 0),
        profile.counts.get("add_to_cart", 0),
    )
    return x
