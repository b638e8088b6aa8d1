"""The fold's fast paths give what the general code gives, on random inputs (issue 26: ingest made
cheaper with the same state byte for byte). Each shortcut is compared with the plain computation
it replaces, ties and out-of-order times included."""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from dataclasses import fields, replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from insession.config import SessionConfig
from insession.events import Event, EventType
from insession.features.activity import (
    ACTIVITY_WEIGHTS,
    MAX_RECENT,
    POPULARITY_HALF_LIFE_MS,
    WINDOWS_MS,
    ItemActivity,
    activity_windows,
    bump,
    user_key,
)
from insession.online import covisit
from insession.sessions import Interaction, SessionState, _open_session, advance, apply

CFG = SessionConfig(max_session_events=6, max_history_events=5, max_user_items=3)
T0 = 1_700_000_000_000
KINDS = [EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE, EventType.DISMISS]
ITEMS = st.sampled_from([f"i{n}" for n in range(6)])
TIMES = st.integers(T0 - 3 * CFG.timeout_ms, T0 + 3 * CFG.timeout_ms)
INTERACTIONS = st.builds(
    Interaction, ITEMS, st.sampled_from(KINDS), TIMES, st.one_of(st.none(), st.sampled_from(["c0", "c1"]))
)


def state_strategy() -> st.SearchStrategy[SessionState]:
    """States with every field drawn, none left at its default (a field added to ``SessionState``
    must be added here, so the tests below see whether the fold carries it over)."""
    drawn = {
        "user_id": st.just("u"),
        "session_id": st.sampled_from(["u#1", "s1", "s2"]),
        "session_index": st.integers(1, 9),
        "session_version": st.integers(1, 99),
        "session_started_ms": TIMES,
        "last_event_ms": TIMES,
        "log_position": st.integers(1, 10**6),
        "explicit_session": st.booleans(),
        "events": st.lists(INTERACTIONS, max_size=8).map(lambda xs: tuple(sorted(xs, key=lambda i: i.ts))),
        "history": st.lists(INTERACTIONS, max_size=8).map(tuple),
        "cart": st.lists(ITEMS, max_size=3, unique=True).map(tuple),
        "purchased": st.lists(ITEMS, max_size=3, unique=True).map(tuple),
        "dismissed": st.lists(ITEMS, max_size=3, unique=True).map(tuple),
        "last_query": st.one_of(st.none(), st.sampled_from(["shoes", "red"])),
        "last_query_ms": TIMES,
        "previous_last_ms": st.one_of(st.none(), TIMES),
    }
    assert set(drawn) == {f.name for f in fields(SessionState)}, "draw every SessionState field"
    return st.fixed_dictionaries(drawn).map(lambda kw: SessionState(**kw))


EVENTS = st.builds(
    lambda kind, item, ts, session, n: Event(
        f"e{n}",
        "u",
        kind,
        ts,
        None if kind is EventType.SEARCH else item,
        session,
        {"query": "q"} if kind is EventType.SEARCH else {"category": "c1"},
    ),
    st.sampled_from([*KINDS, EventType.SEARCH]),
    ITEMS,
    TIMES,
    st.one_of(st.none(), st.sampled_from(["s1", "s2"])),
    st.integers(0, 10**6),
)

#: What ``apply`` computes; every other field comes from the session it folds into.
APPLY_SETS = {
    "session_version",
    "session_started_ms",
    "last_event_ms",
    "log_position",
    "events",
    "cart",
    "purchased",
    "dismissed",
    "last_query",
    "last_query_ms",
}
#: What opening a session sets; every other field is the user's, carried over.
OPEN_SETS = {
    "session_id",
    "session_index",
    "session_started_ms",
    "last_event_ms",
    "explicit_session",
    "events",
    "history",
    "last_query",
    "last_query_ms",
    "previous_last_ms",
}


@given(state_strategy(), EVENTS, st.integers(0, 10**6))
def test_apply_carries_over_every_field_it_does_not_compute(state: SessionState, event: Event, position: int) -> None:
    new = apply(state, event, CFG, position)
    opened = _open_session(state, event, CFG)
    base = opened if new.session_index != state.session_index else state
    assert new == replace(base, **{f: getattr(new, f) for f in APPLY_SETS})
    assert opened == replace(state, **{f: getattr(opened, f) for f in OPEN_SETS})
    assert new.to_bytes() == replace(base, **{f: getattr(new, f) for f in APPLY_SETS}).to_bytes()


