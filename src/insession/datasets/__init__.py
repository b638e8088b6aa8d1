"""Loaders: every supported file format into the one event schema.

``load_events(path, format="auto")`` yields :class:`~insession.events.Event` values in file order.
Event ids are derived from the source and the row, so loading a file twice is idempotent in the
log. Rows that cannot be read are counted and reported through ``LoadStats``, never dropped
silently.
"""

from __future__ import annotations

from insession.datasets.loaders import FORMATS, LoadStats, detect_format, load_events

__all__ = ["FORMATS", "LoadStats", "detect_format", "load_events"]
