"""The fold of one event into a feature store: the user's session state, the item's activity, and
the online co-visitation counts (``online.covisit``).

One fold, used by the embedded engine (``fold_event``, as it ingests) and by the stream workers,
so both produce the same state from the same events. The workers run it in its two halves: the
user's half (``sessions.apply`` and :func:`item_effects`, which read that user's state only) in
the user's stream partition, and :func:`apply_item_effects` where the items are stored;
``fold_event`` is exactly the two in a row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from insession.config import SessionConfig
from insession.events import Event
from insession.features.activity import ACTIVITY_WEIGHTS, ItemActivity, bump, capped
from insession.features.activity import NAMESPACE as ACTIVITY_NAMESPACE
from insession.online import covisit
from insession.sessions import SessionState, apply
from insession.store import FeatureStore


@dataclass(slots=True)
class FoldStats:
    """What the fold did besides folding: events kept out of item activity by the guard rail."""

    capped: int = 0


@dataclass(frozen=True, slots=True)
class ItemEffects:
    """What one event changes in the state all users share, decided from its user's state alone:
    the activity of its item (``bump``) and the followers of the items it follows (``follows``:
    ``(earlier item, weight)``, latest first, as ``covisit.previous_items`` gives them). The
    stream workers split one event's effects by where they are stored (:meth:`only`)."""

    event: Event
    capped: bool = False  # over its user's share of the item: changes nothing shared
    bump: bool = True
    follows: tuple[tuple[str, float], ...] = ()

    def only(self, keep: Callable[[str], bool]) -> ItemEffects | None:
        """The effects on the items ``keep`` accepts (``None`` if none)."""
        bump = self.bump and self.event.item_id is not None and keep(self.event.item_id)
        follows = tuple((p, w) for p, w in self.follows if keep(p))
        return ItemEffects(self.event, self.capped, bump, follows) if bump or follows else None


def item_effects(
    old_state: SessionState | None, event: Event, session: SessionConfig, learn: bool
) -> ItemEffects | None:
    """The shared effects of ``event`` given its user's state before it (``None``: no item)."""
    if event.item_id is None:
        return None
    if capped(old_state, event):
        return ItemEffects(event, capped=True, bump=False)
    weighted = event.type in ACTIVITY_WEIGHTS  # other events leave item activity as it is (``bump``)
    if not (learn and covisit.counts(event)):
        return ItemEffects(event, bump=weighted)
    pairs = covisit.previous_items(covisit.before(old_state, event, session), event.item_id)
    return ItemEffects(event, bump=weighted, follows=tuple(pairs))


def apply_item_effects(store: FeatureStore, effects: ItemEffects, ttl_s: int) -> None:
    """Fold ``effects`` into the item activity and online co-visitation held in ``store``."""
    event = effects.event
    if effects.capped or event.item_id is None:
        return
    if effects.bump:
        raw = store.get_many(ACTIVITY_NAMESPACE, [event.item_id])[0]
        old = None if raw is None else ItemActivity.from_bytes(raw)
        bumped = bump(old, event)
        if bumped is not None and bumped is not old:
            store.put_many(ACTIVITY_NAMESPACE, {event.item_id: bumped.to_bytes()}, ttl_s)
    if effects.follows:
        learn_pairs(store, list(effects.follows), event, ttl_s)


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
    effects = item_effects(old_state, event, session, learn)
    if effects is None:
        return state
    if effects.capped:
        if stats is not None:
            stats.capped += 1
        return state
    apply_item_effects(store, effects, ttl_s)
    if effects.follows and on_pair is not None and event.item_id is not None:
        on_pair(effects.follows[0][0], event.item_id)
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
