"""`meterline query`: SQL over the billing store, as a table, CSV or JSON.

The store is opened read-only through consolidation.lake, so a query sees one
committed snapshot (the latest, or the one current at `--at`) and never blocks the
consolidation workers that write it. CSV and JSON carry every DECIMAL at its full
scale as text, never through a float; times are ISO 8601, TIMESTAMPTZ in UTC.
"""

from __future__ import annotations

import csv
import decimal
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final, TextIO

import duckdb

from consolidation import lake
from meterline.kernel.command_errors import CommandFailed, UserError

FORMATS: Final = ("table", "csv", "json")
# Rows fetched at a time for CSV and JSON: a large result is streamed, not held.
_CHUNK: Final = 2048
# What `meterline query` printed before it had formats.
_TABLE_ROWS: Final = 1000
_TABLE_WIDTH: Final = 200

Convert = Callable[[Any], Any]


def parse_at(text: str) -> datetime:
    """`--at`: an ISO 8601 time; one without an offset is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(
            f"--at {text!r} is not an ISO 8601 time; write e.g. 2026-12-06T10:00:00Z "
            "or 2026-12-06T11:00:00+01:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def run_query(
    sql: str,
    out: Path,
    *,
    catalog: str = "",
    at: datetime | None = None,
    fmt: str = "table",
) -> int:
    """Run `sql` on the store in `out` and print the result in `fmt`; the exit status."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    db = open_store(out, catalog, at)
    try:
        try:
            return _print(db, sql, fmt, sys.stdout)
        except BrokenPipeError:
            # The reader (`| head`) has what it wanted: no error, and no second one at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 0
    finally:
        db.close()


def open_store(out: Path, catalog: str, at: datetime | None) -> duckdb.DuckDBPyConnection:
    """The store in `out`, read-only, as of `at` (None: now); one clear error otherwise."""
    try:
        db = lake.connect(out, catalog=catalog, read_only=True, at=at)
    except lake.StoreMissingError:
        raise UserError(
            f"{out}: no billing store here (no {lake.CATALOG_FILE}); run the pipeline first or pass --out"
        ) from None
    except lake.StoreOpenError as exc:
        if at is not None and "snapshot" in str(exc).lower():
            raise UserError(_before_history(out, catalog, at)) from None
        raise CommandFailed(f"{out}: {_first_line(exc)}") from None
    # Times print in UTC whatever the machine's zone, as the pipeline keeps them.
    db.execute("SET TimeZone = 'UTC'")
    return db


def _before_history(out: Path, catalog: str, at: datetime) -> str:
    text = f"--at {at.isoformat()}: the store has no snapshot that early"
    try:
        db = lake.connect(out, catalog=catalog, read_only=True)
    except (lake.StoreOpenError, lake.StoreMissingError):
        return text
    try:
        row = db.execute(f"SELECT min(snapshot_time) FROM ducklake_snapshots('{lake.ALIAS}')").fetchone()
    except duckdb.Error:
        return text
    finally:
        db.close()
    if row is None or not isinstance(row[0], datetime):
        return text
    return f"{text}; its history starts at {_iso(row[0])}"


def _print(db: duckdb.DuckDBPyConnection, sql: str, fmt: str, stream: TextIO) -> int:
    try:
        relation = db.sql(sql)
        if relation is None:  # a statement without a result (SET, PRAGMA...)
            return 0
        if fmt == "table":
            relation.show(max_rows=_TABLE_ROWS, max_width=_TABLE_WIDTH)
            return 0
        columns = list(relation.columns)
        converters = [_converter(kind) for kind in relation.types]
        rows = _rows(relation, converters)
        if fmt == "csv":
            _write_csv(stream, columns, rows)
        else:
            _write_json(stream, columns, rows)
    except duckdb.Error as exc:  # also raised while fetching, e.g. a failing cast
        raise UserError(f"query failed: {_first_line(exc)}") from None
    stream.flush()
    return 0


def _rows(relation: duckdb.DuckDBPyRelation, converters: Sequence[Convert]) -> Iterator[list[Any]]:
    while chunk := relation.fetchmany(_CHUNK):
        for row in chunk:
            yield [convert(value) for convert, value in zip(converters, row, strict=True)]


def _write_csv(stream: TextIO, columns: list[str], rows: Iterator[list[Any]]) -> None:
    # The csv module quotes as RFC 4180 asks: fields with a comma, quote or line break.
    writer = csv.writer(stream, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_field(value) for value in row])


def _csv_field(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _write_json(stream: TextIO, columns: list[str], rows: Iterator[list[Any]]) -> None:
    seen: set[str] = set()
    for name in columns:
        if name in seen:
            raise UserError(
                f"column {name!r} appears twice; JSON objects need distinct names: give one an alias (AS ...)"
            )
        seen.add(name)
    stream.write("[")
    separator = "\n"
    for row in rows:
        stream.write(separator)
        stream.write(json.dumps(dict(zip(columns, row, strict=True)), ensure_ascii=False, allow_nan=False))
        separator = ",\n"
    stream.write("\n]\n" if separator != "\n" else "]\n")


def _converter(kind: duckdb.sqltypes.DuckDBPyType) -> Convert:
    """A column's values as JSON values: DECIMAL at the column's scale, times as ISO 8601."""
    if kind.id == "decimal":
        scale = dict(kind.children)["scale"]
        if not isinstance(scale, int):
            raise TypeError(f"unexpected DECIMAL type {kind}")
        return lambda value: None if value is None else _decimal(value, scale)
    return _plain


def _decimal(value: decimal.Decimal, scale: int | None = None) -> str:
    if scale is not None:
        # DuckDB hands over 38 digits; the default context (28) would round them.
        with decimal.localcontext() as context:
            context.prec = 80
            value = value.quantize(decimal.Decimal(1).scaleb(-scale))
    return format(value, "f")


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, decimal.Decimal):  # inside a LIST or STRUCT: as DuckDB scaled it
        return _decimal(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return _duration(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(_plain(key)): _plain(item) for key, item in value.items()}
    return str(value)  # UUID and the like


def _iso(moment: datetime) -> str:
    """ISO 8601; a TIMESTAMPTZ in UTC with its offset, a TIMESTAMP as stored."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.isoformat()


def _duration(span: timedelta) -> str:
    """An INTERVAL as an ISO 8601 duration (days and seconds)."""
    sign = "-" if span < timedelta(0) else ""
    span = abs(span)
    seconds = decimal.Decimal(span.seconds) + decimal.Decimal(span.microseconds).scaleb(-6)
    return f"{sign}P{span.days}DT{format(seconds.normalize(), 'f')}S"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
