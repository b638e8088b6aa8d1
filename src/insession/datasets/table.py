"""Reading a table (CSV, TSV, Parquet) column by column into events.

The file is read with pyarrow into columns; each field is found through a
:class:`~insession.datasets.mapping.DataMapping`, converted and checked column-wise (ids and
event names once per distinct value), and only then turned into :class:`~insession.events.Event`
values. Every row that cannot become a valid event (the same rules ``POST /v1/events`` applies)
is counted by reason and by value in :class:`LoadStats`; :meth:`LoadStats.check` fails the load
when more than ``max_skipped`` of the rows were skipped, naming the most frequent values and the
flag that maps them.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from insession.datasets.mapping import FIELDS, DataMapping, mapping_text, suggest_columns, suggest_type
from insession.errors import FieldError, MissingExtra, ValidationError, describe
from insession.events import (
    ITEM_EVENT_TYPES,
    MAX_PLAUSIBLE_TS_MS,
    MIN_PLAUSIBLE_TS_MS,
    Event,
    EventType,
    PropertyValue,
    _id_error,
    _property_error,
)

#: How many distinct values per skip reason are remembered (the most frequent are reported).
_VALUES_KEPT = 1000


@dataclass(slots=True)
class LoadStats:
    """What a load read, what it could not use (by reason, and by value within a reason), and the
    rows it kept with a note (e.g. a price it could not read)."""

    rows: int = 0
    events: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    values: dict[str, Counter[str]] = field(default_factory=dict)
    notes: Counter[str] = field(default_factory=Counter)

    def skip(self, reason: str, value: str | None = None, n: int = 1) -> None:
        self.skipped[reason] += n
        if value is not None:
            seen = self.values.setdefault(reason, Counter())
            if value in seen or len(seen) < _VALUES_KEPT:
                seen[value] += n

    @property
    def skipped_rows(self) -> int:
        """Rows read that did not become an event (a row at fault for two reasons counts once)."""
        return max(self.rows - self.events, 0)

    def top_values(self, reason: str, n: int = 5) -> list[tuple[str, int]]:
        return self.values.get(reason, Counter()).most_common(n)

    def summary(self) -> str:
        text = f"{self.events} events from {self.rows} rows"
        if self.skipped:
            parts = []
            for why, count in self.skipped.most_common():
                top = self.top_values(why, 3)
                shown = f" ({', '.join(f'{v} {c}' for v, c in top)})" if top else ""
                parts.append(f"{count} {why}{shown}")
            text += f"; skipped {self.skipped_rows} ({self.skipped_rows / max(self.rows, 1):.2%}): " + ", ".join(parts)
        if self.notes:
            text += "; kept with a note: " + ", ".join(f"{n} {why}" for why, n in self.notes.most_common())
        return text

    def check(self, max_skipped: float, source: str = "data") -> None:
        """Fail when more than ``max_skipped`` of the rows were skipped: name the most frequent
        reasons and values and the flag that maps them."""
        if not self.rows or self.skipped_rows / self.rows <= max_skipped:
            return
        errors = [
            FieldError(
                source,
                f"at most max_skipped = {max_skipped:.2%} of the rows skipped (--max-skipped)",
                f"{self.skipped_rows} of {self.rows} rows ({self.skipped_rows / self.rows:.1%}) skipped",
            )
        ]
        for reason, count in self.skipped.most_common():
            errors.append(_advice(reason, count, self.top_values(reason)))
        raise ValidationError(errors)


def _advice(reason: str, count: int, top: list[tuple[str, int]]) -> FieldError:
    values = ", ".join(f"{v!r} ({c} rows)" for v, c in top) or "-"
    if reason == "unknown event type":
        guesses = {v: suggest_type(v) for v, _ in top}
        pairs = {v: (g.value if g else "view|click|add_to_cart|purchase|search|dismiss") for v, g in guesses.items()}
        return FieldError(
            "event_type",
            f"a known event type; map the file's names with --event-types {mapping_text(pairs)} "
            "(or [data] event_types in the config)",
            f"{count} rows with unknown event types: {values}",
        )
    if reason == "unreadable timestamp":
        return FieldError(
            "timestamp",
            "epoch seconds or milliseconds, or an ISO-8601 date-time (check --columns timestamp=COLUMN)",
            f"{count} rows: {values}",
        )
    name = reason.split()[-1] if reason.split()[-1] in FIELDS else "row"
    return FieldError(name, f"no rows with {reason} (check --columns {name}=COLUMN)", f"{count} rows: {values}")


@dataclass(frozen=True, slots=True)
class TableFormat:
    """How to read one kind of table: its preset mapping and file layout.

    ``names`` are the columns of a file without a header row. ``id_template`` makes event ids from
    the row number (``"tb:{row}"``, ``"yc:{stem}:{row}"``: the research formats, whose rows never
    change); without one, an id is derived from the row's content (user, session, item, event name,
    time, and how many identical rows came before), so the same row gets the same id in any export
    that contains it. ``seconds``: numeric timestamps are seconds (else seconds or milliseconds by
    magnitude)."""

    name: str
    mapping: DataMapping = field(default_factory=DataMapping)
    delimiter: str | None = None
    names: tuple[str, ...] = ()
    id_template: str | None = None
    seconds: bool = False


# -- reading the file into columns ---------------------------------------------------------------


def _delimiter(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        first = fh.readline()
    return "\t" if "\t" in first else (";" if ";" in first and "," not in first else ",")


def _arrow() -> Any:
    try:
        import pyarrow
    except ImportError:  # a core dependency; only a broken install lacks it
        raise MissingExtra("reading tables", "parquet") from None
    return pyarrow


def read_columns(path: Path, fmt: TableFormat) -> tuple[Any, list[int] | None]:
    """The file as a pyarrow table (every CSV column as text) and, when rows were malformed (a
    wrong number of fields), their 1-based data-row numbers (``None``: no row was)."""
    pa = _arrow()
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path), None
    import pyarrow.csv as pcsv

    delimiter = fmt.delimiter or _delimiter(path)
    if fmt.names:
        names = list(fmt.names)
    else:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
            import csv

            header = next(csv.reader([fh.readline()], delimiter=delimiter), [])
        names = [h.strip() for h in header]
        if not names or not any(names):
            raise ValidationError(
                [FieldError("data", f"a header row naming the columns of {path.name}", "an empty line")]
            )
    bad: list[int | None] = []

    def invalid(row: Any) -> str:
        bad.append(row.number)
        return "skip"

    def read(threads: bool, types: Any) -> Any:
        bad.clear()
        return pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(
                column_names=names, skip_rows=0 if fmt.names else 1, use_threads=threads, block_size=1 << 24
            ),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=invalid, newlines_in_values=False),
            convert_options=pcsv.ConvertOptions(
                column_types={n: types for n in names}, strings_can_be_null=False, quoted_strings_can_be_null=False
            ),
        )

    try:
        table = read(True, pa.string())
        if bad and fmt.id_template is not None:
            table = read(False, pa.string())  # row numbers are only known to a single-threaded read
    except pa.ArrowInvalid as exc:
        if "UTF8" not in str(exc):
            raise ValidationError([FieldError("data", f"a readable {fmt.name} table", f"{path.name}: {exc}")]) from None
        table = read(True, pa.binary())  # invalid UTF-8 somewhere: decoded value by value below
        if bad and fmt.id_template is not None:
            table = read(False, pa.binary())
    header_lines = 0 if fmt.names else 1
    rows = None if not bad else sorted(n - header_lines for n in bad if n is not None) or [0] * len(bad)
    return table, rows


# -- columns to values -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Text:
    """A text column as distinct values and a code per row (-1: empty or missing)."""

    values: list[str]
    codes: npt.NDArray[np.int64]


def _text(table: Any, name: str, stats: LoadStats, required: bool = True) -> _Text:
    """Distinct values and codes of a column. Bytes that are not UTF-8: the row is skipped (code -2,
    counted) when the field is ``required`` for an event, else the value is dropped (noted)."""
    pa = _arrow()
    import pyarrow.compute as pc

    column = table.column(name)
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        encoded = pc.dictionary_encode(column).combine_chunks()
        raw = encoded.dictionary.to_pylist()
        decoded: list[str] = []
        for value in raw:
            try:
                decoded.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                decoded.append("\0invalid")
        codes = _codes(encoded)
        bad = [n for n, v in enumerate(decoded) if v == "\0invalid"]
        if bad:
            mask = np.isin(codes, bad)
            if required:
                stats.skip(f"invalid UTF-8 in column {name}", None, int(mask.sum()))
                codes[mask] = -2  # skipped later, counted here
            else:
                stats.notes[f"invalid UTF-8 in column {name} (value dropped from the row)"] += int(mask.sum())
                codes[mask] = -1
            for n in bad:
                decoded[n] = ""
        return _Text(decoded, codes)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = pc.cast(column, pa.string())
    encoded = pc.dictionary_encode(column).combine_chunks()
    values = [v.strip() for v in encoded.dictionary.to_pylist()]
    codes = _codes(encoded)
    empty = [n for n, v in enumerate(values) if not v]
    if empty:
        codes[np.isin(codes, empty)] = -1
    return _Text(values, codes)


def _codes(encoded: Any) -> npt.NDArray[np.int64]:
    indices = encoded.indices
    if not indices.null_count:
        return np.asarray(indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    import pyarrow.compute as pc

    return np.asarray(pc.fill_null(indices, -1).to_numpy(zero_copy_only=False), dtype=np.int64)


def _first_present(table: Any, names: Sequence[str], stats: LoadStats, required: bool) -> _Text | None:
    """A text field read from the first non-empty of several columns (``a|b`` in a mapping)."""
    found = [_text(table, n, stats, required) for n in names]
    if not found:
        return None
    if len(found) == 1:
        return found[0]
    values: list[str] = []
    index: dict[str, int] = {}
    codes = np.full(table.num_rows, -1, dtype=np.int64)
    for text in found:
        remap = np.array([index.setdefault(v, len(index)) for v in text.values] or [0], dtype=np.int64)
        take = (codes == -1) & (text.codes >= 0)
        codes[take] = remap[text.codes[take]]
    values = [""] * len(index)
    for v, n in index.items():
        values[n] = v
    return _Text(values, codes)


def _timestamps(table: Any, name: str, seconds: bool, stats: LoadStats) -> npt.NDArray[np.int64]:
    """Epoch milliseconds per row (-1 where unreadable or implausible, counted by value)."""
    pa = _arrow()
    import pyarrow.compute as pc

    column = table.column(name)
    n = table.num_rows
    out = np.full(n, -1, dtype=np.int64)
    if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type):
        as_ms = pc.cast(pc.cast(column, pa.timestamp("ms", tz="UTC")), pa.int64())
        out = np.asarray(pc.fill_null(as_ms, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
    else:
        numbers = None
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            numbers = pc.cast(column, pa.float64())
        else:
            text = column if not pa.types.is_binary(column.type) else pc.cast(column, pa.string(), safe=False)
            try:
                numbers = pc.cast(text, pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                numbers = None
            if numbers is None:
                return _text_timestamps(text, stats, out)
        values = np.asarray(pc.fill_null(numbers, np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)
        out = _numeric_ms(values, seconds)
    _check_range(out, column, stats)
    return out


def _numeric_ms(values: npt.NDArray[np.float64], seconds: bool) -> npt.NDArray[np.int64]:
    """Seconds, milliseconds, microseconds or nanoseconds (by magnitude) to epoch ms."""
    out = np.full(len(values), -1, dtype=np.int64)
    ok = np.isfinite(values)
    v = np.where(ok, values, 0.0)
    if seconds:
        ms = v * 1000.0
    else:
        ms = np.select([v < 1e11, v < 1e14, v < 1e17], [v * 1000.0, v, v / 1e3], v / 1e6)
    ok &= np.abs(ms) < 9e15
    out[ok] = np.rint(ms[ok]).astype(np.int64)
    return out


def _text_timestamps(text: Any, stats: LoadStats, out: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Date-time strings: ISO-8601 with or without a zone (no zone: UTC), as arrow parses them,
    and value by value what it does not (``2019-10-01 00:00:00 UTC``)."""
    pa = _arrow()
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(text).combine_chunks()
    distinct = encoded.dictionary
    parsed = np.full(len(distinct), -1, dtype=np.int64)
    for kind in (pa.timestamp("ms", tz="UTC"), pa.timestamp("ms")):
        try:
            parsed = np.asarray(
                pc.fill_null(pc.cast(pc.cast(distinct, kind), pa.int64()), -1).to_numpy(zero_copy_only=False),
                dtype=np.int64,
            )
            break
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    else:
        for i, value in enumerate(distinct.to_pylist()):
            parsed[i] = parse_time_text(value)
    codes = _codes(encoded)
    good = codes >= 0
    out[good] = parsed[codes[good]]
    unreadable = good & (out == -1)
    if unreadable.any():
        for code, count in zip(*np.unique(codes[unreadable], return_counts=True), strict=True):
            stats.skip("unreadable timestamp", str(distinct[int(code)].as_py())[:80], int(count))
        out[unreadable] = -2  # counted
    missing = ~good
    if missing.any():
        stats.skip("unreadable timestamp", "(empty)", int(missing.sum()))
        out[missing] = -2
    return out


