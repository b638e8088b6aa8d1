"""How fast the explanation process catches up after a burst, for several source trees, in one run.

After a burst of events the server's explanation process must fold them (``Explainer.follow``)
before the first explanation of a list from the burst can answer; when it folds slower than the
server ingests, that explanation waits for the whole burst (the scale benchmark at 3M events: 61 s).

Prepared once into ``--work``: the scale benchmark's synthetic shop of ``--events`` events
(``scale.generate_csv``), trained (``insession train``) and imported (``insession import``, which
leaves explain's checkpoints up to its end), then ``--burst`` clicks of random known users on random
known items, 1 ms apart, ingested through ``Engine.ingest_raw`` in batches of 1,000 as the server
ingests a ``POST /v1/events`` (they get no checkpoints). Then for each round and each tree
(``--tree NAME=DIR``, a checkout's root; trees alternate), a child process with
``PYTHONPATH=DIR/src`` copies the checkpoint file and runs ``Explainer.follow(5000)`` until caught up,
as the explanation process does: events per wall and CPU second, the checkpoints it left and the
values it held decoded at the end.

    python benchmarks/explain_follow.py --tree base=/path/to/old --tree new=. [--events 300000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from trees import run_trees

CHILD = r"""
import json, shutil, sys, tempfile, time
from pathlib import Path
from insession.checkpoints import CHECKPOINTS_FILE, CheckpointStore
from insession.config import Settings
from insession.engine import LOG_FILE
from insession.explain import Explainer
from insession.log.sqlite import SqliteEventLog
from insession.manifest import REQUEST_LOG_FILE, RequestLog
from insession.model import ModelBundle

work, imported = Path(sys.argv[1]), int(sys.argv[2])
data = work / "data"
with tempfile.TemporaryDirectory(dir=work) as tmp:
    shutil.copy(data / CHECKPOINTS_FILE, Path(tmp) / CHECKPOINTS_FILE)
    settings = Settings.load(model_dir=work / "model", data_dir=data)
    model = ModelBundle.load(work / "model")
    log, requests = SqliteEventLog(data / LOG_FILE), RequestLog(data / REQUEST_LOG_FILE)
    checkpoints = CheckpointStore(Path(tmp) / CHECKPOINTS_FILE)
    explainer = Explainer(model, settings, log, requests, checkpoints)
    wall, cpu, folded = time.perf_counter(), time.process_time(), 0
    while (n := explainer.follow(5000)) > 0:
        folded += n
        if n < 5000:
            break
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    left = [p for p in checkpoints.positions(explainer._fingerprint()) if p > imported]
    print(json.dumps({
        "events": folded, "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
        "events_per_s": round(folded / wall), "events_per_cpu_s": round(folded / cpu),
        "checkpoints_left": left, "decoded_values_held": getattr(explainer._replay, "loaded", None),
    }))
    checkpoints.close()
"""


def prepare(work: Path, n_events: int, burst: int, seed: int) -> dict[str, Any]:
    """The shop imported and the burst ingested (kept in ``work`` for later runs)."""
    meta_file = work / "meta.json"
    if meta_file.exists():
        return dict(json.loads(meta_file.read_text()))
    sys.path.insert(0, str(Path(__file__).parent))
    import scale

    from insession.config import Settings
    from insession.engine import Engine

    work.mkdir(parents=True, exist_ok=True)
    csv = work / "events.csv"
    shape = scale.generate_csv(csv, n_events, seed)
    meta: dict[str, Any] = {**shape, "burst": burst}
    for step, args in (
        ("train", ["train", "--data", str(csv), "--format", "generic", "--out", str(work / "model")]),
        (
            "import",
            [
                "import",
                "--data",
                str(csv),
                "--format",
                "generic",
                "--model",
                str(work / "model"),
                "--data-dir",
                str(work / "data"),
            ],
        ),
    ):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "insession", *args], check=True, stdout=subprocess.DEVNULL)
        meta[f"{step}_seconds"] = round(time.perf_counter() - started, 1)
        print(step, meta[f"{step}_seconds"], "s", flush=True)
    engine = Engine.open(Settings.load(model_dir=work / "model", data_dir=work / "data"))
    rng = np.random.default_rng(seed + 1)
    now = int(time.time() * 1000)
    started = time.perf_counter()
    for lo in range(0, burst, 1000):
        users = rng.integers(0, shape["users"], 1000)
        items = rng.integers(0, shape["items"], 1000)
        engine.ingest_raw(
            [
                {
                    "event_id": f"burst-{lo + j}",
                    "user_id": f"u{u}",
                    "item_id": f"i{i}",
                    "type": "click",
                    "ts": now + lo + j,
                }
                for j, (u, i) in enumerate(zip(users, items, strict=True))
            ][: burst - lo]
        )
    meta["burst_ingest_seconds"] = round(time.perf_counter() - started, 1)
    meta["imported_events"] = int(engine.log.last_position()) - burst
    engine.close()
    meta_file.write_text(json.dumps(meta))
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="NAME=DIR, a checkout's root (repeat)")
    parser.add_argument("--events", type=int, default=300_000, help="the shop's history")
    parser.add_argument("--burst", type=int, default=60_000, help="events after the import")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "insession-explain-follow")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/explain_follow.json"))
    parser.add_argument("--note", default="", help="what the machine was doing meanwhile")
    args = parser.parse_args()
    meta = prepare(args.work / f"{args.events}-{args.burst}", args.events, args.burst, args.seed)
    work = args.work / f"{args.events}-{args.burst}"
    runs = run_trees(args.tree, args.rounds, CHILD, [str(work), str(meta["imported_events"])])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"shop": meta, "note": args.note, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
