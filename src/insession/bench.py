"""``insession bench``: the real server, driven from another process on loopback, against its own floor.

1. Generate a synthetic shop of N items and train a model on it (embeddings, ANN, ranker).
2. Fold the shop's events into a data directory, then start ``python -m insession serve`` on a
   free loopback port as a child process (with ``--bare-endpoint``).
3. A separate driver process (``multiprocessing``, spawn) sends a bounded mixed load: for each
   step an event (a click), a recommendation request and a request to the bare endpoint, which
   validates the same body and returns a fixed list through the same stack (FastAPI, uvicorn,
   JSON): the framework's floor, measured in the same run, so the engine's own cost is a ratio
   against it rather than a number at the mercy of a shared machine. Then it posts event batches
   for a bounded time to measure ingest.
4. The child is stopped by its PID; figures go to a JSON file.

Everything is bounded: ``requests`` steps or ``seconds``, whichever comes first.
"""

from __future__ import annotations

import http.client
import json as _json
import multiprocessing
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from insession.clock import ManualClock
from insession.config import Settings
from insession.datasets.synthetic import CATEGORIES, ShopConfig, SyntheticShop, generate
from insession.engine import Engine
from insession.model import ModelBundle
from insession.sequence.model import N_TYPES, Tokens, gap_buckets
from insession.training import TrainConfig, train


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


class _Client:
    """A keep-alive JSON client on the standard library (the driver needs no extra package)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def post(self, path: str, json: Any) -> tuple[int, Any]:
        body = _json.dumps(json).encode()
        self.conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()
        return response.status, (_json.loads(data) if data else None)

    def __enter__(self) -> _Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()


def drive(
    port: int,
    users: list[str],
    items: list[str],
    start_ms: int,
    requests: int,
    seconds: float,
    seed: int,
    raw: bool = False,
) -> dict[str, Any]:
    """The load driver (runs in its own process): mixed steps, then an ingest phase. ``raw`` adds
    every recommendation latency (``recommend_ms``), to pool several drivers' percentiles."""
    rng = random.Random(seed)
    recommend: list[float] = []
    bare: list[float] = []
    event_ms: list[float] = []
    tiers: Counter[str] = Counter()
    cuts: Counter[str] = Counter()
    errors = 0
    now = start_ms
    with _Client(port) as client:
        for n in range(20):  # warm-up: first requests pay for imports and caches
            client.post("/v1/bench/bare", json={"user_id": "warm", "k": 10})
            client.post("/v1/recommendations", json={"user_id": users[n % len(users)], "k": 10})
        started = time.perf_counter()
        for n in range(requests):
            if time.perf_counter() - started > seconds:
                break
            user = rng.choice(users)
            now += 2_000
            event = {"event_id": f"bench-{seed}-{n}", "user_id": user, "type": "click", "item_id": rng.choice(items)}
            t = time.perf_counter()
            status, _ = client.post("/v1/events", json={"events": [{**event, "ts": now}]})
            event_ms.append((time.perf_counter() - t) * 1000)
            errors += status != 200
            t = time.perf_counter()
            status, body = client.post("/v1/recommendations", json={"user_id": user, "surface": "home", "k": 10})
            recommend.append((time.perf_counter() - t) * 1000)
            if status == 200:
                tiers[body["tier"]] += 1
                cuts.update(body.get("cut", []))
            else:
                errors += 1
            t = time.perf_counter()
            status, _ = client.post("/v1/bench/bare", json={"user_id": user, "surface": "home", "k": 10})
            bare.append((time.perf_counter() - t) * 1000)
            errors += status != 200
        mixed_s = time.perf_counter() - started
        sent = 0
        batch = 100
        started = time.perf_counter()
        while time.perf_counter() - started < min(seconds, 10.0) and sent < 200_000:
            events = []
            for _ in range(batch):
                now += 10
                user = rng.choice(users)
                events.append(
                    {
                        "event_id": f"ingest-{seed}-{sent}",
                        "user_id": user,
                        "type": "view",
                        "item_id": rng.choice(items),
                        "ts": now,
                    }
                )
                sent += 1
            status, _ = client.post("/v1/events", json={"events": events})
            errors += status != 200
        ingest_s = time.perf_counter() - started
    steps = len(recommend)
    return {
        "steps": steps,
        "mixed_seconds": round(mixed_s, 3),
        "recommend_p50_ms": round(statistics.median(recommend), 3) if recommend else None,
        "recommend_p95_ms": round(_pct(recommend, 0.95), 3),
        "recommend_p99_ms": round(_pct(recommend, 0.99), 3),
        "bare_p50_ms": round(statistics.median(bare), 3) if bare else None,
        "bare_p95_ms": round(_pct(bare, 0.95), 3),
        "bare_p99_ms": round(_pct(bare, 0.99), 3),
        "event_p50_ms": round(statistics.median(event_ms), 3) if event_ms else None,
        "requests_per_s": round(3 * steps / mixed_s, 1) if mixed_s > 0 else None,
        "ingest_events_per_s": round(sent / ingest_s, 1) if ingest_s > 0 else None,
        "ingest_batch": batch,
        "tiers": dict(tiers),
        "cuts": dict(cuts),
        "errors": errors,
        **({"recommend_ms": recommend, "ingest_seconds": ingest_s, "ingest_events": sent} if raw else {}),
    }


def _drive_to_queue(queue: Any, *args: Any) -> None:
    queue.put(drive(*args))