def parse_time_text(value: str | None) -> int:
    """One date-time string to epoch ms, or -1: epoch seconds/ms, ISO-8601 (no zone: UTC), or a
    trailing `` UTC``."""
    if value is None:
        return -1
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return int(_numeric_ms(np.array([number]), False)[0])
    cleaned = text.replace(" UTC", "+00:00").replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(cleaned)
    except ValueError:
        return -1
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return round(parsed.timestamp() * 1000)


def _check_range(out: npt.NDArray[np.int64], column: Any, stats: LoadStats) -> None:
    """Count rows without a time (empty) or with one outside 1973..2100, and mark them skipped."""
    empty = out == -1
    if empty.any():
        stats.skip("unreadable timestamp", "(empty)", int(empty.sum()))
    far = (out != -2) & ~empty & ((out < MIN_PLAUSIBLE_TS_MS) | (out > MAX_PLAUSIBLE_TS_MS))
    if far.any():
        for value, count in zip(*np.unique(out[far], return_counts=True), strict=True):
            stats.skip("timestamp out of range (1973..2100)", f"{int(value)} ms", int(count))
    out[empty | far] = -2


def _prices(table: Any, name: str, stats: LoadStats) -> npt.NDArray[np.float64]:
    """Prices per row (NaN where absent); an unreadable or negative price is dropped from its row
    (the row is kept, with a note)."""
    pa = _arrow()
    import pyarrow.compute as pc

    column = table.column(name)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_decimal(column.type):
        values = np.asarray(pc.fill_null(pc.cast(column, pa.float64()), np.nan).to_numpy(zero_copy_only=False))
    else:
        text = _text(table, name, stats, required=False)
        parsed = np.full(len(text.values), np.nan)
        for i, v in enumerate(text.values):
            try:
                parsed[i] = float(v) if v else np.nan
            except ValueError:
                parsed[i] = -1.0  # unreadable: noted below
        values = np.where(text.codes >= 0, parsed[np.maximum(text.codes, 0)], np.nan)
    bad = ~np.isnan(values) & ~((values >= 0) & np.isfinite(values))
    if bad.any():
        stats.notes["unreadable or negative prices (dropped from the row)"] += int(bad.sum())
        values = np.where(bad, np.nan, values)
    return values.astype(np.float64)


