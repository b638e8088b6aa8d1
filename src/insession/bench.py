"""Throughput and latency of the embedded engine on a synthetic shop, measured in one run.

``bare`` is the baseline measured in the same run: a request for a user with no state, which
runs the whole pipeline but has no session evidence (popularity only). Comparing the two on the
same machine at the same moment separates the cost of personalisation from machine noise.
"""

from __future__ import annotations

import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from insession.clock import ManualClock
from insession.config import Settings
from insession.datasets.synthetic import CATEGORIES, ShopConfig, generate
from insession.engine import Engine
from insession.events import Event, EventType
from insession.model import ModelBundle
from insession.pipeline import RecommendRequest
from insession.sequence.model import N_TYPES, Tokens, gap_buckets
from insession.training import train


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sequence_latency(
    model: ModelBundle, tokens: int = 50, candidates: int = 500, requests: int = 1000
) -> dict[str, Any]:
    """One request's sequence-model work, timed alone: encode a ``tokens``-event history and score
    ``candidates`` items (the target in issue 11: p50 under 2 ms). Empty without a sequence model."""
    seq = model.sequence
    if seq is None:
        return {"sequence_model": model.stats.get("sequence", {}).get("off", "off")}
    rng = np.random.default_rng(0)
    n = min(tokens, seq.arch.max_len)
    timings: list[float] = []
    for _ in range(requests):
        ts = np.sort(rng.integers(0, 3_600_000, n))
        toks = Tokens(rng.integers(1, seq.n_items + 1, n), rng.integers(1, N_TYPES, n), gap_buckets(ts), ts)
        items = rng.choice(seq.n_items, min(candidates, seq.n_items), replace=False)
        t = time.perf_counter()
        seq.scores(seq.encode(toks), items)
        timings.append((time.perf_counter() - t) * 1000)
    return {
        "sequence_tokens": n,
        "sequence_candidates": min(candidates, seq.n_items),
        "sequence_p50_ms": round(statistics.median(timings), 3),
        "sequence_p99_ms": round(_pct(timings, 0.99), 3),
    }


def run_bench(
    n_items: int = 10_000, requests: int = 2000, seed: int = 1, progress: Callable[[str], None] = lambda s: None
) -> dict[str, Any]:
    n_cat = len(CATEGORIES)
    per_cat = max(n_items // n_cat, 16)
    cfg = ShopConfig(
        n_categories=n_cat,
        items_per_category=per_cat,
        styles_per_category=max(per_cat // 12, 8),
        n_users=max(300, n_items // 20),
        seed=seed,
    )
    progress("generating")
    shop = generate(cfg)
    progress("training")
    t = time.perf_counter()
    model = train(shop.events, items=shop.items)
    train_s = time.perf_counter() - t
    clock = ManualClock(shop.events[-1].ts + 3_600_000)
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine.open(Settings(data_dir=Path(tmp), snapshot_every_events=10**9), model=model, clock=clock)
        progress("ingesting")
        t = time.perf_counter()
        batch = 100
        for i in range(0, len(shop.events), batch):
            engine.ingest(shop.events[i : i + batch])
        ingest_s = time.perf_counter() - t
        rng = random.Random(seed)
        users = sorted(shop.tastes)
        progress("requests")
        full: list[float] = []
        bare: list[float] = []
        for n in range(requests):
            user = rng.choice(users)
            item = shop.items[rng.randrange(len(shop.items))]
            clock.advance(5_000)
            engine.ingest([Event(f"bench-{n}", user, EventType.CLICK, clock.now_ms(), item.item_id)])
            t = time.perf_counter()
            engine.recommend(RecommendRequest(user, "home", 10))
            full.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            engine.recommend(RecommendRequest(f"anon-{n}", "home", 10))
            bare.append((time.perf_counter() - t) * 1000)
        engine.log.close()
    return {
        "items": len(model.catalog),
        "events": len(shop.events),
        "requests": requests,
        "recommend_p50_ms": round(statistics.median(full), 3),
        "recommend_p99_ms": round(_pct(full, 0.99), 3),
        "bare_p50_ms": round(statistics.median(bare), 3),
        "bare_p99_ms": round(_pct(bare, 0.99), 3),
        "ingest_events_per_s": round(len(shop.events) / ingest_s, 1),
        "ingest_batch": batch,
        "train_seconds": round(train_s, 3),
        **sequence_latency(model),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
