"""The fold of one event into a feature store: the user's session state and the item's activity.

One function, used by the embedded engine (folding as it ingests) and by the stream workers
(folding a batch into a staging store before one Redis transaction), so both produce the same
state from the same events.
"""

from __future__ import annotations

from dataclasses import dataclass

from insession.config import SessionConfig
from insession.events import Event
from insession.features.activity import NAMESPACE as ACTIVITY_NAMESPACE
from insession.features.activity import ItemActivity, bump, capped
from insession.sessions import SessionState, apply
from insession.store import FeatureStore


@dataclass(slots=True)
class FoldStats:
    """What the fold did besides folding: events kept out of item activity by the guard rail."""

    capped: int = 0


def fold_event(
    store: FeatureStore,
    position: int,
    event: Event,
    session: SessionConfig,
    ttl_s: int,
    stats: FoldStats | None = None,
) -> SessionState:
    """Apply ``event`` (at log ``position``) to ``store``; returns the user's new state."""
    state = apply(store.get_session(event.user_id), event, session, position)
    store.put_session(event.user_id, state, ttl_s)
    if event.item_id is not None:
        raw = store.get_many(ACTIVITY_NAMESPACE, [event.item_id])[0]
        old = None if raw is None else ItemActivity.from_bytes(raw)
        if capped(old, event):
            if stats is not None:
                stats.capped += 1
            return state
        bumped = bump(old, event)
        if bumped is not None and bumped is not old:
            store.put_many(ACTIVITY_NAMESPACE, {event.item_id: bumped.to_bytes()}, ttl_s)
    return state
