"""Ingest and list cost of several source trees on the demo shop's model, in one run, trees alternating.

A quicker check than ``speed_compare.py`` (which trains a production-size model): the demo shop's
model (1,000 items) is trained once into ``--work``, with its history and 200,000 more random events
of 20,000 shoppers. For each round and each tree (``--tree NAME=DIR``, a checkout's root), a child
process with ``PYTHONPATH=DIR/src`` measures, in process:

- ``ingest``: ``Engine.ingest`` of the first ``--events`` events in batches of 100, events per CPU
  second (and per wall second) of that process;
- ``lists``: ``Engine.recommend`` for 300 of the shop's users mid-session (nine clicks each, 50 ms
  apart, just before the requests), 300 warm-up requests then three rounds of 700: each round's p50,
  with the tier held at full (no degrading on a slow machine), the tiers seen and the mean candidates.

    python benchmarks/trees_compare.py --tree base=/path/to/old --tree new=. [--rounds 2] [--out F]
"""

from __future__ import annotations

import argparse
import json
import pickle
import random
import tempfile
from pathlib import Path

from trees import run_trees

CHILD = r"""
import json, pickle, random, sys, tempfile, time
from dataclasses import replace
from pathlib import Path
from insession.clock import ManualClock
from insession.config import Settings
from insession.engine import Engine
from insession.events import Event, EventType
from insession.model import ModelBundle
from insession.pipeline import RecommendRequest

work, n, history_n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
model = ModelBundle.load(work / "model")
events = pickle.loads((work / "events.pickle").read_bytes())
out = {}
with tempfile.TemporaryDirectory() as tmp:
    batch = events[:n]
    engine = Engine.open(Settings(data_dir=Path(tmp) / "a", explain_process=False), model=model,
                         clock=ManualClock(batch[-1].ts + 3_600_000))
    c0, t0 = time.process_time(), time.perf_counter()
    for lo in range(0, len(batch), 100):
        engine.ingest(batch[lo:lo + 100])
    out["ingest_events_per_cpu_s"] = round(len(batch) / (time.process_time() - c0))
    out["ingest_events_per_s"] = round(len(batch) / (time.perf_counter() - t0))
    engine.close()

    history = events[:history_n]
    rng = random.Random(3)
    items = sorted({e.item_id for e in history if e.item_id})
    users = sorted({e.user_id for e in history})[:300]
    ts = history[-1].ts + 3_600_000
    settings = Settings(data_dir=Path(tmp) / "b", explain_process=False)
    # The full pipeline on every list: no degrading to a cheaper tier when the machine is slow.
    home = replace(settings.surfaces["home"], degrade_p99_ms=1e9)
    settings = settings.with_(surfaces={**settings.surfaces, "home": home})
    engine = Engine.open(settings, model=model, clock=ManualClock(ts + 10_000_000))
    engine.ingest_all(history)
    clicks = []
    for k in range(9):
        for u in users:
            ts += 50
            clicks.append(Event(f"s{k}-{u}", u, EventType.CLICK, ts, rng.choice(items)))
    engine.ingest_all(clicks)
    tick = 0

    def p50(requests):
        global tick
        ms = []
        for _ in range(requests):
            tick += 1  # a new request time each: no list is served from the freshness cache
            t = time.perf_counter()
            r = engine.recommend(RecommendRequest(rng.choice(users), "home", 10, {}, "", ts + 1000 + tick))
            ms.append((time.perf_counter() - t) * 1000)
            tiers[r.tier] = tiers.get(r.tier, 0) + 1
            candidates.append(len(r.candidate_ids))
        return sorted(ms)[len(ms) // 2]

    tiers, candidates = {}, []
    p50(300)
    out["list_p50_ms"] = [round(p50(700), 3) for _ in range(3)]
    out["tiers"] = tiers
    out["candidates_mean"] = round(sum(candidates) / len(candidates), 1)
    engine.close()
print(json.dumps(out))
"""


def prepare(work: Path) -> int:
    """Train the demo model and write the events once; returns how many are the shop's history."""
    if (work / "events.pickle").exists():
        return int(json.loads((work / "meta.json").read_text())["history"])
    from insession.bench import train_shop
    from insession.events import Event, EventType

    shop, _, model, _ = train_shop(1000, 7, None, False, lambda s: print(s, flush=True))
    work.mkdir(parents=True, exist_ok=True)
    model.save(work / "model")
    history = sorted(shop.events, key=lambda e: e.ts)
    rng = random.Random(7)
    users = [f"u{n}" for n in range(20_000)]
    items = [i.item_id for i in shop.items]
    kinds = (EventType.VIEW,) * 6 + (EventType.CLICK,) * 3 + (EventType.ADD_TO_CART,)
    ts = history[-1].ts + 60_000
    more = []
    for n in range(200_000):
        ts += 200
        more.append(Event(f"m{n}", rng.choice(users), rng.choice(kinds), ts, rng.choice(items)))
    (work / "events.pickle").write_bytes(pickle.dumps(history + more))
    (work / "meta.json").write_text(json.dumps({"history": len(history)}))
    return len(history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="NAME=DIR, a checkout's root (repeat)")
    parser.add_argument("--events", type=int, default=120_000, help="events ingested per tree and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "insession-trees-compare")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/trees_compare.json"))
    args = parser.parse_args()
    history = prepare(args.work)
    runs = run_trees(args.tree, args.rounds, CHILD, [str(args.work), str(args.events), str(history)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"events": args.events, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
