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
    out: dict[int, Merged] = {}
    for name, cands in lists:
        taken = 0
        quota = quotas.get(name, limit)
        for cand in cands:
            found = out.get(cand.item)
            if found is not None:
                found.sources[name] = cand.score
                continue
            if taken >= quota or len(out) >= limit:
                continue
            out[cand.item] = Merged(cand.item, {name: cand.score})
            taken += 1
    return list(out.values())
