"""How fast `insession import` loads a shop's history: a generated shop written as a shop's own
export (foreign column and event names, ISO times, no session column), imported with the mapping
through the installed command, embedded and on Redis (a redis-server of its own on a loopback
port), in one run. Also the load alone (reading the CSV column by column into validated events),
so the fold's share is visible. Figures to a JSON file."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from insession.datasets import DataMapping, read_events
from insession.datasets.synthetic import EXPORT_COLUMNS, EXPORT_NAMES, ShopConfig, generate, write_export

MAPPING = DataMapping(EXPORT_COLUMNS, {v: k.value for k, v in EXPORT_NAMES.items()})


def cli(*args: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "insession.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "200", "CI": "true"},
    )
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"insession {args[0]} failed: {done.stdout}{done.stderr}")
    return took, done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=3000, help="shoppers (about 60 events each)")
    parser.add_argument("--redis", action="store_true", help="also import into a redis-server of its own")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/import.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="insession-import-"))
    try:
        shop = generate(ShopConfig(n_users=args.users, seed=5))
        files = write_export(shop, work / "shop")
        events = len(shop.events)
        started = time.perf_counter()
        loaded, _ = read_events(files["events"], mapping=MAPPING)
        read_s = time.perf_counter() - started
        assert len(loaded) == events
        took, out = cli(
            "train", "--data", str(files["events"]), "--out", str(work / "model"), "--config", str(files["config"])
        )
        figures: dict[str, object] = {
            "events": events,
            "users": args.users,
            "items": len(shop.items),
            "read_events_per_s": round(events / read_s),
            "train_s": round(took, 1),
        }
        common = ("--data", str(files["events"]), "--model", str(work / "model"), "--config", str(files["config"]))
        took, out = cli("import", *common, "--data-dir", str(work / "state"))
        figures["embedded_import_s"] = round(took, 1)
        figures["embedded_import_events_per_s"] = round(events / took)
        figures["embedded_reported"] = re.findall(r"events accepted.*", out)
        took, out = cli("import", *common, "--data-dir", str(work / "state"))
        figures["embedded_reimport_s"] = round(took, 1)
        figures["embedded_reimport_reported"] = re.findall(r"events accepted.*", out)
        if args.redis:
            binary = shutil.which("redis-server")
            if binary is None:
                raise SystemExit("--redis needs redis-server (apt-get install redis-server)")
            port = free_port()
            redis = subprocess.Popen(
                [
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
                    str(work),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                time.sleep(0.5)
                url = f"redis://127.0.0.1:{port}/0"
                took, out = cli("import", *common, "--store", url, "--data-dir", str(work / "redis-side"))
                figures["redis_import_s"] = round(took, 1)
                figures["redis_import_events_per_s"] = round(events / took)
                figures["redis_reported"] = re.findall(r"events accepted.*", out)
            finally:
                redis.terminate()
                redis.wait(timeout=10)
        figures["machine"] = f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the end"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
