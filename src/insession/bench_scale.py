"""``insession bench --scale-out``: two servers and two stream workers on one Redis, against the
embedded server, in one run on loopback.

1. Train the synthetic shop (as ``insession bench``) and start a redis-server of its own on a
   free loopback port (unless given ``redis://…``).
2. Embedded: the shop's events folded into a data directory, one server, one driver.
3. Redis: the shop's events appended through the Python API (``Engine.on_redis``) and folded by
   an in-process worker (its throughput is measured), then two servers (``--workers 0``) and two
   ``insession worker`` processes. Driven by one driver (latency against embedded), then by two
   at once, one per server (the pair's throughput), then one driver again with the L1 cache off
   (what L1 saves).
4. Every child is stopped by its PID; the redis-server too, if this started it.

Each phase is bounded by ``requests`` steps or ``seconds``. The machine's cores are shared by
every process here (servers, workers, Redis, drivers), which the figures include.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from insession.bench import _free_port, _get_json, _pct, _wait_ready, drive_all, start_child, stop_child, train_shop
from insession.clock import ManualClock
from insession.config import Settings
from insession.datasets.synthetic import SyntheticShop
from insession.engine import Engine
from insession.errors import InsessionError
from insession.log.redis_stream import RedisStreamEventLog
from insession.store.redis import connect
from insession.worker import GROUP, StreamWorker


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server of the caller's own on a free loopback port (nothing saved to disk), and its
    URL; the caller stops it by its PID."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise InsessionError("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    cmd = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return child, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    child.kill()
    raise InsessionError(f"redis-server did not start on port {port}")


def _pooled(figures: list[dict[str, Any]]) -> dict[str, Any]:
    """Several drivers' figures as one: latency percentiles over all samples, rates summed."""
    samples = [ms for f in figures for ms in f.get("recommend_ms", [])]
    ingest = sum(f["ingest_events"] for f in figures)
    seconds = max(f["ingest_seconds"] for f in figures)
    return {
        "drivers": len(figures),
        "recommend_p50_ms": round(statistics.median(samples), 3) if samples else None,
        "recommend_p95_ms": round(_pct(samples, 0.95), 3),
        "recommend_p99_ms": round(_pct(samples, 0.99), 3),
        "bare_p50_ms": round(statistics.median([f["bare_p50_ms"] for f in figures]), 3),
        "requests_per_s": round(sum(f["requests_per_s"] or 0 for f in figures), 1),
        "ingest_events_per_s": round(ingest / seconds, 1) if seconds > 0 else None,
        "tiers": {t: sum(f["tiers"].get(t, 0) for f in figures) for t in {t for f in figures for t in f["tiers"]}},
        "errors": sum(f["errors"] for f in figures),
    }


