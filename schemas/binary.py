"""Avro binary encoding of the few shapes our schemas use, written out by hand.

Why not fastavro per record: its schemaless writer and reader cost 20-40 µs a
record on this hardware, more than all of mediation's own work. Our schemas only
use strings, longs, maps of strings and nullable strings, whose Avro encodings are
a few lines each (Avro 1.11 spec, "Binary Encoding"), and exact decimals as the
`decimal` logical type on bytes (precision 38, scale 18): the unscaled integer,
two's-complement big-endian. tests/schemas checks these bytes against fastavro in
both directions.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, Inexact, InvalidOperation
from functools import lru_cache
from typing import Final

_SMALL = [bytes([n]) for n in range(128)]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_FIRST_MICROS = (datetime.min.replace(tzinfo=UTC) - EPOCH) // _MICROSECOND
_LAST_MICROS = (datetime.max.replace(tzinfo=UTC) - EPOCH) // _MICROSECOND

# Exact decimals: every quantity and amount is below 10^20 with 18 places (DECIMAL(38,18)).
SCALE: Final = 18
PRECISION: Final = 38
_UNSCALED_LIMIT: Final = 10**PRECISION
_ZEROS: Final = "0" * SCALE
_WIDEST_READ: Final = 32  # bytes: up to 76 digits, wider than any sane writer's
# Wide enough for any value worth scaling; a dropped nonzero digit traps instead of rounding.
_EXACT: Final = Context(prec=60, traps=[Inexact, InvalidOperation])


class SchemaError(ValueError):
    """A value that is not a framed Avro record of the expected schema, or a record field
    that the schema cannot carry exactly."""


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


def write_decimal(value: Decimal) -> bytes:
    """A decimal(38, 18) value: the unscaled integer, two's-complement big-endian, as Avro bytes.

    Refuses what it cannot carry exactly (more than 18 places, 10^20 or more, NaN,
    infinity): quantities and amounts are rounded to 18 places before they get here,
    so rounding now would hide a bug. The byte count is fastavro's, one more than the
    magnitude needs, so both write identical bytes (readers take any length).
    """
    text = str(value)
    if len(text) > 19 and text[-19] == "." and "E" not in text:
        # Exponent -18, the usual case (values are rounded to 18 places): the digits are
        # the unscaled integer. Twice as fast as the arithmetic below.
        unscaled = int(text[:-19] + text[-18:])
    else:
        try:
            unscaled = int(_EXACT.to_integral_exact(value.scaleb(SCALE, _EXACT)))
        except (ArithmeticError, ValueError):  # Inexact: more places; NaN, infinity
            raise SchemaError(f"decimal {value} does not fit decimal(38, 18) exactly") from None
    magnitude = unscaled if unscaled >= 0 else -unscaled
    if magnitude >= _UNSCALED_LIMIT:
        raise SchemaError(f"decimal {value} does not fit decimal(38, 18) exactly")
    size = (magnitude.bit_length() + 8) >> 3  # at most 16 bytes: 10^38 < 2^127
    return _SMALL[size << 1] + unscaled.to_bytes(size, "big", signed=True)


def decimal_text(unscaled: int) -> str:
    """The plain text (no exponent) of unscaled * 10^-18, with all 18 places: the digits
    of the Decimal read back, as format(value, "f") writes them."""
    if unscaled < 0:
        sign = "-"
        digits = str(-unscaled)
    else:
        sign = ""
        digits = str(unscaled)
    if len(digits) > SCALE:
        return sign + digits[:-SCALE] + "." + digits[-SCALE:]
    return sign + "0." + _ZEROS[len(digits) :] + digits


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

    def unscaled(self) -> int:
        """A decimal(38, 18) field's unscaled integer."""
        data, pos = self.data, self.pos
        if pos >= len(data):
            raise TruncatedRecord("record ends before a decimal")
        size = data[pos]
        if size & 0x81:  # a negative or multi-byte length: never 0..32
            raise ValueError(f"decimal of {self.long()} bytes")
        size >>= 1
        pos += 1
        end = pos + size
        if end > len(data):
            raise TruncatedRecord("record ends inside a decimal")
        if size > _WIDEST_READ:
            raise ValueError(f"decimal of {size} bytes")
        # More than 38 digits is read, as Avro's Java and fastavro readers do: the consumer
        # decides (consolidation rejects it as not fitting DECIMAL(38,18), naming the record).
        self.pos = end
        return int.from_bytes(data[pos:end], "big", signed=True)

    def decimal(self) -> Decimal:
        """A decimal(38, 18) field, with exponent -18 (as fastavro reads it)."""
        return Decimal(decimal_text(self.unscaled()))  # from text: exact in any context

    def decimal_texts(self, count: int) -> list[str]:
        """`count` consecutive decimal(38, 18) fields as plain text (see decimal_text)."""
        return [decimal_text(self.unscaled()) for _ in range(count)]

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
