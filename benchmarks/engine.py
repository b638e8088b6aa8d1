"""Run ``insession bench`` at several catalog sizes and write all figures to one JSON file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from insession.bench import run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--users", type=int, default=None, help="shoppers (default: one per 20 items)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engine.json"))
    args = parser.parse_args()
    results = []
    for size in args.sizes:
        figures = run_bench(
            size, args.requests, users=args.users, progress=lambda s, n=size: print(f"[{n}] {s}", flush=True)
        )
        print(json.dumps(figures))
        results.append(figures)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
