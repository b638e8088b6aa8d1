"""Accuracy and beyond-accuracy metrics over the ranked lists a model returned for each pair.

A model's output for a run is a matrix ``lists`` (pairs x K, dense item indices, -1 where a list
was shorter than K). Everything is computed from it and the targets, so every model, the engine
and every baseline, is scored by the same lines of code.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

CUTOFFS = (10, 20)
LENGTH_EDGES = (2, 3, 4, 5, 7, 10, 15, 20)
POSITION_EDGES = (1, 2, 3, 4, 5, 7, 10, 15)


def ranks_of(lists: npt.NDArray[np.int64], targets: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """1-based rank of each target in its list; 0 where it is absent."""
    hit = lists == targets[:, None]
    found = hit.any(axis=1)
    return np.where(found, hit.argmax(axis=1) + 1, 0).astype(np.int64)


def accuracy(ranks: npt.NDArray[np.int64], cutoffs: Sequence[int] = CUTOFFS) -> dict[str, float]:
    out: dict[str, float] = {}
    n = max(len(ranks), 1)
    for k in cutoffs:
        inside = (ranks > 0) & (ranks <= k)
        r = ranks[inside].astype(np.float64)
        out[f"HR@{k}"] = float(inside.sum() / n)
        out[f"MRR@{k}"] = float((1.0 / r).sum() / n)
        out[f"NDCG@{k}"] = float((1.0 / np.log2(r + 1.0)).sum() / n)
    return out


def beyond_accuracy(
    lists: npt.NDArray[np.int64], popularity: npt.NDArray[np.float64], n_items: int, k: int = 20
) -> dict[str, float]:
    """Item coverage@k (share of the catalog that appears in any list), popularity bias@k, and
    the hot-spot share: the share of all top-k impressions taken by the 1% of the catalog's items
    shown most often (``top1%share@k``).

    Popularity bias is the mean, over lists, of the mean training popularity of the listed items
    scaled by the most popular item's (1.0: every list holds only the most popular item).
    """
    top = lists[:, :k]
    valid = top >= 0
    shown = np.unique(top[valid])
    scaled = popularity / max(float(popularity.max()), 1e-12)
    per_list = np.where(valid, scaled[np.where(valid, top, 0)], 0.0).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
    shows = np.sort(np.bincount(top[valid], minlength=max(n_items, 1)))[::-1]
    hot = max(1, math.ceil(0.01 * n_items))
    return {
        f"coverage@{k}": float(len(shown) / max(n_items, 1)),
        f"popularity@{k}": float(per_list.mean()) if len(per_list) else 0.0,
        f"top1%share@{k}": float(shows[:hot].sum() / max(int(shows.sum()), 1)),
    }


def bucket_labels(edges: Sequence[int]) -> list[str]:
    """Labels such as ``2``, ``5-6``, ``20+`` for integer buckets starting at each edge."""
    labels = []
    for n, lo in enumerate(edges):
        hi = edges[n + 1] - 1 if n + 1 < len(edges) else None
        labels.append(f"{lo}+" if hi is None else (str(lo) if hi == lo else f"{lo}-{hi}"))
    return labels


def by_bucket(
    ranks: npt.NDArray[np.int64], values: npt.NDArray[np.int64], edges: Sequence[int], k: int = 20
) -> list[dict[str, float | int | str]]:
    """HR@k, MRR@k and the pair count per bucket of ``values`` (session length or position)."""
    which = np.searchsorted(np.asarray(edges), values, side="right") - 1
    rows: list[dict[str, float | int | str]] = []
    for n, label in enumerate(bucket_labels(edges)):
        mask = which == n
        if not mask.any():
            continue
        acc = accuracy(ranks[mask], (k,))
        rows.append({"bucket": label, "pairs": int(mask.sum()), f"HR@{k}": acc[f"HR@{k}"], f"MRR@{k}": acc[f"MRR@{k}"]})
    return rows


def relative(new: float, base: float) -> float | None:
    """``new`` over ``base`` minus one; ``None`` when the base is zero."""
    return None if base == 0 else new / base - 1.0


def churn(
    lists: npt.NDArray[np.int64], sessions: npt.NDArray[np.int64], positions: npt.NDArray[np.int64], k: int
) -> float:
    """Mean churn@k between consecutive lists of a session: the share of each list's top ``k``
    that was not in the list before it (0 = the user sees the same items, 1 = all new)."""
    order = np.lexsort((positions, sessions))
    total, count = 0.0, 0
    for a, b in itertools.pairwise(order.tolist()):
        if sessions[a] != sessions[b]:
            continue
        before = set(lists[a, :k][lists[a, :k] >= 0].tolist())
        now = lists[b, :k][lists[b, :k] >= 0]
        if len(now):
            total += sum(1 for i in now.tolist() if i not in before) / len(now)
            count += 1
    return total / count if count else 0.0
