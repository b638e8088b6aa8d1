"""Time ``insession evaluate`` end to end on a synthetic shop of about a million events.

Issue 4's scale target: 1M training events and 60k test pairs in under 20 minutes on 2 cores. The
shop is generated (seeded), split by time, and evaluated with every baseline and engine variant;
the timings and the pair counts go to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

from insession.config import Settings
from insession.datasets.synthetic import ShopConfig, generate
from insession.evaluation import EvalOptions, evaluate, time_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=18_000)
    parser.add_argument("--items-per-category", type=int, default=1000)
    parser.add_argument("--test-days", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/evaluate_scale.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    shop = generate(ShopConfig(n_categories=12, items_per_category=args.items_per_category, n_users=args.users))
    generated = time.perf_counter() - started
    split = time_split(shop.events, args.test_days, Settings().session)
    print(f"{len(shop.events)} events generated in {generated:.0f}s; {len(split.train)} train / {len(split.test)} test")

    def stage(description: str, total: int | None) -> object:
        print(f"[{time.perf_counter() - started:7.1f}s] {description}", flush=True)
        return lambda n: None

    t0 = time.perf_counter()
    result = evaluate(split, options=EvalOptions(workers=args.workers), stage=stage)  # type: ignore[arg-type]
    wall = time.perf_counter() - t0
    figures = {
        "cpu_count": os.cpu_count(),
        "events": len(shop.events),
        "train_events": len(split.train),
        "test_events": len(split.test),
        "pairs": result.run["pairs"],
        "items": result.run["items"],
        "evaluate_wall_s": round(wall, 1),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "timings_s": result.run["timings_s"],
        "metrics": {name: {k: round(v, 4) for k, v in m.items()} for name, m in result.metrics.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
