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
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo

import orjson

from meterline.command_errors import UserError
from meterline.config import Settings
from meterline.dlq import DETAIL_HEADER, REASON_HEADER, STAGE_HEADER

SOURCE_FILE_HEADER: Final = "meterline.source.file"
SOURCE_LINE_HEADER: Final = "meterline.source.line"
CDR_TIMEZONE_HEADER: Final = "meterline.cdr_timezone"
REJECTED_FILE: Final = "rejected.jsonl"
_LINE_BITS: Final = 40
_SOURCE: Final = ("meterline.source.topic", "meterline.source.partition", "meterline.source.offset")


class ZoneError(UserError):
    """--cdr-timezone names no IANA time zone."""


def check_zone(name: str) -> str:
    """`name` if it is an IANA time zone (e.g. Europe/Paris); ZoneError naming it otherwise."""
    try:
        ZoneInfo(name)
    except (ValueError, KeyError, OSError):  # not a key, no such zone, a folder of zones
        raise ZoneError(
            f"--cdr-timezone {name!r} is not an IANA time zone (such as Europe/Paris or UTC)"
        ) from None
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


def write_rejected(settings: Settings, topic: str, lines: SourceLines, out: Path) -> tuple[int, Path]:
    """Write `out/rejected.jsonl`: one object per DLQ record of `topic`, with the input
    `file` and `line` it came from (null when it cannot be told), `reason`, `detail` and
    `stage`, in file and line order. Returns the count and the path."""
    from meterline.replay_select import read_to_end

    rows: list[dict[str, object]] = []
    seen: set[tuple[bytes, ...]] = set()
    for message in read_to_end(settings, settings.topics.rejected, "run-rejected"):
        headers: Mapping[str, bytes] = {n: v for n, v in message.headers() or [] if v is not None}
        # One row per original: a stage may deliver a DLQ record again after an abort.
        origin = tuple(headers.get(n, b"") for n in (STAGE_HEADER, *_SOURCE))
        if origin[1] and origin in seen:
            continue
        seen.add(origin)
        where = None
        if headers.get("meterline.source.topic", b"").decode("utf-8", "replace") == topic:
            try:
                partition = int(headers.get("meterline.source.partition", b""))
                offset = int(headers.get("meterline.source.offset", b""))
            except ValueError:
                pass
            else:
                where = lines.where(partition, offset)
        rows.append(
            {
                "file": where[0] if where else None,
                "line": where[1] if where else None,
                "reason": _text(headers.get(REASON_HEADER)),
                "detail": _text(headers.get(DETAIL_HEADER)),
                "stage": _text(headers.get(STAGE_HEADER)),
            }
        )
    rows.sort(key=lambda r: (r["file"] is None, str(r["file"]), r["line"] or 0))
    path = out / REJECTED_FILE
    with path.open("wb") as handle:
        for row in rows:
            handle.write(orjson.dumps(row) + b"\n")
    return len(rows), path


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")
