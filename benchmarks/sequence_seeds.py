"""Does the sequence model help, beyond what a re-fit moves? The engine with and without it, per seed.

``insession evaluate --sequence --variants joint,no_sequence`` compares one model with the sequence
model and one without, both trained with the same seed. One run cannot tell a gain from the spread
of re-fits, so this runs that comparison for several seeds (the same seed for both models each
time: embeddings, ANN index, ranker and sequence model) and reports each pair and the spread.
Writes one JSON file per dataset; it also records each seed's engine without the sequence model,
which is how far a re-fit alone moves the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from insession.config import Settings
from insession.datasets import load_events
from insession.evaluation import EvalOptions, Split, evaluate, time_split
from insession.evaluation.protocol import time_ordered
from insession.sequence.train import SequenceConfig
from insession.training import TrainConfig

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KEYS = ("HR@20", "MRR@20", "NDCG@20")


def split_of(name: str) -> Split:
    if name == "yoochoose":
        folder = DATA / "yoochoose-100k"
        return Split(
            time_ordered(load_events(folder / "yoochoose-clicks-100k_train_full.txt")),
            time_ordered(load_events(folder / "yoochoose-clicks-100k_test.txt")),
            "yoochoose-100k train_full / test",
        )
    return time_split(load_events(DATA / "taobao-sample" / "UserBehavior.csv"), 2, Settings().session)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", choices=("yoochoose", "taobao"), required=True)
    parser.add_argument("--seeds", default="0,1,2", help="comma list")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    split = split_of(args.data)
    runs: dict[str, dict[str, object]] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        started = time.perf_counter()
        cfg = TrainConfig(seed=seed, sequence=SequenceConfig(enabled=True, seed=seed))
        result = evaluate(split, options=EvalOptions(baselines=(), variants=("joint", "no_sequence"), train=cfg))
        with_seq, without = result.metrics["insession"], result.metrics["insession/no-sequence"]
        runs[str(seed)] = {
            "with_sequence": {k: with_seq[k] for k in KEYS},
            "without_sequence": {k: without[k] for k in KEYS},
            "lift": {k: with_seq[k] / without[k] - 1 for k in KEYS},
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(f"seed {seed}: MRR@20 {with_seq['MRR@20']:.4f} with, {without['MRR@20']:.4f} without", flush=True)
    lifts = [float(r["lift"]["MRR@20"]) for r in runs.values()]  # type: ignore[index]
    plain = [float(r["without_sequence"]["MRR@20"]) for r in runs.values()]  # type: ignore[index]
    summary = {
        "split": split.description,
        "mrr20_lift_mean": statistics.fmean(lifts),
        "mrr20_lift_min": min(lifts),
        "mrr20_lift_max": max(lifts),
        "mrr20_without_sequence_min": min(plain),
        "mrr20_without_sequence_max": max(plain),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "seeds": runs}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
