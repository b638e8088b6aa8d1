"""Property tests of the session reducer and the per-event features: the order events arrive in
does not matter, within the allowed lateness; beyond it an event is refused with its reason."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from insession.clock import MINUTE_MS
from insession.config import SessionConfig
from insession.engine import Engine
from insession.events import Event, EventType
from insession.features.activity import ItemActivity, bump
from insession.features.streaming import AnchorConfig, session_anchors
from insession.sessions import SessionState, advance, apply, lateness

CFG = SessionConfig(timeout_ms=30 * MINUTE_MS, allowed_lateness_ms=10 * MINUTE_MS)
T0 = 1_700_000_000_000
TYPES = [EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE, EventType.DISMISS]


@st.composite
def histories(draw: st.DrawFn) -> list[Event]:
    """One or more users' events in event-time order: distinct times per user, gaps that
    sometimes cut a session, items from a small pool (so carts and purchases interact)."""
    events: list[Event] = []
    for u in range(draw(st.integers(1, 3))):
        ts = T0 + draw(st.integers(0, 10 * MINUTE_MS))
        for n in range(draw(st.integers(1, 25))):
            gap = draw(st.one_of(st.integers(1, 4 * MINUTE_MS), st.integers(CFG.timeout_ms, 3 * CFG.timeout_ms)))
            ts += gap
            kind = draw(st.sampled_from([*TYPES, EventType.SEARCH]))
            item = None if kind is EventType.SEARCH else f"i{draw(st.integers(0, 5))}"
            props = {"query": f"q{n}"} if kind is EventType.SEARCH else {"category": f"c{draw(st.integers(0, 2))}"}
            events.append(Event(f"u{u}-e{n}", f"u{u}", kind, ts, item, None, props))
    return events


def _sessions(events: list[Event]) -> dict[str, int]:
    """Each event's session number in time order (per user), with the reducer's own cut rule."""
    out: dict[str, int] = {}
    markers: dict[str, SessionState | None] = {}
    numbers: dict[str, int] = {}
    for e in sorted(events, key=lambda e: e.ts):
        new, markers[e.user_id] = advance(markers.get(e.user_id), e, CFG)
        numbers[e.user_id] = numbers.get(e.user_id, 0) + int(new)
        out[e.event_id] = numbers[e.user_id]
    return out


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[list[Event], list[Event]]:
    """(time order, an arrival order): each event delayed by up to the allowed lateness, never
    past the next session of its user; users interleaved at random."""
    events = draw(histories())
    session = _sessions(events)
    delays = {e.event_id: draw(st.integers(0, CFG.allowed_lateness_ms)) for e in events}
    by_user: dict[str, list[Event]] = {}
    for e in events:
        by_user.setdefault(e.user_id, []).append(e)
    queues = {
        u: sorted(evs, key=lambda e: (session[e.event_id], e.ts + delays[e.event_id], e.event_id))
        for u, evs in by_user.items()
    }
    order: list[Event] = []
    while queues:
        u = draw(st.sampled_from(sorted(queues)))
        order.append(queues[u].pop(0))
        if not queues[u]:
            del queues[u]
    return events, order


def fold_admitted(events: list[Event]) -> tuple[dict[str, SessionState], list[tuple[Event, str]]]:
    """Fold in arrival order, refusing what ``lateness`` refuses (as ingest does)."""
    states: dict[str, SessionState] = {}
    refused: list[tuple[Event, str]] = []
    for position, e in enumerate(events, start=1):
        reason = lateness(states.get(e.user_id), e, CFG)
        if reason is not None:
            refused.append((e, str(reason)))
            continue
        states[e.user_id] = apply(states.get(e.user_id), e, CFG, position)
    return states, refused


def comparable(state: SessionState) -> SessionState:
    """A state without its log position (which counts arrivals, not events)."""
    return replace(state, log_position=0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrivals())
def test_any_arrival_within_the_lateness_folds_to_the_time_sorted_state(case: tuple[list[Event], list[Event]]) -> None:
    in_time, arrived = case
    sorted_states, none = fold_admitted(in_time)
    states, refused = fold_admitted(arrived)
    assert none == [] and refused == []
    assert {u: comparable(s) for u, s in states.items()} == {u: comparable(s) for u, s in sorted_states.items()}
    for user, state in states.items():
        assert state.to_bytes() == replace(sorted_states[user], log_position=state.log_position).to_bytes()
        now = state.last_event_ms + 1000
        assert session_anchors(state, AnchorConfig(), now, CFG.timeout_ms) == session_anchors(
            sorted_states[user], AnchorConfig(), now, CFG.timeout_ms
        )


@settings(max_examples=200, deadline=None)
@given(arrivals())
def test_item_activity_does_not_depend_on_arrival_order(case: tuple[list[Event], list[Event]]) -> None:
    in_time, arrived = case

    def fold(events: list[Event]) -> dict[str, ItemActivity]:
        out: dict[str, ItemActivity] = {}
        for e in events:
            if e.item_id is not None and (a := bump(out.get(e.item_id), e)) is not None:
                out[e.item_id] = a
        return out

    expected, got = fold(in_time), fold(arrived)
    assert got.keys() == expected.keys()
    for item, a in got.items():
        b = expected[item]
        assert (a.last_ts, a.recent, a.recent_users) == (b.last_ts, b.recent, b.recent_users)
        assert a.decayed == pytest.approx(b.decayed, rel=1e-9)


@settings(max_examples=200, deadline=None)
@given(histories(), st.integers(1, 5 * CFG.allowed_lateness_ms))
def test_an_event_beyond_the_lateness_is_refused_with_its_reason(events: list[Event], beyond: int) -> None:
    last = max(e.ts for e in events if e.user_id == events[0].user_id)
    late = Event("late", events[0].user_id, EventType.CLICK, last - CFG.allowed_lateness_ms - beyond, "i1")
    states, refused = fold_admitted([*events, late])
    assert [e.event_id for e, _ in refused] == ["late"]
    assert refused[0][1].startswith("ts: expected at most allowed_lateness_ms")
    assert states == fold_admitted(events)[0]  # refused, so nothing changed


def test_a_late_event_that_would_join_two_sessions_is_refused() -> None:
    a = Event("a", "u", EventType.CLICK, T0, "i1")
    b = Event("b", "u", EventType.CLICK, T0 + CFG.timeout_ms + 5 * MINUTE_MS, "i2")  # a new session
    late = Event("late", "u", EventType.CLICK, T0 + CFG.timeout_ms - MINUTE_MS, "i3")  # 6 min late
    _, refused = fold_admitted([a, b, late])
    assert [(e.event_id, r.split(":")[0]) for e, r in refused] == [("late", "ts")]
    assert "previous, ended session" in refused[0][1]
    # ... while one at the start of the current session (time order cuts before it) is folded:
    early = Event("early", "u", EventType.CLICK, T0 + CFG.timeout_ms + MINUTE_MS, "i4")
    states, refused = fold_admitted([a, b, early])
    assert refused == []
    assert [i.item_id for i in states["u"].events] == ["i4", "i2"]
    assert states["u"].session_started_ms == early.ts


def test_a_late_purchase_empties_the_cart_as_in_time_order() -> None:
    add = Event("a", "u", EventType.ADD_TO_CART, T0, "i1")
    buy = Event("b", "u", EventType.PURCHASE, T0 + 60_000, "i1")
    view = Event("c", "u", EventType.VIEW, T0 + 120_000, "i2")
    in_order, _ = fold_admitted([add, buy, view])
    shuffled, _ = fold_admitted([buy, view, add])
    assert in_order["u"].cart == shuffled["u"].cart == ()
    assert in_order["u"].purchased == shuffled["u"].purchased == ("i1",)


def test_ingest_refuses_a_too_late_event_by_name_and_keeps_the_rest(engine: Engine) -> None:
    now = T0 + 3 * 3_600_000
    batch = [
        {"event_id": "x1", "user_id": "late-user", "type": "click", "item_id": "i1", "ts": now},
        {"event_id": "x2", "user_id": "late-user", "type": "click", "item_id": "i2", "ts": now - 60_000},
        {"event_id": "x3", "user_id": "late-user", "type": "click", "item_id": "i3", "ts": now - 3_600_000},
        {"event_id": "x4", "user_id": "late-user", "type": "click", "item_id": "i4", "ts": now + 1},
    ]
    limit = engine.settings.session.allowed_lateness_ms
    result = engine.ingest_raw(batch)
    assert (result.accepted, result.duplicates) == (3, 0)
    assert [r.index for r in result.rejected] == [2]
    refusal = result.rejected[0].to_dict()
    assert refusal["errors"][0]["field"] == "ts"  # type: ignore[index]
    assert f"allowed_lateness_ms = {limit} ms" in str(refusal["message"])
    state = engine.store.get_session("late-user")
    assert state is not None and [i.item_id for i in state.events] == ["i2", "i1", "i4"]
    # A retry of an accepted event is a duplicate, even when it is now late.
    again = engine.ingest_raw(batch[1:2])
    assert (again.accepted, again.duplicates, again.rejected) == (0, 1, [])


@given(
    st.lists(
        st.one_of(st.none(), st.lists(st.integers(-30 * 3_600_000, 3_600_000), min_size=1, max_size=64)),
        max_size=30,
    ),
    st.integers(0, 2 * 3_600_000),
)
def test_window_counts_are_the_events_inside_each_window(times: list[list[int] | None], shift: int) -> None:
    """``activity_features`` bisects each item's sorted times; the counts are the plain count of
    events in ``(now - w, now]``, a request before an item's newest events included."""
    from insession.features.activity import WINDOWS_MS, activity_features

    now = T0 + shift
    acts = [None if t is None else ItemActivity(1.0, T0 + max(t), tuple(sorted(T0 + x for x in t))) for t in times]
    out = activity_features(acts, now)
    for row, act in zip(out, acts, strict=True):
        recent = () if act is None else act.recent
        expected = [sum(now - w < t <= now for t in recent) for w in WINDOWS_MS]
        assert row[1:].tolist() == expected


