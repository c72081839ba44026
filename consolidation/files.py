"""The consolidator's Parquet files: the rated-usage rows of a batch, atomic writes, names.

A rated-usage file is named after the input partition and the offset range it
holds, `part-PPP-FFFFFFFFFFFF-LLLLLLLLLLLL[-cN].parquet`, so a batch rewritten
after a crash replaces its file instead of adding a second copy. `-cN` marks a
file compacted N levels up (consolidation.compaction); batch files have none.

Every write goes to a temporary name, is fsynced, renamed and its folder fsynced:
a file whose existence DuckDB records (through the consumed offsets, or by name)
must survive a power cut that the DuckDB commit after it survives.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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
_NAME = re.compile(r"part-(\d{3,})-(\d{12,})-(\d{12,})(?:-c(\d+))?\.parquet")
_PERIOD = RATED_FIELDS.index("period")


@dataclass(frozen=True, slots=True)
class RatedFile:
    """A rated-usage file of one input partition and period, parsed from its name."""

    path: Path
    partition: int
    first: int
    last: int
    level: int  # 0 for a batch file, N for a file compacted N times over

    @staticmethod
    def parse(path: Path) -> RatedFile | None:
        match = _NAME.fullmatch(path.name)
        if match is None:
            return None
        partition, first, last, level = match.groups()
        return RatedFile(path, int(partition), int(first), int(last), int(level or 0))


def rated_file_name(partition: int, first: int, last: int, level: int = 0) -> str:
    suffix = f"-c{level}" if level else ""
    return f"part-{partition:03d}-{first:012d}-{last:012d}{suffix}.parquet"


def rated_files(folder: Path, partition: int) -> list[RatedFile]:
    """The rated-usage files of one partition in one period folder, in offset order."""
    found = (RatedFile.parse(p) for p in folder.glob(f"part-{partition:03d}-*.parquet"))
    return sorted((f for f in found if f is not None), key=lambda f: (f.first, f.last, f.level))


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


def merge_parquet(sources: Sequence[Path], temporary: Path, chunk_rows: int = 65_536) -> int:
    """Copy the rows of `sources`, in order, into one new file; returns the row count.

    Streams record batches, so the memory used is a chunk's, not the files'.
    """
    rows = 0
    with pq.ParquetWriter(temporary, RATED_SCHEMA) as writer:
        for source in sources:
            for batch in pq.ParquetFile(source).iter_batches(batch_size=chunk_rows):
                table = pa.Table.from_batches([batch]).select(RATED_SCHEMA.names).cast(RATED_SCHEMA)
                writer.write_table(table)
                rows += table.num_rows
    return rows


def temporary_files(*folders: Path) -> Iterator[Path]:
    """Temporary files left by writes under these folders (one level of subfolders deep)."""
    for folder in folders:
        if folder.is_dir():
            yield from folder.glob(TEMPORARY)
            yield from folder.glob(f"*/{TEMPORARY}")
