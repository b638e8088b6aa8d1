"""Features that carry what changed since training, kept apart from what training already knows.

The trained parts (co-visitation, popularity) are a picture of the data up to the training cut;
the online folds (``online.covisit``, ``features.activity``) keep learning after it. Each feature
here sets an online quantity against its trained counterpart, so the ranker can learn when the
present disagrees with the past and which side to believe:

- ``covisit_online_last_log``: how much evidence the online lists hold that shoppers go from the
  session's latest item to the candidate (decayed pair weight, not scaled: 30 sessions weigh more
  than 3);
- ``covisit_online_share_last`` / ``covisit_trained_share_last``: the conditional share
  P(candidate | latest item) online and in the trained matrix, and ``covisit_share_lift_last``
  their difference (an emerging transition has a high online share the trained matrix lacks);
- ``item_users_24h``: how many distinct users the item's recent events come from (a bot is one);
- ``item_trend_log``: the item's events in the last 24 h against its trained daily rate;
- ``item_new``: the trained model has no events of the item.

Pure functions of the request context and the item activity, as every feature: the replay that
trains the ranker computes them with the same code at the same moments.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from insession.features.profile import Profile
from insession.online.covisit import Neighbours

NOVELTY_FEATURES: tuple[str, ...] = (
    "covisit_online_last_log",
    "covisit_online_share_last",
    "covisit_trained_share_last",
    "covisit_share_lift_last",
    "item_users_24h",
    "item_trend_log",
    "item_new",
)


def latest_item(profile: Profile | None) -> str | None:
    """The session's latest distinct item (``None``: no session items)."""
    if profile is None or not profile.session_recency:
        return None
    recency = profile.session_recency
    return min(recency, key=lambda item_id: (recency[item_id], item_id))


def followers_at(found: Neighbours | None, index: Mapping[str, int], now_ms: int) -> tuple[dict[int, float], float]:
    """An item's online followers decayed to ``now_ms``, by dense index (those the model knows),
    and the sum of all of them; only the transitions other users may read (``Neighbours.shared``)."""
    if found is None:
        return {}, 0.0
    weights = found.shared(now_ms)
    known = {index[i]: w for i, w in weights.items() if i in index}
    return known, float(sum(found.at(now_ms).values()))


def novelty_features(
    items: npt.NDArray[np.int64],
    online_last: Mapping[int, float],
    online_last_total: float,
    trained_last: tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]] | None,
    trained_popularity: npt.NDArray[np.float32],
    popularity_half_life_days: float,
    events_24h: npt.NDArray[np.float64],
    users_24h: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """The ``NOVELTY_FEATURES`` columns for ``items`` (dense indices). ``trained_last`` is the
    latest item's trained co-visitation row (columns, weights) or ``None``; ``events_24h`` and
    ``users_24h``: each item's events in the last 24 h and the distinct users they came from
    (``features.activity.activity_windows``)."""
    n = len(items)
    out = np.zeros((n, len(NOVELTY_FEATURES)), dtype=np.float64)
    if n == 0:
        return out
    online = np.array([online_last.get(int(i), 0.0) for i in items], dtype=np.float64)
    out[:, 0] = np.log1p(online)
    if online_last_total > 0:
        out[:, 1] = online / online_last_total
    if trained_last is not None and len(trained_last[0]):
        cols, ws = trained_last
        total = float(ws.sum())
        if total > 0:
            row = dict(zip(cols.tolist(), (ws / total).tolist(), strict=True))
            out[:, 2] = [row.get(int(i), 0.0) for i in items]
    out[:, 3] = out[:, 1] - out[:, 2]
    out[:, 4] = users_24h
    pop = trained_popularity[items].astype(np.float64)
    daily = pop * math.log(2) / popularity_half_life_days  # a decayed sum's steady daily rate
    out[:, 5] = np.log1p(events_24h) - np.log1p(daily)
    out[:, 6] = pop <= 0
    return out