@given(
    st.lists(
        st.lists(st.tuples(st.integers(-30 * 3_600_000, 3_600_000), st.integers(-1, 5)), min_size=1, max_size=64),
        max_size=20,
    ),
    st.integers(0, 2 * 3_600_000),
)
def test_distinct_users_in_24h_are_the_users_of_the_events_inside_it(
    events: list[list[tuple[int, int]]], shift: int
) -> None:
    """``activity_windows`` counts each item's distinct known users in ``(now - 24h, now]`` from a
    cached suffix count where the request is after the item's newest event; the count is the plain
    set of users inside the window (``-1``, unknown, left out), a request before the newest events
    included, asked twice (the cache) and with no users kept at all."""
    from insession.features.activity import WINDOWS_MS, activity_windows

    now = T0 + shift
    acts = []
    for item in events:
        pairs = sorted((T0 + t, u) for t, u in item)
        acts.append(ItemActivity(1.0, pairs[-1][0], tuple(t for t, _ in pairs), tuple(u for _, u in pairs)))
    acts.append(ItemActivity(1.0, T0, (T0 - 5, T0)))  # written before users were kept
    for _ in range(2):
        windows, users = activity_windows(acts, now)
        for n, act in enumerate(acts):
            inside = {u for t, u in zip(act.recent, act.recent_users, strict=False) if now - WINDOWS_MS[-1] < t <= now}
            assert users[n] == len(inside - {-1})
            assert windows[n, -1] == sum(now - WINDOWS_MS[-1] < t <= now for t in act.recent)


