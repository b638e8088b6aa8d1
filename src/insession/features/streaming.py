"""Session-derived signals, computed purely from a ``SessionState``.

The anchors are the items a request reasons from: every interaction of the current session and a
tail of earlier sessions, each weighted by what kind of event it was and how long ago it happened
(``w = type_weight * e^(-lambda * age)``, age measured from the user's latest event, so the
weights depend only on state, never on the wall clock).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from insession.events import EventType
from insession.sessions import Interaction, SessionState

DEFAULT_ANCHOR_TYPE_WEIGHTS: Mapping[str, float] = {
    EventType.VIEW.value: 1.0,
    EventType.CLICK.value: 1.0,
    EventType.ADD_TO_CART.value: 2.0,
    EventType.PURCHASE.value: 0.5,  # bought already: its complements matter, it does not
}


@dataclass(frozen=True, slots=True)
class AnchorConfig:
    session_half_life_s: float = 600.0
    history_weight: float = 0.25
    history_half_life_days: float = 14.0
    max_session_anchors: int = 20
    max_history_anchors: int = 30
    type_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_ANCHOR_TYPE_WEIGHTS))

    def __post_init__(self) -> None:
        if self.session_half_life_s <= 0 or self.history_half_life_days <= 0:
            raise ValueError("anchor half-lives: expected > 0")
        if not 0 <= self.history_weight <= 1:
            raise ValueError(f"history_weight: expected 0..1, got {self.history_weight}")


def session_is_live(state: SessionState, now_ms: int, timeout_ms: int) -> bool:
    """Whether the state's current session is still open at request time ``now_ms``."""
    return now_ms - state.last_event_ms < timeout_ms


def session_anchors(
    state: SessionState | None, cfg: AnchorConfig, now_ms: int | None = None, timeout_ms: int | None = None
) -> list[tuple[str, float]]:
    """(item_id, weight) pairs, heaviest first, ties by item id; one entry per item.

    The live session's weights sum to 1 and the history's to ``cfg.history_weight``, so one fresh
    click outweighs a long history however many events that history holds. When ``now_ms`` says
    the session has timed out (``timeout_ms``), its events count as history.
    """
    if state is None:
        return []
    live = state.events
    past = state.history
    if now_ms is not None and timeout_ms is not None and not session_is_live(state, now_ms, timeout_ms):
        live, past = (), state.history + state.events
    ref = state.last_event_ms
    lam_s = math.log(2) / (cfg.session_half_life_s * 1000.0)
    lam_h = math.log(2) / (cfg.history_half_life_days * 86_400_000.0)
    session_w = _decayed(live[-cfg.max_session_anchors :], cfg, ref, lam_s)
    history_w = _decayed(past[-cfg.max_history_anchors :], cfg, ref, lam_h)
    weights: dict[str, float] = {}
    for group, scale in ((session_w, 1.0), (history_w, cfg.history_weight)):
        total = sum(group.values())
        if total <= 0:
            continue
        for item_id, w in group.items():
            weights[item_id] = weights.get(item_id, 0.0) + scale * w / total
    return sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))


def _decayed(interactions: tuple[Interaction, ...], cfg: AnchorConfig, ref: int, lam: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for inter in interactions:
        w = cfg.type_weights.get(inter.type.value, 0.0) * math.exp(-lam * max(ref - inter.ts, 0))
        if w > 0:
            out[inter.item_id] = out.get(inter.item_id, 0.0) + w
    return out
