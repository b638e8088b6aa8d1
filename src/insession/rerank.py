"""Re-ranking rules: each a small function over a ranked list, applied in a declared order.

A rule returns the list it keeps; what it removed is recorded under its name, so a response can
say which rule moved or dropped each item.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from insession.candidates.base import RequestContext
from insession.config import SurfaceConfig


@dataclass(frozen=True, slots=True)
class Ranked:
    item_id: str
    item: int
    score: float
    sources: tuple[str, ...]


Rule = Callable[[RequestContext, SurfaceConfig, list[Ranked]], list[Ranked]]


def _without(ranked: list[Ranked], banned: Sequence[str]) -> list[Ranked]:
    if not banned:
        return ranked
    drop = set(banned)
    return [r for r in ranked if r.item_id not in drop]


def exclude_purchased(ctx: RequestContext, surface: SurfaceConfig, ranked: list[Ranked]) -> list[Ranked]:
    return _without(ranked, ctx.state.purchased if ctx.state else ())


def exclude_dismissed(ctx: RequestContext, surface: SurfaceConfig, ranked: list[Ranked]) -> list[Ranked]:
    return _without(ranked, ctx.state.dismissed if ctx.state else ())


def exclude_current_item(ctx: RequestContext, surface: SurfaceConfig, ranked: list[Ranked]) -> list[Ranked]:
    if not surface.exclude_current_item or ctx.current_item is None:
        return ranked
    return _without(ranked, (ctx.current_item,))


def exclude_cart(ctx: RequestContext, surface: SurfaceConfig, ranked: list[Ranked]) -> list[Ranked]:
    if not surface.exclude_cart or ctx.state is None:
        return ranked
    return _without(ranked, ctx.state.cart)


def exclude_seen(ctx: RequestContext, surface: SurfaceConfig, ranked: list[Ranked]) -> list[Ranked]:
    if not surface.exclude_seen or ctx.state is None:
        return ranked
    return _without(ranked, ctx.state.seen_items())


def limit_seen(ctx: RequestContext, surface: SurfaceConfig, ranked: list[Ranked]) -> list[Ranked]:
    """Keep the ``surface.max_seen`` best-ranked items the user already interacted with, drop the rest."""
    if surface.max_seen is None or ctx.profile is None:
        return ranked
    seen = ctx.profile.session_recency.keys() | ctx.profile.history_recency.keys()
    if not seen:
        return ranked
    kept: list[Ranked] = []
    allowed = surface.max_seen
    for r in ranked:
        if r.item_id in seen:
            if allowed == 0:
                continue
            allowed -= 1
        kept.append(r)
    return kept


DEFAULT_RULES: tuple[tuple[str, Rule], ...] = (
    ("exclude_purchased", exclude_purchased),
    ("exclude_dismissed", exclude_dismissed),
    ("exclude_current_item", exclude_current_item),
    ("exclude_cart", exclude_cart),
    ("exclude_seen", exclude_seen),
    ("limit_seen", limit_seen),
)


def apply_rules(
    ctx: RequestContext, surface: SurfaceConfig, ranked: list[Ranked], rules: Sequence[tuple[str, Rule]] = DEFAULT_RULES
) -> tuple[list[Ranked], dict[str, list[str]]]:
    """Run ``rules`` in order; returns the kept list and, per rule, the item ids it removed."""
    removed: dict[str, list[str]] = {}
    for name, rule in rules:
        kept = rule(ctx, surface, ranked)
        if len(kept) != len(ranked):
            keep_ids = {r.item_id for r in kept}
            removed[name] = [r.item_id for r in ranked if r.item_id not in keep_ids]
        ranked = kept
    return ranked, removed


def stabilise(
    ranked: list[Ranked], previous: Sequence[str], k: int, keep_top: int, margin: float, max_new: int | None
) -> tuple[list[Ranked], list[str]]:
    """The churn budget: change what the user already saw only as much as the surface allows.

    ``previous`` is the list this user was shown last on this surface, in this session. The top
    ``k`` is filled position by position from the best remaining item, with two limits:

    - each of the first ``keep_top`` positions of ``previous`` keeps its item (if the rules kept it
      eligible) unless the item that would take the position now scores more than ``margin`` more;
    - at most ``max_new`` items not in ``previous`` enter; once they have, the best remaining
      items that were shown before fill the rest (newcomers again only when none are left).

    Returns the list (the top ``k``, then the rest in score order) and the ids whose position the
    budget changed.
    """
    if not previous or (keep_top <= 0 and max_new is None):
        return ranked, []
    shown = set(previous)
    by_id = {r.item_id: r for r in ranked}
    pinned = {i: by_id[p] for i, p in enumerate(previous[: min(keep_top, k)]) if p in by_id}
    budget = len(ranked) if max_new is None else max_new
    pool = list(ranked)
    top: list[Ranked] = []
    while pool and len(top) < k:
        best = next((r for r in pool if budget > 0 or r.item_id in shown), pool[0])
        held = pinned.get(len(top))
        choice = best
        if held is not None and held in pool and held is not best and best.score <= held.score + margin:
            choice = held
        if choice.item_id not in shown:
            budget -= 1
        top.append(choice)
        pool.remove(choice)
    changed = [a.item_id for a, b in zip(top, ranked, strict=False) if a.item_id != b.item_id]
    return top + pool, changed


def churn_at_k(previous: Sequence[str], current: Sequence[str], k: int) -> float:
    """Share of the top ``k`` that is new since the previous list: 0 = unchanged, 1 = all new."""
    now = list(current)[:k]
    if not now:
        return 0.0
    before = set(list(previous)[:k])
    return sum(1 for item in now if item not in before) / len(now)
