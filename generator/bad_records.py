"""Bad records: a good generated line spoiled with exactly one defect, one reason each."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any, Final

from generator.templates import Template
from meterline.kernel import reasons
from meterline.kernel.catalog import Catalog

__all__ = ["BAD_REASONS", "BadRecords"]

# Bad records rotate over these, in this order (each record has exactly one defect).
BAD_REASONS: Final = (
    reasons.MALFORMED,
    reasons.MISSING_FIELD,
    reasons.INVALID_TIMESTAMP,
    reasons.INVALID_QUANTITY,
    reasons.UNKNOWN_ACCOUNT,
    reasons.UNKNOWN_METER,
)


class BadRecords:
    """Turns a good line into a record with exactly one defect (this path is rare, so it may be slow)."""

    def __init__(self, catalog: Catalog, table: Sequence[Template], rng: random.Random) -> None:
        self.rng = rng
        self.unknown_meter = "bandwidth"
        while self.unknown_meter in catalog.meters:
            self.unknown_meter += "_x"
        # invalid_quantity needs a meter that reads a quantity (count meters may ignore it).
        self.quantity_meters = sorted({template.meter for template in table if template.has_quantity})

    def spoil(self, line: bytes, reason: str, number: int) -> bytes:
        event: dict[str, Any] = json.loads(line)
        variant = number // len(BAD_REASONS)
        if reason == reasons.MALFORMED:
            return line[: len(line) // 2] if variant % 3 else b'{"event_id": "' + line[:20]
        if reason == reasons.MISSING_FIELD:
            field = ("account_id", "meter", "event_id", "timestamp")[variant % 4]
            if variant % 2:
                event[field] = ""  # empty counts as missing
            else:
                del event[field]
        elif reason == reasons.INVALID_TIMESTAMP:
            stamp: str = event["timestamp"]
            event["timestamp"] = (stamp.removesuffix("Z"), stamp.replace("T", "T99:"), "yesterday")[
                variant % 3
            ]
        elif reason == reasons.INVALID_QUANTITY:
            if self.quantity_meters and event["meter"] not in self.quantity_meters:
                event["meter"] = self.quantity_meters[0]
            event["quantity"] = ("-5", "abc", "NaN", -2, "Infinity")[variant % 5]
        elif reason == reasons.UNKNOWN_ACCOUNT:
            event["account_id"] = f"acct-unknown-{number}"
        elif reason == reasons.UNKNOWN_METER:
            event["meter"] = self.unknown_meter
        return json.dumps(event, separators=(",", ":")).encode()
