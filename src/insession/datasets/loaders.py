"""Readers for YOOCHOOSE, Taobao UserBehavior, DIGINETICA, OTTO, REES46 and any table of events.

Every table-shaped format (CSV, TSV, Parquet) is read column by column by
:mod:`insession.datasets.table`; the research formats are presets of the same reader (a header or
column names, a mapping, an id scheme). OTTO's nested JSON lines and DIGINETICA's times relative to
a session start have readers of their own. Every reader counts what it cannot use by reason
(``LoadStats``); :func:`read_events` then fails the load when more than ``max_skipped`` of the rows
were skipped.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from insession.catalog import Item
from insession.datasets.mapping import FIELDS, TYPE_ALIASES, DataMapping
from insession.datasets.table import LoadStats, TableFormat, parse_time_text, table_events
from insession.errors import FieldError, ValidationError, describe
from insession.events import Event, EventType, check_event

FORMATS = ("auto", "generic", "yoochoose", "taobao", "diginetica", "otto", "rees46")

_TABLES: dict[str, TableFormat] = {
    "generic": TableFormat("generic"),
    # RecSys Challenge 2015: TSV with a header SessionId ItemId Time (unix seconds, float).
    "yoochoose": TableFormat(
        "yoochoose",
        DataMapping({"session_id": "SessionId", "item_id": "ItemId", "timestamp": "Time"}),
        delimiter="\t",
        id_template="yc:{stem}:{row}",
    ),
    # The original clicks.dat: SessionId,Timestamp,ItemId,Category without a header.
    "yoochoose-clicks": TableFormat(
        "yoochoose",
        DataMapping({"session_id": "SessionId", "item_id": "ItemId", "timestamp": "Timestamp"}),
        delimiter=",",
        names=("SessionId", "Timestamp", "ItemId", "Category"),
        id_template="yc:{stem}:{row}",
    ),
    "taobao": TableFormat(
        "taobao",
        DataMapping(
            {
                "user_id": "user_id",
                "item_id": "item_id",
                "category": "category_id",
                "event_type": "behavior",
                "timestamp": "timestamp",
            },
            {"pv": "view", "fav": "click", "cart": "add_to_cart", "buy": "purchase"},
        ),
        delimiter=",",
        names=("user_id", "item_id", "category_id", "behavior", "timestamp"),
        id_template="tb:{row}",
        seconds=True,
    ),
    "rees46": TableFormat(
        "rees46",
        DataMapping(
            {
                "timestamp": "event_time",
                "event_type": "event_type",
                "item_id": "product_id",
                "category": "category_code|category_id",
                "brand": "brand",
                "price": "price",
                "user_id": "user_id",
                "session_id": "user_session",
            },
            {"remove_from_cart": "dismiss"},
        ),
        delimiter=",",
        id_template="r46:{row}",
    ),
}


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
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        return fh.readline().strip()


def detect_format(path: Path, mapping: DataMapping | None = None) -> str:
    """Guess the format from the name and first line. A file with a mapping, or whose header
    holds the generic fields, is ``generic``; otherwise raises, naming the columns a table needs
    and what the file has."""
    path = _resolve(path)
    if path.suffix.lower() == ".parquet" or (mapping is not None and mapping.columns):
        return "generic"
    if path.suffix.lower() in (".jsonl", ".ndjson"):
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
        return "yoochoose-clicks"
    cols = {c.strip().lower() for c in head.replace("\t", ",").replace(";", ",").split(",")}
    if "item_id" in cols or "itemid" in cols:
        return "generic"
    from insession.datasets.mapping import mapping_text, suggest_columns

    guess = suggest_columns(c.strip() for c in head.replace("\t", ",").replace(";", ",").split(","))
    hint = f"; e.g. --columns {mapping_text(guess)}" if guess else ""
    raise ValidationError(
        [
            FieldError(
                "format",
                f"one of {', '.join(FORMATS[1:])}; a table of your own needs --format generic and columns named "
                f"item_id, timestamp and user_id or session_id, or a mapping to yours (--columns FIELD=COLUMN{hint})",
                f"{path.name} starting {describe(head)}",
            )
        ]
    )


def read_events(
    path: Path | str,
    format: str = "auto",
    mapping: DataMapping | None = None,
    stats: LoadStats | None = None,
    check: bool = True,
) -> tuple[list[Event], LoadStats]:
    """Every valid event of ``path`` in file order, and what was read and skipped. Fails (naming
    the most frequent unknown values and the flag that maps them) when more than
    ``mapping.max_skipped`` of the rows could not be used, unless ``check`` is false."""
    path = _resolve(Path(path))
    mapping = mapping or DataMapping()
    if format not in FORMATS:
        raise ValidationError([FieldError("format", " | ".join(FORMATS), describe(format))])
    fmt = detect_format(path, mapping) if format == "auto" else format
    if fmt == "yoochoose" and format == "yoochoose" and not _head(path).lower().startswith("sessionid"):
        fmt = "yoochoose-clicks"
    stats = stats if stats is not None else LoadStats()
    table = _TABLES.get(fmt)
    events = table_events(path, table, mapping, stats) if table is not None else list(_READERS[fmt](path, stats))
    if check:
        stats.check(mapping.max_skipped, str(path.name))
    return events, stats


def load_events(
    path: Path | str,
    format: str = "auto",
    stats: LoadStats | None = None,
    mapping: DataMapping | None = None,
) -> Iterator[Event]:
    """The events of ``path`` in file order (:func:`read_events`; ``stats`` is filled). Raises
    :class:`~insession.errors.ValidationError` before yielding anything when more than
    ``mapping.max_skipped`` (default 1%) of the rows cannot be used."""
    events, _ = read_events(path, format, mapping, stats)
    yield from events


def _kept(event: Event, stats: LoadStats) -> bool:
    """Whether a reader's event passes the one event validation (counted by field if not)."""
    errors = check_event(event)
    for error in errors[:1]:
        stats.skip(f"invalid {error.field}", error.got[:80])
    return not errors


