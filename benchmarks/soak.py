"""Soak: a bounded mixed load for N minutes, with the server's memory measured as it runs.

One server (a child process, loopback) serves a synthetic shop with ``state_ttl_s`` = 60, so
users' state expires during the run. Client threads in a separate process play shoppers: each
new shopper (a fresh user id) posts events one at a time, asks for a list after each, now and
then asks for an explanation, and after a session of 5 to 20 events leaves for good; a 503 is
retried after its Retry-After, as a client should. The script
samples the server's resident memory (``/proc/PID/status`` VmRSS) and ``/healthz``'s live users
every 10 s and writes the series, the requests answered and their status codes.

    python benchmarks/soak.py [--minutes 10] [--clients 4] [--out benchmarks/results/soak.json]

Bounded: it stops after ``--minutes``; children are stopped by their PID.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import random
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from insession.bench import _free_port, _get_json, _pct, _wait_ready, start_child, stop_child, train_shop, write


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (the server's explanation process)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = task / "children"
        if children.exists():
            found.extend(int(c) for c in children.read_text().split())
    return found


def _shoppers(port: int, items: list[str], clients: int, seconds: float, seed: int, queue: Any) -> None:
    statuses: Counter[int] = Counter()
    latencies: dict[str, list[float]] = {}
    acknowledged = [0]
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def one(n: int) -> None:
        rng = random.Random(seed * 100 + n)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: Counter[int] = Counter()
        lat: dict[str, list[float]] = {}
        shopper = 0
        acked = [0]

        def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            nonlocal conn
            t = time.perf_counter()
            try:
                raw = None if body is None else json.dumps(body).encode()
                conn.request(method, path, raw, {"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                lat.setdefault(path.split("/")[2], []).append((time.perf_counter() - t) * 1000)
                mine[response.status] += 1
                retry = response.getheader("Retry-After")
                if response.status == 503 and retry is not None and time.monotonic() < end:
                    time.sleep(float(retry))  # as told; then the same request again (nothing is lost)
                    return call(method, path, body)
                return response.status, (json.loads(data) if data else None)
            except (OSError, http.client.HTTPException, ValueError):
                mine[0] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                return 0, None

        while time.monotonic() < end:
            shopper += 1
            user = f"soak-{n}-{shopper}"
            for e in range(rng.randint(5, 20)):
                if time.monotonic() >= end:
                    break
                event = {
                    "event_id": f"{user}-{e}",
                    "user_id": user,
                    "type": rng.choice(["view", "view", "click", "click", "add_to_cart"]),
                    "item_id": rng.choice(items),
                    "ts": time.time_ns() // 1_000_000,
                }
                status, answer = call("POST", "/v1/events", {"events": [event]})
                if status == 200 and answer["accepted"] == 1:
                    acked[0] += 1
                status, body = call("POST", "/v1/recommendations", {"user_id": user, "surface": "home", "k": 10})
                if status == 200 and rng.random() < 0.05:
                    call("GET", f"/v1/explain/{body['request_id']}")
                time.sleep(rng.uniform(0.0, 0.01))
        conn.close()
        with lock:
            statuses.update(mine)
            for kind, values in lat.items():
                latencies.setdefault(kind, []).extend(values)
            acknowledged[0] += acked[0]

    threads = [threading.Thread(target=one, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put(
        {
            "events_acknowledged": acknowledged[0],
            "statuses": dict(statuses),
            **{f"{kind}_p50_ms": round(_pct(v, 0.5), 2) for kind, v in sorted(latencies.items())},
            **{f"{kind}_p99_ms": round(_pct(v, 0.99), 2) for kind, v in sorted(latencies.items())},
        }
    )


def run(minutes: float, clients: int, items: int, seed: int) -> dict[str, Any]:
    shop, _, model, _ = train_shop(items, seed, None, False, print)
    seconds = minutes * 60
    with tempfile.TemporaryDirectory(prefix="insession-soak-") as tmp:
        model_dir = Path(tmp) / "model"
        model.save(model_dir)
        config = Path(tmp) / "soak.toml"
        config.write_text("state_ttl_s = 60\n")
        port = _free_port()
        log_path = Path(tmp) / "server.log"
        args = ["serve", "--model", str(model_dir), "--data-dir", str(Path(tmp) / "data"), "--port", str(port)]
        server = start_child([*args, "--config", str(config)], log_path)
        samples: list[dict[str, Any]] = []
        try:
            _wait_ready(port, server, log_path)
            ctx = multiprocessing.get_context("spawn")
            queue = ctx.Queue()
            driver = ctx.Process(
                target=_shoppers, args=(port, [i.item_id for i in shop.items], clients, seconds, seed, queue)
            )
            started = time.monotonic()
            driver.start()
            while driver.is_alive() and time.monotonic() - started < seconds + 60:
                health = _get_json(port, "/healthz")
                sample = {
                    "t_s": round(time.monotonic() - started, 1),
                    "rss_mb": round(_rss_mb(server.pid), 1),
                    "children_rss_mb": round(sum(_rss_mb(c) for c in _children(server.pid)), 1),
                    "live_users": health.get("live_users"),
                    "log_position": health.get("log_position"),
                }
                samples.append(sample)
                print(json.dumps(sample))
                time.sleep(10)
            load = queue.get(timeout=120)
            driver.join(30)
            final = _get_json(port, "/healthz")
            samples.append(
                {
                    "t_s": round(time.monotonic() - started, 1),
                    "rss_mb": round(_rss_mb(server.pid), 1),
                    "children_rss_mb": round(sum(_rss_mb(c) for c in _children(server.pid)), 1),
                    "live_users": final.get("live_users"),
                    "log_position": final.get("log_position"),
                }
            )
        finally:
            stop_child(server)
    first_minute = [s["rss_mb"] for s in samples if s["t_s"] <= 70]

    def at(minute: float, key: str = "rss_mb") -> float | None:
        """The sample nearest ``minute`` into the run."""
        near = min(samples, key=lambda s: abs(s["t_s"] - minute * 60), default=None)
        return near.get(key) if near is not None else None

    marks = [m for m in (10, 30, 60) if m <= minutes] or [minutes]
    half = minutes / 2
    growth = None
    if samples and at(half) and at(minutes):
        total_half, total_end = (
            at(half) + (at(half, "children_rss_mb") or 0),
            at(minutes) + (at(minutes, "children_rss_mb") or 0),
        )
        growth = round((total_end - total_half) / total_half * 100, 2)
    last_third = [s for s in samples if s["t_s"] >= seconds * 2 / 3]
    return {
        "minutes": minutes,
        "clients": clients,
        "state_ttl_s": 60,
        "rss_mb_at_start": samples[0]["rss_mb"] if samples else None,
        "rss_mb_after_first_minute": first_minute[-1] if first_minute else None,
        "rss_mb_at_end": samples[-1]["rss_mb"] if samples else None,
        "rss_mb_at_minutes": {str(m): at(m) for m in marks},
        "children_rss_mb_at_minutes": {str(m): at(m, "children_rss_mb") for m in marks},
        "rss_growth_pct_over_last_half": growth,  # server + its explanation process
        "rss_mb_max": max(s["rss_mb"] for s in samples) if samples else None,
        "rss_mb_last_third_range": [min(s["rss_mb"] for s in last_third), max(s["rss_mb"] for s in last_third)]
        if last_third
        else None,
        "events_logged": samples[-1]["log_position"] if samples else None,  # after the last answer
        **load,
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/soak.json"))
    args = parser.parse_args()
    figures = run(args.minutes, args.clients, args.items, args.seed)
    write(figures, args.out)
    print(f"wrote {args.out}: RSS {figures['rss_mb_at_start']} -> {figures['rss_mb_at_end']} MB")


if __name__ == "__main__":
    main()
