"""Per-surface freshness: which computed lists may be served again, and what each user last saw.

- ``realtime``: every request is computed.
- ``session``: a list is kept per user + surface + request shape and served again while the
  session has not moved: same session, and either no event since (same ``session_version``) or
  only events that leave the session's intent where it was (the recency-decayed session embedding
  moved less than ``drift_threshold`` in cosine distance), so a repeat view does not force a
  recomputation. Never after a purchase, a dismissal or a cart change (the rules depend on them),
  never older than ``cache_ttl_s``.
- ``batch``: kept for ``cache_ttl_s`` whatever the session does (purchases, dismissals and cart
  changes still invalidate it).

Both live in the feature store beside the user's session (``ServingLists``), so every server
behind a balancer serves a user the same kept lists and the same churn budget; they are bounded
per user and expire with the user's state, so memory does not grow with the number of users.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from insession.config import SurfaceConfig
from insession.model_swap import trained_version
from insession.pipeline import RecommendedItem, RecommendRequest, RecommendResponse
from insession.sessions import SessionState
from insession.store import USER_VALUES, FeatureStore


def _guards(state: SessionState | None) -> tuple[Hashable, ...]:
    """The parts of the state the re-ranking rules read: any change to them invalidates a list."""
    if state is None:
        return ((), (), ())
    return (state.purchased, state.dismissed, state.cart)


@dataclass(frozen=True, slots=True)
class Entry:
    response: RecommendResponse
    session_id: str | None
    session_version: int
    intent: npt.NDArray[np.float32]
    guards: tuple[Hashable, ...]
    created_ms: int


def _usable(
    entry: Entry,
    surface: SurfaceConfig,
    req: RecommendRequest,
    state: SessionState | None,
    intent: Callable[[], npt.NDArray[np.float32]],
) -> bool:
    if req.now_ms - entry.created_ms > surface.cache_ttl_s * 1000 or entry.guards != _guards(state):
        return False
    if surface.freshness == "batch":
        return True
    session_id = state.session_id if state else None
    version = state.session_version if state else 0
    if session_id != entry.session_id:
        return False
    if version == entry.session_version:
        return True
    return len(entry.intent) > 0 and drift(intent(), entry.intent) < surface.drift_threshold


def drift(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """Cosine distance between two session embeddings; 1.0 when either is empty."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 0.0 if na == nb else 1.0
    return 1.0 - float(a @ b) / (na * nb)


#: The user's serving values in the feature store (``FeatureStore.get_user``/``put_user``).
SHOWN, KEPT = USER_VALUES
#: Kept lists per user (request shapes: surface, k, context, filters); the oldest go first.
MAX_KEPT = 8


def _key_text(req: RecommendRequest) -> str:
    """``request_key`` as text (a user's kept lists are one JSON document, keyed by it)."""
    return json.dumps([req.surface, req.k, sorted(req.context.items()), repr(req.filters)], separators=(",", ":"))


def _response_to_json(r: RecommendResponse) -> dict[str, Any]:
    return {
        "request_id": r.request_id,
        "user_id": r.user_id,
        "surface": r.surface,
        "items": [[i.item_id, i.score, list(i.sources)] for i in r.items],
        "session_id": r.session_id,
        "session_version": r.session_version,
        "model_version": r.model_version,
        "tier": r.tier,
        "timings_ms": dict(r.timings_ms),
        "removed_by_rule": {k: list(v) for k, v in r.removed_by_rule.items()},
        "cut": list(r.cut),
        "skipped_sources": list(r.skipped_sources),
        "stabilised": list(r.stabilised),
        "explored": list(r.explored),
        "factors_version": r.factors_version,
        "ranked_rows": r.ranked_rows,
        "degraded": r.degraded,
    }


def _response_from_json(raw: dict[str, Any]) -> RecommendResponse:
    items = tuple(RecommendedItem(i, float(score), tuple(src)) for i, score, src in raw.pop("items"))
    tuples: dict[str, Any] = {k: tuple(raw.pop(k)) for k in ("cut", "skipped_sources", "stabilised", "explored")}
    return RecommendResponse(items=items, **tuples, **raw)


def encode_entry(entry: Entry) -> dict[str, Any]:
    return {
        "response": _response_to_json(entry.response),
        "session_id": entry.session_id,
        "session_version": entry.session_version,
        "intent": base64.b64encode(np.asarray(entry.intent, dtype="<f4").tobytes()).decode(),
        "guards": [list(g) for g in entry.guards],  # type: ignore[call-overload]
        "created_ms": entry.created_ms,
    }


def decode_entry(raw: dict[str, Any]) -> Entry:
    return Entry(
        _response_from_json(dict(raw["response"])),
        raw["session_id"],
        int(raw["session_version"]),
        np.frombuffer(base64.b64decode(raw["intent"]), dtype="<f4").astype(np.float32),
        tuple(tuple(g) for g in raw["guards"]),
        int(raw["created_ms"]),
    )


