"""The installed ``insession`` command, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from insession.clock import ManualClock
from insession.config import Settings
from insession.datasets.synthetic import SyntheticShop
from insession.engine import SNAPSHOT_FILE, Engine
from insession.model import ModelBundle
from insession.online import covisit
from insession.pipeline import RecommendRequest
from insession.store.memory import MemoryFeatureStore


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "insession.cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_demo_once_shows_the_list_adapting(tmp_path: Path) -> None:
    result = run("demo", "--once", "--workdir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "before the session" in result.stdout and "after click 3" in result.stdout
    last = result.stdout.rsplit("top-10 categories now:", 1)[1]
    counts = json.loads(last.strip().splitlines()[0].replace("'", '"'))
    target = result.stdout.split("now browsing '", 1)[1].split("'", 1)[0]
    assert counts.get(target, 0) >= 7, result.stdout


def test_train_writes_a_versioned_model(tmp_path: Path) -> None:
    data = tmp_path / "events.csv"
    rows = ["session_id,item_id,timestamp"] + [f"s{n % 7},i{n % 11},{1700000000 + n}" for n in range(200)]
    data.write_text("\n".join(rows) + "\n")
    result = run("train", "--data", str(data), "--out", str(tmp_path / "model"))
    assert result.returncode == 0, result.stderr + result.stdout
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["version"] in result.stdout and manifest["stats"]["events"] == 200


def test_train_seed_decides_the_model(tmp_path: Path) -> None:
    data = tmp_path / "events.csv"
    rows = ["session_id,item_id,timestamp"] + [f"s{n % 13},i{(n * 7) % 17},{1700000000 + n}" for n in range(300)]
    data.write_text("\n".join(rows) + "\n")
    versions = []
    for n, seed in enumerate(("0", "0", "1")):
        result = run("train", "--data", str(data), "--out", str(tmp_path / f"m{n}"), "--seed", seed)
        assert result.returncode == 0, result.stderr + result.stdout
        versions.append(json.loads((tmp_path / f"m{n}" / "manifest.json").read_text())["version"])
    assert versions[0] == versions[1] != versions[2]
    refused = run("train", "--data", str(data), "--out", str(tmp_path / "bad"), "--seed", "-1")
    assert refused.returncode == 2 and "seed" in refused.stdout, refused.stdout


def test_train_on_a_missing_file_fails_clearly(tmp_path: Path) -> None:
    result = run("train", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "m"))
    assert result.returncode == 2 and "data" in result.stdout and "nope.csv" in result.stdout


def test_brackets_in_messages_and_help_print_as_written(tmp_path: Path) -> None:
    # Rich reads "[torch]" as a style tag and drops it: the install command printed as
    # "pip install 'insession'" until the console stopped reading markup.
    missing = tmp_path / "shop[red]" / "events.csv"
    result = run("train", "--data", str(missing), "--out", str(tmp_path / "m"))
    assert result.returncode == 2 and "shop[red]" in result.stdout, result.stdout
    helped = subprocess.run(
        [sys.executable, "-m", "insession.cli", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert "pip install 'insession[torch]'" in helped.stdout, helped.stdout


def test_evaluate_writes_metrics_report_and_real_plots(tmp_path: Path) -> None:
    from insession.config import SessionConfig
    from insession.datasets.synthetic import ShopConfig, generate
    from insession.sessions import split_sessions

    shop = generate(ShopConfig(n_categories=6, items_per_category=40, n_users=80, seed=5))
    category = {i.item_id: i.category for i in shop.items}
    rows = ["session_id,user_id,item_id,timestamp,event_type,category"]
    by_user: dict[str, list] = {}
    for event in shop.events:
        by_user.setdefault(event.user_id, []).append(event)
    for user, events in sorted(by_user.items()):
        for n, session in enumerate(split_sessions(events, SessionConfig())):
            rows += [f"{user}-{n},{user},{e.item_id},{e.ts},{e.type.value},{category[e.item_id]}" for e in session]
    data = tmp_path / "events.csv"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "report"
    args = ("evaluate", "--data", str(data), "--test-days", "3", "--out", str(out), "--workers", "1")
    result = run(*args, "--baselines", "sr,vs-knn")
    assert result.returncode == 0, result.stderr + result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"insession", "insession/session-only", "insession/long-term-only", "sr", "vs-knn"}
    assert 0 < metrics["insession"]["HR@20"] <= 1 and "MRR@20" in metrics["sr"]
    for name in ("by_length.png", "by_position.png"):
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000, name
    report = (out / "report.md").read_text()
    assert "![by_length.png](by_length.png)" in report and f"{metrics['insession']['MRR@20']:.4f}" in report
    assert "<table>" in (out / "report.html").read_text()
    assert "in-session lift" in result.stdout


def test_evaluate_needs_train_and_test_or_data(tmp_path: Path) -> None:
    result = run("evaluate", "--train", str(tmp_path / "a.csv"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "--train and --test" in result.stdout


def test_explain_replay_and_diff_from_the_command_line(
    tmp_path: Path, model: ModelBundle, shop: SyntheticShop, clock: ManualClock
) -> None:
    model_dir = tmp_path / "model"
    model.save(model_dir)
    data_dir = tmp_path / "data"
    engine = Engine.open(Settings(data_dir=data_dir), model=model, clock=clock)
    user = shop.events[-1].user_id
    engine.ingest([e for e in shop.events if e.user_id == user][-6:])
    served = engine.recommend(RecommendRequest(user, "home", 5))
    engine.close()
    ok = run("explain", served.request_id, "--model", str(model_dir), "--data-dir", str(data_dir))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "identical" in ok.stdout and served.items[0].item_id in ok.stdout
    as_json = run("explain", served.request_id, "--model", str(model_dir), "--data-dir", str(data_dir), "--json")
    assert json.loads(as_json.stdout)["identical"] is True
    missing = run("explain", "nope", "--model", str(model_dir), "--data-dir", str(data_dir))
    assert missing.returncode != 0 and "request_id" in missing.stdout + missing.stderr
    rebuilt = run("replay", "--data-dir", str(data_dir))
    assert rebuilt.returncode == 0 and "identical" in rebuilt.stdout, rebuilt.stdout + rebuilt.stderr
    side = run(
        "diff", served.request_id, "--model", str(model_dir), "--other", str(model_dir), "--data-dir", str(data_dir)
    )
    assert side.returncode == 0 and "5 of 5 items in both lists" in side.stdout, side.stdout + side.stderr


def test_replay_reads_followers_lists_an_earlier_version_wrote_as_json(
    tmp_path: Path, model: ModelBundle, shop: SyntheticShop, clock: ManualClock
) -> None:
    """Lists stored before followers were written in binary are JSON: ``insession replay`` compares
    them in today's form, so an upgraded data directory checks identical (and a changed list does not)."""
    data_dir = tmp_path / "data"
    engine = Engine.open(Settings(data_dir=data_dir), model=model, clock=clock)
    engine.ingest_all(shop.events[:3000])
    engine.close()
    snapshot = data_dir / SNAPSHOT_FILE
    store = MemoryFeatureStore(clock)
    store.load(snapshot)
    keys = store.keys(covisit.NAMESPACE)
    lists = {
        k: covisit.Neighbours.from_bytes(v)
        for k, v in zip(keys, store.get_many(covisit.NAMESPACE, keys), strict=True)
        if v
    }
    assert len(lists) > 20 and all(v[:1] == b"\x01" for v in store.get_many(covisit.NAMESPACE, keys) if v)

    def as_json(n: covisit.Neighbours) -> bytes:
        return json.dumps([n.last_ts, n.items, n.weights], separators=(",", ":")).encode()

    store.put_many(covisit.NAMESPACE, {k: as_json(n) for k, n in lists.items()}, 10**8)
    store.snapshot(snapshot)
    rebuilt = run("replay", "--data-dir", str(data_dir))
    assert rebuilt.returncode == 0 and "identical" in rebuilt.stdout, rebuilt.stdout + rebuilt.stderr
    some, n = next(iter(lists.items()))
    store.put_many(covisit.NAMESPACE, {some: as_json(replace(n, weights=(n.weights[0] * 2, *n.weights[1:])))}, 10**8)
    store.snapshot(snapshot)
    changed = run("replay", "--data-dir", str(data_dir))
    said = " ".join(changed.stdout.split())  # the console wraps lines
    assert changed.returncode == 1, said
    assert "0 users, 0 items and 1 online co-visitation lists differ" in said and f"lists: {some}" in said, said
