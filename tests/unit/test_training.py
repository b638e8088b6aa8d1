from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from insession.catalog import Item
from insession.config import SessionConfig
from insession.datasets.synthetic import SyntheticShop
from insession.errors import ModelError
from insession.events import Event, EventType
from insession.model import ModelBundle
from insession.ranker_training import RankerConfig, replay_groups
from insession.replay import Prefix, Replay
from insession.training import TrainConfig, train, train_parts

T0 = 1_767_225_600_000


def session(user: str, items: list[str], start: int = T0, kind: EventType = EventType.VIEW) -> list[Event]:
    return [Event(f"{user}-{n}", user, kind, start + n * 1000, item) for n, item in enumerate(items)]


def test_covisit_known_answer() -> None:
    cfg = TrainConfig(covisit_window=2, forward_weight=1.0, backward_weight=0.5)
    model = train(session("u", ["a", "b", "c"]), cfg)
    idx = model.catalog.index
    cols, ws = model.covisit.row(idx["a"])
    got = {model.catalog.ids[c]: float(w) for c, w in zip(cols, ws, strict=True)}
    # a->b: forward at distance 1 (1.0); a->c: forward at distance 2 (0.5).
    assert got == pytest.approx({"b": 1.0, "c": 0.5})
    cols, ws = model.covisit.row(idx["c"])
    got = {model.catalog.ids[c]: float(w) for c, w in zip(cols, ws, strict=True)}
    # c<-b backward at distance 1 (0.5); c<-a backward at distance 2 (0.25).
    assert got == pytest.approx({"b": 0.5, "a": 0.25})


def test_pairs_never_cross_sessions_or_users() -> None:
    events = session("u1", ["a", "b"]) + session("u2", ["c", "d"]) + session("u1", ["e"], start=T0 + 10**8)
    model = train(events)
    idx = model.catalog.index
    neighbours = {model.catalog.ids[c] for c in model.covisit.row(idx["b"])[0]}
    assert neighbours == {"a"}
    assert len(model.covisit.row(idx["e"])[0]) == 0


def test_topk_bounds_every_row() -> None:
    items = [f"i{n}" for n in range(30)]
    model = train(session("u", items), TrainConfig(covisit_window=10, covisit_topk=4))
    assert int(np.diff(model.covisit.indptr).max()) == 4


def test_popularity_decays_with_age() -> None:
    events = session("u1", ["old"], start=T0) + session("u2", ["new"], start=T0 + 7 * 86_400_000)
    model = train(events, TrainConfig(popularity_half_life_days=7.0))
    pop = {model.catalog.ids[i]: float(p) for i, p in enumerate(model.popularity)}
    assert pop["old"] == pytest.approx(pop["new"] / 2, rel=1e-4)


def test_catalog_metadata_comes_from_items_and_events() -> None:
    events = [Event("e1", "u", EventType.VIEW, T0, "a", None, {"category": "shoes", "price": 10.0})]
    model = train(events, items=[Item("b", "books", "X", 5.0, "Book")])
    assert model.catalog.get("a") == Item("a", "shoes", None, 10.0, None)
    assert model.catalog.get("b") == Item("b", "books", "X", 5.0, "Book")


def test_same_data_same_version_and_save_load_round_trip(tmp_path: Path) -> None:
    events = session("u", ["a", "b", "c", "a"])
    first, second = train(events), train(list(events))
    assert first.version == second.version
    first.save(tmp_path / "m")
    loaded = ModelBundle.load(tmp_path / "m")
    assert loaded.version == first.version
    assert np.array_equal(loaded.covisit.indices, first.covisit.indices)
    assert train(session("u", ["a", "c"])).version != first.version


def test_tampered_model_is_refused(tmp_path: Path) -> None:
    train(session("u", ["a", "b"])).save(tmp_path / "m")
    (tmp_path / "m" / "popularity.npy").write_bytes(b"tampered")
    with pytest.raises(ModelError, match=r"popularity\.npy"):
        ModelBundle.load(tmp_path / "m")


def test_missing_model_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="insession train"):
        ModelBundle.load(tmp_path / "nothing")


def test_no_events_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="events"):
        train([])


