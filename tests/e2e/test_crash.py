"""Crash safety: the server killed with SIGKILL during sustained ingest loses no acknowledged
event and folds none twice once restarted (snapshots are being written as it runs)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from insession.clock import SystemClock
from insession.config import Settings
from insession.datasets.synthetic import SyntheticShop
from insession.engine import LOG_FILE, SNAPSHOT_FILE, Engine
from insession.log.sqlite import SqliteEventLog
from insession.model import ModelBundle
from insession.sessions import fold
from insession.store.memory import MemoryFeatureStore

pytestmark = pytest.mark.slow


SERVE = [sys.executable, "-m", "insession", "serve"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model_dir: Path, data_dir: Path, config: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    output = data_dir.parent / f"server-{port}.log"
    with open(output, "wb") as sink:
        proc = subprocess.Popen(
            [
                *SERVE,
                "--model",
                str(model_dir),
                "--data-dir",
                str(data_dir),
                "--port",
                str(port),
                "--config",
                str(config),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {output.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start within 120 s")


def serve_in(
    tmp_path: Path, data_dir: Path, model: ModelBundle, toml: str
) -> tuple[subprocess.Popen[bytes], str, Path, Path]:
    """Save the model, write the settings file, start ``insession serve`` on ``data_dir``."""
    model_dir = tmp_path / "model"
    model.save(model_dir)
    config = tmp_path / "insession.toml"
    config.write_text(toml)
    proc, url = start_server(model_dir, data_dir, config)
    return proc, url, model_dir, config


def batch_of(n: int, shop: SyntheticShop, t0: int, size: int = 40) -> list[dict[str, Any]]:
    items = [i.item_id for i in shop.items]
    return [
        {
            "event_id": f"crash-{n}-{k}",
            "user_id": f"crash-user-{k % 25}",
            "type": "click" if k % 7 else "add_to_cart",
            "item_id": items[(n * 31 + k * 7) % len(items)],
            "ts": t0 + n * 1000 + k,
        }
        for k in range(size)
    ]


def test_sigkill_during_ingest_loses_no_acknowledged_event_and_folds_none_twice(
    tmp_path: Path, model: ModelBundle, shop: SyntheticShop
) -> None:
    data_dir = tmp_path / "data"
    # Snapshots are written while it is killed.
    proc, url, model_dir, config = serve_in(tmp_path, data_dir, model, "snapshot_every_events = 400\n")
    t0 = shop.events[-1].ts + 60_000
    acknowledged: list[str] = []
    in_flight: list[list[dict[str, Any]]] = []
    stop = threading.Event()

    def ingest() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            for n in range(10_000):
                batch = batch_of(n, shop, t0)
                in_flight[:] = [batch]
                try:
                    response = client.post("/v1/events", json={"events": batch})
                except httpx.HTTPError:
                    return  # the server is gone mid-request: this batch is not acknowledged
                assert response.status_code == 200 and response.json()["accepted"] == len(batch)
                acknowledged.extend(e["event_id"] for e in batch)
                in_flight.clear()
                if stop.is_set():
                    return

    client = threading.Thread(target=ingest)
    client.start()
    try:
        deadline = time.monotonic() + 60
        while len(acknowledged) < 3000 and client.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(acknowledged) >= 3000, "the ingest did not get going"
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the client is posting as fast as it can
        proc.wait(10)
    finally:
        stop.set()
        client.join(30)
        if proc.poll() is None:
            proc.kill()
    assert not client.is_alive()
    snapshot = MemoryFeatureStore(SystemClock())
    snapshot.load(data_dir / SNAPSHOT_FILE)  # written during the run, intact (written atomically)
    log = SqliteEventLog(data_dir / LOG_FILE)
    assert 0 < snapshot.applied_position() < log.last_position()  # the restart has a tail to fold
    log.close()

    proc, url = start_server(model_dir, data_dir, config)
    try:
        if in_flight:  # the client retries what it never heard back about: duplicates, not doubles
            retry = httpx.post(f"{url}/v1/events", json={"events": in_flight[0]}, timeout=10).json()
            assert retry["accepted"] + retry["duplicates"] == len(in_flight[0]) and retry["rejected"] == []
            acknowledged.extend(e["event_id"] for e in in_flight[0])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)

    engine = Engine.open(Settings(data_dir=data_dir), model=model)
    try:
        logged = [e for _, e in engine.log.read()]
        ids = [e.event_id for e in logged]
        assert len(ids) == len(set(ids))  # no event twice in the log
        assert set(acknowledged) <= set(ids)  # every acknowledged event is there
        assert len(ids) == len(acknowledged)  # and nothing the client was not told about
        users = sorted({e.user_id for e in logged})
        states = {u: engine.store.get_session(u) for u in users}
        # Every logged event folded exactly once: the state is the log's fold, after the crash.
        assert sum(s.session_version for s in states.values() if s is not None) == len(logged)
        expected = fold(logged, engine.settings.session)
        assert {u: replace(s, log_position=0) for u, s in states.items() if s is not None} == {
            u: replace(expected[u], log_position=0) for u in users
        }
    finally:
        engine.log.close()


def test_sigterm_drains_writes_the_snapshot_and_exits_0(
    tmp_path: Path, model: ModelBundle, shop: SyntheticShop
) -> None:
    data_dir = tmp_path / "data"
    # Only the shutdown snapshot.
    proc, url, _, _ = serve_in(tmp_path, data_dir, model, "snapshot_every_events = 1000000\n")
    t0 = shop.events[-1].ts + 60_000
    try:
        for n in range(5):
            answer = httpx.post(f"{url}/v1/events", json={"events": batch_of(n, shop, t0)}, timeout=10)
            assert answer.status_code == 200
        assert not (data_dir / SNAPSHOT_FILE).exists()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0
    snapshot = MemoryFeatureStore(SystemClock())
    snapshot.load(data_dir / SNAPSHOT_FILE)
    assert snapshot.applied_position() == 5 * 40
    replay = subprocess.run(
        [sys.executable, "-m", "insession", "replay", "--data-dir", str(data_dir)], capture_output=True, timeout=300
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert b"identical" in replay.stdout
