"""Catalog changes while serving: built from the previous catalog's arrays, equal to a rebuild."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from insession.catalog import Catalog, Item
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
