"""The rating stage's transform without Kafka: counts, outputs, DLQ and changelog per partition."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

from meterline.catalog import Charge, ChargeFilters, Meter
from meterline.lineage import LINEAGE_HEADER, lineage_value
from meterline.messages import InputRecord
from meterline.tables import ContractsTable, PeriodsTable
from meterline.topics import MEDIATED, RATED, REJECTED
from rating.stage import RatingProcessor
from schemas.codec import decode_rated, encode_usage
from tests.strategies import catalog_with, usage_event

STORAGE = Meter("storage", "GB-hour", "sum")
EU = Charge(
    "storage-eu", "storage", "flat", unit_price=Decimal("0.02"),
    filters=ChargeFilters(attributes={"region": frozenset({"eu-west"})}),
)  # fmt: skip
CATALOG = catalog_with([STORAGE], [EU])


class _Contracts:
    catalog = CATALOG


class _Periods:
    def is_closed(self, account_id: str, period: str) -> bool:
        return False


def processor() -> RatingProcessor:
    return RatingProcessor(cast(ContractsTable, _Contracts()), cast(PeriodsTable, _Periods()))


def record(partition: int, offset: int, value: bytes) -> InputRecord:
    return InputRecord(MEDIATED, partition, offset, b"acct", value, {})


def stored(event_id: str, quantity: int, region: str = "eu-west") -> bytes:
    when = datetime(2026, 10, 5, 12, tzinfo=UTC)
    return encode_usage(
        usage_event(event_id, quantity, meter="storage", event_time=when, attributes={"region": region})
    )


def test_a_batch_rates_rejects_and_counts_per_partition() -> None:
    records = [
        record(0, 10, stored("a", 3)),
        record(0, 11, b"not avro"),
        record(1, 5, stored("b", 2, region="us-east")),  # no charge matches
        record(0, 12, stored("c", 4)),
    ]
    result = processor().process(records)
    assert result.counts == {
        (MEDIATED, 0): Counter({"rated": 2, "rejected.malformed": 1}),
        (MEDIATED, 1): Counter({"rejected.no_matching_charge": 1}),
    }
    rated = [out for out in result.outputs if out.topic == RATED]
    assert [decode_rated(out.value or b"").amount for out in rated] == [Decimal("0.06"), Decimal("0.08")]
    assert [dict(out.headers or [])[LINEAGE_HEADER] for out in rated] == [
        lineage_value(MEDIATED, 0, 10),
        lineage_value(MEDIATED, 0, 12),
    ]
    assert [out.partition for out in rated] == [0, 0]
    rejected = [dict(out.headers or []) for out in result.outputs if out.topic == REJECTED]
    assert [h["meterline.reason"] for h in rejected] == [b"malformed", b"no_matching_charge"]


def test_state_restored_from_the_changelog_continues_the_running_aggregate() -> None:
    first = processor()
    result = first.process([record(0, 0, stored("a", 3))])
    second = processor()
    second.restore((MEDIATED, 0), iter(result.changelog[(MEDIATED, 0)]))
    again: Any = second.process([record(0, 1, stored("b", 4))]).outputs[0]
    rated = decode_rated(again.value)
    assert (rated.aggregate_before, rated.aggregate_after, rated.amount) == (
        Decimal(3),
        Decimal(7),
        Decimal("0.08"),
    )
