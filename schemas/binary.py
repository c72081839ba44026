"""Avro binary encoding of the few shapes our schemas use, written out by hand.

Why not fastavro per record: its schemaless writer and reader cost 20-40 µs a
record on this hardware, more than all of mediation's own work. Our schemas only
use strings, longs, maps of strings and nullable strings, whose Avro encodings are
a few lines each (Avro 1.11 spec, "Binary Encoding"). tests/schemas checks these
bytes against fastavro in both directions.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache

_SMALL = [bytes([n]) for n in range(128)]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_FIRST_MICROS = (datetime.min.replace(tzinfo=UTC) - EPOCH) // _MICROSECOND
_LAST_MICROS = (datetime.max.replace(tzinfo=UTC) - EPOCH) // _MICROSECOND


class TruncatedRecord(ValueError):
    """The bytes end before the record does."""


def write_long(value: int) -> bytes:
    """Zig-zag varint."""
    n = (value << 1) ^ (value >> 63)
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def write_string(value: str) -> bytes:
    data = value.encode()
    size = len(data)
    return (_SMALL[size << 1] if size < 64 else write_long(size)) + data


@lru_cache(maxsize=1 << 16)
def write_repeated_string(value: str) -> bytes:
    """write_string for values that come back on most records (account, meter, plan, charge ids,
    periods, attribute names): memoised, as encoding is a hot path and these are few."""
    return write_string(value)


@lru_cache(maxsize=1 << 16)
def write_repeated_strings(*values: str) -> bytes:
    """Several consecutive repeated string fields as one memoised piece (e.g. the enrichment
    fields, which are the same for every event of an account in a period)."""
    return b"".join([write_string(value) for value in values])


def write_map(values: Mapping[str, str]) -> bytes:
    if not values:
        return b"\x00"
    parts = [write_long(len(values))]
    for key, value in values.items():
        parts.append(write_repeated_string(key))
        parts.append(write_string(value))
    parts.append(b"\x00")
    return b"".join(parts)


def write_optional_string(value: str | None) -> bytes:
    """A ["null", "string"] union."""
    return b"\x00" if value is None else b"\x02" + write_string(value)


def write_timestamp(value: datetime) -> bytes:
    return write_long((value - EPOCH) // _MICROSECOND)


class Reader:
    """Sequential reads over one Avro-encoded record."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def long(self) -> int:
        data, pos = self.data, self.pos
        try:
            byte = data[pos]
            pos += 1
            n = byte & 0x7F
            shift = 7
            while byte & 0x80:
                byte = data[pos]
                pos += 1
                n |= (byte & 0x7F) << shift
                shift += 7
        except IndexError as exc:
            raise TruncatedRecord("record ends inside a number") from exc
        self.pos = pos
        return (n >> 1) ^ -(n & 1)

    def string(self) -> str:
        return self.strings(1)[0]

    def strings(self, count: int) -> list[str]:
        """`count` consecutive string fields (one call instead of one per field: this is a hot path)."""
        data, pos, out = self.data, self.pos, []
        limit = len(data)
        for _ in range(count):
            if pos >= limit:
                raise TruncatedRecord("record ends before a string")
            size = data[pos]
            if size < 0x80:  # a one-byte length: the usual case
                size >>= 1
                pos += 1
            else:
                self.pos = pos
                size = self.long()
                pos = self.pos
            end = pos + size
            if size < 0 or end > limit:
                raise TruncatedRecord("record ends inside a string")
            out.append(data[pos:end].decode())
            pos = end
        self.pos = pos
        return out

    def map(self) -> dict[str, str]:
        values: dict[str, str] = {}
        if self.pos < len(self.data) and self.data[self.pos] == 0:  # an empty map: the usual case
            self.pos += 1
            return values
        while True:
            count = self.long()
            if count == 0:
                return values
            if count < 0:  # a block with its byte size first
                count = -count
                self.long()
            for _ in range(count):
                key, value = self.strings(2)
                values[key] = value

    def optional_string(self) -> str | None:
        if self.pos < len(self.data) and self.data[self.pos] == 0:  # null: the usual case
            self.pos += 1
            return None
        branch = self.long()
        if branch == 0:
            return None
        if branch != 1:
            raise ValueError(f"union branch {branch} out of range")
        return self.string()

    def timestamp(self) -> datetime:
        return EPOCH + _MICROSECOND * self.long()  # exact, and twice as fast as timedelta(microseconds=)

    def timestamp_micros(self) -> int:
        """A timestamp-micros field as its number (Arrow takes it as is, no datetime needed);
        checked to be an instant a datetime can hold, as timestamp() would be."""
        micros = self.long()
        if not _FIRST_MICROS <= micros <= _LAST_MICROS:
            raise ValueError(f"timestamp {micros} is outside years 1..9999")
        return micros