_TEXTS = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=12),
    st.text(max_size=6),  # control characters, surrogates, non-ASCII, empty
    st.text(alphabet="ab", min_size=120, max_size=140),  # around MAX_ID_CHARS
)
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63 - 1, 2**63, -(2**63) + 1, -(2**63), 2**64, 10**400]),  # around MAX_PROPERTY_INT
    st.floats(allow_nan=True, allow_infinity=True),
    _TEXTS,
    st.text(alphabet="x\t", min_size=500, max_size=520),  # tabs; around MAX_PROPERTY_STRING_CHARS
    st.integers(508, 516).map(lambda n: "x" * n),
    st.lists(st.integers(), max_size=2),
)


@st.composite
def python_events(draw: st.DrawFn) -> Event:
    """Events as a caller of the Python API may build them: valid, with up to two fields made
    anything (wrong type, out of range, odd text), and properties of any values."""
    plain = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=12)
    fields = {
        "event_id": (plain, st.one_of(_TEXTS, st.none())),
        "user_id": (plain, _TEXTS),
        "type": (st.sampled_from(list(EventType)), st.just("view")),
        "ts": (
            st.integers(min_value=T0, max_value=T0 + 10**9),
            st.one_of(st.integers(min_value=0, max_value=5 * 10**12), st.booleans(), st.floats()),
        ),
        "item_id": (plain, st.one_of(st.none(), _TEXTS)),
        "session_id": (st.one_of(st.none(), plain), st.one_of(st.just(""), _TEXTS)),
    }
    odd = draw(st.sets(st.sampled_from(sorted(fields)), max_size=2))
    value = {name: draw(bad if name in odd else good) for name, (good, bad) in fields.items()}
    keys = st.one_of(st.sampled_from(["category", "brand", "query", "price", "device", "colour"]), _TEXTS)
    props = draw(st.dictionaries(keys, _VALUES, max_size=4))
    return Event(
        value["event_id"],
        value["user_id"],
        value["type"],
        value["ts"],
        value["item_id"],
        value["session_id"],
        props,
    )