# -- rows to events ---------------------------------------------------------------------------------

#: Other names a generic table may use for a field without a mapping (the research formats' own).
_GENERIC_ALIASES: dict[str, tuple[str, ...]] = {
    "session_id": ("sessionid",),
    "item_id": ("itemid",),
    "timestamp": ("time", "ts"),
    "user_id": ("userid",),
    "event_type": ("type",),
}


def _columns_for(table: Any, fmt: TableFormat, mapping: DataMapping, source: str) -> dict[str, tuple[str, ...]]:
    """Field -> the table columns it is read from; refuses a table that lacks what is required,
    naming every missing field and suggesting a mapping from its header."""
    header = list(table.column_names)
    present = {c.lower(): c for c in header}
    found: dict[str, tuple[str, ...]] = {}
    errors: list[FieldError] = []
    for name in FIELDS:
        wanted = mapping.column_choices(name)
        have = tuple(present[c.lower()] for c in wanted if c.lower() in present)
        if wanted and not have:
            errors.append(
                FieldError(
                    f"columns.{name}", f"a column of {source} (it has: {', '.join(header)})", mapping.columns[name]
                )
            )
        elif have:
            found[name] = have
    used = {c for names in found.values() for c in names}
    for name in FIELDS:  # a table whose columns are named as the fields needs no mapping for them
        if name not in found and name not in mapping.columns and not fmt.names:
            for alias in (name, *_GENERIC_ALIASES.get(name, ())):
                column = present.get(alias)
                if column is not None and column not in used:
                    found[name] = (column,)
                    used.add(column)
                    break
    missing = [n for n in ("item_id", "timestamp") if n not in found]
    if "user_id" not in found and "session_id" not in found:
        missing.append("user_id (or session_id)")
    if missing and not errors:
        guess = suggest_columns(header)
        hint = f"; try --columns {mapping_text(guess)}" if guess else ""
        for name in missing:
            errors.append(
                FieldError(
                    name.split()[0],
                    "a column for each of item_id, timestamp and user_id or session_id "
                    f"(map yours with --columns FIELD=COLUMN){hint}",
                    f"{source} has columns {', '.join(header)}",
                )
            )
    if errors:
        raise ValidationError(errors)
    return found


