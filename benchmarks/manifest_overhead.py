"""What writing a request manifest costs: recommendation latency with and without the request log,
alternating request by request on the same engine (so machine noise hits both alike), and the
write alone."""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from insession.clock import ManualClock
from insession.config import Settings
from insession.datasets.synthetic import ShopConfig, generate
from insession.engine import Engine
from insession.events import Event, EventType
from insession.pipeline import RecommendRequest
from insession.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/manifest_overhead.json"))
    args = parser.parse_args()
    shop = generate(ShopConfig(n_categories=8, items_per_category=250, n_users=400, seed=3))
    model = train(shop.events, items=shop.items)
    clock = ManualClock(shop.events[-1].ts + 60_000)
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine.open(Settings(data_dir=Path(tmp), snapshot_every_events=10**9), model=model, clock=clock)
        engine.ingest(shop.events)
        log = engine.requests
        assert log is not None
        with_log: list[float] = []
        without: list[float] = []
        writes: list[float] = []
        original = log.write

        def timed_write(manifest):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            original(manifest)
            writes.append((time.perf_counter() - t) * 1000)

        log.write = timed_write  # type: ignore[method-assign]
        users = sorted(shop.tastes)
        for n in range(args.requests):
            user = rng.choice(users)
            clock.advance(3_000)
            engine.ingest([Event(f"m-{n}", user, EventType.CLICK, clock.now_ms(), rng.choice(shop.items).item_id)])
            record = n % 2 == 0
            engine.requests = log if record else None
            t = time.perf_counter()
            engine.recommend(RecommendRequest(user, "home", 10))
            (with_log if record else without).append((time.perf_counter() - t) * 1000)
        engine.requests = log
        engine.close()
    figures = {
        "requests": args.requests,
        "recommend_p50_ms_with_manifest": round(statistics.median(with_log), 4),
        "recommend_p50_ms_without": round(statistics.median(without), 4),
        "added_p50_ms": round(statistics.median(with_log) - statistics.median(without), 4),
        "write_p50_ms": round(statistics.median(writes), 4),
        "write_p99_ms": round(sorted(writes)[int(0.99 * len(writes))], 4),
    }
    print(json.dumps(figures, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
