"""The request path on one Redis and on a 3-node Redis Cluster against the embedded store, in one
process (no HTTP, no other load), measured in one run.

Trains the synthetic shop, folds its events into an embedded engine and (through the Redis streams
and a stream worker) into a Redis and into a Redis Cluster, then times the same recommendation
requests, interleaved in rounds, against: the memory store; each Redis with the L1 cache (the
default, 1 s) and without it. Reports p50/p99 per setup, the L1 hit rate, and per request the
store's round trips (pipelines sent) and the commands Redis ran (summed over the Cluster's nodes).
Also times the stream worker's fold on each and counts its round trips per batch. Starts its own
redis-server and cluster on free loopback ports and stops them by their PIDs.

    python benchmarks/redis_read_path.py --items 10000 --requests 600 --out benchmarks/results/redis-read-path.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from insession.bench import _pct, train_shop
from insession.bench_scale import LocalCluster, LocalRedis, command_counts
from insession.clock import ManualClock
from insession.config import Settings
from insession.engine import Engine
from insession.pipeline import RecommendRequest
from insession.redis_backend import connect
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
    single = LocalRedis(tmp / "redis")
    cluster: LocalCluster | None = None
    figures: dict[str, Any] = {}
    try:
        cluster = LocalCluster(tmp / "cluster")
        clock = ManualClock(shop.events[-1].ts + 60_000)
        engines = {"memory": Engine.open(Settings(data_dir=tmp / "memory"), model, clock)}
        engines["memory"].ingest_all(shop.events, batch=200)
        clients: dict[str, Any] = {}
        for kind, url in (("redis", single.url), ("cluster", cluster.url)):
            clients[kind] = connect(url, 5000.0, retries=1)
            engines[f"{kind}_l1"] = Engine.open(Settings(data_dir=tmp / f"{kind}-l1", store=url), model, clock)
            engines[f"{kind}_l1"].ingest_all(shop.events, batch=200)
            worker = StreamWorker(connect(url, 5000.0, retries=1), engines[f"{kind}_l1"].settings, clock=clock)
            t = time.perf_counter()
            folded = worker.drain()
            seconds = time.perf_counter() - t
            figures[f"{kind}_worker"] = {
                "events_per_s": round(folded / seconds, 1),
                "batches": worker.stats.batches,
                "rounds": worker.stats.rounds,
                "round_trips_per_round": round(worker.guard.calls / max(worker.stats.rounds, 1), 2),
                "item_commits": worker.stats.item_batches,
            }
            print(f"{kind}: worker folded {folded} events in {seconds:.1f} s", flush=True)
            settings = Settings(data_dir=tmp / f"{kind}-nol1", store=url, l1_max_age_ms=0)
            engines[f"{kind}_no_l1"] = Engine.open(settings, model, clock)
        users = sorted(shop.tastes)
        timings: dict[str, list[float]] = {name: [] for name in engines}
        trips: dict[str, int] = dict.fromkeys(engines, 0)
        commands: dict[str, Counter[str]] = {name: Counter() for name in engines}
        for r in range(args.rounds):
            for name, engine in engines.items():
                client = clients.get(name.split("_")[0])
                calls = engine.guard.calls if engine.guard is not None else 0
                ran = command_counts(client) if client is not None else None
                for n in range(args.requests):
                    req = RecommendRequest(
                        users[(n * 7 + r) % len(users)], "home", 10, {}, f"{name}-{r}-{n}", clock.now_ms()
                    )
                    t = time.perf_counter()
                    engine.recommend(req)
                    timings[name].append((time.perf_counter() - t) * 1000)
                if engine.guard is not None:
                    trips[name] += engine.guard.calls - calls
                if client is not None and ran is not None:
                    commands[name] += command_counts(client) - ran
        total = args.requests * args.rounds
        figures.update(items=len(model.catalog), requests_per_setup=total)
        for name, values in timings.items():
            figures[name] = {"p50_ms": round(statistics.median(values), 3), "p99_ms": round(_pct(values, 0.99), 3)}
            if engines[name].guard is not None:
                figures[name]["round_trips_per_request"] = round(trips[name] / total, 2)
                figures[name]["commands_per_request"] = {
                    k: round(v / total, 2) for k, v in sorted(commands[name].items()) if v
                }
        for kind in ("redis", "cluster"):
            figures[f"{kind}_l1_hit_rate"] = engines[f"{kind}_l1"].store_health()["l1_hit_rate"]
        for engine in engines.values():
            engine.close()
        for client in clients.values():
            client.close()
    finally:
        single.stop()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(figures, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
