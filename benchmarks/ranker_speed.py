"""The ranking stage alone, in process: LightGBM against the compiled ranker (lleaves) on the
feature rows of real requests, and a whole request's CPU time, on a model and shop that
``speed_compare.py`` prepared (``--work``). Run it once per source tree (``PYTHONPATH=TREE/src``);
one JSON line per run, appended to ``--out``."""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from insession.clock import ManualClock
from insession.config import Settings
from insession.engine import Engine
from insession.model import ModelBundle
from insession.pipeline import RecommendRequest


def cpu_ms(rows: list[Any], f: Callable[[Any], object]) -> float:
    out = []
    for x in rows:
        started = time.process_time()
        f(x)
        out.append((time.process_time() - started) * 1000)
    return round(statistics.median(out), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--tree", default="")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ranker-speed.json"))
    args = parser.parse_args()
    shop = pickle.loads((args.work / "shop.pickle").read_bytes())
    model = ModelBundle.load(args.work / "model")
    with tempfile.TemporaryDirectory() as tmp:
        clock = ManualClock(shop.events[-1].ts + 60_000)
        engine = Engine.open(Settings(data_dir=Path(tmp)), model=model, clock=clock)
        engine.ingest_all(shop.events[-30_000:])
        learned = engine.recommender.learned
        assert learned is not None
        fast = getattr(learned, "compiled", None)
        users = sorted(shop.tastes)
        rows = []
        for n in range(300):
            served = engine.recommend(RecommendRequest(users[n * 7 % len(users)], "home", 10, {"device": "mobile"}))
            if served.features is not None:
                rows.append(served.features)
        figures: dict[str, Any] = {
            "tree": args.tree,
            "items": len(model.catalog),
            "compiled": fast is not None,
            "rows_p50": statistics.median(len(x) for x in rows),
            "lightgbm_score_cpu_ms_p50": cpu_ms(rows, lambda x: learned.booster.predict(x, num_threads=1)),
        }
        if fast is not None:
            figures["compiled_score_cpu_ms_p50"] = cpu_ms(rows, fast)
            figures["bit_equal"] = all(np.array_equal(fast(x), learned.booster.predict(x, num_threads=1)) for x in rows)
        spent = []
        for n in range(300):
            clock.advance(1000)
            started = time.process_time()
            engine.recommend(RecommendRequest(users[n * 11 % len(users)], "home", 10, {"device": "mobile"}))
            spent.append((time.process_time() - started) * 1000)
        figures["recommend_cpu_ms_p50"] = round(statistics.median(spent), 4)
        figures["recommend_cpu_ms_p99"] = round(sorted(spent)[int(0.99 * len(spent))], 4)
        engine.log.close()
    print(json.dumps(figures))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(figures) + "\n")


if __name__ == "__main__":
    main()
