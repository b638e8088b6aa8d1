"""Explain spam must not starve lists: list latency with and without a client hammering explain.

Explaining a list refolds the event log up to it (seconds of CPU on a long log). In the server's
interpreter it competes with lists for the GIL; the server now explains in a child process of
its own (``serving/explaining.py``) and gives explanations at most ``explain_share`` of its time
(``serving/admission.py: TimeShare``). This script serves one synthetic shop whose whole history
is in the event log, one server at a time in a child process on loopback, under two settings,
and in each measures lists alone, then lists while explain spammers (several threads that re-ask
at once whatever the answer, as a hostile client would) run for the same time:

- the defaults: explanations in their own process, ``explain_share`` 0.1 of a 60 s window;
- the baseline, as before: in the server's process (``explain_process = false``), one at a time,
  no share (``explain_share = 1.0``).

Each phase is split into alternating rounds (alone, spam, alone, spam, ...) so a change in the
shared machine's load falls on both sides; per phase, over its rounds' samples: list p50/p99 as
the clients saw it and as the server's ``Server-Timing`` says, explanations answered and refused. The goal: with the share, list p99 under spam within 2x of
list p99 without.

    python benchmarks/explain_share.py [--items 10000] [--seconds 60] [--out benchmarks/results/explain_share.json]

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
from insession.config import Settings
from insession.engine import Engine

LIST_CLIENTS = 2
SPAMMERS = 4
ROUNDS = 3


def _lists(port: int, users: list[str], seconds: float, seed: int, queue: Any) -> None:
    """``LIST_CLIENTS`` closed-loop list clients; puts (client ms, server ms) of answered lists."""
    client_ms: list[float] = []
    server_ms: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def loop(n: int) -> None:
        rng = random.Random(seed * 100 + n)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < end:
            body = json.dumps({"user_id": rng.choice(users), "surface": "home", "k": 10}).encode()
            t = time.perf_counter()
            conn.request("POST", "/v1/recommendations", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            took = (time.perf_counter() - t) * 1000
            timing = response.getheader("Server-Timing") or ""
            with lock:
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if response.status == 200:
                    client_ms.append(took)
                    if timing.startswith("app;dur="):
                        server_ms.append(float(timing.split("=", 1)[1]))
            time.sleep(0.005)  # a little think time: lists arrive about 150/s, not as fast as possible
        conn.close()

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(LIST_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put((client_ms, server_ms, statuses))


def _spam(port: int, request_ids: list[str], seconds: float, queue: Any) -> None:
    """``SPAMMERS`` threads asking for explanations back to back, ignoring Retry-After."""
    counts: dict[int, int] = {}
    took: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def loop(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        k = n
        while time.monotonic() < end:
            t = time.perf_counter()
            try:
                conn.request("GET", f"/v1/explain/{request_ids[k % len(request_ids)]}")
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            k += 1
            with lock:
                counts[response.status] = counts.get(response.status, 0) + 1
                if response.status == 200:
                    took.append((time.perf_counter() - t) * 1000)
            if response.getheader("connection") == "close":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.close()

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(SPAMMERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put((counts, took))


def phase(port: int, users: list[str], request_ids: list[str], seconds: float, spam: bool) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    lists_q, spam_q = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_lists, args=(port, users, seconds, 7, lists_q))]
    if spam:
        procs.append(ctx.Process(target=_spam, args=(port, request_ids, seconds, spam_q)))
    for p in procs:
        p.start()
    client_ms, server_ms, statuses = lists_q.get(timeout=seconds + 300)
    counts, explain_ms = spam_q.get(timeout=seconds + 300) if spam else ({}, [])
    for p in procs:
        p.join(60)
    return {
        "samples": {"client_ms": client_ms, "server_ms": server_ms, "explain_ms": explain_ms},
        "lists": len(client_ms),
        "list_statuses": {str(k): v for k, v in sorted(statuses.items())},
        "list_p50_ms": round(_pct(client_ms, 0.5), 2),
        "list_p99_ms": round(_pct(client_ms, 0.99), 2),
        "list_server_p50_ms": round(_pct(server_ms, 0.5), 2),
        "list_server_p99_ms": round(_pct(server_ms, 0.99), 2),
        "explains_answered": counts.get(200, 0),
        "explains_refused_503": counts.get(503, 0),
        "explain_p50_ms": round(_pct(explain_ms, 0.5), 1) if explain_ms else None,
    }


def pooled(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds' samples together (percentiles of all of them), and their counts summed."""
    client = [ms for r in rows for ms in r["samples"]["client_ms"]]
    server = [ms for r in rows for ms in r["samples"]["server_ms"]]
    explain = [ms for r in rows for ms in r["samples"]["explain_ms"]]
    for r in rows:
        del r["samples"]
    return {
        "lists": len(client),
        "list_p50_ms": round(_pct(client, 0.5), 2),
        "list_p99_ms": round(_pct(client, 0.99), 2),
        "list_server_p50_ms": round(_pct(server, 0.5), 2),
        "list_server_p99_ms": round(_pct(server, 0.99), 2),
        "explains_answered": sum(r["explains_answered"] for r in rows),
        "explains_refused_503": sum(r["explains_refused_503"] for r in rows),
        "explain_p50_ms": round(_pct(explain, 0.5), 1) if explain else None,
    }


