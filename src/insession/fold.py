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
from dataclasses import dataclass, field
from typing import TypeVar

from insession.config import SessionConfig
from insession.events import Event
from insession.features.activity import ACTIVITY_WEIGHTS, ItemActivity, bump, capped
from insession.features.activity import NAMESPACE as ACTIVITY_NAMESPACE
from insession.memo import DecodeMemo
from insession.online import covisit
from insession.sessions import SessionState, apply
from insession.store import FeatureStore

T = TypeVar("T")


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


@dataclass(slots=True)
class Written:
    """The keys a fold wrote to the store since they were last taken: the users whose session
    state changed, the items whose activity changed and those whose followers changed (what a
    checkpoint of the fold's state must hold, ``checkpoints.StoreCheckpoints``)."""

    users: set[str] = field(default_factory=set)
    activity: set[str] = field(default_factory=set)
    followers: set[str] = field(default_factory=set)

    def take(self) -> tuple[list[str], list[str], list[str]]:
        """The keys written (sorted), forgotten here."""
        out = sorted(self.users), sorted(self.activity), sorted(self.followers)
        self.users, self.activity, self.followers = set(), set(), set()
        return out


@dataclass(frozen=True, slots=True)
class FoldMemos:
    """Decoded item activity and co-visitation lists kept across folds (``memo.DecodeMemo``): the
    fold reads the same hot items batch after batch, each unchanged since the fold wrote it."""

    activity: DecodeMemo[ItemActivity]
    followers: DecodeMemo[covisit.Neighbours]


