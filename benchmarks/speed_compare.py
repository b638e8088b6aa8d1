"""Ingest and list latency of several source trees on one shop and one model, in one run.

``insession bench`` trains its own model each run; at production size that takes longer than the
benchmark itself, and figures from two runs on a shared machine are not comparable. This trains
once, then for each tree (``--tree NAME=DIR``, a checkout's root; rounds interleave the trees) runs
a child process with ``PYTHONPATH=DIR/src`` that does what ``insession bench`` does after training:
fold the shop's events through the Python API in batches of 100, start the server (also from that
tree) and drive it from another process (``insession.bench.drive_all``). Figures per tree and round
go to one JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def prepare(items: int, users: int | None, work: Path) -> None:
    """Generate the shop and train the model once (kept in ``work`` for later runs), and compile
    its ranker when lleaves is installed, so no tree compiles it while being measured."""
    if not (work / "shop.pickle").exists():
        train_once(items, users, work)
    from insession.model import ModelBundle
    from insession.ranking import compiled

    ranker = ModelBundle.load(work / "model").ranker
    if ranker is not None and compiled.available():
        compiled.compile_ranker(ranker, work / "model")


def train_once(items: int, users: int | None, work: Path) -> None:
    from insession.bench import train_shop

    shop, cfg, model, train_s = train_shop(items, 1, users, False, lambda s: print(s, flush=True))
    model.save(work / "model")
    (work / "shop.pickle").write_bytes(pickle.dumps(shop))
    meta = {"items": len(model.catalog), "users": cfg.n_users, "events": len(shop.events), "train_seconds": train_s}
    (work / "shop.json").write_text(json.dumps(meta))


def phase(work: Path, requests: int, seconds: float) -> dict[str, Any]:
    """In the child: ingest through the Python API, then serve and drive (the tree on sys.path)."""
    from insession.bench import _free_port, _get_json, _wait_ready, drive_all, start_child, stop_child
    from insession.clock import ManualClock
    from insession.config import Settings
    from insession.engine import Engine
    from insession.model import ModelBundle

    shop = pickle.loads((work / "shop.pickle").read_bytes())
    model = ModelBundle.load(work / "model")
    with tempfile.TemporaryDirectory(prefix="insession-speed-") as tmp:
        data_dir = Path(tmp) / "data"
        clock = ManualClock(shop.events[-1].ts + 60_000)
        engine = Engine.open(Settings(data_dir=data_dir, snapshot_every_events=10**9), model=model, clock=clock)
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(shop.events), 100):
            engine.ingest(shop.events[i : i + 100])
        api_s, api_cpu_s = time.perf_counter() - started, time.process_time() - cpu
        engine.close()
        port = _free_port()
        args = ["serve", "--model", str(work / "model"), "--data-dir", str(data_dir)]
        args += ["--host", "127.0.0.1", "--port", str(port), "--bare-endpoint"]
        server = start_child(args, Path(tmp) / "server.log")
        try:
            _wait_ready(port, server, Path(tmp) / "server.log")
            figures = drive_all([port], shop, requests, seconds, 1)[0]
            health = _get_json(port, "/healthz")
        finally:
            stop_child(server)
    p50, bare50 = figures["recommend_p50_ms"], figures["bare_p50_ms"]
    return {
        **figures,
        "api_ingest_events_per_s": round(len(shop.events) / api_s, 1),
        # per second of this process's CPU time: what the ingest costs, less at the mercy of the load
        "api_ingest_events_per_cpu_s": round(len(shop.events) / api_cpu_s, 1),
        "engine_over_bare_p50": round(p50 / bare50, 2) if p50 and bare50 else None,
        "server_tiers_at_end": health.get("tiers", {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=None, help="shoppers (default: one per 20 items)")
    parser.add_argument("--tree", action="append", default=[], help="NAME=DIR, a checkout to measure")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--work", type=Path, default=None, help="where the shop and model are kept")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/speed_compare.json"))
    parser.add_argument("--phase", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.work or Path(tempfile.gettempdir()) / f"insession-speed-{args.items}-{args.users}"
    work.mkdir(parents=True, exist_ok=True)
    if args.phase:
        print(json.dumps(phase(work, args.requests, args.seconds)))
        return
    prepare(args.items, args.users, work)
    results: dict[str, Any] = {**json.loads((work / "shop.json").read_text()), "load": os.getloadavg(), "runs": []}
    for n in range(args.rounds):
        for name, tree in (t.split("=", 1) for t in args.tree):
            env = {**os.environ, "PYTHONPATH": str(Path(tree) / "src")}
            cmd = [sys.executable, __file__, "--phase", "--work", str(work)]
            cmd += ["--requests", str(args.requests), "--seconds", str(args.seconds)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            figures = {
                "tree": name,
                "round": n,
                "load_before": os.getloadavg(),
                **json.loads(done.stdout.splitlines()[-1]),
            }
            print(json.dumps(figures), flush=True)
            results["runs"].append(figures)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
