"""Bytes per entry of every per-user and per-item structure the embedded engine keeps in memory.

A synthetic shop's events are folded (``fold.FoldBatch``) into an in-process store; then each kind
of entry is rebuilt from its stored bytes under ``tracemalloc`` and the bytes allocated are divided
by the entries: a user's session state (decoded objects, as the store and an explanation fold hold
them), an item's recent activity and an item's online followers (stored encoded). A second pass
folds users to the caps of ``SessionConfig`` (``max_session_events`` + ``max_history_events``
interactions) to give the worst case per user. Python allocations only (no allocator slack):
RSS per entry is somewhat higher (see the soak and scale benchmarks).

    python benchmarks/memory_per_entry.py [--users 3000] [--out benchmarks/results/memory_per_entry.json]
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc
from pathlib import Path
from typing import Any

from insession.bench import write
from insession.config import SessionConfig
from insession.datasets.synthetic import ShopConfig, generate
from insession.events import Event, EventType
from insession.features.activity import NAMESPACE as ACTIVITY
from insession.fold import FoldBatch
from insession.online import covisit
from insession.sessions import SessionState
from insession.store.memory import MemoryFeatureStore

TTL_S = 10**9


def allocated(build: Any) -> tuple[int, Any]:
    """Bytes ``build()`` leaves allocated (what it returns is kept alive while measuring)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = build()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before, kept


def per_entry(store: MemoryFeatureStore) -> dict[str, Any]:
    users = store.users()
    states = [store.get_session(u) for u in users]
    raw_states = [s.to_bytes() for s in states if s is not None]
    size, _ = allocated(lambda: {f"u{n}": (SessionState.from_bytes(b), 0) for n, b in enumerate(raw_states)})
    out: dict[str, Any] = {
        "users": {
            "entries": len(raw_states),
            "bytes_per_entry": round(size / max(len(raw_states), 1)),
            "interactions_per_user_mean": round(
                sum(len(s.events) + len(s.history) for s in states if s is not None) / max(len(raw_states), 1), 1
            ),
        }
    }
    for name, namespace in (("item_activity", ACTIVITY), ("item_followers", covisit.NAMESPACE)):
        keys = store.keys(namespace)
        values = [bytes(v) for v in store.get_many(namespace, keys) if v is not None]
        size, _ = allocated(lambda values=values: {f"k{n}": (bytes(bytearray(v)), 0) for n, v in enumerate(values)})
        out[name] = {"entries": len(values), "bytes_per_entry": round(size / max(len(values), 1))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/memory_per_entry.json"))
    args = parser.parse_args()
    session = SessionConfig()
    shop = generate(ShopConfig(seed=args.seed, n_users=args.users))
    events = sorted(shop.events, key=lambda e: e.ts)
    store = MemoryFeatureStore()
    batch = FoldBatch(store, session, TTL_S)
    for position, event in enumerate(events, start=1):
        batch.fold(position, event)
    batch.flush()
    figures: dict[str, Any] = {
        "shop": {"users": args.users, "items": len(shop.items), "events": len(events)},
        "typical": per_entry(store),
    }
    # Worst case per user: every user at the session and history caps (fresh item id strings, as
    # events parsed from JSON carry).
    cap = session.max_session_events + session.max_history_events
    full = MemoryFeatureStore()
    batch = FoldBatch(full, session, TTL_S)
    position = 0
    for u in range(200):
        ts = 1_767_225_600_000
        for n in range(cap + session.max_session_events):
            position += 1
            ts += 31 * 60_000 if n % session.max_session_events == 0 else 1000  # sessions of 100 events

            item = "".join(["item-", str(u), "-", str(n % 400)])
            batch.fold(position, Event(f"e{position}", f"user{u}", EventType.VIEW, ts, item))
    batch.flush()
    figures["users_at_cap"] = per_entry(full)["users"]
    figures["caps"] = {
        "interactions_per_user": cap,
        "item_recent_events": 64,
        "followers_per_item": covisit.MAX_NEIGHBOURS,
    }
    write(figures, args.out)
    print(figures)


if __name__ == "__main__":
    main()
