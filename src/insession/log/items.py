"""The catalog's change log: every item added or changed since training, in order.

Items join the catalog while serving (an event about an item the model does not know, or
``POST /v1/items`` / ``insession import --items``); the model serving is the trained model with
these changes applied in order (``ModelBundle.with_items``), and its version is a hash of them, so
a restart rebuilds the same version and ``explain`` rebuilds any earlier one. Unlike the user state,
a change sent by a client cannot be re-derived from the event log, so the list is kept durably:

- embedded: ``items.jsonl`` next to the event log, one JSON object per line, appended and fsynced
  before a change is acknowledged (``FileItemLog``);
- on a shared store: one value in the store (``StoreItemLog``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from insession.catalog import Item
from insession.errors import StoreUnavailable
from insession.store import FeatureStore

ITEMS_FILE = "items.jsonl"
#: Where a store keeps the list (and where older data directories kept it in the snapshot).
NAMESPACE = "catalog"
KEY = "added"
TTL_S = 10 * 365 * 24 * 3600


class ItemLog(Protocol):
    def read(self) -> list[Item]:
        """Every change, oldest first."""
        ...

    def append(self, items: Sequence[Item]) -> None:
        """Add ``items`` at the end, durably (a crash after this returns keeps them); raises
        :class:`~insession.errors.StoreUnavailable` when they could not be written."""
        ...


class FileItemLog:
    """``items.jsonl``: appended and fsynced per call; a torn last line (a crash mid-write) is
    ignored on read, since its call never returned."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def read(self) -> list[Item]:
        if not self.path.exists():
            return []
        out: list[Item] = []
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                if not line.endswith("\n"):
                    break  # torn by a crash before its append returned
                out.append(Item.from_dict(json.loads(line)))
        return out

    def append(self, items: Sequence[Item]) -> None:
        if not items:
            return
        text = "".join(json.dumps(i.to_dict(), sort_keys=True, allow_nan=False) + "\n" for i in items)
        with self._lock:
            try:
                self._truncate_torn_tail()
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(text)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise StoreUnavailable(f"items: could not write {self.path.name} ({exc.strerror})") from exc

    def _truncate_torn_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return
            fh.seek(0)
            data = fh.read()
            fh.seek(data.rfind(b"\n") + 1)
            fh.truncate()


class StoreItemLog:
    """The list as one value of a feature store (a shared store: every server reads the same)."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store

    def read(self) -> list[Item]:
        raw = self.store.get_many(NAMESPACE, [KEY])[0]
        return [] if raw is None else [Item.from_dict(d) for d in json.loads(raw)]

    def append(self, items: Sequence[Item]) -> None:
        if not items:
            return
        every = [*self.read(), *items]
        raw = json.dumps([i.to_dict() for i in every], sort_keys=True, allow_nan=False).encode()
        self.store.put_many(NAMESPACE, {KEY: raw}, TTL_S)


__all__ = ["ITEMS_FILE", "FileItemLog", "ItemLog", "StoreItemLog"]
