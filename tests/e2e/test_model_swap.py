"""Model hot swap on a real server on loopback: a new model version is loaded and served while
client threads keep asking for lists, the previous version is restored, no request fails, and
the lists served before, between and after the swaps explain identically (each with the model
that served it)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from conftest import fresh_client, patient_surfaces
from insession.clock import ManualClock
from insession.config import Settings
from insession.datasets.synthetic import SyntheticShop
from insession.engine import Engine
from insession.model import ModelBundle
from insession.pipeline import RecommendRequest
from insession.serving.app import create_app
from insession.serving.server import BackgroundServer

KEY = {"Authorization": "Bearer admin-key-0123456789"}
THREADS = 3
PER_THREAD = 40  # bounded: at most this many requests per thread ...
TIME_LIMIT_S = 120.0  # ... within this long


def test_swapping_the_model_under_load_fails_no_request_and_explain_stays_exact(
    settings: Settings, model: ModelBundle, shop: SyntheticShop, clock: ManualClock, tmp_path: Path
) -> None:
    first, second = tmp_path / "model-1", tmp_path / "model-2"
    model.save(first)
    other = replace(model, ranker=None, version="")  # another version: no learned ranker
    other.save(second)
    assert other.version != model.version
    engine = Engine.open(settings.with_(model_dir=first, write_keys=("admin-key-0123456789",)), clock=clock)
    users = sorted(shop.tastes)[:12]
    engine.ingest([e for e in shop.events if e.user_id in set(users)])
    served: list[tuple[str, int, str, list[str]]] = []  # request id, status, model version, items
    lock = threading.Lock()
    with BackgroundServer(create_app(engine)) as srv:

        def client(n: int) -> None:
            deadline = time.monotonic() + TIME_LIMIT_S
            with httpx.Client(base_url=srv.url, timeout=60) as c:
                for i in range(PER_THREAD):
                    if time.monotonic() > deadline:
                        break
                    body = {"user_id": users[(n * PER_THREAD + i) % len(users)], "surface": "home", "k": 10}
                    r = c.post("/v1/recommendations", json=body)
                    got: dict[str, Any] = r.json() if r.status_code == 200 else {}
                    with lock:
                        served.append(
                            (
                                got.get("request_id", ""),
                                r.status_code,
                                got.get("model_version", ""),
                                [i["item_id"] for i in got.get("items", [])],
                            )
                        )

        def served_count() -> int:
            with lock:
                return len(served)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(THREADS)]
        for t in threads:
            t.start()
        with httpx.Client(base_url=srv.url, timeout=60) as admin:
            assert admin.post("/v1/admin/model", json={"path": str(second)}).status_code == 401  # no key
            wait_for(lambda: served_count() >= 20)
            swapped = admin.post("/v1/admin/model", json={"path": str(second)}, headers=KEY)
            assert swapped.status_code == 200, swapped.text
            assert swapped.json()["active"] == other.version and swapped.json()["history"] == [
                model.version,
                other.version,
            ]
            at_swap = served_count()
            wait_for(lambda: served_count() >= at_swap + 30)
            restored = admin.post("/v1/admin/model", json={"version": "previous"}, headers=KEY)
            assert restored.status_code == 200, restored.text
            assert restored.json()["active"] == model.version
            for t in threads:
                t.join(timeout=TIME_LIMIT_S + 60)
            # Refusals name what is wrong: not a model directory (422), a version never loaded (404),
            # both or neither given (422).
            bad = admin.post("/v1/admin/model", json={"path": str(tmp_path)}, headers=KEY)
            assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "path", bad.text
            assert admin.post("/v1/admin/model", json={"version": "nope"}, headers=KEY).status_code == 404
            assert admin.post("/v1/admin/model", json={}, headers=KEY).status_code == 422
            assert engine.model.version == model.version

            assert len(served) == THREADS * PER_THREAD and {s[1] for s in served} == {200}, served[-3:]
            versions = [s[2] for s in served]
            assert set(versions) == {model.version, other.version}
            # Explain a few lists of each period, each recomputed identically by its own model.
            chosen = {}
            for request_id, _, version, items in served:
                chosen.setdefault(version, []).append((request_id, items))
            for version, lists in chosen.items():
                for request_id, items in lists[:: max(len(lists) // 3, 1)][:3]:
                    explained = admin.get(f"/v1/explain/{request_id}")
                    assert explained.status_code == 200, explained.text
                    body = explained.json()
                    assert body["identical"] and body["served"] == items, (version, body["diff"])
                    assert body["manifest"]["model_version"] == version
    engine.close()


def wait_for(check: Any, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_on_redis_every_server_follows_a_swap_and_a_restart_serves_the_active_version(
    redis_url: str, tmp_path: Path, model: ModelBundle, shop: SyntheticShop
) -> None:
    """Server A swaps; server B (another engine on the same Redis) reads the recorded version
    within a second, loads it off the request path and serves it; a server started afterwards
    serves it from the start."""
    client = fresh_client(redis_url)
    first, second = tmp_path / "model-1", tmp_path / "model-2"
    model.save(first)
    other = replace(model, ranker=None, version="")
    other.save(second)
    settings = Settings(
        data_dir=tmp_path / "a", model_dir=first, store=redis_url, surfaces=patient_surfaces(), store_timeout_ms=5000.0
    )
    a = Engine.open(settings)
    b = Engine.open(settings.with_(data_dir=tmp_path / "b"))
    a.models.swap(path=second)
    assert a.model.version == other.version and b.model.version == model.version

    def b_serves_the_new_model() -> bool:
        response = b.recommend(RecommendRequest("u-follow", "home", 10))
        assert response.degraded is None
        return response.model_version == other.version

    wait_for(b_serves_the_new_model, timeout_s=60)
    c = Engine.open(settings.with_(data_dir=tmp_path / "c"))
    assert c.model.version == other.version
    b.models.swap(version="previous")  # restored from B: A follows
    wait_for(lambda: a.recommend(RecommendRequest("u-follow", "home", 10)).model_version == model.version, 60)
    for engine in (a, b, c):
        engine.close()
    client.close()