def train_shop(
    n_items: int, seed: int, users: int | None, sequence: bool, progress: Callable[[str], None]
) -> tuple[SyntheticShop, ShopConfig, ModelBundle, float]:
    """The synthetic shop of ``n_items`` items and a model trained on it (and how long that took)."""
    n_cat = len(CATEGORIES)
    per_cat = max(n_items // n_cat, 16)
    cfg = ShopConfig(
        n_categories=n_cat,
        items_per_category=per_cat,
        styles_per_category=max(per_cat // 12, 8),
        n_users=users if users is not None else max(300, n_items // 20),
        seed=seed,
    )
    progress("generating the shop")
    shop = generate(cfg)
    progress(f"training on {len(shop.events)} events")
    t = time.perf_counter()
    train_cfg = TrainConfig()
    if sequence:
        from dataclasses import replace

        train_cfg = replace(train_cfg, sequence=replace(train_cfg.sequence, enabled=True))
    model = train(shop.events, train_cfg, items=shop.items)
    return shop, cfg, model, time.perf_counter() - t


def start_child(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m insession ARGS`` with its output in a file (a chatty child never blocks on a pipe)."""
    env = {**os.environ, "INSESSION_LOG_LEVEL": "WARNING"}
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "insession", *args], stdout=log, stderr=subprocess.STDOUT, env=env
        )


def stop_child(child: subprocess.Popen[bytes]) -> None:
    """Stop a child this module started, by its PID: SIGTERM, then SIGKILL after 30 s."""
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def drive_all(
    ports: list[int], shop: SyntheticShop, requests: int, seconds: float, seed: int, raw: bool = False
) -> list[dict[str, Any]]:
    """One driver process per port, all at once; their figures in port order."""
    ctx = multiprocessing.get_context("spawn")
    queues = [ctx.Queue() for _ in ports]
    shoppers = sorted(shop.tastes)
    items = [i.item_id for i in shop.items]
    start_ms = shop.events[-1].ts + 120_000
    drivers = [
        ctx.Process(
            target=_drive_to_queue,
            args=(q, port, shoppers, items, start_ms, requests, seconds, seed + n, raw),
        )
        for n, (q, port) in enumerate(zip(queues, ports, strict=True))
    ]
    for d in drivers:
        d.start()
    figures = [q.get(timeout=seconds * 3 + 120) for q in queues]
    for d in drivers:
        d.join(timeout=30)
    return figures


def run_bench(
    n_items: int = 10_000,
    requests: int = 2000,
    seed: int = 1,
    progress: Callable[[str], None] = lambda s: None,
    seconds: float = 60.0,
    sequence: bool = False,
    users: int | None = None,
) -> dict[str, Any]:
    """``users`` sets how many shoppers generate the training events (default: one per 20 items);
    fewer keep a 1M-item catalog's training within minutes, most items then cold."""
    shop, cfg, model, train_s = train_shop(n_items, seed, users, sequence, progress)
    with tempfile.TemporaryDirectory(prefix="insession-bench-") as tmp:
        model_dir, data_dir = Path(tmp) / "model", Path(tmp) / "data"
        model.save(model_dir)
        progress("folding the shop's events into the data directory")
        clock = ManualClock(shop.events[-1].ts + 60_000)
        engine = Engine.open(Settings(data_dir=data_dir, snapshot_every_events=10**9), model=model, clock=clock)
        t = time.perf_counter()
        for i in range(0, len(shop.events), 100):  # the Python API, batches of 100: log append + fold
            engine.ingest(shop.events[i : i + 100])
        api_ingest_s = time.perf_counter() - t
        engine.close()
        port = _free_port()
        progress(f"starting the server on 127.0.0.1:{port}")
        args = ["serve", "--model", str(model_dir), "--data-dir", str(data_dir)]
        args += ["--host", "127.0.0.1", "--port", str(port), "--bare-endpoint"]
        log_path = Path(tmp) / "server.log"
        server = start_child(args, log_path)
        try:
            _wait_ready(port, server, log_path)
            progress(f"driving the server from another process ({requests} steps or {seconds:.0f} s)")
            figures = drive_all([port], shop, requests, seconds, seed)[0]
            health = _get_json(port, "/healthz")
        finally:
            stop_child(server)
    p50, bare50 = figures["recommend_p50_ms"], figures["bare_p50_ms"]
    return {
        "items": len(model.catalog),
        "items_with_embedding": model.stats.get("items_with_embedding"),
        "users": cfg.n_users,
        "events": len(shop.events),
        "requests": figures["steps"],
        **{k: v for k, v in figures.items() if k != "steps"},
        "api_ingest_events_per_s": round(len(shop.events) / api_ingest_s, 1),
        "engine_over_bare_p50": round(p50 / bare50, 2) if p50 and bare50 else None,
        "engine_ms_over_bare_p50": round(p50 - bare50, 3) if p50 and bare50 else None,
        "server_tiers_at_end": health.get("tiers", {}),
        "train_seconds": round(train_s, 3),
        **sequence_latency(model),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


def _get_json(port: int, path: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return dict(_json.loads(conn.getresponse().read()))
    finally:
        conn.close()


def _wait_ready(port: int, server: subprocess.Popen[bytes], log: Path, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            err = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the server exited with {server.returncode} before it was ready: {err}")
        try:
            _get_json(port, "/healthz")
            return
        except (OSError, http.client.HTTPException, ValueError):
            time.sleep(0.2)
    raise RuntimeError(f"the server on 127.0.0.1:{port} was not ready after {timeout_s:.0f} s")


def write(figures: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_json.dumps(figures, indent=2) + "\n", encoding="utf-8")
