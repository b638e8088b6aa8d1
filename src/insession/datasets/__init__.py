"""Loaders: every supported file format into the one event schema.

``read_events(path, format="auto", mapping=None)`` returns the valid :class:`~insession.events.Event`
values of a file in file order and :class:`LoadStats` (rows read, rows skipped by reason and value);
``load_events`` yields the same events. A :class:`DataMapping` maps a table's own column and event
names onto the schema. Event ids are derived from the source and the row, so loading a file twice
is idempotent in the log. A load fails, naming the most frequent unusable values and the flag that
maps them, when more than ``max_skipped`` (default 1%) of the rows cannot be used.
"""

from __future__ import annotations

from insession.datasets.loaders import FORMATS, LoadStats, detect_format, load_events, load_items, read_events
from insession.datasets.mapping import FIELDS, DataMapping

__all__ = ["FIELDS", "FORMATS", "DataMapping", "LoadStats", "detect_format", "load_events", "load_items", "read_events"]
