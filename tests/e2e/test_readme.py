"""The README's "your own data" commands and its Python API example, run as written."""

from __future__ import annotations

import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import free_port

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[2] / "README.md"


def block(after: str, language: str) -> str:
    """The first ```language block after the heading ``after``."""
    text = README.read_text(encoding="utf-8")
    start = text.index(after)
    found = re.search(rf"```{language}\n(.*?)```", text[start:], re.S)
    assert found is not None, f"no {language} block after {after!r}"
    return found.group(1)


def commands(script: str) -> list[list[str]]:
    """The shell block's commands (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", script)
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def test_own_data_in_five_minutes_runs_as_written(tmp_path: Path) -> None:
    steps = commands(block("## Your own data in five minutes", "bash"))
    assert [s[:2] for s in steps] == [
        ["insession", "sample-data"],
        ["insession", "train"],
        ["insession", "import"],
        ["insession", "serve"],
        ["curl", "-s"],
    ]
    env = {**os.environ, "COLUMNS": "200"}
    for step in steps[:3]:
        done = subprocess.run(
            [sys.executable, "-m", "insession.cli", *step[1:]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
            check=False,
        )
        assert done.returncode == 0, f"{step}: {done.stdout}{done.stderr}"
    assert "events accepted" in done.stdout and "0 added or changed, 1000 as they were" in done.stdout, done.stdout
    # import leaves explain's checkpoints at the end of what it imported: the first explanation folds
    # nothing, not the whole history
    assert "checkpoints for explain:" in done.stdout, done.stdout
    state = tmp_path / "shop" / "state"
    with sqlite3.connect(state / "checkpoints.sqlite") as checkpoints, sqlite3.connect(state / "events.sqlite") as log:
        newest = checkpoints.execute("SELECT MAX(position) FROM checkpoints").fetchone()[0]
        last = log.execute("SELECT MAX(position) FROM events").fetchone()[0]
    assert newest == last and last > 0
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "insession.cli", *steps[3][1:], "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        body = steps[4][steps[4].index("-d") + 1]
        deadline = time.monotonic() + 120
        while True:
            try:
                answer = httpx.post(
                    f"http://127.0.0.1:{port}/v1/recommendations",
                    content=body,
                    headers={"content-type": "application/json"},
                    timeout=30,
                )
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "serve did not come up"
                time.sleep(0.2)
        assert answer.status_code == 200, answer.text
        listed = answer.json()
        assert len(listed["items"]) == 10 and listed["tier"] == "full" and listed["session_version"] > 0
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)


def test_python_api_example_runs_as_written(tmp_path: Path) -> None:
    made = subprocess.run(
        [sys.executable, "-m", "insession.cli", "sample-data", "--out", "shop"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    code = block("## Python API", "python")
    ran = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "full" in ran.stdout and (tmp_path / "shop" / "state-py" / "events.sqlite").exists()
