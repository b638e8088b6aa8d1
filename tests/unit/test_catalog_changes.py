"""Catalog changes while serving: built from the previous catalog's arrays, equal to a rebuild."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from insession.catalog import Catalog, Item
from insession.index.session_index import SessionIndex
from insession.model import CovisitMatrix, ModelBundle, _categories

CATEGORIES = st.sampled_from([None, "shoes", "bags", "hats", "zz-new"])
ITEMS = st.tuples(
    st.sampled_from([f"i{n}" for n in range(12)] + ["new-a", "new-b"]),
    CATEGORIES,
    st.sampled_from([None, "acme", "zeta"]),
    st.sampled_from([None, 1.0, 9.5]),
    st.none(),
    st.sampled_from([None, True, False]),
).map(lambda fields: Item(*fields))


def bundle() -> ModelBundle:
    items = [Item(f"i{n}", ["shoes", "bags", None][n % 3], "acme" if n % 2 else None, float(n)) for n in range(12)]
    n = len(items)
    rng = np.random.default_rng(0)
    return ModelBundle(
        Catalog(items),
        CovisitMatrix(np.zeros(n + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)),
        rng.random(n).astype(np.float32),
        rng.random((n, 4)).astype(np.float32),
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(ITEMS, min_size=1, max_size=4), min_size=1, max_size=4))
def test_changes_equal_a_rebuild_and_never_touch_an_earlier_version(batches: list[list[Item]]) -> None:
    model = bundle()
    trained = model.embeddings.copy()
    versions = [model]
    for batch in batches:
        versions.append(versions[-1].with_items(batch))
    last = versions[-1]
    # The version hashes the changes in order, however they were batched (each batch continues
    # the running hash of the ones before).
    assert model.with_items([item for batch in batches for item in batch]).version == last.version
    rebuilt = Catalog(list(last.catalog.items))
    assert rebuilt.ids == last.catalog.ids and rebuilt.index == last.catalog.index
    live = [n for n, name in enumerate(last.catalog.category_names) if (last.catalog.category_codes == n).any()]
    assert [last.catalog.category_names[n] for n in live] == list(rebuilt.category_names)
    names = last.catalog.category_names
    assert [names[c] if c >= 0 else None for c in last.catalog.category_codes] == [
        i.category for i in last.catalog.items
    ]
    np.testing.assert_array_equal(last.catalog.prices, rebuilt.prices)
    np.testing.assert_array_equal(last.catalog.availability, rebuilt.availability)
    order = np.lexsort((np.arange(len(last.catalog)), -last.popularity))
    np.testing.assert_array_equal(last.popular_order, order)
    expected = _categories(order, last.catalog.category_codes)
    assert sorted(expected) == sorted(last.category_items)
    assert all(np.array_equal(expected[c], last.category_items[c]) for c in expected)
    np.testing.assert_array_equal(model.embeddings, trained)  # the trained model is as it was
    for version in versions:  # every version of the line rebuilds the same, whatever came after
        again = last.at_version(version.version)
        assert again is not None and again.catalog.items == version.catalog.items
        np.testing.assert_array_equal(again.embeddings, version.embeddings)


@given(
    st.lists(st.lists(st.integers(0, 7), min_size=1, max_size=6), max_size=12),
    st.integers(0, 5),
    st.data(),
)
def test_a_session_index_widened_for_joined_items_is_the_one_rebuilt(
    sessions: list[list[int]], joined: int, data: st.DataObject
) -> None:
    """Items joining the catalog widen the trained session index (``SessionIndex.widened``, used by
    ``ModelBundle.with_items``) instead of rebuilding it from every trained session: the same arrays."""
    items = np.array([i for s in sessions for i in s], dtype=np.int64)
    numbers = np.array([n for n, s in enumerate(sessions) for _ in s], dtype=np.int64)
    ts = np.array(data.draw(st.lists(st.integers(0, 50), min_size=len(items), max_size=len(items))), dtype=np.int64)
    index = SessionIndex.build(items, numbers, ts, 8)
    widened, rebuilt = index.widened(8 + joined), SessionIndex(index.items, index.starts, index.last_ts, 8 + joined)
    for name in ("items", "starts", "last_ts", "recency", "item_ptr", "item_sessions", "idf"):
        assert np.array_equal(getattr(widened, name), getattr(rebuilt, name)), name
    assert widened.n_items == rebuilt.n_items
    with pytest.raises(ValueError, match="n_items: 7 is fewer than the 8"):
        index.widened(7)
