"""CloudEvents in binary content mode on Kafka (the CloudEvents Kafka protocol binding).

    parse_binary_cloudevent(raw, headers, meters, now, max_size) -> UsageEvent

The event's attributes are record headers prefixed `ce_` (UTF-8 text), its data is the
record value, typed by the `content-type` header. A record is in binary mode when it
carries `ce_specversion`; raw topics of format `auto` or `cloudevents` read it so.
Fields map as in structured mode: `ce_id`→event_id, `ce_subject`→account_id,
`ce_type`→meter, `ce_time`→timestamp; the data must be a JSON object (or empty), read
as structured mode's `data`. Pure and per record, like :mod:`mediation.formats`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Final

import orjson

from mediation.formats import (
    CE_CONTENT_TYPE,
    DEFAULT_MAX_SIZE,
    load_exact,
    may_have_lost_digits,
    measured,
)
from mediation.normalize import FieldNames, RawUsage, payload, to_event
from meterline.kernel.catalog import Meter
from meterline.kernel.reasons import MALFORMED, TOO_LARGE, Rejected
from meterline.kernel.records import UsageEvent

_NAMES: Final = FieldNames("ce_id", "ce_subject", "ce_type", "ce_time")


def parse_binary_cloudevent(
    raw: bytes,
    headers: Mapping[str, bytes],
    meters: Mapping[str, Meter],
    now: datetime,
    max_size: int = DEFAULT_MAX_SIZE,
) -> UsageEvent:
    """Parse, validate and normalize one binary-mode CloudEvent (`raw` is its data).

    Raises `Rejected`, and nothing else, for every defect, like `parse_record`.
    """
    if len(raw) > max_size:
        raise Rejected(TOO_LARGE, f"{len(raw)} bytes, more than {max_size}")
    _check_content_type(headers.get(CE_CONTENT_TYPE))
    if not raw.strip():
        return to_event(_found({}, headers, meters), now)  # no data: a count meter needs none
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "number" not in str(exc):
            raise Rejected(MALFORMED, f"data is not JSON: {exc}") from None
        data = load_exact(raw)  # a number beyond a double: exact reading decides
    found = _found(data, headers, meters)
    if may_have_lost_digits(found, raw):
        found = _found(load_exact(raw), headers, meters)
    return to_event(found, now)


def _check_content_type(value: bytes | None) -> None:
    # JSON data only: application/json, text/json or a +json type, parameters ignored.
    if value is None:
        return
    media = value.split(b";", 1)[0].strip().lower()
    if media in (b"application/json", b"text/json") or media.endswith(b"+json"):
        return
    shown = value.decode("utf-8", "replace")[:60]
    raise Rejected(MALFORMED, f"content-type {shown!r}: binary-mode data must be JSON")


def _found(data: object, headers: Mapping[str, bytes], meters: Mapping[str, Meter]) -> RawUsage:
    code = _attribute(headers, "ce_type")
    meter = meters.get(code) if code else None
    return measured(
        "cloudevents",
        _NAMES,
        event_id=_attribute(headers, "ce_id"),
        account_id=_attribute(headers, "ce_subject"),
        code=code,
        meter=meter,
        timestamp=_attribute(headers, "ce_time"),
        style="iso_or_epoch",
        source=payload(data, "data"),
        source_name="data",
    )


def _attribute(headers: Mapping[str, bytes], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected(MALFORMED, f"header {name} is not UTF-8") from None
