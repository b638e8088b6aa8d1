"""The versioned model directory: what training writes and serving loads.

Layout of a model directory::

    manifest.json    version, parameters, statistics, and the SHA-256 of every file below
    catalog.json     items with metadata, in dense-index order
    covisit.npz      item-to-item neighbours as CSR arrays (indptr, indices, weights)
    popularity.npy   time-decayed popularity per item (float32), at the training cut-off
    embeddings.npy   item vectors (float32, L2-normalised; zero rows for items never co-visited)
    ann.hnsw         hnswlib index over the non-zero embeddings (optional)
    sessions.npz     the training sessions for session kNN (optional)
    sequence.npz     the sequence model's weights and settings (optional; needs no torch to serve)
    sequence.hnsw    hnswlib index over the sequence model's item output vectors (optional)
    ranker.txt       the LightGBM ranker (optional; without it the transparent scorer serves)
    params.json      training parameters, incl. the ranker's feature names

The version is a content hash: the same training data and parameters give the same version, and
any edit to a file is detected on load.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from insession.catalog import Catalog, Item
from insession.errors import ModelError
from insession.index.ann import AnnIndex
from insession.index.session_index import SessionIndex
from insession.sequence.model import SequenceModel

MODEL_FORMAT = 1


@dataclass(frozen=True, slots=True)
class CovisitMatrix:
    """Top-k neighbours per item: row ``i`` is ``indices[indptr[i]:indptr[i+1]]``."""

    indptr: npt.NDArray[np.int64]
    indices: npt.NDArray[np.int32]
    weights: npt.NDArray[np.float32]

    def row(self, item: int) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
        lo, hi = int(self.indptr[item]), int(self.indptr[item + 1])
        return self.indices[lo:hi], self.weights[lo:hi]

    @property
    def n_items(self) -> int:
        return len(self.indptr) - 1


@dataclass(slots=True)
class ModelBundle:
    catalog: Catalog
    covisit: CovisitMatrix
    popularity: npt.NDArray[np.float32]
    embeddings: npt.NDArray[np.float32]
    ann: AnnIndex | None = None
    ranker: str | None = None
    sessions: SessionIndex | None = None
    sequence: SequenceModel | None = None
    sequence_ann: AnnIndex | None = None
    params: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    #: Items that joined after training (``with_items``), in the order they joined, and the model
    #: they joined: this bundle is ``base.with_items(added)``.
    added: tuple[Item, ...] = ()
    base: ModelBundle | None = None
    #: ``with_items``: the popularity order it extended (new items have none: they go last).
    known_order: npt.NDArray[np.int64] | None = field(default=None, repr=False, compare=False)
    #: ``with_items``: the per-category popularity orders, when it could extend its model's.
    known_categories: dict[int, npt.NDArray[np.int64]] | None = field(default=None, repr=False, compare=False)
    #: The buffer ``embeddings`` is a prefix of, shared with the versions ``with_items`` derives.
    rows: _Rows | None = field(default=None, repr=False, compare=False)
    #: The directory it was loaded from (``load``), where derived files such as the compiled ranker
    #: are kept; ``None`` for a model trained in this process.
    directory: Path | None = field(default=None, repr=False, compare=False)
    #: ``with_items``: the running hash of ``added`` (``_line_open``), so the next batch's version
    #: hashes that batch's changes, not every change since training again.
    line: Any = field(default=None, repr=False, compare=False)
    popular_order: npt.NDArray[np.int64] = field(init=False)
    category_items: dict[int, npt.NDArray[np.int64]] = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.catalog)
        seq_n = self.sequence.n_items if self.sequence is not None else n
        if self.covisit.n_items != n or len(self.popularity) != n or len(self.embeddings) != n or seq_n != n:
            raise ModelError(
                f"model parts disagree on item count: catalog {n}, covisit "
                f"{self.covisit.n_items}, popularity {len(self.popularity)}, embeddings {len(self.embeddings)}, "
                f"sequence {seq_n}"
            )
        # Most popular first; ties broken by dense index so the order is total and stable. Items
        # joined later have no popularity and the highest indices: they extend the order as it is.
        if self.known_order is not None:
            known = len(self.known_order)
            self.popular_order = np.concatenate([self.known_order, np.arange(known, n, dtype=np.int64)])
            self.known_order = None
        else:
            self.popular_order = np.lexsort((np.arange(n), -self.popularity))
        if self.known_categories is not None:  # computed by with_items from its model's
            self.category_items = self.known_categories
            self.known_categories = None
        else:
            self.category_items = _categories(self.popular_order, self.catalog.category_codes)
        if not self.version:
            self.version = _version(self._files())

    def with_items(self, items: Sequence[Item]) -> ModelBundle:
        """This model with catalog changes applied, without retraining: items it does not know are
        appended (zero popularity, no trained neighbours, their category's mean vector as embedding
        (see ``_cold_vectors``), no sequence-model signal: they are found through what the engine
        learns online (``online.covisit``) and the live features); known items take the new record
        (name, category, brand, price, availability), keeping everything trained about them.

        The version is a hash of the base model's and of every change in order, so the same changes
        in the same order give the same version however they were batched; a change that leaves an
        item as it is is not one."""
        current: dict[str, Item] = {}
        changes: list[Item] = []
        for item in items:
            before = current.get(item.item_id) or self.catalog.get(item.item_id)
            if before != item:
                changes.append(item)
                current[item.item_id] = item
        if not changes:
            return self
        base = self.base or self
        added = (*self.added, *changes)
        line = self.line.copy() if self.line is not None else _line_open(base.version, self.added)
        for n, item in enumerate(changes, start=len(self.added)):
            _line_add(line, item, n)
        known = self.catalog.index
        latest = {i.item_id: i for i in changes}
        joined: dict[str, Item] = {}  # each new item as it joined: its starting vector comes from that
        for item in changes:
            if item.item_id not in known:
                joined.setdefault(item.item_id, item)
        new = [latest[i] for i in joined]
        updates = {known[i]: item for i, item in latest.items() if i in known}
        k = len(new)
        size = len(self.catalog) + k
        sequence = self.sequence.padded(size) if self.sequence is not None and k else self.sequence
        sessions = self.sessions
        if sessions is not None and k:
            sessions = sessions.widened(size)
        rows = self.rows or _Rows(self.embeddings)
        embeddings, rows = rows.extended(self.embeddings, base._cold_vectors(list(joined.values())))
        catalog = self.catalog.changed(updates, new)
        categories = None
        same_codes = catalog.category_names == self.catalog.category_names
        if same_codes and all(catalog.category_codes[n] == self.catalog.category_codes[n] for n in updates):
            categories = dict(self.category_items)  # joined items have no popularity: last in theirs
            for n in range(len(self.catalog), size):
                code = int(catalog.category_codes[n])
                if code >= 0:
                    categories[code] = np.append(categories.get(code, np.zeros(0, dtype=np.int64)), n)
        return ModelBundle(
            catalog=catalog,
            covisit=CovisitMatrix(
                np.concatenate([self.covisit.indptr, np.full(k, self.covisit.indptr[-1], dtype=np.int64)]),
                self.covisit.indices,
                self.covisit.weights,
            ),
            popularity=np.concatenate([self.popularity, np.zeros(k, dtype=np.float32)]),
            embeddings=embeddings,
            ann=self.ann,
            ranker=self.ranker,
            sessions=sessions,
            sequence=sequence,
            sequence_ann=self.sequence_ann,
            params=self.params,
            stats=self.stats,
            version=_line_version(base.version, line),
            added=added,
            line=line,
            base=base,
            known_order=self.popular_order,
            known_categories=categories,
            rows=rows,
        )

    def _cold_vectors(self, items: Sequence[Item]) -> npt.NDArray[np.float32]:
        """A starting vector for each joined item: the normalised mean of its category's trained
        vectors (content-based cold start; zero without a category the trained model knows). Called
        on the trained model only, so an item's vector does not depend on what joined or changed
        before it, nor on how the changes were batched (the version does not either)."""
        out = np.zeros((len(items), self.embeddings.shape[1]), dtype=np.float32)
        codes = {name: n for n, name in enumerate(self.catalog.category_names)}
        for row, item in enumerate(items):
            members = self.category_items.get(codes.get(item.category or "", -1))
            if members is None or not len(members):
                continue
            mean = self.embeddings[members].mean(axis=0)
            norm = float(np.linalg.norm(mean))
            if norm > 0:
                out[row] = mean / norm
        return out

    def at_version(self, version: str) -> ModelBundle | None:
        """The model as it was at ``version``: this one, or its base with the first changes applied
        (``None`` if ``version`` is not in this model's line)."""
        if version == self.version:
            return self
        base = self.base or self
        if version == base.version:
            return base
        versions = _line_versions(base.version, self.added)
        if version in versions:
            return base.with_items(self.added[: versions.index(version) + 1])
        return None

    def _files(self) -> dict[str, bytes]:
        buf = io.BytesIO()
        np.savez(buf, indptr=self.covisit.indptr, indices=self.covisit.indices, weights=self.covisit.weights)
        pop = io.BytesIO()
        np.save(pop, self.popularity)
        catalog = json.dumps(self.catalog.to_list(), sort_keys=True, separators=(",", ":"))
        params = json.dumps(self.params, sort_keys=True, separators=(",", ":"))
        emb = io.BytesIO()
        np.save(emb, self.embeddings)
        files = {
            "catalog.json": catalog.encode(),
            "covisit.npz": _strip_npz_times(buf.getvalue()),
            "popularity.npy": pop.getvalue(),
            "embeddings.npy": emb.getvalue(),
            "params.json": params.encode(),
        }
        if self.ann is not None:
            files["ann.hnsw"] = self.ann.to_bytes()
        if self.ranker is not None:
            files["ranker.txt"] = self.ranker.encode()
        if self.sessions is not None:
            files["sessions.npz"] = _strip_npz_times(self.sessions.to_bytes())
        if self.sequence is not None:
            files["sequence.npz"] = _strip_npz_times(self.sequence.to_bytes())
        if self.sequence_ann is not None:
            files["sequence.hnsw"] = self.sequence_ann.to_bytes()
        return files

    def save(self, directory: Path) -> Path:
        """Write the bundle to ``directory`` (created if needed); returns the manifest path."""
        directory.mkdir(parents=True, exist_ok=True)
        files = self._files()
        for name, data in files.items():
            (directory / name).write_bytes(data)
        manifest = {
            "format": MODEL_FORMAT,
            "version": self.version,
            "params": self.params,
            "stats": self.stats,
            "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
        }
        path = directory / "manifest.json"
        path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @staticmethod
    def load(directory: Path) -> ModelBundle:
        manifest_path = directory / "manifest.json"
        if not manifest_path.is_file():
            raise ModelError(f"no model at {directory}: manifest.json missing (run `insession train`)")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format") != MODEL_FORMAT:
            raise ModelError(f"model at {directory}: format {manifest.get('format')!r}, expected {MODEL_FORMAT}")
        files: dict[str, bytes] = {}
        for name, digest in manifest["files"].items():
            try:
                data = (directory / name).read_bytes()
            except OSError as exc:
                raise ModelError(f"model at {directory}: {name} unreadable ({exc.strerror})") from exc
            if hashlib.sha256(data).hexdigest() != digest:
                raise ModelError(f"model at {directory}: {name} does not match its recorded hash")
            files[name] = data
        arrays = np.load(io.BytesIO(files["covisit.npz"]))
        catalog = Catalog.from_list(json.loads(files["catalog.json"]))
        embeddings = np.load(io.BytesIO(files["embeddings.npy"]))
        ann = None
        if "ann.hnsw" in files:
            ann = AnnIndex.from_bytes(files["ann.hnsw"], len(catalog), embeddings.shape[1])
        sequence = SequenceModel.from_bytes(files["sequence.npz"]) if "sequence.npz" in files else None
        sequence_ann = None
        if sequence is not None and "sequence.hnsw" in files:
            sequence_ann = AnnIndex.from_bytes(files["sequence.hnsw"], len(catalog), sequence.item_vectors.shape[1])
        bundle = ModelBundle(
            catalog=catalog,
            covisit=CovisitMatrix(arrays["indptr"], arrays["indices"], arrays["weights"]),
            popularity=np.load(io.BytesIO(files["popularity.npy"])),
            embeddings=embeddings,
            ann=ann,
            ranker=files["ranker.txt"].decode() if "ranker.txt" in files else None,
            sessions=SessionIndex.from_bytes(files["sessions.npz"], len(catalog)) if "sessions.npz" in files else None,
            sequence=sequence,
            sequence_ann=sequence_ann,
            params=json.loads(files["params.json"]),
            stats=manifest.get("stats", {}),
            version=manifest["version"],
            directory=directory,
        )
        return bundle


class _Rows:
    """A buffer that grows by appended rows, shared by a model and the versions ``with_items``
    derives from it: the newest version's embeddings are a prefix of it, so adding k items to a
    model of n copies k rows, not n (at a million items, 256 MB per added item otherwise). Only the
    newest prefix extends in place; extending an older one (``at_version`` rebuilding a past
    version) copies, so no array a model holds ever changes."""

    def __init__(self, array: npt.NDArray[np.float32]) -> None:
        self.buffer = array
        self.used = len(array)
        self._lock = threading.Lock()

    def extended(
        self, prefix: npt.NDArray[np.float32], rows: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], _Rows]:
        with self._lock:
            if len(prefix) == self.used and (len(prefix) == 0 or np.shares_memory(prefix, self.buffer)):
                need = self.used + len(rows)
                if need > len(self.buffer):
                    room = max(need, len(self.buffer) + len(self.buffer) // 8 + 1024)  # 1/8 spare: memory stays near n
                    grown = np.empty((room, *self.buffer.shape[1:]), self.buffer.dtype)
                    grown[: self.used] = self.buffer[: self.used]
                    self.buffer = grown
                self.buffer[self.used : need] = rows
                self.used = need
                return self.buffer[:need], self
        fresh = _Rows(np.concatenate([prefix, rows]))
        return fresh.buffer, fresh


def _categories(order: npt.NDArray[np.int64], codes: npt.NDArray[np.int32]) -> dict[int, npt.NDArray[np.int64]]:
    """Each category's items in ``order`` (most popular first)."""
    in_order = codes[order]
    by_code = np.argsort(in_order, kind="stable")  # the popularity order kept within each category
    bounds = np.searchsorted(in_order[by_code], np.arange(int(codes.max(initial=-1)) + 2))
    return {
        code: order[by_code[bounds[code] : bounds[code + 1]]]
        for code in range(len(bounds) - 1)
        if bounds[code + 1] > bounds[code]
    }


def _line_open(base_version: str, changes: Sequence[Item] = ()) -> Any:
    """The running hash of a model line: the base version, then the JSON list of its changes
    (left open: ``_line_version`` closes a copy)."""
    digest = hashlib.sha256(base_version.encode())
    digest.update(b"[")
    for n, item in enumerate(changes):
        _line_add(digest, item, n)
    return digest


def _line_add(digest: Any, item: Item, n: int) -> None:
    """Hash the line's ``n``-th change (from 0)."""
    if n:
        digest.update(b", ")
    digest.update(json.dumps(item.to_dict(), sort_keys=True).encode())


def _line_version(base_version: str, digest: Any) -> str:
    closed = digest.copy()
    closed.update(b"]")
    return f"{base_version}+{closed.hexdigest()[:8]}"


def _line_versions(base_version: str, changes: Sequence[Item]) -> list[str]:
    """The version after each prefix of ``changes`` (``[:1]``, ``[:2]``, ...): a hash of the base
    version and of the JSON list of the changes so far, computed in one pass."""
    digest = _line_open(base_version)
    out = []
    for n, item in enumerate(changes):
        _line_add(digest, item, n)
        out.append(_line_version(base_version, digest))
    return out


def _version(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()[:16]


def _strip_npz_times(data: bytes) -> bytes:
    """Rewrite a .npz (a zip) with fixed timestamps so equal arrays give equal bytes."""
    import zipfile

    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for info in sorted(src.infolist(), key=lambda i: i.filename):
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            dst.writestr(fixed, src.read(info.filename))
    return out.getvalue()
