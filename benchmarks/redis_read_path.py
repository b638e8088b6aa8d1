"""The request path on Redis against the embedded store, in one process (no HTTP, no other load).

Trains the synthetic shop, folds its events into an embedded engine and (through the Redis streams
and a stream worker) into Redis, then times the same recommendation requests, interleaved in
rounds, against: the memory store; Redis with the L1 cache (the default, 1 s); Redis without it.
Reports p50/p99 per setup and the L1 hit rate. Starts its own redis-server on a free loopback
port and stops it by its PID.

    python benchmarks/redis_read_path.py --items 10000 --requests 600 --out benchmarks/results/redis-read-path.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from insession.bench import _pct, train_shop
from insession.bench_scale import start_redis
from insession.clock import ManualClock
from insession.config import Settings
from insession.engine import Engine
from insession.pipeline import RecommendRequest
from insession.store.redis import connect
from insession.worker import StreamWorker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=600, help="requests per setup per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/redis-read-path.json"))
    args = parser.parse_args()

    shop, _, model, _ = train_shop(args.items, 1, None, False, lambda s: print(s, flush=True))
    tmp = Path(tempfile.mkdtemp(prefix="insession-readpath-"))
    redis, url = start_redis(tmp)
    try:
        clock = ManualClock(shop.events[-1].ts + 60_000)
        engines = {"memory": Engine.open(Settings(data_dir=tmp / "memory"), model, clock)}
        engines["memory"].ingest_all(shop.events, batch=200)
        engines["redis_l1"] = Engine.open(Settings(data_dir=tmp / "l1", store=url), model, clock)
        engines["redis_l1"].ingest_all(shop.events, batch=200)
        worker = StreamWorker(connect(url, 5000.0), engines["redis_l1"].settings)
        print(f"worker folded {worker.drain()} events", flush=True)
        engines["redis_no_l1"] = Engine.open(Settings(data_dir=tmp / "nol1", store=url, l1_max_age_ms=0), model, clock)
        users = sorted(shop.tastes)
        timings: dict[str, list[float]] = {name: [] for name in engines}
        for r in range(args.rounds):
            for name, engine in engines.items():
                for n in range(args.requests):
                    req = RecommendRequest(
                        users[(n * 7 + r) % len(users)], "home", 10, {}, f"{name}-{r}-{n}", clock.now_ms()
                    )
                    t = time.perf_counter()
                    engine.recommend(req)
                    timings[name].append((time.perf_counter() - t) * 1000)
        figures: dict[str, object] = {"items": len(model.catalog), "requests_per_setup": args.requests * args.rounds}
        for name, values in timings.items():
            figures[name] = {"p50_ms": round(statistics.median(values), 3), "p99_ms": round(_pct(values, 0.99), 3)}
        figures["l1_hit_rate"] = engines["redis_l1"].store_health()["l1_hit_rate"]
        for engine in engines.values():
            engine.close()
    finally:
        redis.terminate()
        redis.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(figures, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
