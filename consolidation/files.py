"""The consolidator's Arrow rows and Parquet exports: the rated-usage rows of a batch,
and atomic writes of the Parquet files exported for tools that read plain Parquet.

Every export goes to a temporary name, is fsynced, renamed and its folder fsynced, so
a reader never sees half a file and a killed writer leaves only a temporary to delete.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.codec import RATED_FIELDS

EXACT = pa.decimal128(38, 18)
MONEY = pa.decimal128(38, 4)  # 4 places: wide enough for every ISO 4217 minor unit

RATED_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("account_id", pa.string()),
        ("meter", pa.string()),
        ("charge_id", pa.string()),
        ("model", pa.string()),
        ("contract_id", pa.string()),
        ("plan_id", pa.string()),
        ("event_time", pa.timestamp("us", tz="UTC")),
        ("quantity", EXACT),
        ("rated_quantity", EXACT),
        ("amount", EXACT),
        ("aggregate_before", EXACT),
        ("aggregate_after", EXACT),
        ("currency", pa.string()),
        ("invoice_id", pa.string()),
        ("attributes", pa.string()),
        ("source_partition", pa.int32()),
        ("source_offset", pa.int64()),
        ("period", pa.string()),
    ]
)

# Temporary files of write_parquet_atomically: `.NAME.tmp-PID`.
TEMPORARY = ".*.tmp-*"
_PERIOD = RATED_FIELDS.index("period")


class RatedRows:
    """The rated records of one batch and partition, as rows of decode_rated_row.

    Rows are turned into columns once per batch (zip, in C); decimal fields stay
    text until Arrow casts a whole column to DECIMAL(38,18), which is exact (a
    value that does not fit raises, which is why the batch checks every value
    first), so the sink builds no Decimal or dict per event.
    """

    __slots__ = ("periods", "rows", "source_offsets", "source_partitions")

    def __init__(self) -> None:
        self.rows: list[Sequence[Any]] = []
        self.source_partitions: list[int] = []
        self.source_offsets: list[int] = []
        self.periods: set[str] = set()

    def append(self, row: Sequence[Any], partition: int, offset: int) -> None:
        """Add one record: `row` holds its values in RATED_FIELDS order."""
        self.rows.append(row)
        self.source_partitions.append(partition)
        self.source_offsets.append(offset)
        self.periods.add(row[_PERIOD])

    def __len__(self) -> int:
        return len(self.rows)

    def table(self) -> pa.Table:
        columns: dict[str, Sequence[Any]] = dict.fromkeys(RATED_FIELDS, ())
        if self.rows:
            columns.update(zip(RATED_FIELDS, zip(*self.rows, strict=True), strict=True))
        # As JSON text; Arrow takes orjson's UTF-8 bytes for a string column without a decode.
        columns["attributes"] = [orjson.dumps(values) for values in columns["attributes"]]
        columns["source_partition"] = self.source_partitions
        columns["source_offset"] = self.source_offsets
        arrays = [
            pc.cast(pa.array(columns[f.name], pa.string()), f.type)
            if pa.types.is_decimal(f.type)
            else pa.array(columns[f.name], f.type)
            for f in RATED_SCHEMA
        ]
        return pa.Table.from_arrays(arrays, schema=RATED_SCHEMA)


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_file(temporary: Path, path: Path) -> None:
    """Rename a written temporary file to its name, durably (file, then folder)."""
    fsync_file(temporary)
    os.replace(temporary, path)
    fsync_dir(path.parent)


def write_parquet_atomically(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    pq.write_table(table, temporary)
    publish_file(temporary, path)


def temporary_files(*folders: Path) -> Iterator[Path]:
    """Temporary files left by writes under these folders (one level of subfolders deep)."""
    for folder in folders:
        if folder.is_dir():
            yield from folder.glob(TEMPORARY)
            yield from folder.glob(f"*/{TEMPORARY}")
