"""Readers for YOOCHOOSE, Taobao UserBehavior, DIGINETICA, OTTO, REES46 and generic tables."""

from __future__ import annotations

import contextlib
import csv
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from insession.errors import FieldError, ValidationError, describe
from insession.events import Event, EventType

FORMATS = ("auto", "generic", "yoochoose", "taobao", "diginetica", "otto", "rees46")

_TYPE_ALIASES = {
    "view": EventType.VIEW,
    "pv": EventType.VIEW,
    "views": EventType.VIEW,
    "click": EventType.CLICK,
    "clicks": EventType.CLICK,
    "fav": EventType.CLICK,
    "add_to_cart": EventType.ADD_TO_CART,
    "cart": EventType.ADD_TO_CART,
    "carts": EventType.ADD_TO_CART,
    "addtocart": EventType.ADD_TO_CART,
    "purchase": EventType.PURCHASE,
    "buy": EventType.PURCHASE,
    "orders": EventType.PURCHASE,
    "order": EventType.PURCHASE,
    "transaction": EventType.PURCHASE,
    "search": EventType.SEARCH,
    "dismiss": EventType.DISMISS,
}


@dataclass(slots=True)
class LoadStats:
    """What a load read and what it could not use, by reason."""

    rows: int = 0
    events: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        text = f"{self.events} events from {self.rows} rows"
        if self.skipped:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
            text += f" (skipped: {reasons})"
        return text


def _ts_from_number(value: float) -> int:
    """Seconds or milliseconds (by magnitude) to epoch ms."""
    return round(value * 1000) if value < 100_000_000_000 else round(value)


def parse_time(text: str) -> int:
    """A unix time (seconds or ms) or an ISO-like date-time (UTC if no zone) to epoch ms."""
    text = text.strip()
    try:
        return _ts_from_number(float(text))
    except ValueError:
        pass
    cleaned = text.replace(" UTC", "+00:00").replace("Z", "+00:00")
    parsed = datetime.fromisoformat(cleaned)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return round(parsed.timestamp() * 1000)


def _resolve(path: Path) -> Path:
    if not path.exists():
        raise ValidationError([FieldError("data", "an existing file or directory", str(path))])
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if len(files) != 1:
            names = ", ".join(p.name for p in files) or "no files"
            raise ValidationError(
                [
                    FieldError(
                        "data", f"a file, or a directory holding exactly one data file ({path} has: {names})", str(path)
                    )
                ]
            )
        return files[0]
    return path


