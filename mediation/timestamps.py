"""The instant a raw record's timestamp names, in the way its format writes it.

Every instant is timezone-aware in UTC and lies in FIRST_INSTANT .. LAST_INSTANT;
anything else is rejected as `invalid_timestamp`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import MAX_EMAX, MIN_EMIN, ROUND_FLOOR, Context, Decimal
from functools import lru_cache
from typing import Final, Literal

from mediation.fields import decimal_text, short
from meterline.kernel.reasons import INVALID_TIMESTAMP, Rejected

# How a format writes its timestamps:
#   iso_or_epoch: ISO-8601 text with an offset, or epoch seconds as a JSON number
#   epoch:        epoch seconds, a JSON number or a numeric string (Lago)
#   cdr:          `YYYY-MM-DD HH:MM:SS`, UTC unless the input names a cdr time zone (Asterisk)
TimestampStyle = Literal["iso_or_epoch", "epoch", "cdr"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# The instants an event may name, bounds included. Nothing earlier than the epoch is
# usage, and the margin below datetime's year 1 keeps every local time (UTC-12..+14) and
# every period computed downstream in range; the upper bound is datetime's last second.
FIRST_INSTANT: Final = _EPOCH
LAST_INSTANT: Final = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
_RANGE_TEXT: Final = "1970-01-01T00:00:00Z .. 9999-12-31T23:59:59Z"
_LAST_EPOCH: Final = 253_402_300_799  # LAST_INSTANT in epoch seconds
# Flooring context for epoch arithmetic, independent of the thread's decimal context.
_EPOCH_CONTEXT: Final = Context(prec=40, rounding=ROUND_FLOOR, Emin=MIN_EMIN, Emax=MAX_EMAX)

# RFC 3339 shape (offset optional here only to say so when it is missing); the
# values are then read by datetime.fromisoformat, which is C-fast.
_ISO_TIME: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:[.,][0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})?"
)
_CDR_TIME: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?")


def parse_timestamp(value: object, style: TimestampStyle, name: str, zone: tzinfo | None = None) -> datetime:
    """The instant a record's timestamp names, timezone-aware in UTC (`zone`: see _cdr_time)."""
    if type(value) is str:
        if style == "iso_or_epoch":
            return _iso_time(value, name)
        if style == "cdr":
            return _cdr_time(value, name, zone)
        return _epoch_time(decimal_text(value, name, INVALID_TIMESTAMP), name)
    if style != "cdr" and isinstance(value, int | float | Decimal) and type(value) is not bool:
        return _epoch_time(value, name)
    raise Rejected(INVALID_TIMESTAMP, f"{name} is not a timestamp: {short(value)}")


def _iso_time(text: str, name: str) -> datetime:
    match = _ISO_TIME.fullmatch(text)
    if match is None:
        raise Rejected(INVALID_TIMESTAMP, f"{name} is not an ISO-8601 timestamp: {short(text)}")
    if match.group(1) is None:
        raise Rejected(INVALID_TIMESTAMP, f"{name} has no UTC offset: {short(text)}")
    try:
        # upper(): RFC 3339 allows a lowercase t and z, fromisoformat does not. Fractions
        # past microseconds are truncated, so an instant never moves into the next second.
        instant = datetime.fromisoformat(text.upper())
        if instant.tzinfo is not UTC:
            instant = instant.astimezone(UTC)
    except (ValueError, OverflowError):  # a field or offset out of range, or an instant outside years 1..9999
        raise Rejected(INVALID_TIMESTAMP, f"{name} is not a valid instant: {short(text)}") from None
    return _in_range(instant, text, name)


def _cdr_time(text: str, name: str, zone: tzinfo | None) -> datetime:
    """An Asterisk time: UTC (`usegmtime=yes`) when `zone` is None, else local time in `zone`.

    Around a DST change a local time may name two instants or none. Ambiguous (the hour
    repeated when clocks go back): the first one, in summer time (fold=0), so a call
    answered in the repeated hour may be stamped an hour early; Asterisk's CSV keeps no
    offset to tell them apart. Nonexistent (the hour skipped when clocks go forward,
    which Asterisk never writes for a correctly configured zone): read with the offset in
    force before the change, so it lands after the gap, shifted forward by its length
    (02:30 on Paris's spring-forward day is 01:30Z, 03:30 CEST), as zoneinfo does.
    Billable usage is kept either way rather than rejected for a zone setting's sake.
    """
    if _CDR_TIME.fullmatch(text) is None:
        raise Rejected(INVALID_TIMESTAMP, f"{name} is not a `YYYY-MM-DD HH:MM:SS` time: {short(text)}")
    try:
        local = datetime.fromisoformat(text)
        instant = local.replace(tzinfo=UTC) if zone is None else local.replace(tzinfo=zone).astimezone(UTC)
    except (ValueError, OverflowError):  # a field out of range, or a local time near year 1 or 9999
        raise Rejected(INVALID_TIMESTAMP, f"{name} is not a valid time: {short(text)}") from None
    return _in_range(instant, text, name)


@lru_cache(maxsize=64)
def _in_range(instant: datetime, text: str, name: str) -> datetime:
    if FIRST_INSTANT <= instant <= LAST_INSTANT:
        return instant
    raise Rejected(INVALID_TIMESTAMP, f"{name} {short(text)} is outside {_RANGE_TEXT}")


def _epoch_time(value: int | float | Decimal, name: str) -> datetime:
    try:
        if type(value) is int:
            if 0 <= value <= _LAST_EPOCH:
                return _EPOCH + timedelta(seconds=value)
        else:
            seconds = value if isinstance(value, Decimal) else Decimal(repr(value))
            if seconds.is_finite() and 0 <= seconds <= _LAST_EPOCH:
                # Whole microseconds, floored like truncated ISO fractions.
                micros = seconds.scaleb(6, _EPOCH_CONTEXT).to_integral_value(context=_EPOCH_CONTEXT)
                return _EPOCH + timedelta(microseconds=int(micros))
    except (ArithmeticError, OverflowError):
        pass
    raise Rejected(INVALID_TIMESTAMP, f"{name} is not an epoch time within {_RANGE_TEXT}: {short(value)}")