class SharedState:
    """The item activity and online co-visitation lists a run of events folds into, read from
    ``store`` once per key, kept decoded while the events fold, and written back by :meth:`flush`
    (one write per namespace). ``to_bytes``/``from_bytes`` round-trip exactly, so the store ends
    with the same bytes as when each event read and wrote them itself; a batch just skips the
    decoding and encoding in between (most of an event's fold, measured in issue 26).

    With ``memos`` (kept by the caller across runs), a value read back unchanged since the last
    run, or since a request decoded it, is not decoded again: :meth:`flush` leaves each value it
    writes there with its bytes."""

    def __init__(
        self, store: FeatureStore, ttl_s: int, memos: FoldMemos | None = None, written: Written | None = None
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.memos = memos
        self.written = written
        self._decode_activity: Callable[[str, bytes], ItemActivity] = (
            _plain(ItemActivity.from_bytes) if memos is None else memos.activity.decode
        )
        self._decode_followers: Callable[[str, bytes], covisit.Neighbours] = (
            _plain(covisit.Neighbours.from_bytes) if memos is None else memos.followers.decode
        )
        self._activity: dict[str, ItemActivity | None] = {}
        self._neighbours: dict[str, covisit.Neighbours | None] = {}
        self._changed_activity: set[str] = set()
        self._changed_neighbours: set[str] = set()

    def apply(self, effects: ItemEffects) -> None:
        """Fold ``effects`` into the item activity and the online co-visitation lists."""
        event = effects.event
        item = event.item_id
        if effects.capped or item is None:
            return
        if effects.bump:
            if item not in self._activity:
                raw = self.store.get_many(ACTIVITY_NAMESPACE, [item])[0]
                self._activity[item] = None if raw is None else self._decode_activity(item, raw)
            old = self._activity[item]
            bumped = bump(old, event)
            if bumped is not None and bumped is not old:
                self._activity[item] = bumped
                self._changed_activity.add(item)
        pairs = [(p, w) for p, w in effects.follows if p != item]
        if not pairs:
            return
        current = self._neighbours
        missing = list(dict.fromkeys(p for p, _ in pairs if p not in current))
        if missing:
            raws = self.store.get_many(covisit.NAMESPACE, missing)
            current.update(
                (p, None if raw is None else self._decode_followers(p, raw))
                for p, raw in zip(missing, raws, strict=True)
            )
        for p, w in pairs:
            current[p] = covisit.add(current[p], item, w, event.ts)
            self._changed_neighbours.add(p)

    def flush(self) -> None:
        """Write every value changed since the last flush to the store."""
        if self._changed_activity:
            activity = {i: a for i in sorted(self._changed_activity) if (a := self._activity[i]) is not None}
            raws = {i: a.to_bytes() for i, a in activity.items()}
            self.store.put_many(ACTIVITY_NAMESPACE, raws, self.ttl_s)
            if self.written is not None:
                self.written.activity.update(raws)
            if self.memos is not None:
                for i, a in activity.items():
                    self.memos.activity.remember(i, raws[i], a)
        if self._changed_neighbours:
            lists = {p: n for p in sorted(self._changed_neighbours) if (n := self._neighbours[p]) is not None}
            raws = {p: n.to_bytes() for p, n in lists.items()}
            self.store.put_many(covisit.NAMESPACE, raws, self.ttl_s)
            if self.written is not None:
                self.written.followers.update(raws)
            if self.memos is not None:
                for p, n in lists.items():
                    self.memos.followers.remember(p, raws[p], n)
        self._changed_activity.clear()
        self._changed_neighbours.clear()


def _plain(from_bytes: Callable[[bytes], T]) -> Callable[[str, bytes], T]:
    return lambda _key, raw: from_bytes(raw)


def apply_item_effects(store: FeatureStore, effects: ItemEffects, ttl_s: int) -> None:
    """Fold ``effects`` into the item activity and online co-visitation held in ``store``."""
    shared = SharedState(store, ttl_s)
    shared.apply(effects)
    shared.flush()


class FoldBatch:
    """The fold of a run of events (in log order) into ``store``, with each user's state read once
    and every change written back once, by :meth:`flush`: the same state as :func:`fold_event` for
    each event in turn (``tests/unit/test_fold_batch.py``). ``learn=False`` leaves the online
    co-visitation counts as they are; ``on_pair`` is given the pair (the session's previous counted
    item, this item) the online factor model learns from; ``memos``: see :class:`SharedState`;
    ``written`` (optional) collects the keys each flush writes."""

    def __init__(
        self,
        store: FeatureStore,
        session: SessionConfig,
        ttl_s: int,
        stats: FoldStats | None = None,
        learn: bool = True,
        on_pair: Callable[[str, str], object] | None = None,
        memos: FoldMemos | None = None,
        written: Written | None = None,
    ) -> None:
        self.store = store
        self.session = session
        self.ttl_s = ttl_s
        self.stats = stats
        self.learn = learn
        self.on_pair = on_pair
        self.shared = SharedState(store, ttl_s, memos, written)
        self.written = written
        self._states: dict[str, SessionState | None] = {}
        self._changed: dict[str, None] = {}  # users, in the order their state first changed

    def fold(self, position: int, event: Event) -> SessionState:
        """Apply ``event`` (at log ``position``); returns the user's new state."""
        user = event.user_id
        old_state = self._states[user] if user in self._states else self.store.get_session(user)
        state = apply(old_state, event, self.session, position)
        self._states[user] = state
        self._changed[user] = None
        effects = item_effects(old_state, event, self.session, self.learn)
        if effects is None:
            return state
        if effects.capped:
            if self.stats is not None:
                self.stats.capped += 1
            return state
        self.shared.apply(effects)
        if effects.follows and self.on_pair is not None and event.item_id is not None:
            self.on_pair(effects.follows[0][0], event.item_id)
        return state

    def flush(self) -> None:
        """Write the states, item activity and co-visitation lists changed since the last flush."""
        for user in self._changed:
            state = self._states[user]
            if state is not None:
                self.store.put_session(user, state, self.ttl_s)
        if self.written is not None:
            self.written.users.update(self._changed)
        self._changed.clear()
        self.shared.flush()


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
    batch = FoldBatch(store, session, ttl_s, stats, learn, on_pair)
    state = batch.fold(position, event)
    batch.flush()
    return state