@dataclass(slots=True)
class UserView:
    """What a request reads of one user, in one store read: the session state, the list last
    shown per surface (with the session it was shown in), and the lists kept for reuse."""

    state: SessionState | None
    shown: dict[str, tuple[str | None, tuple[str, ...]]]
    kept: dict[str, dict[str, Any]]  # request shape -> an encoded Entry (decoded when looked up)


class ServingLists:
    """The lists each user was shown and the lists kept for reuse, kept in the feature store
    beside the user's session (``FeatureStore.get_user``), so that every server behind a balancer
    sees the same ones: a user's churn budget and freshness reuse do not depend on which server
    answered. Bounded per user (``MAX_KEPT`` kept lists, one shown list per surface) and expiring
    with the user's state (``ttl_s``)."""

    def __init__(self, store: FeatureStore, ttl_s: int) -> None:
        self.store = store
        self.ttl_s = ttl_s

    def read(self, req: RecommendRequest, surface: SurfaceConfig) -> UserView:
        """The user's state, shown lists and (on a surface that reuses lists) kept lists."""
        names = [SHOWN] if surface.freshness == "realtime" else [SHOWN, KEPT]
        state, raws = self.store.get_user(req.user_id, names)
        shown = {s: (sid, tuple(items)) for s, (sid, items) in json.loads(raws[0]).items()} if raws[0] else {}
        kept = json.loads(raws[1]) if len(raws) > 1 and raws[1] else {}
        return UserView(state, shown, kept)

    @staticmethod
    def previous(view: UserView, req: RecommendRequest) -> tuple[str, ...]:
        """What this user saw last on this surface in the current session (empty if nothing)."""
        found = view.shown.get(req.surface)
        if found is None or view.state is None or found[0] != view.state.session_id:
            return ()
        return found[1]

    @staticmethod
    def lookup(
        view: UserView,
        surface: SurfaceConfig,
        req: RecommendRequest,
        intent: Callable[[], npt.NDArray[np.float32]],
        model_version: str,
    ) -> Entry | None:
        """The kept list for this request if the surface's freshness lets it be served again and
        the trained model serving now (``model_version``) computed it; ``intent`` (the current
        session embedding) is computed only when the decision needs it."""
        if surface.freshness == "realtime":
            return None
        raw = view.kept.get(_key_text(req))
        entry = None if raw is None else decode_entry(raw)
        if entry is None or trained_version(entry.response.model_version) != trained_version(model_version):
            return None  # another model swapped in: its lists are computed again
        return entry if _usable(entry, surface, req, view.state, intent) else None

    def record(
        self,
        view: UserView,
        surface: SurfaceConfig,
        req: RecommendRequest,
        items: Sequence[str],
        computed: RecommendResponse | None,
    ) -> None:
        """Remember what was shown, and keep a newly ``computed`` list for reuse: one store write."""
        state = view.state
        shown = {s: [sid, list(ids)] for s, (sid, ids) in view.shown.items()}
        shown[req.surface] = [state.session_id if state else None, list(items)]
        values = {SHOWN: json.dumps(shown, separators=(",", ":")).encode()}
        if computed is not None and surface.freshness != "realtime":
            intent = computed.intent if computed.intent is not None else np.zeros(0, dtype=np.float32)
            entry = Entry(
                computed,
                state.session_id if state else None,
                state.session_version if state else 0,
                intent,
                _guards(state),
                req.now_ms,
            )
            kept = {k: v for k, v in view.kept.items() if k != _key_text(req)}
            kept[_key_text(req)] = encode_entry(entry)
            while len(kept) > MAX_KEPT:
                del kept[min(kept, key=lambda k: int(kept[k]["created_ms"]))]
            values[KEPT] = json.dumps(kept, separators=(",", ":")).encode()
        self.store.put_user(req.user_id, values, self.ttl_s)

    def shown_to(self, user_ids: Sequence[str]) -> dict[str, set[str]]:
        """Every item of the lists each of ``user_ids`` was shown last, on any surface."""
        out: dict[str, set[str]] = {}
        for user, raw in zip(user_ids, self.store.get_user_values(SHOWN, user_ids), strict=True):
            items: set[str] = set()
            for _, ids in json.loads(raw).values() if raw else ():
                items.update(ids)
            out[user] = items
        return out


def cache_control(surface: SurfaceConfig, age_ms: int = 0) -> str:
    """The ``Cache-Control`` a client should apply to a list of this surface."""
    if surface.freshness == "realtime":
        return "no-store"
    if surface.freshness == "session":
        return "private, no-cache"  # keep it, but revalidate (ETag) before reuse: the next event may change it
    return f"private, max-age={max(int(surface.cache_ttl_s - age_ms / 1000), 0)}"
