"""The per-request profile of a user: what this session is about and who the user is over time.

Computed purely from ``SessionState`` + the model + request time, once per request, and shared by
every candidate source and by the ranker's features. Training builds it with the same function
while replaying the event log, so offline and online features cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from insession.clock import HOUR_MS, MINUTE_MS
from insession.events import EventType
from insession.model import ModelBundle
from insession.sequence.model import tokens_of
from insession.sessions import Interaction, SessionState

#: Half-life of an interaction's pull on the session embedding, by event type (seconds).
DEFAULT_HALF_LIVES_S: Mapping[str, float] = {
    EventType.VIEW.value: 300.0,
    EventType.CLICK.value: 600.0,
    EventType.ADD_TO_CART.value: 3600.0,
    EventType.PURCHASE.value: 1800.0,
}
TYPE_WEIGHTS: Mapping[str, float] = {
    EventType.VIEW.value: 1.0,
    EventType.CLICK.value: 1.5,
    EventType.ADD_TO_CART.value: 3.0,
    EventType.PURCHASE.value: 1.0,
}
USER_WINDOWS_MS = (5 * MINUTE_MS, HOUR_MS, 24 * HOUR_MS)


@dataclass(frozen=True, slots=True)
class ProfileConfig:
    half_lives_s: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_HALF_LIVES_S))
    history_half_life_days: float = 30.0
    recency_depth: int = 30

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.half_lives_s.items() if v <= 0}
        if bad:
            raise ValueError(f"half_lives_s: expected positive seconds, got {bad}")


@dataclass(frozen=True, slots=True)
class Profile:
    live: bool
    n_session: int
    counts: Mapping[str, int]  # session events per type
    ctr: float  # session clicks+carts per view (views counted at least once)
    secs_since_start: float
    secs_since_last: float
    n_history: int
    user_windows: tuple[int, int, int]  # the user's events in the last 5 min, 1 h, 24 h
    cat_session: Mapping[int, float]  # category code -> decayed share of this session
    cat_history: Mapping[int, float]  # category code -> decayed share of earlier sessions
    brand_session: Mapping[str, float]
    brand_history: Mapping[str, float]
    price_mean: float  # session mean price of items with a price (0 when none)
    price_std: float
    session_embedding: npt.NDArray[np.float32]
    user_embedding: npt.NDArray[np.float32]
    session_items: Mapping[str, int]  # item id -> interactions in this session
    history_items: frozenset[str]
    cart: frozenset[str]
    session_recency: Mapping[str, int]  # item id -> 1 for the latest distinct item of the session, 2, ...
    history_recency: Mapping[str, int]  # the same over earlier sessions (at most ``recency_depth`` items)
    #: The sequence model's vector of the user's latest interactions (empty without a sequence model).
    sequence_vector: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, dtype=np.float32))


def _shares(weights: dict[object, float]) -> dict[object, float]:
    total = sum(weights.values())
    return {k: v / total for k, v in weights.items()} if total > 0 else {}


def build_profile(
    state: SessionState | None, model: ModelBundle, now_ms: int, timeout_ms: int, cfg: ProfileConfig
) -> Profile:
    dim = model.embeddings.shape[1]
    zero = np.zeros(dim, dtype=np.float32)
    if state is None:
        return Profile(
            False,
            0,
            {},
            0.0,
            0.0,
            0.0,
            0,
            (0, 0, 0),
            {},
            {},
            {},
            {},
            0.0,
            0.0,
            zero,
            zero,
            {},
            frozenset(),
            frozenset(),
            {},
            {},
        )
    live = now_ms - state.last_event_ms < timeout_ms
    session: tuple[Interaction, ...] = state.events if live else ()
    history: tuple[Interaction, ...] = state.history if live else state.history + state.events
    catalog = model.catalog
    index = catalog.index

    counts: dict[str, int] = {}
    for inter in session:
        counts[inter.type.value] = counts.get(inter.type.value, 0) + 1
    views = counts.get("view", 0) + counts.get("click", 0)
    ctr = (counts.get("click", 0) + counts.get("add_to_cart", 0)) / max(views, 1)

    def decayed(inters: tuple[Interaction, ...], half_life_ms: float | None) -> list[tuple[int, float]]:
        out = []
        for inter in inters:
            n = index.get(inter.item_id)
            if n is None or inter.type is EventType.DISMISS:
                continue
            hl = half_life_ms if half_life_ms is not None else cfg.half_lives_s.get(inter.type.value, 600.0) * 1000
            age = max(now_ms - inter.ts, 0)
            out.append((n, TYPE_WEIGHTS.get(inter.type.value, 1.0) * math.exp(-math.log(2) * age / hl)))
        return out

    s_weights = decayed(session, None)
    h_weights = decayed(history, cfg.history_half_life_days * 86_400_000)

    def aggregate(
        weights: list[tuple[int, float]],
    ) -> tuple[dict[object, float], dict[object, float], npt.NDArray[np.float32]]:
        cats: dict[object, float] = {}
        brands: dict[object, float] = {}
        vec = np.zeros(dim, dtype=np.float64)
        for n, w in weights:
            code = int(catalog.category_codes[n])
            if code >= 0:
                cats[code] = cats.get(code, 0.0) + w
            brand = catalog.items[n].brand
            if brand:
                brands[brand] = brands.get(brand, 0.0) + w
            vec += w * model.embeddings[n]
        norm = float(np.linalg.norm(vec))
        return _shares(cats), _shares(brands), (vec / norm if norm > 0 else vec).astype(np.float32)

    cat_s, brand_s, emb_s = aggregate(s_weights)
    cat_h, brand_h, emb_h = aggregate(h_weights)
    prices = [p for p in (catalog.items[n].price for n, _ in s_weights) if p is not None]
    every_ts = [i.ts for i in state.history] + [i.ts for i in state.events]
    windows = tuple(sum(1 for t in every_ts if 0 <= now_ms - t < w) for w in USER_WINDOWS_MS)
    session_items: dict[str, int] = {}
    for inter in session:
        session_items[inter.item_id] = session_items.get(inter.item_id, 0) + 1
    return Profile(
        live=live,
        n_session=len(session),
        counts=counts,
        ctr=ctr,
        secs_since_start=max(now_ms - state.session_started_ms, 0) / 1000 if live else 0.0,
        secs_since_last=max(now_ms - state.last_event_ms, 0) / 1000,
        n_history=len(history),
        user_windows=(windows[0], windows[1], windows[2]),
        cat_session={int(k): v for k, v in cat_s.items()},  # type: ignore[call-overload]
        cat_history={int(k): v for k, v in cat_h.items()},  # type: ignore[call-overload]
        brand_session={str(k): v for k, v in brand_s.items()},
        brand_history={str(k): v for k, v in brand_h.items()},
        price_mean=float(np.mean(prices)) if prices else 0.0,
        price_std=float(np.std(prices)) if prices else 0.0,
        session_embedding=emb_s,
        user_embedding=emb_h,
        session_items=session_items,
        history_items=frozenset(i.item_id for i in history),
        cart=frozenset(state.cart),
        session_recency=_recency(session, cfg.recency_depth),
        history_recency=_recency(history, cfg.recency_depth),
        sequence_vector=_sequence_vector(state, model),
    )


def _sequence_vector(state: SessionState, model: ModelBundle) -> npt.NDArray[np.float32]:
    seq = model.sequence
    if seq is None:
        return np.zeros(0, dtype=np.float32)
    tokens = tokens_of(state, model.catalog.index, seq.arch.max_len)
    return seq.encode(tokens) if len(tokens.items) else np.zeros(0, dtype=np.float32)


def _recency(inters: tuple[Interaction, ...], depth: int) -> dict[str, int]:
    """Distinct items, latest first, numbered from 1; dismissed items are left out."""
    out: dict[str, int] = {}
    for inter in reversed(inters):
        if inter.type is EventType.DISMISS or inter.item_id in out:
            continue
        out[inter.item_id] = len(out) + 1
        if len(out) >= depth:
            break
    return out