def _diginetica(path: Path, stats: LoadStats) -> Iterator[Event]:
    with open(path, encoding="utf-8") as fh:
        for n, row in enumerate(csv.DictReader(fh, delimiter=";"), start=1):
            stats.rows += 1
            day = parse_time_text(row.get("eventdate"))
            try:
                ts = day + int(row["timeframe"]) if day >= 0 else -1
            except (ValueError, KeyError, TypeError):
                ts = -1
            if ts < 0:
                stats.skip("unreadable timestamp", f"{row.get('eventdate')}+{row.get('timeframe')}")
                continue
            session = row["session_id"]
            user = row.get("user_id") or "NA"
            event = Event(
                f"dg:{n}", f"s:{session}" if user == "NA" else user, EventType.VIEW, ts, row["item_id"], session
            )
            if _kept(event, stats):
                stats.events += 1
                yield event


def _otto(path: Path, stats: LoadStats) -> Iterator[Event]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            record = json.loads(line)
            session = str(record["session"])
            for k, ev in enumerate(record["events"]):
                stats.rows += 1
                kind = TYPE_ALIASES.get(str(ev.get("type")))
                if kind is None:
                    stats.skip("unknown event type", str(ev.get("type")))
                    continue
                ts = parse_time_text(str(ev.get("ts")))
                if ts < 0:
                    stats.skip("unreadable timestamp", str(ev.get("ts")))
                    continue
                event = Event(f"otto:{session}:{k}", f"s:{session}", kind, ts, str(ev["aid"]), session)
                if _kept(event, stats):
                    stats.events += 1
                    yield event


_READERS: dict[str, Callable[[Path, LoadStats], Iterator[Event]]] = {
    "diginetica": _diginetica,
    "otto": _otto,
}

#: Column names an items file may use for each item field (first found wins).
_ITEM_COLUMNS: dict[str, tuple[str, ...]] = {
    "item_id": ("item_id", "itemid", "sku", "product_id", "id", "item"),
    "name": ("name", "title", "product_name"),
    "category": ("category", "cat", "category_id", "category_code"),
    "brand": ("brand", "manufacturer", "vendor"),
    "price": ("price", "unit_price"),
    "available": ("available", "availability", "in_stock", "stock"),
}


def load_items(path: Path | str, columns: dict[str, str] | None = None) -> tuple[list[Item], LoadStats]:
    """An items file (CSV, TSV or Parquet): ``item_id`` and any of ``name``, ``category``,
    ``brand``, ``price``, ``available`` (true/false, yes/no, 1/0, in_stock/out_of_stock, or a stock
    count: 0 is unavailable). Common other names are recognised (``sku``, ``title``, ``stock``);
    ``columns`` maps a field to a column explicitly. Invalid rows are counted, never taken."""
    from insession.catalog import parse_item

    path = _resolve(Path(path))
    table_path = path
    import pyarrow as pa

    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(table_path)
    else:
        import pyarrow.csv as pcsv

        from insession.datasets.table import _delimiter

        table = pcsv.read_csv(
            table_path,
            parse_options=pcsv.ParseOptions(delimiter=_delimiter(table_path)),
            convert_options=pcsv.ConvertOptions(strings_can_be_null=True, column_types=None),
        )
    present = {c.strip().lower(): c for c in table.column_names}
    chosen: dict[str, str] = {}
    for name, aliases in _ITEM_COLUMNS.items():
        wanted = (columns or {}).get(name)
        if wanted is not None:
            if wanted.lower() not in present:
                raise ValidationError(
                    [
                        FieldError(
                            f"columns.{name}", f"a column of {path.name} ({', '.join(table.column_names)})", wanted
                        )
                    ]
                )
            chosen[name] = present[wanted.lower()]
            continue
        found = next((present[a] for a in aliases if a in present), None)
        if found is not None:
            chosen[name] = found
    if "item_id" not in chosen:
        raise ValidationError(
            [
                FieldError(
                    "item_id",
                    "an item_id column (or sku, product_id, id) in the items file",
                    f"{path.name} has columns {', '.join(table.column_names)}",
                )
            ]
        )
    stats = LoadStats()
    rows = {name: table.column(col).cast(pa.string()).to_pylist() for name, col in chosen.items()}
    items: list[Item] = []
    for n in range(table.num_rows):
        stats.rows += 1
        raw = {name: values[n] for name, values in rows.items()}
        item, errors = parse_item(raw, text_numbers=True)
        if item is None:
            stats.skip(f"invalid {errors[0].field}", errors[0].got[:80])
            continue
        stats.events += 1
        items.append(item)
    return items, stats


__all__ = ["FIELDS", "FORMATS", "LoadStats", "detect_format", "load_events", "load_items", "read_events"]
