"""Merging candidate lists: quotas, the overall limit, every source's score kept, first-proposal order."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from insession.candidates.base import Candidate, from_arrays
from insession.candidates.merge import merge


def _c(*pairs: tuple[int, float]) -> list[Candidate]:
    return [Candidate(i, s) for i, s in pairs]


def test_quota_caps_new_items_but_not_scores_for_items_already_in() -> None:
    lists = [
        ("a", _c((1, 0.9), (2, 0.8))),
        ("b", _c((3, 0.7), (1, 0.6), (4, 0.5), (2, 0.4))),
    ]
    merged = merge(lists, {"b": 1}, limit=10)
    assert [m.item for m in merged] == [1, 2, 3]  # b's quota of one new item: 3, not 4
    assert merged[0].sources == {"a": 0.9, "b": 0.6}  # past its quota, b still scores items already in
    assert merged[1].sources == {"a": 0.8, "b": 0.4}
    assert merged[2].sources == {"b": 0.7}


def test_limit_caps_the_merged_list_across_sources() -> None:
    lists = [("a", _c((1, 1.0), (2, 1.0))), ("b", _c((3, 1.0), (4, 1.0), (1, 0.5)))]
    merged = merge(lists, {}, limit=3)
    assert [m.item for m in merged] == [1, 2, 3]
    assert merged[0].sources == {"a": 1.0, "b": 0.5}


def _reference(
    lists: list[tuple[str, list[Candidate]]], quotas: dict[str, int], limit: int
) -> list[tuple[int, dict[str, float]]]:
    """The rule stated plainly: a source adds a new item while it has taken fewer than its quota and
    the list is shorter than the limit; any source scores an item already in."""
    out: dict[int, dict[str, float]] = {}
    for name, cands in lists:
        taken = 0
        for cand in cands:
            if cand.item in out:
                out[cand.item][name] = cand.score
            elif taken < quotas.get(name, limit) and len(out) < limit:
                out[cand.item] = {name: cand.score}
                taken += 1
    return list(out.items())


@given(
    st.lists(st.lists(st.integers(0, 30), max_size=25), min_size=1, max_size=5),
    st.lists(st.integers(0, 10), min_size=5, max_size=5),
    st.integers(1, 40),
)
def test_merge_follows_the_rule(items: list[list[int]], quotas: list[int], limit: int) -> None:
    lists = [(f"s{n}", _c(*((i, float(k)) for k, i in enumerate(xs)))) for n, xs in enumerate(items)]
    quota_of = {f"s{n}": q for n, q in enumerate(quotas) if n % 2 == 0}  # odd sources: no quota
    merged = merge(lists, quota_of, limit)
    assert [(m.item, m.sources) for m in merged] == _reference(lists, quota_of, limit)


def test_from_arrays_gives_python_numbers_in_order() -> None:
    cands = from_arrays(np.array([5, 2], dtype=np.int64), np.array([0.5, 0.25], dtype=np.float32))
    assert cands == [Candidate(5, 0.5), Candidate(2, 0.25)]
    assert all(type(c.item) is int and type(c.score) is float for c in cands)
