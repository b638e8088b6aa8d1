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

Both stores are bounded (least recently used entries go first), so memory does not grow with the
number of users.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from insession.config import SurfaceConfig
from insession.pipeline import RecommendRequest, RecommendResponse
from insession.sessions import SessionState


def request_key(req: RecommendRequest) -> tuple[Hashable, ...]:
    """What makes two requests ask for the same list."""
    return (req.user_id, req.surface, req.k, tuple(sorted(req.context.items())), req.filters)


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


def drift(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """Cosine distance between two session embeddings; 1.0 when either is empty."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 0.0 if na == nb else 1.0
    return 1.0 - float(a @ b) / (na * nb)


class ListCache:
    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[Hashable, ...], Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def lookup(
        self,
        surface: SurfaceConfig,
        req: RecommendRequest,
        state: SessionState | None,
        intent: Callable[[], npt.NDArray[np.float32]],
    ) -> Entry | None:
        """The kept list for this request if the surface's freshness lets it be served again;
        ``intent`` (the current session embedding) is computed only when the decision needs it."""
        if surface.freshness == "realtime":
            return None
        key = request_key(req)
        with self._lock:
            entry = self._entries.get(key)
            usable = entry is not None and self._usable(entry, surface, req, state, intent)
            if usable:
                self._entries.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
        return entry if usable else None

    @staticmethod
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

    def store(
        self,
        surface: SurfaceConfig,
        req: RecommendRequest,
        state: SessionState | None,
        intent: npt.NDArray[np.float32] | None,
        response: RecommendResponse,
    ) -> None:
        if surface.freshness == "realtime":
            return
        entry = Entry(
            response,
            state.session_id if state else None,
            state.session_version if state else 0,
            intent if intent is not None else np.zeros(0, dtype=np.float32),
            _guards(state),
            req.now_ms,
        )
        key = request_key(req)
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def forget_except(self, live: set[str]) -> int:
        """Drop the kept lists of users not in ``live`` (their state expired); returns how many."""
        with self._lock:
            dead = [key for key in self._entries if key[0] not in live]
            for key in dead:
                del self._entries[key]
        return len(dead)

    def forget_user(self, user_id: str) -> int:
        """Drop every list kept for ``user_id`` (the user is erased); returns how many."""
        with self._lock:
            dead = [key for key in self._entries if key[0] == user_id]
            for key in dead:
                del self._entries[key]
        return len(dead)

    def __len__(self) -> int:
        return len(self._entries)


class ShownLists:
    """The list each user was last shown per surface, with the session it was shown in."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._shown: OrderedDict[tuple[str, str], tuple[str | None, tuple[str, ...]]] = OrderedDict()
        self._surfaces: dict[str, set[str]] = {}  # user -> the surfaces with a kept list
        self._lock = threading.Lock()

    def previous(self, req: RecommendRequest, state: SessionState | None) -> tuple[str, ...]:
        """What this user saw last on this surface in the current session (empty if nothing)."""
        with self._lock:
            found = self._shown.get((req.user_id, req.surface))
        if found is None or state is None or found[0] != state.session_id:
            return ()
        return found[1]

    def shown_to(self, user_id: str) -> set[str]:
        """Every item of the lists this user was shown last, on any surface."""
        out: set[str] = set()
        with self._lock:
            for surface in self._surfaces.get(user_id, ()):
                found = self._shown.get((user_id, surface))
                if found is not None:
                    out.update(found[1])
        return out

    def forget_except(self, live: set[str]) -> int:
        """Drop what users not in ``live`` were shown (their state expired); returns how many lists."""
        with self._lock:
            dead = [key for key in self._shown if key[0] not in live]
            for key in dead:
                del self._shown[key]
            for user in {u for u, _ in dead}:
                self._surfaces.pop(user, None)
        return len(dead)

    def forget_user(self, user_id: str) -> int:
        """Drop what ``user_id`` was shown (the user is erased); returns how many lists."""
        with self._lock:
            dead = [key for key in self._shown if key[0] == user_id]
            for key in dead:
                del self._shown[key]
            self._surfaces.pop(user_id, None)
        return len(dead)

    def __len__(self) -> int:
        return len(self._shown)

    def remember(self, req: RecommendRequest, state: SessionState | None, items: Sequence[str]) -> None:
        key = (req.user_id, req.surface)
        with self._lock:
            self._shown[key] = (state.session_id if state else None, tuple(items))
            self._shown.move_to_end(key)
            self._surfaces.setdefault(req.user_id, set()).add(req.surface)
            while len(self._shown) > self.max_entries:
                (user, surface), _ = self._shown.popitem(last=False)
                left = self._surfaces.get(user)
                if left is not None:
                    left.discard(surface)
                    if not left:
                        del self._surfaces[user]


def cache_control(surface: SurfaceConfig, age_ms: int = 0) -> str:
    """The ``Cache-Control`` a client should apply to a list of this surface."""
    if surface.freshness == "realtime":
        return "no-store"
    if surface.freshness == "session":
        return "private, no-cache"  # keep it, but revalidate (ETag) before reuse: the next event may change it
    return f"private, max-age={max(int(surface.cache_ttl_s - age_ms / 1000), 0)}"
