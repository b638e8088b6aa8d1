"""What a candidate source sees and returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from insession.model import ModelBundle
from insession.sessions import SessionState

if TYPE_CHECKING:
    from insession.features.profile import Profile
    from insession.online.factors import OnlineFactors


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Everything a request reasons from. Built once per request; read-only for every stage."""

    user_id: str
    surface: str
    k: int
    state: SessionState | None
    model: ModelBundle
    anchors: tuple[tuple[int, float], ...]  # (dense item index, weight), heaviest first
    #: Online co-visitation score per dense item index, from the anchors' learned followers.
    online: Mapping[int, float] = field(default_factory=dict)
    #: The latest session item's own online followers: decayed weights (not scaled) by dense item
    #: index, and the sum over all its followers (known to the model or not).
    online_last: Mapping[int, float] = field(default_factory=dict)
    online_last_total: float = 0.0
    #: The online factor model as of this request (``None``: none).
    factors: OnlineFactors | None = None
    now_ms: int = 0  # request time, recorded so the request replays
    current_item: str | None = None
    context: Mapping[str, str] = field(default_factory=dict)
    profile: Profile | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    item: int  # dense index into the model's catalog
    score: float  # the source's own score, comparable only within that source


def from_arrays(items: npt.NDArray[np.integer[Any]], scores: npt.NDArray[np.number[Any]]) -> list[Candidate]:
    """Candidates from parallel arrays, converted to Python numbers once per list rather than once
    per element (the request path builds hundreds of these per source)."""
    return [Candidate(i, s) for i, s in zip(items.tolist(), scores.tolist(), strict=True)]


class CandidateSource(Protocol):
    @property
    def name(self) -> str:
        """The tag this source's candidates carry in responses."""
        ...

    def candidates(self, ctx: RequestContext, k: int) -> list[Candidate]:
        """Up to ``k`` candidates, best first, ties broken by item index (deterministic)."""
        ...
