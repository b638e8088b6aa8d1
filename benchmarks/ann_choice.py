"""Measure ANN libraries on item embeddings: build time, single-query latency, recall@k vs exact.

Usage: python benchmarks/ann_choice.py EMBEDDINGS.npy [--k 100] [--queries 500] [--out FILE.json]
The embeddings come from `insession train` (model dir: embeddings.npy). Libraries that are not
installed are reported as missing, not skipped silently.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np


def exact(emb: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    sims = emb @ q
    top = np.argpartition(-sims, k)[:k]
    return top[np.argsort(-sims[top])]


def measure(
    name: str, build: Any, query: Any, emb: np.ndarray, queries: np.ndarray, truth: list[set[int]], k: int
) -> dict[str, Any]:
    t = time.perf_counter()
    index = build(emb)
    build_s = time.perf_counter() - t
    times, recalls = [], []
    for q, true in zip(queries, truth, strict=True):
        t = time.perf_counter()
        found = query(index, q, k)
        times.append((time.perf_counter() - t) * 1000)
        recalls.append(len(true & {int(i) for i in found}) / k)
    times.sort()
    return {
        "library": name,
        "build_s": round(build_s, 3),
        "query_p50_ms": round(statistics.median(times), 4),
        "query_p99_ms": round(times[int(0.99 * len(times))], 4),
        "recall_at_k": round(float(np.mean(recalls)), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("embeddings", type=Path)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ann_choice.json"))
    args = parser.parse_args()
    emb = np.load(args.embeddings).astype(np.float32)
    emb = emb[np.linalg.norm(emb, axis=1) > 0]
    rng = np.random.default_rng(0)
    queries = emb[rng.choice(len(emb), args.queries, replace=False)] + rng.normal(
        0, 0.05, (args.queries, emb.shape[1])
    ).astype(np.float32)
    truth = [set(exact(emb, q, args.k).tolist()) for q in queries]
    results = [measure("numpy-exact", lambda e: e, lambda e, q, k: exact(e, q, k), emb, queries, truth, args.k)]
    dim = emb.shape[1]
    try:
        import hnswlib

        def hb(e: np.ndarray) -> Any:
            idx = hnswlib.Index(space="ip", dim=dim)
            idx.init_index(max_elements=len(e), ef_construction=200, M=16, random_seed=1)
            idx.set_num_threads(1)
            idx.add_items(e, np.arange(len(e)))
            idx.set_ef(200)
            return idx

        results.append(measure("hnswlib", hb, lambda i, q, k: i.knn_query(q, k=k)[0][0], emb, queries, truth, args.k))
    except ImportError:
        results.append({"library": "hnswlib", "missing": True})
    try:
        from usearch.index import Index

        def ub(e: np.ndarray) -> Any:
            idx = Index(ndim=dim, metric="ip", dtype="f32", connectivity=16, expansion_add=200, expansion_search=200)
            idx.add(np.arange(len(e)), e, threads=1)
            return idx

        results.append(
            measure("usearch", ub, lambda i, q, k: i.search(q, k, threads=1).keys, emb, queries, truth, args.k)
        )
    except ImportError:
        results.append({"library": "usearch", "missing": True})
    try:
        import faiss

        faiss.omp_set_num_threads(1)

        def fb(e: np.ndarray) -> Any:
            idx = faiss.IndexHNSWFlat(dim, 16, faiss.METRIC_INNER_PRODUCT)
            idx.hnsw.efConstruction = 200
            idx.hnsw.efSearch = 200
            idx.add(e)
            return idx

        results.append(
            measure("faiss-hnsw", fb, lambda i, q, k: i.search(q[None, :], k)[1][0], emb, queries, truth, args.k)
        )
    except ImportError:
        results.append({"library": "faiss", "missing": True})
    for r in results:
        print(json.dumps(r))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"n_items": len(emb), "dim": dim, "k": args.k, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
