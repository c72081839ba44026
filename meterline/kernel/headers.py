"""Headers publishers put on raw records, and the way back from a rejection to its input line.

Every record `meterline produce` and `meterline run` publish from a file carries
`meterline.source.file` (the file as given) and `meterline.source.line` (its 1-based
line; for Asterisk CSV the row). CSV records read with `--cdr-timezone` also carry
`meterline.cdr_timezone` (an IANA zone), which mediation reads Asterisk times in.

The DLQ names a rejected record by topic, partition and offset only, so `meterline
run` remembers which line it published at each offset (:class:`SourceLines`) and
writes `DIR/rejected.jsonl` from the DLQ at the end (:func:`write_rejected`).
"""

from __future__ import annotations

import zlib
from array import array
from typing import Final
from zoneinfo import ZoneInfo

from meterline.kernel.command_errors import UserError

# The raw formats a file or a raw topic can be read as, and the header naming a record's own.
FORMATS: Final = ("auto", "json", "cloudevents", "lago", "asterisk-csv")
FORMAT_HEADER: Final = "meterline.format"
# Carried by a usage record from mediation on: its original raw bytes, so that any later
# rejection dead-letters them unchanged, and where they entered ("topic\x1fpartition\x1foffset").
RAW_HEADER: Final = "ml.raw"
ORIGIN_HEADER: Final = "ml.origin"
SOURCE_FILE_HEADER: Final = "meterline.source.file"
SOURCE_LINE_HEADER: Final = "meterline.source.line"
CDR_TIMEZONE_HEADER: Final = "meterline.cdr_timezone"
REJECTED_FILE: Final = "rejected.jsonl"
_LINE_BITS: Final = 40
# A DLQ record: why, by whom, and where its original was read.
REASON_HEADER: Final = "meterline.reason"
DETAIL_HEADER: Final = "meterline.detail"
STAGE_HEADER: Final = "meterline.stage"
SOURCE_ORIGIN_HEADERS: Final = (
    "meterline.source.topic",
    "meterline.source.partition",
    "meterline.source.offset",
)
# Set on a record cut to fit (by a publisher, or a DLQ copy): the original length in bytes.
TRUNCATED_HEADER: Final = "meterline.truncated"


class ZoneError(UserError):
    """--cdr-timezone names no IANA time zone."""


def cdr_zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` (e.g. `Europe/Paris`); ValueError saying why if there is none."""
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError):  # not a key, no such zone, a folder of zones
        raise ValueError(f"{name!r} is not an IANA time zone (such as Europe/Paris or UTC)") from None


def check_zone(name: str) -> str:
    """`name` if it is an IANA time zone (e.g. Europe/Paris); ZoneError naming it otherwise."""
    try:
        cdr_zone(name)
    except ValueError as exc:
        raise ZoneError(f"--cdr-timezone {exc}") from None
    return name


def partition_of(key: bytes, partitions: int) -> int:
    """librdkafka's consistent partitioner (CRC32 of the key), chosen here so the publisher
    knows each record's partition and, with an idempotent producer, its offset."""
    return zlib.crc32(key) % partitions


class SourceLines:
    """Which input file and line each offset of a fresh raw topic holds.

    Records are noted in the order they are produced to each partition; an idempotent
    producer keeps that order, so the n-th record of a partition is at offset n.
    """

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.files: list[str] = []
        self._at: list[array[int]] = [array("q") for _ in range(partitions)]
        self._next = 0

    def file(self, name: str) -> int:
        self.files.append(name)
        return len(self.files) - 1

    def partition(self, key: bytes | None) -> int:
        if key is not None:
            return partition_of(key, self.partitions)
        self._next = (self._next + 1) % self.partitions  # records without a key: round robin
        return self._next

    def add(self, partition: int, file: int, line: int) -> None:
        self._at[partition].append(file << _LINE_BITS | line)

    def where(self, partition: int, offset: int) -> tuple[str, int] | None:
        """(file, line) of the record at `offset` of `partition`, or None if not published here."""
        if not 0 <= partition < self.partitions or not 0 <= offset < len(self._at[partition]):
            return None
        value = self._at[partition][offset]
        return self.files[value >> _LINE_BITS], value & ((1 << _LINE_BITS) - 1)
