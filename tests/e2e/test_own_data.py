"""A shop's own export, end to end through the installed command: `train` and `import` with a
column and event-name mapping, then `serve`, on a CSV built from the real Taobao sample with a
shop's own column names (customer, sku, cat, action, when), its own event names (page_view,
wishlist, basket, order), ISO-8601 times and no session column."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from conftest import free_port

pytestmark = pytest.mark.slow

NAMES = {"pv": "page_view", "fav": "wishlist", "cart": "basket", "buy": "order"}
COLUMNS = "user_id=customer,item_id=sku,category=cat,event_type=action,timestamp=when"
EVENT_TYPES = "page_view=view,wishlist=click,basket=add_to_cart,order=purchase"


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "insession.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.fixture(scope="module")
def export(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("shop") / "export.csv"
    with (
        open(shared_data / "taobao-sample" / "UserBehavior.csv", encoding="utf-8") as src,
        open(path, "w", encoding="utf-8", newline="") as out,
    ):
        writer = csv.writer(out)
        writer.writerow(["customer", "sku", "cat", "action", "when"])
        for user, item, category, behavior, ts in csv.reader(src):
            when = datetime.fromtimestamp(int(ts), UTC).isoformat().replace("+00:00", "Z")
            writer.writerow([user, item, category, NAMES[behavior], when])
    return path


@pytest.fixture(scope="module")
def server(export: Path) -> Iterator[tuple[httpx.Client, Path]]:
    work = export.parent
    mapping = ("--columns", COLUMNS, "--event-types", EVENT_TYPES)
    trained = cli("train", "--data", str(export), "--out", str(work / "model"), *mapping)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "84475 events from 84475 rows" in trained.stdout, trained.stdout
    args = ("import", "--data", str(export), "--model", str(work / "model"), "--data-dir", str(work / "state"))
    imported = cli(*args, *mapping)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert "84475 events accepted" in imported.stdout, imported.stdout
    again = cli(*args, *mapping)  # idempotent: the same file adds nothing
    assert again.returncode == 0 and "0 events accepted, 84475 already in the log" in again.stdout, again.stdout
    port = free_port()
    log = open(work / "serve.log", "w")  # noqa: SIM115 - closed after the server stops
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "insession.cli",
            "serve",
            "--model",
            str(work / "model"),
            "--data-dir",
            str(work / "state"),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (work / "serve.log").read_text()
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.2)
        yield client, export
    finally:
        client.close()
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def top(client: httpx.Client, user: str, k: int) -> list[str]:
    response = client.post("/v1/recommendations", json={"user_id": user, "k": k})
    assert response.status_code == 200, response.text
    return [i["item_id"] for i in response.json()["items"]]


def test_the_longest_history_gets_joint_lists_from_the_first_request(server: tuple[httpx.Client, Path]) -> None:
    client, export = server
    with open(export, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    category = {r["sku"]: r["cat"] for r in rows}
    user = Counter(r["customer"] for r in rows).most_common(1)[0][0]
    own = Counter(r["cat"] for r in rows if r["customer"] == user)
    taste = own.most_common(1)[0][0]

    before = top(client, user, 20)
    assert taste in {category.get(i) for i in before}, (taste, Counter(category.get(i) for i in before))

    # Three clicks in a popular category this user never touched.
    new = next(c for c, _ in Counter(r["cat"] for r in rows).most_common() if c not in own)
    picks = [item for item, _ in Counter(r["sku"] for r in rows if r["cat"] == new).most_common(3)]
    now = int(time.time() * 1000)
    for n, item in enumerate(picks):
        body = {"event_id": f"own-{n}", "user_id": user, "type": "click", "item_id": item, "ts": now + n}
        answer = client.post("/v1/events", json={"events": [{**body, "properties": {"category": new}}]}).json()
        assert answer["accepted"] == 1, answer
    after = top(client, user, 20)
    in_new = sum(category.get(i) == new for i in after[:10])
    assert in_new >= 5, Counter(category.get(i) for i in after[:10])
    assert taste in {category.get(i) for i in after}, "the long-term taste left the top 20"


def test_without_the_event_mapping_the_load_fails_naming_a_value_and_the_flag(export: Path, tmp_path: Path) -> None:
    failed = cli("train", "--data", str(export), "--out", str(tmp_path / "m"), "--columns", COLUMNS)
    assert failed.returncode == 2
    assert "page_view" in failed.stdout and "--event-types" in failed.stdout, failed.stdout
    assert not (tmp_path / "m").exists()