@given(state_strategy(), EVENTS)
def test_advance_moves_only_the_newest_time(state: SessionState, event: Event) -> None:
    new, marker = advance(state, event, CFG)
    if not new:
        assert marker == replace(state, last_event_ms=max(state.last_event_ms, event.ts))


FOLLOWERS = st.sampled_from([f"f{n}" for n in range(60)])
#: Few distinct weights, and pairs one float apart, so ties (kept and made by decay) are common.
WEIGHTS = st.sampled_from([1.0, 0.5, 1 / 3, 2.5, 1e-300, 0.0]).flatmap(
    lambda w: st.sampled_from([w, math.nextafter(w, 0.0), math.nextafter(w, math.inf)])
)
STEPS = st.sampled_from([0, 1, 1000, covisit.HALF_LIFE_MS, 10**6 * covisit.HALF_LIFE_MS])


@st.composite
def neighbour_lists(draw: st.DrawFn) -> covisit.Neighbours:
    """A stored list as the fold keeps it: heaviest first, ties by id, at most MAX_NEIGHBOURS."""
    weights = draw(st.dictionaries(FOLLOWERS, WEIGHTS, max_size=covisit.MAX_NEIGHBOURS))
    ranked = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))
    return covisit.Neighbours(T0, tuple(i for i, _ in ranked), tuple(w for _, w in ranked))


@given(neighbour_lists(), FOLLOWERS, st.sampled_from([1.0, 0.5, 1 / 3]), st.integers(-2, 2), STEPS)
def test_covisit_add_equals_the_full_sort(
    old: covisit.Neighbours, item: str, weight: float, sign: int, step: int
) -> None:
    ts = old.last_ts + sign * step  # older, same time or newer
    assert covisit.add(old, item, weight, ts) == covisit.add_by_sort(old, item, weight, ts)
    assert covisit.add(old, item, weight, ts).to_bytes() == covisit.add_by_sort(old, item, weight, ts).to_bytes()


@given(st.lists(st.tuples(FOLLOWERS, st.sampled_from([1.0, 0.5, 1 / 3]), st.integers(0, 3), STEPS), max_size=120))
def test_covisit_lists_folded_with_add_equal_those_folded_by_sorting(
    steps: list[tuple[str, float, int, int]],
) -> None:
    fast: covisit.Neighbours | None = None
    plain: covisit.Neighbours | None = None
    ts = T0
    for item, weight, back, step in steps:
        ts += step
        at = ts - back * 1000  # some events older than the list's newest
        fast = covisit.add(fast, item, weight, at)
        plain = (
            covisit.Neighbours(at, (item,), (weight,))
            if plain is None
            else covisit.add_by_sort(plain, item, weight, at)
        )
        assert fast == plain


@given(
    st.lists(
        st.tuples(st.sampled_from(["u", "v", "w"]), st.sampled_from(list(ACTIVITY_WEIGHTS)), st.integers(-3, 3)),
        max_size=3 * MAX_RECENT,
    ),
    st.booleans(),
)
def test_item_activity_bumped_in_any_time_order_keeps_the_sorted_newest(
    steps: list[tuple[str, EventType, int]], legacy: bool
) -> None:
    activity: ItemActivity | None = ItemActivity(1.0, T0, (T0 - 5, T0), ()) if legacy else None  # times only
    ts = T0
    for n, (user, kind, delta) in enumerate(steps):
        ts += max(delta, 0)
        at = ts + min(delta, 0)  # newer, the same time (ties by user) or older
        event = Event(f"e{n}", user, kind, at, item_id="i1")
        before = () if activity is None else activity.recent
        users = () if activity is None else activity.recent_users or (-1,) * len(before)
        activity = bump(activity, event)
        assert activity is not None
        expected = sorted((*zip(before, users, strict=True), (at, user_key(user))))[-MAX_RECENT:]
        assert list(zip(activity.recent, activity.recent_users, strict=True)) == expected


PROPERTY_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5), st.sampled_from(["é", "\u2028", "\x00"])
)


