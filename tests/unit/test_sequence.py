"""The sequence model: numpy serving equals the torch network, training is deterministic and learns
order, warm starts keep items by id, and everything works (and says so) without torch."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

from insession.catalog import Catalog, Item
from insession.clock import MINUTE_MS
from insession.config import SessionConfig, Settings
from insession.events import EventType
from insession.model import ModelBundle
from insession.pipeline import Recommender, RecommendRequest
from insession.ranking.features import FEATURE_NAMES
from insession.sequence.model import SequenceModel, Tokens, gap_buckets, remap_rows, tokens_of
from insession.sequence.train import SequenceConfig, fit_sequence, torch_missing, windows
from insession.sessions import Interaction, SessionState, fold
from insession.training import TrainConfig, train

TINY = SequenceConfig(dim=16, heads=2, layers=2, max_len=8, max_epochs=3, batch_size=32, threads=1)


@pytest.fixture(scope="module")
def torch_available() -> None:
    reason = torch_missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def _cycles(n_items: int, n_lines: int, length: int, seed: int) -> list[Tokens]:
    """Timelines where item i is always followed by item i + 1 (mod n): order is everything."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_lines):
        start = int(rng.integers(n_items))
        items = (start + np.arange(length)) % n_items + 1
        ts = np.arange(length, dtype=np.int64) * 30_000
        out.append(Tokens(items.astype(np.int64), np.full(length, 2, np.int64), gap_buckets(ts), ts))
    return out


def _catalog(n: int) -> Catalog:
    return Catalog([Item(f"i{k:02d}", category=f"c{k % 3}") for k in range(n)])


def test_gap_buckets_mark_session_boundaries() -> None:
    ts = np.array([0, 30_000, 5 * MINUTE_MS, 40 * MINUTE_MS, 3 * 24 * 60 * MINUTE_MS], dtype=np.int64)
    assert gap_buckets(ts).tolist() == [0, 1, 2, 4, 5]


def test_tokens_collapse_repeats_skip_dismisses_and_unknown_items_and_keep_the_latest() -> None:
    def inter(item: str, t: int, kind: EventType = EventType.CLICK) -> Interaction:
        return Interaction(item, kind, t)

    state = SessionState(
        "u",
        "s",
        1,
        6,
        100,
        600,
        history=(inter("a", 0), inter("a", 10), inter("zz", 20)),
        events=(inter("b", 100), inter("c", 200, EventType.DISMISS), inter("c", 300), inter("a", 400)),
    )
    index = {"a": 0, "b": 1, "c": 2}
    tokens = tokens_of(state, index, max_len=3)
    assert tokens.items.tolist() == [2, 3, 1]  # b, c, a (dense index + 1)
    assert tokens.ts.tolist() == [100, 300, 400]
    assert tokens_of(None, index, 3).items.tolist() == []


def test_windows_predict_every_transition_once() -> None:
    lines = _cycles(10, 3, 20, seed=1)
    w = windows(lines, max_len=8)
    assert int((w.targets > 0).sum()) == 3 * 19
    first = w.items[0, : w.lengths[0]]
    assert w.targets[0, 0] == first[1]


def test_numpy_forward_equals_the_torch_network(torch_available: None) -> None:
    import torch

    from insession.sequence.train import _network

    arch = TINY.architecture()
    torch.manual_seed(3)
    item_category = np.concatenate([[0], np.arange(30) % 4 + 1])  # 30 items in 4 categories
    net = _network(torch, item_category, 4, arch, dropout=0.0, init_scale=0.3)
    net.eval()
    weights = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    model = SequenceModel(arch, weights, item_category, {})
    rng = np.random.default_rng(0)
    for n in (1, 3, 8):
        items = rng.integers(1, 31, n)
        types = rng.integers(1, 5, n)
        gaps = rng.integers(0, 6, n)
        with torch.no_grad():
            expected = net(*(torch.from_numpy(a[None, :]) for a in (items, types, gaps)))[0, -1].numpy()
        got = model.encode(Tokens(items, types, gaps, np.zeros(n, np.int64)))
        np.testing.assert_allclose(got[:-1], expected, rtol=1e-4, atol=1e-5)
        assert got[-1] == 1.0
        all_scores = model.scores(got, np.arange(30))
        with torch.no_grad():
            logits = (net.outputs() @ torch.from_numpy(expected) + net.item_bias[1:]).numpy()
        np.testing.assert_allclose(all_scores, logits, rtol=1e-4, atol=1e-5)


def test_training_learns_order_and_is_deterministic(torch_available: None) -> None:
    lines = _cycles(40, 300, 12, seed=2)
    cfg = SequenceConfig(dim=16, heads=2, layers=1, max_len=8, max_epochs=8, lr=1e-2, batch_size=32, threads=1)
    first, stats = fit_sequence(lines, _catalog(40), cfg)
    again, _ = fit_sequence(lines, _catalog(40), cfg)
    assert first.to_bytes() == again.to_bytes()
    assert stats["val_HR@20"] > 0.9, stats["epochs"]
    hits = 0
    for start in range(40):
        items = (start + np.arange(5)) % 40 + 1
        tokens = Tokens(items, np.full(5, 2), gap_buckets(np.arange(5) * 30_000), np.arange(5) * 30_000)
        vector = first.encode(tokens)
        hits += int(np.argmax(first.scores(vector, np.arange(40)))) == (start + 5) % 40
    assert hits >= 36  # chance is 1 in 40


