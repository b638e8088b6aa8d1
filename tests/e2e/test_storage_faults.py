"""Storage faults against the real thing: ``insession serve`` as a child process whose data
directory is a small tmpfs mounted by the test (a full disk), remounted read-only under it (the
test runs as root, for whom chmod does not make a directory read-only; a read-only mount does),
and a snapshot that cannot be written while the log can.

What must hold: an append that fails answers 503 with Retry-After and stores nothing of its batch;
an append that succeeded answers 200 whatever the snapshot does; ``/healthz`` and ``/readyz``
report storage down while writes fail, and up again once they work; a server does not start on a
directory it cannot write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_crash import SERVE, batch_of, free_port, serve_in

from conftest import unavailable
from insession import engine as engine_module
from insession.clock import ManualClock
from insession.config import Settings
from insession.datasets.synthetic import SyntheticShop
from insession.engine import LOG_FILE, SNAPSHOT_FILE, Engine
from insession.log.sqlite import SqliteEventLog
from insession.model import ModelBundle
from insession.serving.app import create_app
from insession.serving.server import BackgroundServer

pytestmark = pytest.mark.slow


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs of the test's own, unmounted afterwards (root and mount(8) needed)."""
    where = tmp_path / "disk"
    where.mkdir()
    try:
        _run("mount", "-t", "tmpfs", "-o", "size=3m,mode=0755", "tmpfs", str(where))
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        unavailable(f"cannot mount a tmpfs here ({exc}): the storage-fault tests need root and mount(8)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def fill(directory: Path) -> Path:
    """Write a ballast file until the file system is full; returns it (remove it to free the space)."""
    ballast = directory / "ballast"
    with open(ballast, "wb") as fh:
        block = b"\0" * 65536
        try:
            while True:
                fh.write(block)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with contextlib.suppress(OSError):  # the last partial block may still be in the page cache
        os.sync()
    return ballast


def post(url: str, batch: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(f"{url}/v1/events", json={"events": batch}, timeout=10)


def wait_ready(url: str, ready: bool, within_s: float = 15.0) -> httpx.Response:
    deadline = time.monotonic() + within_s
    while True:
        answer = httpx.get(f"{url}/readyz", timeout=5)
        if (answer.status_code == 200) == ready or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


def logged_ids(data_dir: Path) -> set[str]:
    log = SqliteEventLog(data_dir / LOG_FILE)
    try:
        return {e.event_id for _, e in log.read()}
    finally:
        log.close()


def test_a_full_disk_is_a_503_with_nothing_stored_and_health_says_so_until_space_returns(
    tmp_path: Path, tmpfs: Path, model: ModelBundle, shop: SyntheticShop
) -> None:
    data_dir = tmpfs / "data"
    proc, url, _, _ = serve_in(tmp_path, data_dir, model, "snapshot_every_events = 1000000\n")
    t0 = shop.events[-1].ts + 60_000
    acknowledged: set[str] = set()
    try:
        first = post(url, batch_of(0, shop, t0))
        assert first.status_code == 200
        acknowledged |= {e["event_id"] for e in batch_of(0, shop, t0)}
        assert wait_ready(url, True).status_code == 200
        ballast = fill(tmpfs)
        refused: list[dict[str, Any]] | None = None
        refusal: httpx.Response | None = None
        for n in range(1, 400):  # SQLite may still have free pages: post until the file must grow
            batch = batch_of(n, shop, t0, size=100)
            answer = post(url, batch)
            if answer.status_code == 200:
                assert answer.json()["accepted"] == len(batch)
                acknowledged |= {e["event_id"] for e in batch}
                continue
            refused, refusal = batch, answer
            break
        assert refusal is not None and refused is not None, "the disk never filled"
        assert refusal.status_code == 503 and refusal.headers["Retry-After"] == "1", refusal.text
        assert "none was stored" in refusal.json()["error"] and "event log" in refusal.json()["error"]
        health = httpx.get(f"{url}/healthz", timeout=5).json()
        assert health["status"] == "degraded" and health["store"]["up"] is False
        not_ready = wait_ready(url, False)
        assert not_ready.status_code == 503 and not_ready.json()["reasons"], not_ready.text
        for n in range(5):  # lists: served, or refused honestly when their manifest cannot be written
            listed = httpx.post(f"{url}/v1/recommendations", json={"user_id": f"crash-user-{n}"}, timeout=10)
            assert listed.status_code in (200, 503), listed.text
            assert listed.status_code == 200 or listed.headers["Retry-After"] == "1"
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        assert "insession_store_up 0.0" in metrics and "insession_store_failures_total" in metrics

        ballast.unlink()  # space returns: the probe sees it, and the refused batch goes through whole
        assert wait_ready(url, True).status_code == 200
        retried = post(url, refused)
        assert retried.status_code == 200 and retried.json()["accepted"] == len(refused)  # not duplicates
        acknowledged |= {e["event_id"] for e in refused}
        assert httpx.get(f"{url}/healthz", timeout=5).json()["store"]["up"] is True
    finally:
        code = stop(proc)
    assert code == 0
    assert logged_ids(data_dir) == acknowledged  # every acknowledged event, and nothing else


def test_a_server_will_not_start_on_a_read_only_data_directory(
    tmp_path: Path, tmpfs: Path, model: ModelBundle, shop: SyntheticShop
) -> None:
    data_dir = tmpfs / "data"
    proc, url, model_dir, _ = serve_in(tmp_path, data_dir, model, "")
    t0 = shop.events[-1].ts + 60_000
    try:
        assert post(url, batch_of(0, shop, t0)).status_code == 200
    finally:
        assert stop(proc) == 0
    # The directory that held the data comes back read-only (as a file system remounted after I/O
    # errors does; a remount needs the files closed, so it happens between the two runs).
    deadline = time.monotonic() + 30
    while (remount := subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True)).returncode:
        if time.monotonic() > deadline:  # still busy: say who holds it
            holders = subprocess.run(["fuser", "-vm", str(tmpfs)], capture_output=True, text=True, timeout=30)
            pytest.fail(f"cannot remount read-only: {remount.stderr!r}; {holders.stdout + holders.stderr}")
        time.sleep(0.5)
    try:
        started = subprocess.run(
            [*SERVE, "--model", str(model_dir), "--data-dir", str(data_dir), "--port", str(free_port())],
            capture_output=True,
            timeout=120,
        )
        assert started.returncode == 2, started.stdout + started.stderr
        said = b" ".join(started.stdout.split())  # rich wraps long lines
        assert b"cannot write" in said and b"Read-only file system" in said, said
    finally:
        _run("mount", "-o", "remount,rw", str(tmpfs))
    assert {e["event_id"] for e in batch_of(0, shop, t0)} == logged_ids(data_dir)


def test_a_snapshot_that_cannot_be_written_leaves_the_stored_batch_a_200_and_is_retried(
    settings: Settings, model: ModelBundle, clock: ManualClock, shop: SyntheticShop, monkeypatch: pytest.MonkeyPatch
) -> None:
    eng = Engine.open(settings.with_(snapshot_every_events=10), model=model, clock=clock)
    # A real failure from the file system: the snapshot's temporary file cannot be opened for
    # writing because a directory holds its name, while the event log writes as usual.
    blocker = settings.data_dir / f"{SNAPSHOT_FILE}.tmp"
    blocker.mkdir()
    monkeypatch.setattr(engine_module, "SNAPSHOT_RETRY_S", 0.0)
    t0 = shop.events[-1].ts + 60_000
    try:
        with BackgroundServer(create_app(eng)) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
            stored = c.post("/v1/events", json={"events": batch_of(0, shop, t0, size=20)})
            assert stored.status_code == 200 and stored.json()["accepted"] == 20
            assert not (settings.data_dir / SNAPSHOT_FILE).exists()
            metrics = c.get("/metrics").text
            assert "insession_snapshot_failures_total 1.0" in metrics
            health = c.get("/healthz").json()
            assert health["store"]["up"] is True  # the events were stored: writes work
            assert c.get("/readyz").status_code == 200
            blocker.rmdir()
            again = c.post("/v1/events", json={"events": batch_of(1, shop, t0, size=20)})
            assert again.status_code == 200 and again.json()["accepted"] == 20
        snapshot = json.loads((settings.data_dir / SNAPSHOT_FILE).read_bytes().split(b"\n")[0])
        assert snapshot["applied_position"] == 40  # the retry wrote it, with every event
    finally:
        eng.log.close()
