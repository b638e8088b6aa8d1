"""The fold of one event into a feature store: the user's session state, the item's activity, and
the online co-visitation counts (``online.covisit``).

One function, used by the embedded engine (folding as it ingests) and by the stream workers
(folding a batch into a staging store before one Redis transaction), so both produce the same
state from the same events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from insession.config import SessionConfig
from insession.events import Event
from insession.features.activity import NAMESPACE as ACTIVITY_NAMESPACE
from insession.features.activity import ItemActivity, bump, capped
from insession.online import covisit
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
    learn: bool = True,
    on_pair: Callable[[str, str], object] | None = None,
) -> SessionState:
    """Apply ``event`` (at log ``position``) to ``store``; returns the user's new state.
    ``learn=False`` leaves the online co-visitation counts as they are; ``on_pair`` is given the
    pair (the session's previous counted item, this item) the online factor model learns from."""
    old_state = store.get_session(event.user_id)
    state = apply(old_state, event, session, position)
    store.put_session(event.user_id, state, ttl_s)
    if event.item_id is not None:
        if capped(old_state, event):
            if stats is not None:
                stats.capped += 1
            return state
        raw = store.get_many(ACTIVITY_NAMESPACE, [event.item_id])[0]
        old = None if raw is None else ItemActivity.from_bytes(raw)
        bumped = bump(old, event)
        if bumped is not None and bumped is not old:
            store.put_many(ACTIVITY_NAMESPACE, {event.item_id: bumped.to_bytes()}, ttl_s)
        if learn and covisit.counts(event):
            pairs = covisit.previous_items(covisit.before(old_state, event, session))
            learn_pairs(store, pairs, event, ttl_s)
            if pairs and on_pair is not None:
                on_pair(pairs[0][0], event.item_id)
    return state


def learn_pairs(store: FeatureStore, pairs: list[tuple[str, float]], event: Event, ttl_s: int) -> None:
    """Add ``event``'s item as a follower of each earlier item in ``pairs`` (one read, one write)."""
    item = event.item_id
    pairs = [(p, w) for p, w in pairs if p != item]
    if not pairs or item is None:
        return
    sources = list(dict.fromkeys(p for p, _ in pairs))
    found = dict(zip(sources, store.get_many(covisit.NAMESPACE, sources), strict=True))
    current = {p: None if raw is None else covisit.Neighbours.from_bytes(raw) for p, raw in found.items()}
    for p, w in pairs:
        current[p] = covisit.add(current[p], item, w, event.ts)
    store.put_many(covisit.NAMESPACE, {p: n.to_bytes() for p, n in current.items() if n is not None}, ttl_s)