def _phase(
    name: str,
    ports: list[int],
    shop: SyntheticShop,
    requests: int,
    seconds: float,
    seed: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    progress(f"{name}: {len(ports)} driver(s), {requests} steps or {seconds:.0f} s each")
    return _pooled(drive_all(ports, shop, requests, seconds, seed, raw=True))


def run_scale_bench(
    n_items: int = 10_000,
    requests: int = 1500,
    seconds: float = 60.0,
    seed: int = 1,
    redis_url: str | None = None,
    progress: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    shop, cfg, model, train_s = train_shop(n_items, seed, None, False, progress)
    out: dict[str, Any] = {"items": len(model.catalog), "events": len(shop.events), "train_seconds": round(train_s, 1)}
    children: list[subprocess.Popen[bytes]] = []
    redis_child: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory(prefix="insession-scale-") as tmp_name:
        tmp = Path(tmp_name)
        model_dir = tmp / "model"
        model.save(model_dir)
        try:
            if redis_url is None:
                redis_child, redis_url = start_redis(tmp)
            client = connect(redis_url, 5000.0)
            client.flushdb()

            # -- embedded -------------------------------------------------------------------
            progress("embedded: folding the shop's events")
            clock = ManualClock(shop.events[-1].ts + 60_000)
            engine = Engine.open(Settings(data_dir=tmp / "embedded", snapshot_every_events=10**9), model, clock)
            engine.ingest_all(shop.events, batch=100)
            engine.close()
            port = _free_port()
            args = ["serve", "--model", str(model_dir), "--data-dir", str(tmp / "embedded"), "--port", str(port)]
            server = start_child([*args, "--bare-endpoint"], tmp / "embedded.log")
            try:
                _wait_ready(port, server, tmp / "embedded.log")
                out["embedded"] = _phase("embedded", [port], shop, requests, seconds, seed, progress)
            finally:
                stop_child(server)

            # -- Redis: load the shop's events ------------------------------------------------
            settings = Settings(data_dir=tmp / "api", store=redis_url)
            stream = RedisStreamEventLog(client, settings.stream_partitions)
            progress("redis: appending the shop's events through the Python API")
            engine = Engine.open(settings, model, ManualClock(shop.events[-1].ts + 60_000))
            t = time.perf_counter()
            for i in range(0, len(shop.events), 100):
                engine.ingest(shop.events[i : i + 100])
            append_s = time.perf_counter() - t
            engine.close()
            progress("redis: folding them with one in-process worker")
            worker = StreamWorker(connect(redis_url, 5000.0), settings)
            t = time.perf_counter()
            folded = worker.drain()
            fold_s = time.perf_counter() - t
            worker.release()
            out["redis_api_append_events_per_s"] = round(len(shop.events) / append_s, 1)
            out["redis_worker_fold_events_per_s"] = round(folded / fold_s, 1)

            def start_servers(config: Path | None, tag: str) -> list[int]:
                ports = []
                for n in range(2):
                    port = _free_port()
                    argv = ["serve", "--model", str(model_dir), "--store", redis_url, "--workers", "0"]
                    argv += ["--data-dir", str(tmp / f"{tag}-{n}"), "--port", str(port), "--bare-endpoint"]
                    argv += ["--config", str(config)] if config else []
                    log = tmp / f"{tag}-server-{n}.log"
                    child = start_child(argv, log)
                    children.append(child)
                    _wait_ready(port, child, log)
                    ports.append(port)
                return ports

            for n in range(2):
                children.append(start_child(["worker", "--store", redis_url], tmp / f"worker-{n}.log"))
            ports = start_servers(None, "l1")
            out["redis_one_driver"] = _phase("redis, one driver", ports[:1], shop, requests, seconds, seed, progress)
            out["redis_two_drivers"] = _phase("redis, two drivers", ports, shop, requests, seconds, seed + 10, progress)
            health = [_get_json(p, "/healthz")["store"] for p in ports]
            out["l1_hit_rate"] = [h.get("l1_hit_rate") for h in health]
            out["l1_entries"] = [h.get("l1_entries") for h in health]
            t = time.perf_counter()
            while stream.backlog(GROUP) and time.perf_counter() - t < 60:
                time.sleep(0.05)
            out["worker_backlog_after_drain_s"] = stream.backlog(GROUP)
            out["worker_catch_up_seconds"] = round(time.perf_counter() - t, 2)
            for child in children[2:]:
                stop_child(child)
            del children[2:]
            config = tmp / "no-l1.toml"
            config.write_text("l1_max_age_ms = 0\n", encoding="utf-8")
            ports = start_servers(config, "nol1")
            out["redis_no_l1_one_driver"] = _phase(
                "redis without L1, one driver", ports[:1], shop, requests, seconds, seed + 20, progress
            )
            out["consumer_group"] = GROUP
        finally:
            for child in children:
                stop_child(child)
            if redis_child is not None:
                redis_child.terminate()
                redis_child.wait(timeout=10)
    emb, red = out["embedded"], out["redis_one_driver"]
    out["redis_over_embedded_p50"] = round(red["recommend_p50_ms"] / emb["recommend_p50_ms"], 2)
    out["l1_saves_p50_ms"] = round(out["redis_no_l1_one_driver"]["recommend_p50_ms"] - red["recommend_p50_ms"], 3)
    out["l1_saves_p99_ms"] = round(out["redis_no_l1_one_driver"]["recommend_p99_ms"] - red["recommend_p99_ms"], 3)
    out.update(python=platform.python_version(), cpus=os.cpu_count(), users=cfg.n_users)
    return out
