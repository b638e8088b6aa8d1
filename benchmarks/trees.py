"""Run one child script under several source trees, rounds alternating the trees (for the
before/after benchmarks: ``trees_compare.py``, ``explain_follow.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def run_trees(trees: Sequence[str], rounds: int, child: str, args: Sequence[str]) -> list[dict[str, Any]]:
    """For each round and each ``NAME=DIR`` tree (a checkout's root), ``python -c child *args`` with
    ``PYTHONPATH=DIR/src``; each run's figures are the JSON object on its last line of output,
    with the tree, the round and the load average before it."""
    runs: list[dict[str, Any]] = []
    for rnd in range(rounds):
        for tree in trees:
            name, root = tree.split("=", 1)
            env = {**os.environ, "PYTHONPATH": str(Path(root).resolve() / "src")}
            load = os.getloadavg()[0]
            done = subprocess.run(
                [sys.executable, "-c", child, *args], env=env, capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise SystemExit(f"tree {name}: {done.stderr[-2000:]}")
            run = {"tree": name, "round": rnd, "load_before": load, **json.loads(done.stdout.splitlines()[-1])}
            print(run, flush=True)
            runs.append(run)
    return runs