def _valid_ids(text: _Text, name: str, stats: LoadStats) -> None:
    """Mark the rows whose id fails validation (too long, control characters) as skipped."""
    bad = [n for n, v in enumerate(text.values) if v and _id_error(name, v) is not None]
    if not bad:
        return
    mask = np.isin(text.codes, bad)
    for code, count in zip(*np.unique(text.codes[mask], return_counts=True), strict=True):
        stats.skip(f"invalid {name}", describe(text.values[int(code)]), int(count))
    text.codes[mask] = -2


def _valid_property(text: _Text, key: str, stats: LoadStats) -> None:
    """Drop (with a note) property values the event validation would refuse."""
    bad = [n for n, v in enumerate(text.values) if v and _property_error(key, v) is not None]
    if bad:
        mask = np.isin(text.codes, bad)
        stats.notes[f"invalid {key} values (dropped from the row)"] += int(mask.sum())
        text.codes[mask] = -1


def table_events(path: Path, fmt: TableFormat, mapping: DataMapping, stats: LoadStats) -> list[Event]:
    """Every valid event of the table at ``path``, in file order; ``stats`` counts the rest."""
    mapping = fmt.mapping.merged(mapping)
    table, malformed = read_columns(path, fmt)
    n = table.num_rows
    stats.rows += n + (len(malformed) if malformed else 0)
    if malformed:
        stats.skip("malformed rows (wrong number of fields)", None, len(malformed))
    cols = _columns_for(table, fmt, mapping, path.name)
    text = {
        name: _first_present(table, cols[name], stats, name not in ("category", "brand"))
        for name in cols
        if name not in ("timestamp", "price")
    }
    ts = _timestamps(table, cols["timestamp"][0], fmt.seconds, stats)
    price = _prices(table, cols["price"][0], stats) if "price" in cols else None
    for name in ("user_id", "session_id", "item_id", "event_id"):
        found = text.get(name)
        if found is not None:
            _valid_ids(found, name, stats)
    for name in ("category", "brand"):
        found = text.get(name)
        if found is not None:
            _valid_property(found, name, stats)
    used = {c for names in cols.values() for c in names}
    extra_names = (
        [c for c in table.column_names if c not in used]
        if mapping.properties == ("*",)
        else [c for c in mapping.properties if c in table.column_names and c not in used]
    )
    absent = [c for c in mapping.properties if c != "*" and c not in table.column_names]
    if absent:
        raise ValidationError(
            [FieldError("properties", f"columns of {path.name} ({', '.join(table.column_names)})", ", ".join(absent))]
        )
    extras = {c: _text(table, c, stats, required=False) for c in extra_names}
    for key, found in extras.items():
        _valid_property(found, key, stats)

    keep = ts >= 0
    # Event types: one decision per distinct value.
    types = text.get("event_type")
    kinds: list[EventType | None]
    if types is None:
        kinds = [EventType(mapping.default_event_type)]
        type_codes = np.zeros(n, dtype=np.int64)
    else:
        kinds = [mapping.type_of(v) if v else None for v in types.values]
        type_codes = types.codes
        unknown = (type_codes >= 0) & np.isin(type_codes, [i for i, k in enumerate(kinds) if k is None])
        for code, count in zip(*np.unique(type_codes[unknown & keep], return_counts=True), strict=True):
            stats.skip("unknown event type", types.values[int(code)], int(count))
        empty = (type_codes == -1) & keep
        if empty.any():
            stats.skip("unknown event type", "(empty)", int(empty.sum()))
        keep &= (type_codes >= 0) & ~unknown
    users, sessions, items = text.get("user_id"), text.get("session_id"), text.get("item_id")
    for found in (users, sessions, items, text.get("event_id")):
        if found is not None:
            keep &= found.codes != -2
    if users is None:
        assert sessions is not None  # _columns_for requires one of them
        no_user = sessions.codes < 0
    else:
        no_user = (users.codes < 0) & (sessions.codes < 0 if sessions is not None else True)
    if (no_user & keep).any():
        stats.skip("missing user_id", None, int((no_user & keep).sum()))
    keep &= ~no_user
    item_kinds = np.array([k in ITEM_EVENT_TYPES if k is not None else False for k in kinds] or [False])
    assert items is not None
    needs_item = item_kinds[np.maximum(type_codes, 0)] & (items.codes < 0)
    if (needs_item & keep).any():
        stats.skip("missing item_id", None, int((needs_item & keep).sum()))
    keep &= ~needs_item

    rows = np.flatnonzero(keep)
    events = _build(path, fmt, rows, ts, kinds, type_codes, text, price, extras, malformed)
    stats.events += len(events)
    return events