@given(
    st.dictionaries(st.text(min_size=1, max_size=4), PROPERTY_VALUES, max_size=4),
    st.one_of(st.none(), st.text(max_size=4)),
)
def test_event_json_from_the_encoder_built_once_equals_json_dumps(properties: dict, session: str | None) -> None:
    event = Event("e1", "u1", EventType.VIEW, T0, "i1", session, properties)
    try:
        expected = json.dumps(event.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN or infinity: refused the same way
        with pytest.raises(ValueError):
            event.to_json()
    else:
        assert event.to_json() == expected


ODD_TEXT = st.text(max_size=6)  # quotes, backslashes, control and non-ASCII characters


@given(
    state_strategy(),
    ODD_TEXT,
    st.one_of(st.none(), ODD_TEXT),
    st.lists(st.builds(Interaction, ODD_TEXT, st.sampled_from(KINDS), TIMES, st.one_of(st.none(), ODD_TEXT))),
)
def test_state_bytes_are_the_sorted_json_of_to_dict(
    state: SessionState, user: str, query: str | None, history: list[Interaction]
) -> None:
    """``to_bytes`` writes exactly the canonical form (``to_dict`` with sorted keys), and
    ``from_bytes`` reads it back to an equal state, whatever the strings hold."""
    state = replace(state, user_id=user, session_id=user + "#1", last_query=query, history=tuple(history))
    raw = state.to_bytes()
    assert raw == json.dumps(state.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    assert SessionState.from_bytes(raw) == state


def test_state_bytes_with_an_unknown_type_are_refused_by_the_field_rule() -> None:
    raw = SessionState("u", "s", 1, 1, T0, T0, events=(Interaction("i", EventType.VIEW, T0),)).to_bytes()
    with pytest.raises(ValueError, match="'teleport' is not a valid EventType"):
        SessionState.from_bytes(raw.replace(b'"view"', b'"teleport"'))


@given(
    st.floats(0, 1e12),
    st.integers(-(2**62), 2**62),
    st.lists(st.tuples(st.integers(-(2**62), 2**62), st.integers(-1, 2**32 - 1)), max_size=MAX_RECENT),
    st.booleans(),
)
def test_activity_bytes_are_the_float64_array_numpy_writes(
    decayed: float, last_ts: int, recent: list[tuple[int, int]], with_users: bool
) -> None:
    """``ItemActivity.to_bytes`` packs with ``struct``; the bytes are those of the float64 array it
    replaces (times past 2**53 rounded alike), and read back by ``from_bytes``."""
    activity = ItemActivity(
        decayed, last_ts, tuple(t for t, _ in recent), tuple(u for _, u in recent) if with_users else ()
    )
    users = activity.recent_users or (-1,) * len(activity.recent)
    plain = np.array((-1.0, decayed, last_ts, *activity.recent, *users), dtype=np.float64).tobytes()
    assert activity.to_bytes() == plain
    back = ItemActivity.from_bytes(plain)
    assert (back.decayed, len(back.recent), len(back.recent_users)) == (decayed, len(recent), len(recent))


def windows_by_bisection(activity: list[ItemActivity | None], now_ms: int) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    """``activity_windows`` item by item, bisecting each item's times (its plain computation)."""
    out = np.zeros((len(activity), 1 + len(WINDOWS_MS)), dtype=np.float64)
    users_last = np.zeros(len(activity), dtype=np.float64)
    for n, a in enumerate(activity):
        if a is None:
            continue
        top = bisect_right(a.recent, now_ms)
        starts = [bisect_right(a.recent, now_ms - w) for w in WINDOWS_MS]
        out[n, 1:] = [top - start for start in starts]
        age = np.maximum(now_ms - np.array([a.last_ts], dtype=np.int64), 0)
        out[n, 0] = np.log1p(np.array([a.decayed]) * np.exp(-math.log(2) * age / POPULARITY_HALF_LIFE_MS))[0]
        found = set(a.recent_users[starts[-1] : top])
        found.discard(-1)
        users_last[n] = len(found)
    return out, users_last


ACTIVITIES = st.one_of(
    st.none(),
    st.builds(
        lambda decayed, last, events, with_users: ItemActivity(
            decayed,
            last,
            tuple(sorted(t for t, _ in events)),
            tuple(u for _, u in sorted(events)) if with_users else (),
        ),
        st.floats(0, 1e6),
        TIMES,
        st.lists(st.tuples(TIMES, st.integers(-1, 4)), max_size=MAX_RECENT),
        st.booleans(),
    ),
)


@given(st.lists(ACTIVITIES, max_size=12), TIMES)
def test_activity_windows_count_what_bisecting_each_item_counts(activity: list[ItemActivity | None], now: int) -> None:
    """All items' windows at once give each item's own bisection: requests before an item's newest
    events (explain), unknown users (-1), no users kept, empty and missing activity included."""
    fast, users = activity_windows(activity, now)
    plain, plain_users = windows_by_bisection(activity, now)
    assert np.array_equal(fast, plain) and np.array_equal(users, plain_users)
