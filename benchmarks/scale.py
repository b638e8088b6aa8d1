"""The engine at a shop's size: synthetic logs of 1M, 3M (and 10M) events.

For each size, a generic CSV (``user_id, session_id, item_id, timestamp, event_type``) is written
by a vectorised generator (users with a favourite category, sessions of a few items mostly from
it, views, clicks, carts and purchases), then, each through the installed command in a child
process measured by ``/usr/bin/time -v`` (wall time and peak resident memory):

- ``insession train`` (seconds, peak RSS);
- ``insession import`` into an embedded data directory (events/s, peak RSS);
- ``insession serve`` on a loopback port: seconds until ``/readyz`` answers 200 (loading the model,
  the snapshot, and folding what the snapshot lacks);
- lists served, then explained (``GET /v1/explain/{id}``) after the server's idle explanation
  process has caught its checkpoints up: p50 / p99.

    nice -n 10 python benchmarks/scale.py --events 1000000 3000000 [--out benchmarks/results/scale.json]

Figures are appended per size as they are measured (a cut-off run keeps what it finished).
Traffic goes to 127.0.0.1 only; every child is stopped by its PID.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from insession.bench import _free_port, _pct, _wait_ready, start_child, stop_child, write

TYPES = np.array(["view", "click", "add_to_cart", "purchase"])
TYPE_P = np.array([0.70, 0.20, 0.07, 0.03])


def generate_csv(path: Path, n_events: int, seed: int) -> dict[str, int]:
    """``n_events`` rows: users ~ n/60, items ~ n/30 (at most 200k) in 100 categories."""
    rng = np.random.default_rng(seed)
    n_users = max(n_events // 60, 100)
    n_items = min(max(n_events // 30, 1000), 200_000)
    n_cat = 100
    session_len = 6
    n_sessions = n_events // session_len
    n_events = n_sessions * session_len
    user_of_session = rng.integers(0, n_users, n_sessions)
    favourite = rng.integers(0, n_cat, n_users)
    per_cat = n_items // n_cat
    # Each event: the session's user's favourite category 80% of the time, popular items first.
    cats = np.where(
        rng.random(n_events) < 0.8, np.repeat(favourite[user_of_session], session_len), rng.integers(0, n_cat, n_events)
    )
    rank = np.minimum(rng.zipf(1.3, n_events) - 1, per_cat - 1)
    items = cats * per_cat + rank
    start = 1_764_547_200_000  # 2025-12-01
    span = 30 * 86_400_000
    session_start = np.sort(rng.integers(start, start + span, n_sessions))
    ts = np.repeat(session_start, session_len) + np.tile(np.arange(session_len) * 45_000, n_sessions)
    kinds = TYPES[rng.choice(len(TYPES), n_events, p=TYPE_P)]
    users = np.repeat(user_of_session, session_len)
    sessions = np.repeat(np.arange(n_sessions), session_len)
    order = np.argsort(ts, kind="stable")
    with path.open("w", encoding="utf-8") as fh:
        fh.write("user_id,session_id,item_id,timestamp,event_type\n")
        for lo in range(0, len(order), 200_000):
            idx = order[lo : lo + 200_000]
            fh.writelines(
                f"u{u},s{s},i{i},{t},{k}\n"
                for u, s, i, t, k in zip(users[idx], sessions[idx], items[idx], ts[idx], kinds[idx], strict=True)
            )
    return {"events": int(n_sessions * session_len), "users": n_users, "items": n_items, "categories": n_cat}


def timed(args: list[str], log: Path) -> dict[str, float]:
    """Run ``python -m insession ARGS`` under ``/usr/bin/time -v``: wall seconds, peak RSS (MiB)."""
    with log.open("wb") as out:
        done = subprocess.run(
            ["/usr/bin/time", "-v", sys.executable, "-m", "insession", *args], stdout=out, stderr=subprocess.STDOUT
        )
    text = log.read_text(errors="replace")
    if done.returncode != 0:
        raise SystemExit(f"insession {args[0]} failed ({done.returncode}): {text[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    assert wall is not None and rss is not None
    seconds = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(int(rss.group(1)) / 1024)}


def call(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, data, {"Content-Type": "application/json"} if data else {})
    response = conn.getresponse()
    payload = json.loads(response.read() or b"{}")
    conn.close()
    return response.status, payload


def measure(n_events: int, work: Path, seed: int, lists: int) -> dict[str, Any]:
    csv = work / f"events-{n_events}.csv"
    t = time.perf_counter()
    shape = generate_csv(csv, n_events, seed)
    figures: dict[str, Any] = {**shape, "generate_seconds": round(time.perf_counter() - t, 1)}
    print(figures, flush=True)
    model, data = work / f"model-{n_events}", work / f"data-{n_events}"
    figures["train"] = timed(
        ["train", "--data", str(csv), "--format", "generic", "--out", str(model)], work / "train.log"
    )
    print(figures["train"], flush=True)
    imported = timed(
        ["import", "--data", str(csv), "--format", "generic", "--model", str(model), "--data-dir", str(data)],
        work / "import.log",
    )
    figures["import"] = {**imported, "events_per_s": round(shape["events"] / imported["seconds"])}
    print(figures["import"], flush=True)
    port = _free_port()
    log = work / "serve.log"
    t = time.perf_counter()
    server = start_child(["serve", "--model", str(model), "--data-dir", str(data), "--port", str(port)], log)
    try:
        _wait_ready(port, server, log, timeout_s=3600)
        figures["start_seconds"] = round(time.perf_counter() - t, 1)
        rng = np.random.default_rng(seed + 1)
        ids = []
        for u in rng.integers(0, shape["users"], lists):
            status, body = call(port, "POST", "/v1/recommendations", {"user_id": f"u{u}", "surface": "home", "k": 10})
            if status == 200:
                ids.append(body["request_id"])
        time.sleep(5)  # idle: the explanation process catches its checkpoints up
        ms = []
        identical = 0
        refused = 0
        for request_id in ids:
            for _ in range(20):  # past explain_share the server answers 503 + Retry-After: wait, ask again
                t = time.perf_counter()
                status, body = call(port, "GET", f"/v1/explain/{request_id}")
                if status != 503:
                    break
                refused += 1
                time.sleep(float(body.get("retry_after_s", 5)))
            if status == 200:
                ms.append((time.perf_counter() - t) * 1000)
                identical += bool(body.get("identical"))
        figures["explain"] = {
            "n": len(ms),
            "identical": identical,
            "p50_ms": round(statistics.median(ms), 1),
            "p99_ms": round(_pct(ms, 99), 1),
            "first_ms": round(ms[0], 1),
            "refused_503": refused,
        }
    finally:
        stop_child(server)
    figures["data_dir_mib"] = {p.name: round(p.stat().st_size / 2**20, 1) for p in data.iterdir() if p.is_file()}
    print(figures, flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 3_000_000])
    parser.add_argument("--lists", type=int, default=30)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temporary dir)")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": "2 shared cores, loaded by other sessions' tests and benchmarks (run with nice -n 10)",
        "sizes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for n in args.events:
            results["sizes"][str(n)] = measure(n, work, args.seed, args.lists)
            write(results, args.out)
    sizes = results["sizes"]
    if len(sizes) >= 2:
        measured = list(sizes.values())
        first, last = measured[0], measured[-1]
        results["train_time_ratio"] = round(last["train"]["seconds"] / first["train"]["seconds"], 2)
        write(results, args.out)


if __name__ == "__main__":
    main()
