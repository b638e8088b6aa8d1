"""Recompute a served list from its manifest and the event log, and say why each item is there.

The state is rebuilt by folding the event log up to the manifest's position with the engine's own
folds (``replay.Replay``), from the nearest checkpoint at or before it when there is a checkpoint
file (``insession.checkpoints``; the fold leaves new ones behind by the size/time policy), and the
list is recomputed by the same ``Recommender.recommend`` with the request's moment-dependent
decisions replayed (``Forced``: tier, skipped sources, ranked rows) instead of re-decided, and the
list the user had seen before. If the recomputed list is not
the served one, the explanation says so and shows where they part (``identical: false``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from insession.checkpoints import (
    FOLLOW_SPACING,
    CheckpointedReplay,
    CheckpointStore,
    fingerprint_of,
    fold_with_checkpoints,
    replay_from,
)
from insession.config import Settings
from insession.errors import Gone, ModelError, NotFound
from insession.filters import Filters
from insession.log import EventLog
from insession.manifest import Manifest, RequestLog
from insession.model import ModelBundle
from insession.online.factors import for_model
from insession.pipeline import Forced, Recommender, RecommendRequest, RecommendResponse
from insession.ranking.features import FEATURE_NAMES, SOURCE_COLUMNS
from insession.replay import Replay

TOP_FEATURES = 6


@dataclass(frozen=True, slots=True)
class ItemExplanation:
    item_id: str
    position: int
    score: float
    sources: dict[str, float]  # each source that proposed it, with that source's own score
    features: dict[str, float]  # the features that moved its score most, with their values
    contributions: dict[str, float]  # their contributions to the ranker's score (SHAP), if learned
    moved_by: list[str]  # re-ranking steps that moved it (e.g. the churn budget)


@dataclass(frozen=True, slots=True)
class Explanation:
    request_id: str
    identical: bool
    served: list[str]
    recomputed: list[str]
    diff: list[str]
    tier: str
    cut: list[str]
    items: list[ItemExplanation]
    removed_by_rule: dict[str, list[str]]
    manifest: dict[str, Any]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _diff(served: Sequence[str], recomputed: Sequence[str]) -> list[str]:
    lines = []
    for n in range(max(len(served), len(recomputed))):
        a = served[n] if n < len(served) else "(none)"
        b = recomputed[n] if n < len(recomputed) else "(none)"
        if a != b:
            lines.append(f"position {n + 1}: served {a}, recomputed {b}")
    return lines


class Explainer:
    """Explains manifests against one model and one event log; replays the log incrementally, so
    explaining many requests in log order folds it once."""

    def __init__(
        self,
        model: ModelBundle,
        settings: Settings,
        log: EventLog,
        requests: RequestLog,
        checkpoints: CheckpointStore | None = None,
        max_loaded: int | None = None,
    ) -> None:
        """``max_loaded``: decoded values the fold keeps past a checkpoint (default: the settings'
        ``explain_cache_entries``; a process that holds the serving state already may lift it)."""
        self.model = model
        self.max_loaded = max_loaded
        self.settings = settings
        self.log = log
        self.requests = requests
        self.recommender = Recommender(model, settings.surfaces, settings.session.timeout_ms)
        #: Where folds start from and leave checkpoints (``None``: always from the start of the log).
        self.checkpoints = checkpoints
        self._generation = checkpoints.generation() if checkpoints is not None else 0
        self._replay = self._fresh()
        self._position = 0
        self._by_version: dict[str, Recommender] = {}

    def _recommender(self, version: str) -> Recommender:
        """The recommender of the model as it was at ``version`` (items join the catalog online)."""
        if version == self.recommender.model.version:
            return self.recommender
        model = self.model.at_version(version)
        if model is None:
            return self.recommender  # another model: the caller compares the versions
        found = self._by_version.get(version)
        if found is None:
            found = self._by_version[version] = Recommender(
                model, self.settings.surfaces, self.settings.session.timeout_ms
            )
        return found

    def _fresh(self) -> Replay:
        if self.checkpoints is not None:
            return self._from_checkpoint(self.checkpoints, 0)
        return Replay(self.settings.session, learn=self.settings.learn_online, factors=for_model(self.model))

    def _fingerprint(self) -> str:
        return fingerprint_of(self.settings, self.model)

    def _from_checkpoint(self, checkpoints: CheckpointStore, position: int) -> CheckpointedReplay:
        """A fold from the nearest checkpoint at or before ``position``."""
        return replay_from(checkpoints, self.settings, self.model, position, self.max_loaded)

    def _fold_to(self, position: int, spacing: float = 0.0) -> None:
        """Fold the log through ``position``; a checkpoint fold spaces its checkpoints by
        ``spacing`` times the last one's duration (``CheckpointedReplay.spacing``)."""
        if self.checkpoints is not None:
            replay = self._replay
            generation = self.checkpoints.generation()
            stale = generation != self._generation  # a user was erased since: what was folded may hold them
            if (
                not isinstance(replay, CheckpointedReplay)
                or stale
                or position < self._position
                or (self.checkpoints.nearest(replay.fp, position) > self._position)
            ):
                self._generation = generation
                replay = self._from_checkpoint(self.checkpoints, position)
            self._replay = replay
            replay.spacing = spacing
            fold_with_checkpoints(self.log, replay, position)
            self._position = max(replay.position, position)
            return
        if position < self._position:
            self._replay, self._position = self._fresh(), 0
        for pos, event in self.log.read(after=self._position):
            if pos > position:
                break
            self._replay.apply(pos, event)
            self._position = pos
        self._position = max(self._position, position)

    def follow(self, max_events: int = 5_000) -> int:
        """Fold up to ``max_events`` events past what is folded (or the newest checkpoint), leaving
        checkpoints by the policy, spaced by their cost (``FOLLOW_SPACING``): run in idle time, it
        keeps the newest checkpoint near the end of the log, so explaining a recent list folds only
        the events since; caught up, it leaves one at the end of the log once a tenth of
        ``checkpoint_every_events`` has arrived since the newest. Returns the events read (0:
        caught up, or no checkpoint file)."""
        if self.checkpoints is None:
            return 0
        positions = self.checkpoints.positions(self._fingerprint())
        after = max(self._position, positions[-1] if positions else 0)
        n, last = self.log.span(after, max_events)  # the positions alone: the fold reads the events
        if n:
            self._fold_to(last, FOLLOW_SPACING)
        replay = self._replay
        caught_up = n < max_events
        if caught_up and isinstance(replay, CheckpointedReplay) and replay.pending >= self._tail_checkpoint_events():
            replay.checkpoint()  # at the end of the log: a recent list's explanation folds almost nothing
        return n

    def checkpoint(self) -> None:
        """Record a checkpoint at what is folded now (if anything was folded since the newest)."""
        if isinstance(self._replay, CheckpointedReplay) and self._replay.pending > 0:
            self._replay.checkpoint()

    def _tail_checkpoint_events(self) -> int:
        return max(self.settings.checkpoint_every_events // 10, 1)

    def manifest(self, request_id: str) -> Manifest:
        found = self.requests.get(request_id)
        if found is None and (erased := self.requests.erased_at(request_id)) is not None:
            when = datetime.fromtimestamp(erased / 1000, tz=UTC).isoformat(timespec="seconds")
            raise Gone(f"request_id: {request_id!r} was served to a user whose data was erased at {when} (forget)")
        if found is None:
            raise NotFound(f"request_id: no manifest for {request_id!r} (unknown, or pruned by retention)")
        return found

    def explain(self, request_id: str) -> Explanation:
        served = self.manifest(request_id)
        note = ""
        computed = served
        if served.cached_from is not None:
            computed = self.manifest(served.cached_from)
            note = f"served from the freshness cache; computed by request {served.cached_from}"
        if self.model.at_version(computed.model_version) is None:
            raise ModelError(
                f"model: request {request_id} was served by model {computed.model_version}, this is "
                f"{self.model.version}; load that model directory to explain it"
            )
        response = self.recompute(computed)
        recomputed = [i.item_id for i in response.items]
        diff = _diff(served.items, recomputed)
        return Explanation(
            request_id=request_id,
            identical=not diff,
            served=list(served.items),
            recomputed=recomputed,
            diff=diff,
            tier=response.tier,
            cut=list(response.cut),
            items=self._items(response),
            removed_by_rule={k: list(v) for k, v in response.removed_by_rule.items()},
            manifest=asdict(served),
            note=note,
        )

    def explain_all(self, request_ids: Iterable[str]) -> list[Explanation]:
        """Many requests, in log order (the log is folded once)."""
        manifests = sorted((self.manifest(r) for r in request_ids), key=lambda m: m.log_position)
        return [self.explain(m.request_id) for m in manifests]

    def recompute(self, m: Manifest) -> RecommendResponse:
        self._fold_to(m.log_position)
        req = RecommendRequest(
            m.user_id, m.surface, m.k, dict(m.context), m.request_id, m.now_ms, Filters.from_dict(m.filters)
        )
        forced = Forced(m.tier, tuple(m.skipped_sources), m.ranked_rows, tuple(m.cut), tuple(m.explored))
        state = self._replay.state(m.user_id)
        return self._recommender(m.model_version).recommend(
            req,
            state,
            self._replay.lookup,
            m.tier,
            m.previous,
            forced,
            neighbours=self._replay.neighbours,
            factors=self._replay.factors if m.factors_version else None,
        )

    def _items(self, response: RecommendResponse) -> list[ItemExplanation]:
        row_of = {item_id: n for n, item_id in enumerate(response.candidate_ids)}
        x = response.features
        rows = [row_of.get(i.item_id, -1) for i in response.items]
        contrib = None
        learned = self.recommender.learned
        if x is not None and learned is not None and rows and min(rows) >= 0:
            contrib = learned.contributions(x[rows])
        out = []
        for n, item in enumerate(response.items):
            row = rows[n]
            sources = {s: 0.0 for s in item.sources}
            features: dict[str, float] = {}
            contributions: dict[str, float] = {}
            if x is not None and row >= 0:
                for name in item.sources:
                    column = SOURCE_COLUMNS.get(name)
                    if column is not None:
                        sources[name] = round(float(x[row, column]), 6)
                if contrib is not None:
                    top = np.argsort(-np.abs(contrib[n, :-1]), kind="stable")[:TOP_FEATURES]
                    features = {FEATURE_NAMES[c]: round(float(x[row, c]), 6) for c in top}
                    contributions = {FEATURE_NAMES[c]: round(float(contrib[n, c]), 6) for c in top}
                    contributions["(bias)"] = round(float(contrib[n, -1]), 6)
            moved = ["churn budget"] if item.item_id in response.stabilised else []
            out.append(
                ItemExplanation(item.item_id, n + 1, round(item.score, 6), sources, features, contributions, moved)
            )
        return out