def test_sampled_softmax_trains_too(torch_available: None) -> None:
    lines = _cycles(40, 300, 12, seed=3)
    cfg = SequenceConfig(dim=16, layers=1, max_len=8, max_epochs=8, lr=1e-2, batch_size=32, threads=1)
    _, stats = fit_sequence(lines, _catalog(40), replace(cfg, full_softmax_max_items=10, negatives=16))
    assert stats["loss"] == "sampled softmax (16)"
    assert stats["val_HR@20"] > 0.9, stats["epochs"]


def test_warm_start_keeps_rows_by_key() -> None:
    table = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)  # row 0: padding
    moved = remap_rows(table, ["a", "b", "c"], ["b", "new", "c"], seed=1)
    np.testing.assert_array_equal(moved[0], table[0])
    np.testing.assert_array_equal(moved[1], table[2])  # b
    np.testing.assert_array_equal(moved[3], table[3])  # c
    assert np.abs(moved[2]).max() < 0.2  # new: small and random
    biases = remap_rows(np.arange(4, dtype=np.float32), ["a", "b", "c"], ["b", "new", "c"], seed=1)
    assert biases.tolist() == [0.0, 2.0, 0.0, 3.0]


SMALL = SequenceConfig(enabled=True, dim=16, layers=1, max_len=10, max_epochs=2, threads=1)


@pytest.fixture(scope="module")
def seq_model(shop, torch_available: None) -> ModelBundle:
    return train(shop.events, TrainConfig(sequence=SMALL), items=shop.items)


def test_a_model_trained_with_the_sequence_model_serves_it(seq_model: ModelBundle, shop) -> None:
    assert seq_model.sequence is not None and seq_model.sequence_ann is not None
    assert seq_model.stats["sequence"]["transitions"] > 0
    recommender = Recommender(seq_model, Settings().surfaces, 1_800_000)
    user = shop.events[-1].user_id
    state = fold([e for e in shop.events if e.user_id == user], SessionConfig())[user]
    response = recommender.recommend(RecommendRequest(user, "home", 10, now_ms=shop.events[-1].ts + 1000), state)
    assert len(response.items) == 10
    assert response.features is not None
    column = FEATURE_NAMES.index("sequence_rank_inv")
    assert sorted(response.features[:, column], reverse=True)[0] == 1.0  # the best candidate by the model
    assert any("sequence" in item.sources for item in response.items) or response.features[:, column].any()


def test_the_model_directory_keeps_the_sequence_model(seq_model: ModelBundle, tmp_path) -> None:
    model = seq_model
    assert model.sequence is not None
    model.save(tmp_path)
    loaded = ModelBundle.load(tmp_path)
    assert loaded.version == model.version
    assert loaded.sequence is not None
    state = SessionState("u", "s", 1, 2, 0, 1, events=(Interaction(model.catalog.ids[0], EventType.CLICK, 0),))
    tokens = tokens_of(state, model.catalog.index, model.sequence.arch.max_len)
    np.testing.assert_array_equal(loaded.sequence.encode(tokens), model.sequence.encode(tokens))


def test_without_torch_training_says_the_model_is_off(shop, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from insession import training

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    assert "PyTorch is not installed" in (torch_missing() or "")
    bundle = training.train(shop.events[:3000], TrainConfig(sequence=SMALL), items=shop.items)
    assert bundle.sequence is None and bundle.sequence_ann is None
    assert "PyTorch is not installed" in bundle.stats["sequence"]["off"]
    assert bundle.ranker is not None  # the rest of the engine trains as before


def test_asking_for_the_sequence_model_without_torch_names_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from insession.cli import _train_config
    from insession.errors import ValidationError

    assert _train_config(False).sequence.enabled is False
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ValidationError) as caught:
        _train_config(True)
    assert "sequence" in str(caught.value) and "insession[torch]" in str(caught.value)


def test_item_embeddings_start_from_the_cooccurrence_vectors(torch_available: None) -> None:
    n = 12
    vectors = np.random.default_rng(3).standard_normal((n, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    # A learning rate too small to move the weights: what is served is where training started.
    frozen = replace(TINY, lr=1e-9, max_epochs=1, validation_fraction=0.0, cooccurrence_init=2.0)
    seeded, _ = fit_sequence(_cycles(n, 20, 8, 0), _catalog(n), frozen, item_vectors=vectors)
    np.testing.assert_allclose(seeded.w["item.weight"][1:], vectors * 2.0, atol=1e-4)
    plain, _ = fit_sequence(
        _cycles(n, 20, 8, 0), _catalog(n), replace(frozen, cooccurrence_init=0.0), item_vectors=vectors
    )
    assert np.abs(plain.w["item.weight"][1:]).max() < 0.5  # random and small: the vectors were not used
    with pytest.raises(ValueError, match="item_vectors"):
        fit_sequence(_cycles(n, 20, 8, 0), _catalog(n), frozen, item_vectors=vectors[:5])