@settings(max_examples=1500, deadline=None)
@given(python_events())
def test_the_quick_yes_of_check_event_is_only_given_to_events_every_rule_accepts(event: Event) -> None:
    from insession.events import _every_problem, _plainly_valid, check_event

    every = _every_problem(event)
    if _plainly_valid(event):
        assert every == [], every
    assert check_event(event) == every


def test_the_quick_yes_of_check_event_takes_the_usual_events(shop: object) -> None:
    from insession.events import _plainly_valid

    events = shop.events  # type: ignore[attr-defined]
    assert all(_plainly_valid(e) for e in events)  # the synthetic shop's events: the fast path


@st.composite
def json_events(draw: st.DrawFn) -> object:
    """Event documents as a client (or the log) may send them: an event's fields, some made
    anything, sometimes with a field too many, a missing one, or not an object at all."""
    event = draw(python_events())
    raw: dict[object, object] = {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "type": event.type.value if isinstance(event.type, EventType) else event.type,
        "ts": event.ts,
        "item_id": event.item_id,
        "session_id": event.session_id,
        "properties": event.properties,
    }
    for name in draw(st.sets(st.sampled_from(sorted(raw)), max_size=2)):
        del raw[name]
    if draw(st.booleans()):
        raw[draw(st.sampled_from(["extra", 1, "type"]))] = draw(_VALUES)
    return draw(st.one_of(st.just(raw), _VALUES))


@settings(max_examples=1500, deadline=None)
@given(json_events())
@example({"event_id": "e", "user_id": "u", "type": "view", "ts": T0, "item_id": "i", "properties": {"z": 1, "a": "b"}})
def test_the_quick_way_of_validate_event_makes_the_event_every_rule_makes(raw: object) -> None:
    from insession.events import _plain_event, _validate_every_rule, validate_event

    every, errors = _validate_every_rule(raw)
    quick = _plain_event(raw)
    if quick is not None:
        assert every is not None and errors == [] and quick == every, errors
        assert list(quick.properties.items()) == list(every.properties.items())  # the same order too
    assert validate_event(raw) == (every, errors)
