"""Nothing a client sends can put a record in the log that the server cannot serve afterwards.

Arbitrary JSON strings (lone surrogates and control characters included) and numbers (infinities,
huge integers, NaN) in every field of an event: whatever is accepted must be listable, explainable,
snapshotted, replayed byte for byte, and shown in the catalog, encoded the way the HTTP layer
encodes a response (UTF-8 JSON without NaN)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st

from conftest import patient_surfaces
from insession.clock import ManualClock
from insession.config import Settings
from insession.engine import Engine
from insession.model import ModelBundle
from insession.pipeline import RecommendRequest
from insession.replay import check

TS = 1_767_225_600_000
ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=[]), max_size=12)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([TS, TS + 1, 0, -1, 2**63, float("inf"), float("-inf")]),
)
SCALARS = st.one_of(ANY_TEXT, NUMBERS, st.booleans(), st.none())
IDS = st.one_of(ANY_TEXT, st.sampled_from(["u1", "u2", "i00001", "i00002", "s1", ""]), NUMBERS)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with any of its fields, and any properties, replaced by arbitrary JSON values:
    most are refused, many are accepted with unusual text (emoji, unassigned code points, private
    use, right-to-left marks) that every later step must still handle."""
    raw: dict[str, Any] = {
        "event_id": f"e{draw(st.integers(0, 10**6))}",
        "user_id": draw(st.sampled_from(["u1", "u2"])),
        "type": draw(st.sampled_from(["view", "click", "add_to_cart", "purchase", "search", "dismiss"])),
        "item_id": draw(st.sampled_from(["i00001", "i00002", "new-item"])),
        "ts": draw(st.integers(min_value=TS, max_value=TS + 60_000)),
    }
    for name in draw(st.sets(st.sampled_from([*raw, "session_id"]), max_size=2)):
        raw[name] = draw(st.one_of(IDS, SCALARS) if name != "ts" else st.one_of(NUMBERS, ANY_TEXT))
    if draw(st.booleans()):
        keys = st.one_of(st.sampled_from(["category", "brand", "price", "query", "page", "device"]), ANY_TEXT)
        raw["properties"] = draw(st.dictionaries(keys, SCALARS, max_size=4))
    return raw


def encode(value: object) -> bytes:
    """What the HTTP layer does with a response body."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")


def test_whatever_is_accepted_can_be_served_explained_snapshotted_and_replayed(
    tmp_path_factory: Any, model: ModelBundle
) -> None:
    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(batch=st.lists(events(), min_size=1, max_size=4))
    def serve_what_was_accepted(batch: list[dict[str, Any]]) -> None:
        served(tmp_path_factory.mktemp("hostile"), model, batch)

    serve_what_was_accepted()


def served(data_dir: Path, model: ModelBundle, batch: list[dict[str, Any]]) -> None:
    clock = ManualClock(TS + 120_000)
    settings_ = Settings(data_dir=data_dir, surfaces=patient_surfaces(), max_queue_ms=60_000.0)
    engine = Engine.open(settings_, model=model, clock=clock)
    try:
        result = engine.ingest_raw(batch)
        encode(result.to_dict())  # the answer itself, naming what was refused
        hypothesis_event(f"accepted {min(result.accepted, 2)}+")
        assert result.accepted + result.duplicates + len(result.rejected) == len(batch)
        for _, event in engine.log.read():
            response = engine.recommend(RecommendRequest(event.user_id, "home", 5))
            encode(response.to_dict())
            explained = engine.explain(response.request_id)
            assert explained.identical
            encode(explained.to_dict())
        encode({"items": [i.to_dict() for i in engine.model.catalog.items]})
        engine.snapshot()
        store = engine.store
        users = {u: s.to_bytes() for u in store.users() if (s := store.get_session(u)) is not None}  # type: ignore[attr-defined]
        from insession.features.activity import NAMESPACE

        keys = store.keys(NAMESPACE)  # type: ignore[attr-defined]
        items = {k: v for k, v in zip(keys, store.get_many(NAMESPACE, keys), strict=True) if v is not None}
        assert check(engine.log.read(), store.applied_position(), settings_.session, users, items).identical
    finally:
        engine.close()
    reopened = Engine.open(settings_, model=model, clock=clock)  # the log opens again after a restart
    reopened.close()
