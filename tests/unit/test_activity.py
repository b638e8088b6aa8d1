"""Per-item streaming activity: the fold and the features read from it."""

from __future__ import annotations

import math

import pytest

from insession.clock import HOUR_MS, MINUTE_MS
from insession.events import Event, EventType
from insession.features.activity import (
    POPULARITY_HALF_LIFE_MS,
    ActivityDecoder,
    ItemActivity,
    activity_features,
    bump,
)

T0 = 1_767_225_600_000


def test_activity_features_count_windows_and_decay_popularity() -> None:
    act = None
    for n, age in enumerate((30 * HOUR_MS, 2 * HOUR_MS, 30 * MINUTE_MS, 2 * MINUTE_MS)):
        act = bump(act, Event(f"e{n}", "u", EventType.CLICK, T0 - age, "i"))
    cart = bump(None, Event("c", "u", EventType.ADD_TO_CART, T0 - HOUR_MS, "j"))
    out = activity_features([act, None, cart], T0)
    assert out[0, 1:].tolist() == [1, 2, 3]  # 5 min, 1 h, 24 h
    assert out[1].tolist() == [0, 0, 0, 0]
    assert out[2, 1:].tolist() == [0, 0, 1]  # exactly one hour old: outside (now - 1h, now]
    assert act is not None and cart is not None
    assert out[0, 0] == pytest.approx(math.log1p(act.popularity_at(T0)))
    assert out[2, 0] == pytest.approx(math.log1p(3.0 * 0.5 ** (HOUR_MS / POPULARITY_HALF_LIFE_MS)))


def test_the_decode_memo_keeps_one_version_per_item() -> None:
    """A busy item's activity changes with every event; the memo must not keep each old version."""
    decoder = ActivityDecoder(max_entries=100)
    activity = None
    for n in range(500):
        activity = bump(activity, Event(f"e{n}", f"u{n}", EventType.CLICK, 1_700_000_000_000 + n * 1000, "hot"))
        assert activity is not None
        raw = activity.to_bytes()
        decoded = decoder.decode("hot", raw)
        assert decoded == ItemActivity.from_bytes(raw) and decoder.decode("hot", raw) is decoded
    assert len(decoder) == 1
    for n in range(150):  # past max_entries items it starts again
        decoder.decode(f"i{n}", raw)
    assert len(decoder) <= 100
