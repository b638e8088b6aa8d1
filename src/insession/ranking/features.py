"""The ranker's feature matrix: one row per candidate, joint long-term + in-session + request-time.

``feature_matrix`` is the only place features are computed. Serving calls it per request; training
calls it while replaying the event log, with state and item activity folded only up to the moment
of each training example (point-in-time correct), so the two cannot skew.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from insession.candidates.base import RequestContext
from insession.candidates.merge import Merged
from insession.features.activity import ItemActivity, activity_windows
from insession.online.novelty import NOVELTY_FEATURES, latest_item, novelty_features

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
    "covisit_from_last",
    "covisit_from_previous",
    "sim_last_item",
    "session_knn_score",
    "sequence_score",
    "sequence_gap_to_best",
    "sequence_rank_inv",
    "covisit_online_score",
    "online_factor_score",
    *NOVELTY_FEATURES,
)
NOVELTY_START = FEATURE_NAMES.index(NOVELTY_FEATURES[0])
DEVICES = {"mobile": 1.0, "desktop": 2.0, "tablet": 3.0, "app": 4.0}
#: Which feature column holds each candidate source's own score (flags for popular and recent).
SOURCE_COLUMNS = {
    "covisit": 0,
    "session_ann": 1,
    "user_ann": 2,
    "content": 3,
    "popular": 4,
    "recent": 40,
    "session_knn": 47,
}
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
    x[:, 5] = [len(m.sources) for m in merged]  # how many sources proposed the item
    for name, column in SOURCE_COLUMNS.items():
        x[:, column] = [m.sources.get(name, 0.0) for m in merged]
    x[:, 4] = (x[:, 4] != 0).astype(np.float32)  # popularity proposed it (a flag, not its count)
    x[:, 40] = (x[:, 40] != 0).astype(np.float32)  # the user's own recent item
    x[:, 51] = _lookup(ctx.online, items)  # every candidate, not only those its source proposed
    if ctx.factors is not None:
        x[:, 52] = ctx.factors.scores(list(ctx.anchors), items)
    for column in (0, 47, 51):  # scaled by the list's strongest, so the ranker sees shares, not raw counts
        top = float(x[:, column].max())
        if top > 0:
            x[:, column] /= top
    windows, users_24h = activity_windows(activity, ctx.now_ms)
    x[:, 7:11] = windows
    codes = catalog.category_codes[items]
    x[:, 13] = _lookup(profile.cat_session, codes)
    x[:, 14] = _lookup(profile.cat_history, codes)
    brands = catalog.brand_codes[items]
    brand_index = catalog.brand_index
    x[:, 15] = _lookup({brand_index[b]: v for b, v in profile.brand_session.items() if b in brand_index}, brands)
    x[:, 16] = _lookup({brand_index[b]: v for b, v in profile.brand_history.items() if b in brand_index}, brands)
    if profile.price_mean > 0:
        prices = catalog.prices[items]
        priced = prices > 0  # False for NaN
        safe = np.where(priced, prices, profile.price_mean)
        x[:, 17] = np.where(priced, np.log(safe / profile.price_mean), 0.0)
        if profile.price_std > 0:
            x[:, 18] = np.where(priced, (safe - profile.price_mean) / profile.price_std, 0.0)
    index = catalog.index

    def by_index(mapping: Mapping[str, float]) -> dict[int, float]:
        return {index[k]: v for k, v in mapping.items() if k in index}

    x[:, 19] = _lookup(by_index(dict.fromkeys(profile.cart, 1.0)), items)
    x[:, 20] = _lookup(by_index({k: float(v) for k, v in profile.session_items.items()}), items)
    x[:, 21] = _lookup(by_index(dict.fromkeys(profile.history_items, 1.0)), items)
    current = index.get(ctx.current_item) if ctx.current_item else None
    if current is not None:
        x[:, 22] = items == current
        current_cat = int(catalog.category_codes[current])
        if current_cat >= 0:
            x[:, 23] = codes == current_cat
    session_rank = _lookup(by_index({k: float(v) for k, v in profile.session_recency.items()}), items)
    x[:, 41] = np.where(session_rank > 0, 1.0 / np.maximum(session_rank, 1.0), 0.0)
    x[:, 43] = session_rank == 1
    history_rank = _lookup(by_index({k: float(v) for k, v in profile.history_recency.items()}), items)
    x[:, 42] = np.where(history_rank > 0, 1.0 / np.maximum(history_rank, 1.0), 0.0)
    _last_items(ctx, items, x)
    _sequence(ctx, items, x)
    latest = latest_item(profile)
    latest_idx = catalog.index.get(latest) if latest is not None else None
    x[:, NOVELTY_START:] = novelty_features(
        items,
        ctx.online_last,
        ctx.online_last_total,
        model.covisit.row(latest_idx) if latest_idx is not None else None,
        model.popularity,
        float(model.params.get("train", {}).get("popularity_half_life_days", 7.0)),
        windows[:, -1],
        users_24h,
    )
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


def _lookup(mapping: Mapping[int, float], keys: npt.NDArray[np.integer]) -> npt.NDArray[np.float64]:
    """``mapping.get(k, 0.0)`` for every key, with arrays instead of a Python loop."""
    out = np.zeros(len(keys), dtype=np.float64)
    if not mapping:
        return out
    known = np.fromiter(mapping.keys(), dtype=np.int64, count=len(mapping))
    values = np.fromiter(mapping.values(), dtype=np.float64, count=len(mapping))
    order = np.argsort(known)
    known, values = known[order], values[order]
    at = np.minimum(np.searchsorted(known, keys), len(known) - 1)
    found = known[at] == keys
    out[found] = values[at[found]]
    return out


def _last_items(ctx: RequestContext, items: npt.NDArray[np.int64], x: npt.NDArray[np.float32]) -> None:
    """Sequence features: the rule weight (each row scaled by its strongest neighbour) from the
    latest distinct session item and the one before it, and the embedding similarity to the latest."""
    assert ctx.profile is not None
    recency = ctx.profile.session_recency
    model = ctx.model
    latest = sorted(recency, key=lambda item_id: (recency[item_id], item_id))[:2]
    for column, item_id in enumerate(latest, start=44):
        idx = model.catalog.index.get(item_id)
        if idx is None:
            continue
        cols, ws = model.covisit.row(idx)
        if len(cols) and ws[0] > 0:
            order = np.argsort(cols, kind="stable")
            sorted_cols = cols[order]
            at = np.minimum(np.searchsorted(sorted_cols, items), len(sorted_cols) - 1)
            found = sorted_cols[at] == items
            x[:, column] = np.where(found, ws[order][at] / ws[0], 0.0)
        if column == 44:
            x[:, 46] = model.embeddings[items] @ model.embeddings[idx]


def _sequence(ctx: RequestContext, items: npt.NDArray[np.int64], x: npt.NDArray[np.float32]) -> None:
    """The sequence model's score of each candidate, its distance below the best candidate's, and
    1 / its rank among the candidates (zeros without a sequence model or without a sequence)."""
    seq, profile = ctx.model.sequence, ctx.profile
    assert profile is not None
    if seq is None or not len(profile.sequence_vector):
        return
    scores = seq.scores(profile.sequence_vector, items)
    x[:, 48] = scores
    x[:, 49] = scores - scores.max()
    order = np.lexsort((items, -scores))
    rank = np.empty(len(items), dtype=np.float64)
    rank[order] = np.arange(1, len(items) + 1)
    x[:, 50] = 1.0 / rank
