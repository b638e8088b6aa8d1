"""Explain's cost as the event log grows: the demo shop's history, then 150k more events.

Before replay checkpoints, explaining a list refolded the event log from its start (p50 1.8 s with
the demo history, 7.9 s after 150k more events, measured on main). Now a fold starts from the
nearest checkpoint at or before the list's log position (``insession.checkpoints``). This script
builds the demo-sized synthetic shop in an embedded engine (in this process, no HTTP), and measures
in phases: with the demo's history, then after each round of 150k more events (``--rounds``, 2 by
default; lists served along the way). The first round takes the demo's sparse history (about 18
events per item) to every item's recent events and online followers at their caps, so the lists
themselves get dearer (more candidates, up to ``candidate_limit``); the second only lengthens the
log, which is what explain's cost must not follow. In each phase:

- ``follow``: what the explanation process does in idle time (``Explainer.follow``): fold the
  events past the newest checkpoint, leaving checkpoints every ``checkpoint_every_events``;
- ``server_process``: the lists explained by the explainer that did the follow, as the server's
  explanation process keeps its fold between calls;
- ``checkpointed``: lists served at the end, each explained by a new ``Explainer`` (as
  ``Engine.explain`` does), so every explanation pays its own fold from the nearest checkpoint:
  p50 / p99 / max; ``checkpointed_along_the_way``: one list served after each batch of 5000 new
  events (older log positions);
- ``from_start``: a few lists explained the old way (no checkpoint file: the whole log refolded);
- ``lists_served``: what the explained lists cost to serve in the first place. An explanation
  recomputes its list, so where the lists themselves get dearer (users' histories and items'
  online followers filling up to their caps), explanations follow; the ratio
  ``explain_over_list_p50`` per phase separates that from the cost of reaching the list's state,
  and ``candidates_mean`` says how many candidates the lists merged.

Every explanation must be identical to the served list (the script fails otherwise).

    nice -n 10 python benchmarks/explain_growth.py [--more 150000] [--rounds 2] [--out benchmarks/results/explain_growth.json]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

from insession.bench import _pct, train_shop, write
from insession.clock import ManualClock
from insession.config import Settings
from insession.engine import Engine
from insession.events import Event, EventType
from insession.explain import Explainer
from insession.pipeline import RecommendRequest

KINDS = (EventType.VIEW,) * 6 + (EventType.CLICK,) * 3 + (EventType.ADD_TO_CART,)


def explain_times(engine: Engine, request_ids: list[str], checkpoints: bool) -> list[float]:
    assert engine.requests is not None
    out = []
    for request_id in request_ids:
        t = time.perf_counter()
        explainer = Explainer(
            engine.model, engine.settings, engine.log, engine.requests, engine.checkpoints if checkpoints else None
        )
        result = explainer.explain(request_id)
        out.append((time.perf_counter() - t) * 1000)
        if not result.identical:
            raise SystemExit(f"explain {request_id}: not identical: {result.diff}")
    return out


def follow(engine: Engine) -> tuple[Explainer, dict[str, float]]:
    """Catch the checkpoints up with the log, as the idle explanation process does; returns that
    explainer (its fold at the end of the log, as the server's explanation process keeps it)."""
    assert engine.requests is not None
    explainer = Explainer(engine.model, engine.settings, engine.log, engine.requests, engine.checkpoints)
    t = time.perf_counter()
    n = 0
    while (step := explainer.follow(5_000)) > 0:
        n += step
    took = time.perf_counter() - t
    return explainer, {"events": n, "seconds": round(took, 2), "events_per_s": round(n / max(took, 1e-9))}


def kept_times(explainer: Explainer, request_ids: list[str]) -> list[float]:
    """Explanations by one long-lived explainer (the server's explanation process)."""
    out = []
    for request_id in request_ids:
        t = time.perf_counter()
        result = explainer.explain(request_id)
        out.append((time.perf_counter() - t) * 1000)
        if not result.identical:
            raise SystemExit(f"explain {request_id}: not identical: {result.diff}")
    return out


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(_pct(ms, 0.99), 1),
        "max_ms": round(max(ms), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--more", type=int, default=150_000, help="events posted after the demo history, per round")
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of --more events, each followed by a phase of measurements"
    )
    parser.add_argument("--lists", type=int, default=30, help="lists explained per phase (checkpointed)")
    parser.add_argument("--from-start", type=int, default=5, help="lists explained per phase the old way")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/explain_growth.json"))
    args = parser.parse_args()

    shop, _, model, _ = train_shop(1000, args.seed, None, False, lambda s: print(s, flush=True))
    history = sorted(shop.events, key=lambda e: e.ts)
    rng = random.Random(args.seed)
    users = sorted({e.user_id for e in history}) + [f"new{n:05d}" for n in range(2000)]
    items = [i.item_id for i in shop.items]
    start = history[-1].ts + 60_000
    step_ms = 200
    clock = ManualClock(start + args.rounds * args.more * step_ms + 3_600_000)
    figures: dict[str, Any] = {
        "machine": "2 shared cores, loaded by other sessions' tests and benchmarks (run with nice -n 10)",
        "history_events": len(history),
        "more_events_per_round": args.more,
        "items": len(items),
    }
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", explain_process=False)
        engine = Engine.open(settings, model=model, clock=clock)
        engine.ingest_all(history, batch=5000)

        # Lists for the shop's own users in every phase (a user with no state at all, as the new
        # users are before the first round, explains far faster and would flatter the first phase).
        shop_users = sorted({e.user_id for e in history})

        served_ms: list[float] = []  # what each list cost to serve, in this phase
        candidates: list[int] = []  # how many candidates each list merged (its features' rows)

        def serve(n: int, at_ms: int) -> list[str]:
            ids = []
            for k in range(n):
                t = time.perf_counter()
                response = engine.recommend(RecommendRequest(rng.choice(shop_users), "home", 10, {}, "", at_ms + k))
                served_ms.append((time.perf_counter() - t) * 1000)
                candidates.append(len(response.candidate_ids))
                ids.append(response.request_id)
            return ids

        def measure(at_end: list[str], along: list[str]) -> dict[str, Any]:
            lists = {**summary(served_ms), "candidates_mean": round(statistics.mean(candidates), 1)}
            kept, followed = follow(engine)
            phase = {
                "log_events": engine.log.count(),
                "lists_served": lists,
                "follow": followed,
                "server_process": summary(kept_times(kept, at_end)),
                "checkpointed": summary(explain_times(engine, at_end, True)),
            }
            if along:
                phase["checkpointed_along_the_way"] = summary(explain_times(engine, along, True))
            phase["from_start"] = summary(explain_times(engine, at_end[: args.from_start], False))
            return phase

        phases: dict[str, Any] = {"demo_history": measure(serve(args.lists, start), [])}
        print(phases["demo_history"], flush=True)

        ts = start
        for r in range(args.rounds):
            # --more events; lists served along the way (older positions) and at the end.
            t = time.perf_counter()
            along: list[str] = []  # one list after each batch: positions all along the new events
            chunk: list[Event] = []
            for n in range(r * args.more, (r + 1) * args.more):
                ts += step_ms
                chunk.append(Event(f"more-{n}", rng.choice(users), rng.choice(KINDS), ts, rng.choice(items)))
                if len(chunk) == 5000 or n == (r + 1) * args.more - 1:
                    engine.ingest(chunk)
                    chunk = []
                    along.extend(serve(1, ts + 1))
            ingest_s = time.perf_counter() - t
            served_ms.clear()
            candidates.clear()
            name = f"after_{(r + 1) * args.more}"
            phases[name] = {
                "ingest_events_per_s": round(args.more / ingest_s),
                **measure(serve(args.lists, ts + 1), along),
            }
            print(name, phases[name], flush=True)
        figures["checkpoint_file_mb"] = round((Path(tmp) / "data" / "checkpoints.sqlite").stat().st_size / 2**20, 1)
        figures["event_log_mb"] = round((Path(tmp) / "data" / "events.sqlite").stat().st_size / 2**20, 1)
        engine.close()
    figures["phases"] = phases
    names = list(phases)
    for phase in phases.values():
        phase["explain_over_list_p50"] = {
            kind: round(phase[kind]["p50_ms"] / phase["lists_served"]["p50_ms"], 2)
            for kind in ("server_process", "checkpointed")
        }
    # Each phase against the one before it: the first step takes the demo's sparse history to
    # full per-item caps; later ones only lengthen the log.
    figures["p50_over_phase_before"] = {
        f"{after} / {before}": {
            kind: round(phases[after][kind]["p50_ms"] / phases[before][kind]["p50_ms"], 2)
            for kind in ("lists_served", "server_process", "checkpointed")
        }
        | {
            "candidates": round(
                phases[after]["lists_served"]["candidates_mean"] / phases[before]["lists_served"]["candidates_mean"], 2
            )
        }
        for before, after in pairwise(names)
    }
    for step, ratios in figures["p50_over_phase_before"].items():
        print(f"{step}: p50 x{ratios}")
    write(figures, args.out)


if __name__ == "__main__":
    main()
