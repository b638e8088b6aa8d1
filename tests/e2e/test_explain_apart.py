"""Explanations of a server started from a model directory run in a child process of their own:
they recompute the served lists identically, also after items joined the catalog online (a new
model version the child rebuilds), and an unknown request is still a 404."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest
from test_crash import serve_in

from insession.datasets.synthetic import SyntheticShop
from insession.model import ModelBundle

pytestmark = pytest.mark.slow


def test_explanations_in_their_own_process_are_identical_across_catalog_growth(
    tmp_path: Path, model: ModelBundle, shop: SyntheticShop
) -> None:
    proc, url, _, _ = serve_in(tmp_path, tmp_path / "data", model, "")
    t0 = shop.events[-1].ts + 60_000
    known = [i.item_id for i in shop.items[:3]]
    try:
        with httpx.Client(base_url=url, timeout=120) as c:
            events = [
                {"event_id": f"ap-{n}", "user_id": "u-apart", "type": "click", "item_id": item, "ts": t0 + n}
                for n, item in enumerate(known)
            ]
            assert c.post("/v1/events", json={"events": events}).status_code == 200
            before = c.post("/v1/recommendations", json={"user_id": "u-apart", "k": 8}).json()
            fresh = {
                "event_id": "ap-new",
                "user_id": "u-apart",
                "type": "click",
                "item_id": "never-trained-item",
                "ts": t0 + 10,
                "properties": {"category": shop.items[0].category},
            }
            assert c.post("/v1/events", json={"events": [fresh]}).json()["accepted"] == 1
            after = c.post("/v1/recommendations", json={"user_id": "u-apart", "k": 8}).json()
            assert after["model_version"] != before["model_version"]  # the item joined: a new version
            for served in (before, after, before):  # back to the earlier version: refolds from the start
                explained = c.get(f"/v1/explain/{served['request_id']}")
                assert explained.status_code == 200, explained.text
                body = explained.json()
                assert body["identical"] is True and body["served"] == [i["item_id"] for i in served["items"]]
                assert body["manifest"]["model_version"] == served["model_version"]
            # They ran in the server's child process (spawned by multiprocessing), not in the server.
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            commands = [Path(f"/proc/{child}/cmdline").read_bytes() for child in children]
            assert any(b"multiprocessing" in command for command in commands), commands
            missing = c.get("/v1/explain/no-such-request")
            assert missing.status_code == 404 and "request_id" in missing.json()["error"]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0
    # The command configured the access log: one JSON line per request on stderr.
    output = next(tmp_path.glob("server-*.log")).read_text().splitlines()
    access = [json.loads(line) for line in output if line.startswith('{"time"')]
    routes = [(a["route"], a["status"]) for a in access]
    assert routes.count(("/v1/explain/{request_id}", 200)) == 3 and ("/v1/explain/{request_id}", 404) in routes
