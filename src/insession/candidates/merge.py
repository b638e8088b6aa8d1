"""Merge candidate lists from several sources under per-source quotas, keeping source tags."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from insession.candidates.base import Candidate


@dataclass(slots=True)
class Merged:
    """One candidate after merging: which sources proposed it and with what score each."""

    item: int
    sources: dict[str, float] = field(default_factory=dict)


def merge(lists: Sequence[tuple[str, list[Candidate]]], quotas: Mapping[str, int], limit: int) -> list[Merged]:
    """Take up to ``quotas[name]`` from each source in the given order, dedupe, cap at ``limit``.

    An item proposed by several sources keeps every source's score. The output order is the
    order of first proposal, which is deterministic given deterministic sources.
    """
    scores: dict[int, dict[str, float]] = {}
    for name, cands in lists:
        # While a source is read, the merged list grows by exactly what it takes from that source.
        room = min(quotas.get(name, limit), limit - len(scores))
        found_in = scores.get
        for cand in cands:
            found = found_in(cand.item)
            if found is not None:
                found[name] = cand.score
            elif room > 0:
                scores[cand.item] = {name: cand.score}
                room -= 1
    return [Merged(item, by_source) for item, by_source in scores.items()]