def column_of(found: _Text) -> tuple[list[str | None], list[int]]:
    """Distinct values (with ``None`` appended for empty) and, per row, an index into them."""
    return [*found.values, None], np.where(found.codes >= 0, found.codes, len(found.values)).tolist()


def _row_numbers(n_rows: int, malformed: list[int] | None) -> npt.NDArray[np.int64]:
    """The 1-based data-row number of each table row (malformed rows were left out of the table)."""
    numbers = np.arange(1, n_rows + 1, dtype=np.int64)
    if malformed:
        for bad in sorted(malformed):
            numbers[numbers >= bad] += 1
    return numbers


def _build(
    path: Path,
    fmt: TableFormat,
    rows: npt.NDArray[np.int64],
    ts: npt.NDArray[np.int64],
    kinds: list[EventType | None],
    type_codes: npt.NDArray[np.int64],
    text: dict[str, _Text | None],
    price: npt.NDArray[np.float64] | None,
    extras: dict[str, _Text],
    malformed: list[int] | None,
) -> list[Event]:
    def column(name: str) -> tuple[list[str | None], list[int]] | None:
        found = text.get(name)
        return None if found is None else column_of(found)

    users, sessions, items = column("user_id"), column("session_id"), column("item_id")
    explicit, categories, brands = column("event_id"), column("category"), column("brand")
    raw_types = text.get("event_type")
    type_names = raw_types.values if raw_types is not None else [""]
    numbers = _row_numbers(len(ts), malformed).tolist() if fmt.id_template is not None else None
    stem = path.stem
    extra_cols = [(k, column_of(found)) for k, found in extras.items()]
    seen: dict[str, int] = {}
    out: list[Event] = []
    append = out.append
    ts_list = ts.tolist()
    tcodes = type_codes.tolist()
    prices = price.tolist() if price is not None else None
    none: tuple[list[str | None], list[int]] = ([None], [0] * len(ts_list))
    u_vals, u_codes = users or none
    s_vals, s_codes = sessions or none
    assert items is not None
    i_vals, i_codes = items
    for r in rows.tolist():
        user = u_vals[u_codes[r]]
        session = s_vals[s_codes[r]]
        if user is None:
            user = f"s:{session}"
        item = i_vals[i_codes[r]]
        kind = kinds[tcodes[r]]
        assert kind is not None
        when = ts_list[r]
        if explicit is not None and (eid := explicit[0][explicit[1][r]]) is not None:
            event_id = eid
        elif numbers is not None:
            assert fmt.id_template is not None
            event_id = fmt.id_template.format(stem=stem, row=numbers[r])
        else:
            key = f"{user}\x1f{session or ''}\x1f{item or ''}\x1f{type_names[tcodes[r]]}\x1f{when}"
            digest = hashlib.blake2b(key.encode(), digest_size=10).hexdigest()
            count = seen.get(digest, 0)
            seen[digest] = count + 1
            event_id = f"r:{digest}" if count == 0 else f"r:{digest}#{count + 1}"
        props: dict[str, PropertyValue] = {}
        if categories is not None and (c := categories[0][categories[1][r]]) is not None:
            props["category"] = c
        if brands is not None and (b := brands[0][brands[1][r]]) is not None:
            props["brand"] = b
        if prices is not None and prices[r] == prices[r]:  # not NaN
            props["price"] = prices[r]
        for key_name, (values, codes) in extra_cols:
            value = values[codes[r]]
            if value is not None:
                props[key_name] = value
        append(Event(event_id, user, kind, when, item, session, props))
    return out


__all__ = ["LoadStats", "TableFormat", "parse_time_text", "read_columns", "table_events"]