def _head(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.readline().strip()


def detect_format(path: Path) -> str:
    """Guess the format from the name and first line; raises with what was seen if unsure."""
    path = _resolve(path)
    if path.suffix == ".parquet":
        return "generic"
    if path.suffix in (".jsonl", ".ndjson"):
        return "otto"
    head = _head(path)
    lower = head.lower()
    if lower.startswith("event_time,event_type,product_id"):
        return "rees46"
    if lower.startswith("session_id;user_id;item_id;timeframe"):
        return "diginetica"
    if lower.replace(",", "\t").startswith("sessionid\titemid\ttime"):
        return "yoochoose"
    parts = head.split(",")
    if len(parts) == 5 and parts[3] in ("pv", "cart", "fav", "buy"):
        return "taobao"
    if len(parts) == 4 and "T" in parts[1] and parts[0].isdigit():
        return "yoochoose"
    cols = {c.strip().lower() for c in head.replace("\t", ",").replace(";", ",").split(",")}
    if {"session_id", "item_id"} <= cols:
        return "generic"
    raise ValidationError(
        [FieldError("format", f"one of {', '.join(FORMATS[1:])} (could not tell from the first line)", describe(head))]
    )


def load_events(
    path: Path | str,
    format: str = "auto",
    stats: LoadStats | None = None,
) -> Iterator[Event]:
    """Yield the events of ``path`` in file order. ``stats`` (if given) is filled as it goes."""
    path = _resolve(Path(path))
    if format not in FORMATS:
        raise ValidationError([FieldError("format", " | ".join(FORMATS), describe(format))])
    fmt = detect_format(path) if format == "auto" else format
    stats = stats if stats is not None else LoadStats()
    reader: Callable[[Path, LoadStats], Iterator[Event]] = _READERS[fmt]
    yield from reader(path, stats)


def _skip(stats: LoadStats, reason: str) -> None:
    stats.skipped[reason] += 1


def _yoochoose(path: Path, stats: LoadStats) -> Iterator[Event]:
    with open(path, encoding="utf-8") as fh:
        first = fh.readline()
        headed = first.lower().startswith("sessionid")
        lines = fh if headed else [first, *fh]
        for n, line in enumerate(lines, start=1):
            stats.rows += 1
            if headed:
                parts = line.rstrip("\n").split("\t")
                if len(parts) < 3:
                    _skip(stats, "short rows")
                    continue
                session, item, when = parts[0], parts[1], parts[2]
            else:  # the original clicks.dat: SessionId,Timestamp,ItemId,Category
                parts = line.rstrip("\n").split(",")
                if len(parts) < 3:
                    _skip(stats, "short rows")
                    continue
                session, when, item = parts[0], parts[1], parts[2]
            try:
                ts = parse_time(when)
            except ValueError:
                _skip(stats, "unreadable times")
                continue
            stats.events += 1
            yield Event(f"yc:{path.stem}:{n}", f"s:{session}", EventType.CLICK, ts, item, session)


def _taobao(path: Path, stats: LoadStats) -> Iterator[Event]:
    with open(path, encoding="utf-8") as fh:
        for n, row in enumerate(csv.reader(fh), start=1):
            stats.rows += 1
            if len(row) != 5:
                _skip(stats, "rows without 5 fields")
                continue
            user, item, category, behavior, when = row
            kind = _TYPE_ALIASES.get(behavior)
            if kind is None:
                _skip(stats, f"unknown behaviors ({behavior})")
                continue
            try:
                ts = int(when) * 1000
            except ValueError:
                _skip(stats, "unreadable times")
                continue
            stats.events += 1
            yield Event(f"tb:{n}", user, kind, ts, item, None, {"category": category})


def _diginetica(path: Path, stats: LoadStats) -> Iterator[Event]:
    with open(path, encoding="utf-8") as fh:
        for n, row in enumerate(csv.DictReader(fh, delimiter=";"), start=1):
            stats.rows += 1
            try:
                day = parse_time(row["eventdate"])
                ts = day + int(row["timeframe"])
            except (ValueError, KeyError, TypeError):
                _skip(stats, "unreadable times")
                continue
            session = row["session_id"]
            user = row.get("user_id") or "NA"
            stats.events += 1
            yield Event(
                f"dg:{n}", f"s:{session}" if user == "NA" else user, EventType.VIEW, ts, row["item_id"], session
            )


def _otto(path: Path, stats: LoadStats) -> Iterator[Event]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            record = json.loads(line)
            session = str(record["session"])
            for k, ev in enumerate(record["events"]):
                stats.rows += 1
                kind = _TYPE_ALIASES.get(str(ev.get("type")))
                if kind is None:
                    _skip(stats, "unknown event types")
                    continue
                stats.events += 1
                yield Event(
                    f"otto:{session}:{k}",
                    f"s:{session}",
                    kind,
                    _ts_from_number(float(ev["ts"])),
                    str(ev["aid"]),
                    session,
                )


def _rees46(path: Path, stats: LoadStats) -> Iterator[Event]:
    with open(path, encoding="utf-8") as fh:
        for n, row in enumerate(csv.DictReader(fh), start=1):
            stats.rows += 1
            kind = _TYPE_ALIASES.get(row.get("event_type", ""))
            if kind is None:
                _skip(stats, f"unsupported event types ({row.get('event_type')})")
                continue
            try:
                ts = parse_time(row["event_time"])
            except (ValueError, KeyError):
                _skip(stats, "unreadable times")
                continue
            props: dict[str, str | float | None] = {
                "category": row.get("category_code") or row.get("category_id") or None,
                "brand": row.get("brand") or None,
            }
            with contextlib.suppress(ValueError, KeyError):
                props["price"] = float(row["price"])
            stats.events += 1
            yield Event(f"r46:{n}", row["user_id"], kind, ts, row["product_id"], row.get("user_session") or None, props)


_GENERIC_ALIASES = {
    "sessionid": "session_id",
    "itemid": "item_id",
    "time": "timestamp",
    "ts": "timestamp",
    "userid": "user_id",
    "type": "event_type",
}


def _generic_rows(path: Path) -> Iterator[dict[str, str]]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            from insession.errors import MissingExtra

            raise MissingExtra("reading Parquet", "parquet") from None
        table = pq.read_table(path)
        for batch in table.to_batches():
            for record in batch.to_pylist():
                yield {str(k): "" if v is None else str(v) for k, v in record.items()}
        return
    with open(path, encoding="utf-8", newline="") as fh:
        sample = fh.read(4096)
        fh.seek(0)
        delimiter = "\t" if "\t" in sample.splitlines()[0] else (";" if ";" in sample.splitlines()[0] else ",")
        yield from csv.DictReader(fh, delimiter=delimiter)


def _generic(path: Path, stats: LoadStats) -> Iterator[Event]:
    required = ("session_id", "item_id", "timestamp")
    for n, raw in enumerate(_generic_rows(path), start=1):
        row = {
            _GENERIC_ALIASES.get(k.strip().lower(), k.strip().lower()): (v or "").strip()
            for k, v in raw.items()
            if k is not None
        }
        if n == 1:
            missing = [c for c in required if c not in row]
            if missing:
                raise ValidationError(
                    [
                        FieldError(
                            missing[0],
                            "a column (generic tables need session_id, item_id, timestamp)",
                            f"columns {sorted(row)}",
                        )
                    ]
                )
        stats.rows += 1
        try:
            ts = parse_time(row["timestamp"])
        except ValueError:
            _skip(stats, "unreadable times")
            continue
        kind = _TYPE_ALIASES.get(row.get("event_type", "").lower() or "click")
        if kind is None:
            _skip(stats, "unknown event types")
            continue
        props: dict[str, str | float | None] = {}
        if row.get("category"):
            props["category"] = row["category"]
        if row.get("price"):
            try:
                props["price"] = float(row["price"])
            except ValueError:
                _skip(stats, "unreadable prices (row kept)")
        session = row["session_id"]
        user = row.get("user_id") or f"s:{session}"
        stats.events += 1
        yield Event(f"gen:{path.stem}:{n}", user, kind, ts, row["item_id"], session, props)


_READERS: dict[str, Callable[[Path, LoadStats], Iterator[Event]]] = {
    "yoochoose": _yoochoose,
    "taobao": _taobao,
    "diginetica": _diginetica,
    "otto": _otto,
    "rees46": _rees46,
    "generic": _generic,
}