def _request_ids(port: int, users: list[str], n: int) -> list[str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    for user in users[:n]:
        body = json.dumps({"user_id": user, "surface": "home", "k": 10}).encode()
        conn.request("POST", "/v1/recommendations", body, {"Content-Type": "application/json"})
        out.append(json.loads(conn.getresponse().read())["request_id"])
    conn.close()
    return out


def run(items: int, seconds: float, seed: int) -> dict[str, Any]:
    print(f"training a synthetic shop of {items} items")
    shop, _, model, _ = train_shop(items, seed, None, False, print)
    users = sorted(shop.tastes)
    out: dict[str, Any] = {
        "items": len(model.catalog),
        "events_in_log": len(shop.events),
        "seconds_per_phase": seconds,
        "rounds": ROUNDS,
        "list_clients": LIST_CLIENTS,
        "explain_spammers": SPAMMERS,
        "runs": {},
    }
    configs = {
        "defaults: own process, share 0.1": "",
        "baseline: in the server's process, share 1.0": "explain_share = 1.0\nexplain_process = false\n",
    }
    with tempfile.TemporaryDirectory(prefix="insession-explain-share-") as tmp:
        model_dir = Path(tmp) / "model"
        model.save(model_dir)
        for n, (name, toml) in enumerate(configs.items()):
            data_dir = Path(tmp) / f"data-{n}"
            engine = Engine.open(Settings(data_dir=data_dir), model=model)  # the history in the event log
            engine.ingest_all(shop.events)
            engine.close()
            config = Path(tmp) / f"{n}.toml"
            config.write_text(toml)
            port = _free_port()
            log_path = Path(tmp) / f"server-{port}.log"
            args = ["serve", "--model", str(model_dir), "--data-dir", str(data_dir), "--port", str(port)]
            server = start_child([*args, "--config", str(config)], log_path)
            try:
                _wait_ready(port, server, log_path)
                request_ids = _request_ids(port, users, 20)
                phase(port, users, request_ids, min(seconds, 5.0), spam=False)  # warm-up
                # Alternating rounds, so a change in the shared machine's load falls on both sides.
                rounds: dict[str, list[dict[str, Any]]] = {"lists_alone": [], "lists_with_explain_spam": []}
                for _ in range(ROUNDS):
                    for key, spam in (("lists_alone", False), ("lists_with_explain_spam", True)):
                        row = phase(port, users, request_ids, seconds / ROUNDS, spam=spam)
                        shown = {k: v for k, v in row.items() if k != "samples"}
                        print(f"{name:>44} | {key:>24} | {json.dumps(shown)}")
                        rounds[key].append(row)
                run = {key: pooled(rows) for key, rows in rounds.items()}
                quiet, spammed = run["lists_alone"], run["lists_with_explain_spam"]
                out["runs"][name] = {
                    **run,
                    "rounds": rounds,
                    "p99_ratio": round(spammed["list_p99_ms"] / quiet["list_p99_ms"], 2),
                    "server_p99_ratio": round(spammed["list_server_p99_ms"] / quiet["list_server_p99_ms"], 2),
                }
            finally:
                stop_child(server)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0, help="per phase, split over the rounds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/explain_share.json"))
    args = parser.parse_args()
    figures = run(args.items, args.seconds, args.seed)
    write(figures, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
