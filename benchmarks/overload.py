"""Overload: drive the server past its capacity and show it sheds load instead of queueing.

The same synthetic shop is served twice, one server at a time, each in a child process on
loopback: once with the defaults (``max_inflight`` 64, ``max_queue_ms`` 25) and once with
shedding turned off (the baseline, measured in the same run). At each level of concurrency,
closed-loop clients (no think time; after a 503 they wait the Retry-After it states, as a client
should) post recommendation requests for a fixed time; the script
reports, per level, answered requests/s, the share refused (503 with Retry-After), and the
p50/p99 latency of the requests that were answered: as the clients saw it (on the same two cores
as the server, so it includes their own scheduling) and as the server's ``Server-Timing`` header
says (arrival at the server to the start of its answer).

    python benchmarks/overload.py [--levels 1 8 32 128] [--seconds 10] [--out benchmarks/results/overload.json]

Traffic goes to 127.0.0.1 only, is bounded by time, and the children are stopped by their PID.
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
from pathlib import Path
from typing import Any

from insession.bench import _free_port, _pct, _wait_ready, start_child, stop_child, train_shop, write

THREADS_PER_PROCESS = 32


def _worker(port: int, users: list[str], threads: int, seconds: float, seed: int, queue: Any) -> None:
    """``threads`` closed-loop clients in one process; puts (status, ms, retry_after) rows."""
    rows: list[tuple[int, float, bool]] = []
    served: list[float] = []  # the server's own time for answered requests (Server-Timing)
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def loop(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[tuple[int, float, bool]] = []
        server_ms: list[float] = []
        while time.monotonic() < end:
            body = json.dumps({"user_id": rng.choice(users), "surface": "home", "k": 10}).encode()
            t = time.perf_counter()
            try:
                conn.request("POST", "/v1/recommendations", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                retry = response.getheader("Retry-After")
                mine.append((response.status, (time.perf_counter() - t) * 1000, retry is not None))
                timing = response.getheader("Server-Timing") or ""
                if response.status == 200 and timing.startswith("app;dur="):
                    server_ms.append(float(timing.split("=", 1)[1]))
                if retry is not None:  # a well-behaved client waits as told before its next request
                    time.sleep(min(float(retry), max(end - time.monotonic(), 0.0)))
            except (OSError, http.client.HTTPException):
                mine.append((0, (time.perf_counter() - t) * 1000, False))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.close()
        with lock:
            rows.extend(mine)
            served.extend(server_ms)

    workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    queue.put((rows, served))


def level(port: int, users: list[str], clients: int, seconds: float, seed: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = []
    left = clients
    n = 0
    while left > 0:
        threads = min(THREADS_PER_PROCESS, left)
        procs.append(ctx.Process(target=_worker, args=(port, users, threads, seconds, seed + n, queue)))
        left -= threads
        n += 1
    for p in procs:
        p.start()
    rows: list[tuple[int, float, bool]] = []
    server_ms: list[float] = []
    for _ in procs:
        got, timed = queue.get(timeout=seconds + 120)
        rows.extend(got)
        server_ms.extend(timed)
    for p in procs:
        p.join(30)
    ok = [ms for status, ms, _ in rows if status == 200]
    shed = [(ms, retry) for status, ms, retry in rows if status in (429, 503)]
    other = len(rows) - len(ok) - len(shed)
    return {
        "clients": clients,
        "requests": len(rows),
        "answered_per_s": round(len(ok) / seconds, 1),
        "shed_share": round(len(shed) / len(rows), 4) if rows else None,
        "shed_with_retry_after": all(retry for _, retry in shed),
        "shed_p50_ms": round(_pct([ms for ms, _ in shed], 0.5), 2) if shed else None,
        "errors": other,
        "answered_p50_ms": round(_pct(ok, 0.5), 2) if ok else None,
        "answered_p99_ms": round(_pct(ok, 0.99), 2) if ok else None,
        "answered_max_ms": round(max(ok), 2) if ok else None,
        "answered_server_p50_ms": round(_pct(server_ms, 0.5), 2) if server_ms else None,
        "answered_server_p99_ms": round(_pct(server_ms, 0.99), 2) if server_ms else None,
    }


def run(levels: list[int], seconds: float, items: int, seed: int) -> dict[str, Any]:
    print(f"training a synthetic shop of {items} items")
    shop, _, model, _ = train_shop(items, seed, None, False, print)
    users = sorted(shop.tastes)
    out: dict[str, Any] = {"items": len(model.catalog), "seconds_per_level": seconds, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="insession-overload-") as tmp:
        model_dir = Path(tmp) / "model"
        model.save(model_dir)
        configs = {
            "shedding (defaults)": "",
            "baseline: no shedding": "max_inflight = 1000000\nmax_queue_ms = 1000000000\n",
        }
        for name, toml in configs.items():
            config = Path(tmp) / f"{len(out['runs'])}.toml"
            config.write_text(toml)
            port = _free_port()
            log_path = Path(tmp) / f"server-{port}.log"
            args = ["serve", "--model", str(model_dir), "--data-dir", str(Path(tmp) / f"data-{port}")]
            args += ["--port", str(port), "--config", str(config)]
            server = start_child(args, log_path)
            try:
                _wait_ready(port, server, log_path)
                rows = []
                for clients in levels:
                    row = level(port, users, clients, seconds, seed)
                    print(f"{name:>22} | {json.dumps(row)}")
                    rows.append(row)
                out["runs"][name] = rows
            finally:
                stop_child(server)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/overload.json"))
    args = parser.parse_args()
    figures = run(args.levels, args.seconds, args.items, args.seed)
    write(figures, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
