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
    nice -n 10 python benchmarks/scale.py --events 10000000 --serve-up-to 0 --merge   # add a size, trained only

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


def _rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` now (MiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def call(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, data, {"Content-Type": "application/json"} if data else {})
    response = conn.getresponse()
    payload = json.loads(response.read() or b"{}")
    conn.close()
    return response.status, payload


def explain_lists(port: int, rng: np.random.Generator, users: int, lists: int) -> dict[str, Any]:
    """Serve ``lists`` home lists to random users, let the server's explanation process catch its
    checkpoints up (idle), then explain each: p50 / p99 and how many recomputed identically."""
    ids = []
    served: list[float] = []
    for u in rng.integers(0, users, lists):
        t = time.perf_counter()
        status, body = call(port, "POST", "/v1/recommendations", {"user_id": f"u{u}", "surface": "home", "k": 10})
        if status == 200:
            served.append((time.perf_counter() - t) * 1000)
            ids.append(body["request_id"])
    time.sleep(5)  # idle: the explanation process catches its checkpoints up
    ms: list[float] = []
    identical = refused = 0
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
    return {
        "n": len(ms),
        "identical": identical,
        "p50_ms": round(statistics.median(ms), 1) if ms else None,
        "p99_ms": round(_pct(ms, 0.99), 1),
        "first_ms": round(ms[0], 1) if ms else None,
        "refused_503": refused,
        # An explanation recomputes its list: where the lists get dearer, explanations follow.
        "list_p50_ms": round(statistics.median(served), 1) if served else None,
    }


def post_more(port: int, rng: np.random.Generator, shape: dict[str, int], n: int) -> dict[str, Any]:
    """``n`` more events (clicks of known users on known items, after the history) over HTTP in
    batches of 1,000."""
    now = int(time.time() * 1000)
    accepted = 0
    for lo in range(0, n, 1000):
        size = min(1000, n - lo)
        users = rng.integers(0, shape["users"], size)
        items = rng.integers(0, shape["items"], size)
        events = [
            {"event_id": f"more-{lo + j}", "user_id": f"u{u}", "item_id": f"i{i}", "type": "click", "ts": now + lo + j}
            for j, (u, i) in enumerate(zip(users, items, strict=True))
        ]
        status, body = call(port, "POST", "/v1/events", {"events": events})
        accepted += int(body.get("accepted", 0)) if status == 200 else 0
    return {"posted": n, "accepted": accepted}


def measure(n_events: int, work: Path, seed: int, lists: int, more: int, serve_up_to: int) -> dict[str, Any]:
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
    if n_events > serve_up_to:
        figures["not_measured"] = f"import, serve and explain: above --serve-up-to {serve_up_to} events"
        return figures
    imported = timed(
        ["import", "--data", str(csv), "--format", "generic", "--model", str(model), "--data-dir", str(data)],
        work / "import.log",
    )
    text = (work / "import.log").read_text(errors="replace")
    ingest = re.search(r"in ([\d.]+)s \(([\d,]+) events/s\)", text)
    folded = re.search(r"checkpoints for explain: (\d+) events folded in ([\d.]+)s", text)
    taken = re.search(r"checkpoints for explain: (\d+) written while importing", text)
    figures["import"] = {
        **imported,
        "events_per_s": round(shape["events"] / imported["seconds"]),  # the whole command, checkpoints included
        "ingest_seconds": float(ingest.group(1)) if ingest else None,  # read, validate, log and fold (and checkpoint)
        "ingest_events_per_s": int(ingest.group(2).replace(",", "")) if ingest else None,
        "checkpoint_seconds": float(folded.group(2)) if folded else None,  # explain's checkpoints after it
        "checkpoints_while_importing": int(taken.group(1)) if taken else 0,  # taken from the import's own fold
    }
    print(figures["import"], flush=True)
    port = _free_port()
    log = work / "serve.log"
    t = time.perf_counter()
    server = start_child(["serve", "--model", str(model), "--data-dir", str(data), "--port", str(port)], log)
    try:
        _wait_ready(port, server, log, timeout_s=3600)
        figures["start_seconds"] = round(time.perf_counter() - t, 1)
        figures["server_rss_mib_at_start"] = _rss_mib(server.pid)
        rng = np.random.default_rng(seed + 1)
        figures["explain"] = explain_lists(port, rng, shape["users"], lists)
        rss = _rss_mib(server.pid)
        figures["server_rss_mib_after_explain"] = rss
        figures["server_rss_mib_per_million"] = {
            "users": round(rss / shape["users"] * 1e6),
            "items": round(rss / shape["items"] * 1e6),
            "events": round(rss / shape["events"] * 1e6),
        }
        print(figures["explain"], flush=True)
        if more:
            t = time.perf_counter()
            figures["more_events"] = post_more(port, rng, shape, more)
            figures["more_events"]["seconds"] = round(time.perf_counter() - t, 1)
            figures["explain_after_more"] = explain_lists(port, rng, shape["users"], lists)
            figures["list_p50_ratio_after_more"] = round(
                figures["explain_after_more"]["list_p50_ms"] / max(figures["explain"]["list_p50_ms"], 1e-9), 2
            )
            figures["explain_p50_ratio_after_more"] = round(
                figures["explain_after_more"]["p50_ms"] / max(figures["explain"]["p50_ms"], 1e-9), 2
            )
            figures["server_rss_mib_after_more"] = _rss_mib(server.pid)
            print(figures["explain_after_more"], flush=True)
    finally:
        stop_child(server)
    figures["data_dir_mib"] = {p.name: round(p.stat().st_size / 2**20, 1) for p in data.iterdir() if p.is_file()}
    print(figures, flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 3_000_000])
    parser.add_argument("--lists", type=int, default=30)
    parser.add_argument("--more", type=int, default=150_000, help="events posted after the first explanations")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    parser.add_argument(
        "--serve-up-to",
        type=int,
        default=10**12,
        help="larger sizes are trained only (no import, serve or explain): at 10M events the import alone takes hours here",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temporary dir)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the sizes already in --out and add or replace the ones measured now (runs apart: each size says its run)",
    )
    parser.add_argument("--note", default="", help="what the machine was doing during this run (kept with each size)")
    args = parser.parse_args()
    results: dict[str, Any] = {"sizes": {}}
    if args.merge and args.out.exists():
        results = json.loads(args.out.read_text())
    run = {"date": time.strftime("%Y-%m-%d %H:%M"), "note": args.note}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for n in args.events:
            results["sizes"][str(n)] = {
                "run": run,
                **measure(n, work, args.seed, args.lists, args.more, args.serve_up_to),
            }
            write(results, args.out)
    sizes = results["sizes"]
    if len(sizes) >= 2:  # each size's training time over the smallest's
        smallest = min(sizes, key=int)
        base = sizes[smallest]["train"]["seconds"]
        results["train_time_ratio"] = {
            f"{n} / {smallest}": round(sizes[n]["train"]["seconds"] / base, 2) for n in sorted(sizes, key=int)[1:]
        }
        write(results, args.out)


if __name__ == "__main__":
    main()
