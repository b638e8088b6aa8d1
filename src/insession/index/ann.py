"""Approximate nearest neighbours over item embeddings (hnswlib, inner product).

Chosen by measurement (benchmarks/ann_choice.py on 53k Taobao item vectors, k=100, one thread):
hnswlib query p50 0.13 ms, faiss-hnsw 0.19 ms, usearch 0.23 ms, exact numpy 0.30 ms, all three
graphs at recall@100 0.996; hnswlib also built fastest. The graph is built single-threaded with a
fixed seed, so the same embeddings always give the same index and the same answers.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import hnswlib
import numpy as np
import numpy.typing as npt


class AnnIndex:
    def __init__(self, index: hnswlib.Index, n_items: int, dim: int) -> None:
        self._index = index
        self.n_items = n_items
        self.dim = dim

    @staticmethod
    def build(embeddings: npt.NDArray[np.float32], ef: int = 128, m: int = 16, seed: int = 1) -> AnnIndex:
        """Index the rows of ``embeddings`` that are not all zero (items with no co-occurrence)."""
        n, dim = embeddings.shape
        live = np.flatnonzero(np.linalg.norm(embeddings, axis=1) > 0)
        index = hnswlib.Index(space="ip", dim=dim)
        index.init_index(max_elements=max(len(live), 1), ef_construction=ef, M=m, random_seed=seed)
        index.set_num_threads(1)
        if len(live):
            index.add_items(embeddings[live], live, num_threads=1)
        index.set_ef(max(ef, 64))
        return AnnIndex(index, n, dim)

    def query(self, vector: npt.NDArray[np.float32], k: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Up to ``k`` (item index, inner product) pairs, best first; ties by item index."""
        size = self._index.get_current_count()
        if size == 0 or not np.any(vector):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        labels, distances = self._index.knn_query(vector.reshape(1, -1), k=min(k, size), num_threads=1)
        items = labels[0].astype(np.int64)
        sims = (1.0 - distances[0]).astype(np.float32)  # hnswlib "ip" distance is 1 - <a, b>
        order = np.lexsort((items, -sims))
        return items[order], sims[order]

    def to_bytes(self) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "ann.bin"
            self._index.save_index(str(path))
            return path.read_bytes()

    @staticmethod
    def from_bytes(data: bytes, n_items: int, dim: int) -> AnnIndex:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "ann.bin"
            path.write_bytes(data)
            index = hnswlib.Index(space="ip", dim=dim)
            index.load_index(str(path))
        index.set_num_threads(1)
        index.set_ef(128)
        return AnnIndex(index, n_items, dim)
