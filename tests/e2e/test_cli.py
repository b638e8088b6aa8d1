"""The installed ``insession`` command, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


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


def test_train_on_a_missing_file_fails_clearly(tmp_path: Path) -> None:
    result = run("train", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "m"))
    assert result.returncode == 2 and "data" in result.stdout and "nope.csv" in result.stdout
