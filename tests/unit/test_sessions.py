from __future__ import annotations

from collections import defaultdict

from insession.clock import MINUTE_MS
from insession.config import SessionConfig
from insession.datasets.synthetic import SyntheticShop
from insession.events import Event, EventType
from insession.sessions import SessionState, apply, fold, split_sessions

T0 = 1_767_225_600_000
CFG = SessionConfig(timeout_ms=30 * MINUTE_MS)


def ev(
    n: int,
    ts: int,
    kind: EventType = EventType.VIEW,
    item: str | None = "i1",
    user: str = "u1",
    session: str | None = None,
) -> Event:
    return Event(f"e{n}", user, kind, ts, item, session)


def run(*events: Event) -> SessionState:
    state = None
    for n, event in enumerate(events, start=1):
        state = apply(state, event, CFG, n)
    assert state is not None
    return state


def test_session_cut_exactly_at_timeout() -> None:
    at = run(ev(1, T0), ev(2, T0 + CFG.timeout_ms))
    assert at.session_index == 2 and at.session_started_ms == T0 + CFG.timeout_ms
    assert [i.item_id for i in at.history] == ["i1"] and len(at.events) == 1


def test_no_cut_one_millisecond_before_timeout() -> None:
    before = run(ev(1, T0), ev(2, T0 + CFG.timeout_ms - 1))
    assert before.session_index == 1 and len(before.events) == 2 and before.history == ()


def test_timeout_is_configurable() -> None:
    short = SessionConfig(timeout_ms=5 * MINUTE_MS)
    state = apply(apply(None, ev(1, T0), short, 1), ev(2, T0 + 5 * MINUTE_MS), short, 2)
    assert state.session_index == 2


def test_session_version_counts_every_applied_event_across_sessions() -> None:
    state = run(ev(1, T0), ev(2, T0 + 1000), ev(3, T0 + 3 * CFG.timeout_ms), ev(4, T0 + 3 * CFG.timeout_ms + 5))
    assert state.session_version == 4 and state.session_index == 2


def test_client_session_id_decides_when_present() -> None:
    state = run(ev(1, T0, session="a"), ev(2, T0 + 1000, session="b"))
    assert state.session_id == "b" and state.session_index == 2
    same = run(ev(1, T0, session="a"), ev(2, T0 + 5 * CFG.timeout_ms, session="a"))
    assert same.session_index == 1


def test_out_of_order_event_never_cuts_or_moves_time_back() -> None:
    state = run(ev(1, T0 + 10_000), ev(2, T0))
    assert state.session_index == 1 and state.last_event_ms == T0 + 10_000


def test_cart_purchase_and_dismiss_bookkeeping() -> None:
    state = run(
        ev(1, T0, EventType.ADD_TO_CART, "a"),
        ev(2, T0 + 1, EventType.ADD_TO_CART, "b"),
        ev(3, T0 + 2, EventType.PURCHASE, "a"),
        ev(4, T0 + 3, EventType.DISMISS, "c"),
        ev(5, T0 + 4, EventType.SEARCH, None),
    )
    assert state.cart == ("b",) and state.purchased == ("a",) and state.dismissed == ("c",)
    assert state.session_version == 5 and state.seen_items() == ("a", "b", "c")


def test_apply_is_pure() -> None:
    first = run(ev(1, T0))
    snapshot = first.to_bytes()
    a = apply(first, ev(2, T0 + 5), CFG, 2)
    b = apply(first, ev(2, T0 + 5), CFG, 2)
    assert a == b and a.to_bytes() == b.to_bytes()
    assert first.to_bytes() == snapshot


def test_state_is_bounded() -> None:
    cfg = SessionConfig(max_session_events=3, max_history_events=4)
    state = None
    for n in range(20):
        state = apply(state, ev(n, T0 + n * (cfg.timeout_ms if n % 5 == 0 else 1), item=f"i{n}"), cfg, n)
    assert state is not None and len(state.events) <= 3 and len(state.history) <= 4


def test_serialisation_round_trip_is_byte_equal(shop: SyntheticShop) -> None:
    states = fold(shop.events, CFG)
    for state in list(states.values())[:50]:
        again = SessionState.from_bytes(state.to_bytes())
        assert again == state and again.to_bytes() == state.to_bytes()


def test_split_sessions_agrees_with_the_fold(shop: SyntheticShop) -> None:
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in shop.events:
        by_user[event.user_id].append(event)
    states = fold(shop.events, CFG)
    for user, events in by_user.items():
        assert len(list(split_sessions(events, CFG))) == states[user].session_index