def test_forked_ranker_replay_gives_the_same_model_as_the_sequential_one(
    shop: SyntheticShop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replaying the ranker's windows in parallel processes changes the speed, never the model; nor
    does continuing one shared fold of the events before their first request (``_shared_prefix``)
    instead of each window folding the log from its start."""
    import insession.training as training

    sequential = train(shop.events, items=shop.items, workers=1)
    forked = train(shop.events, items=shop.items, workers=2)
    assert sequential.ranker is not None
    assert forked.ranker == sequential.ranker
    assert forked.version == sequential.version
    monkeypatch.setattr(training, "_shared_prefix", lambda *args: None)
    apart = train(shop.events, items=shop.items, workers=1)
    assert apart.ranker == sequential.ranker and apart.version == sequential.version
    timing = {"fit_seconds"}
    assert {k: v for k, v in forked.stats["ranker"].items() if k not in timing} == {
        k: v for k, v in sequential.stats["ranker"].items() if k not in timing
    }


def test_a_window_continuing_the_shared_prefix_replays_the_groups_its_own_fold_gives(shop: SyntheticShop) -> None:
    """A ranker window continues one fold of the events before its first request instead of
    folding them again: the same groups, here without online learning in the window (the forked
    and sequential trainings above compare whole models with the fold per window)."""
    import insession.training as training

    events = sorted(shop.events, key=lambda e: e.ts)
    cfg, session_cfg, ranker = TrainConfig(learn_online=False), SessionConfig(), RankerConfig(max_groups=300)
    shared = training._shared_prefix(events, cfg, session_cfg, ranker)
    assert shared is not None and shared.events > len(events) // 3  # most of the log is shared
    start = training._window_start(events, 1, ranker)
    base = train_parts([e for e in events if e.ts < start], cfg, session_cfg, shop.items)
    apart = replay_groups(events, base, session_cfg, start, ranker, learn_online=False)
    own = Prefix(shared.replay.copy(True), shared.events)
    continued = replay_groups(events, base, session_cfg, start, ranker, learn_online=False, prefix=own)
    assert len(apart.groups) > 20 and continued.groups == apart.groups
    assert np.array_equal(continued.x, apart.x) and np.array_equal(continued.y, apart.y)


def test_a_prefix_past_the_first_request_is_refused() -> None:
    """A replay must not continue a fold that already holds the events after its first request:
    that request would see its own future."""
    events = session("u1", ["a", "b", "c", "d"]) + session("u2", ["b", "c"], start=T0 + 60_000)
    base = train_parts(events[:2], TrainConfig(), SessionConfig(), [])
    replay = Replay(SessionConfig())
    for n, event in enumerate(events[:4]):
        replay.apply(n + 1, event)
    with pytest.raises(ValueError, match="prefix"):
        replay_groups(events, base, SessionConfig(), T0 + 2_000, RankerConfig(negatives=3), prefix=Prefix(replay, 4))


def test_ranker_replay_learns_online_only_when_the_model_will() -> None:
    """A pair first seen inside a replay window reaches the ranker's online co-visitation feature
    only when the model will serve learning online; frozen, the window sees only what came before it."""
    from insession.ranking.features import FEATURE_NAMES

    items = [Item(i) for i in ("a", "b", "c", "d", "e")]
    early = session("u1", ["c", "d", "e"]) + session("u2", ["d", "c"], start=T0 + 10_000)
    start = T0 + 3_600_000
    # Two shoppers teach a -> b: a transition is shared once about two sessions made it
    # (covisit.MIN_SHARED_WEIGHT), so one shopper's path is not shown to others.
    window = (
        session("x", ["a", "b"], start=start)
        + session("x2", ["a", "b"], start=start + 30_000)
        + session("y", ["a", "b"], start=start + 60_000)
    )
    events = early + window
    cfg = SessionConfig()
    base = train_parts(early, TrainConfig(), cfg, items)
    column = FEATURE_NAMES.index("covisit_online_score")
    seen = {}
    for learn in (True, False):
        data = replay_groups(events, base, cfg, start, RankerConfig(negatives=3), learn_online=learn)
        seen[learn] = float(data.x[data.y > 0, column].max())
    assert seen[True] > 0  # y's "b" follows the a -> b that x and x2 taught the online counts
    assert seen[False] == 0.0


def test_a_model_from_another_version_is_refused_naming_the_features(model: ModelBundle) -> None:
    from insession.errors import ModelError
    from insession.ranking.features import FEATURE_NAMES
    from insession.ranking.learned import LearnedScorer

    assert model.ranker is not None
    older = [f for f in FEATURE_NAMES if f != "item_new"]
    with pytest.raises(ModelError, match=r"reads \d+ features.*new: item_new.*insession train"):
        LearnedScorer(model.ranker, older)
