"""The rating stage: price mediated events incrementally with durable running
aggregates. A transform plugged into meterline.runtime."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from decimal import Decimal

from meterline import metrics
from meterline.dlq import dead_letter_headers
from meterline.lineage import LINEAGE_HEADER, lineage_value
from meterline.messages import InputRecord, OutputRecord
from meterline.reasons import MALFORMED, PERIOD_CLOSED, Rejected
from meterline.records import UsageEvent
from meterline.runtime import TP, BatchResult
from meterline.tables import ContractsTable, PeriodsTable
from meterline.topics import RATED, REJECTED
from rating.rater import AggregateKey, RatingState, rate_batch
from schemas.codec import SchemaError, decode_usage, encode_rated_after

STAGE = "rating"
RAW_HEADER = "ml.raw"
ORIGIN_HEADER = "ml.origin"
_SEP = "\x1f"
_VALUE_SEP = b"\x1e"


def _state_key(key: AggregateKey) -> bytes:
    return _SEP.join(key).encode()


def _parse_state_key(raw: bytes) -> AggregateKey:
    account, contract, charge, period = raw.decode().split(_SEP)
    return account, contract, charge, period


class RatingProcessor:
    stage = STAGE

    def __init__(self, contracts: ContractsTable, periods: PeriodsTable) -> None:
        self.contracts = contracts
        self.periods = periods
        self.state: dict[TP, RatingState] = {}

    def restore(self, tp: TP, entries: Iterator[tuple[bytes, bytes | None]]) -> None:
        state = self.state.setdefault(tp, RatingState())
        for key, value in entries:
            if _VALUE_SEP in key:  # one distinct value of a unique_count aggregate
                agg, _, unique = key.partition(_VALUE_SEP)
                state.unique_values.setdefault(_parse_state_key(agg), set()).add(unique.decode())
            elif value is None:
                state.aggregates.pop(_parse_state_key(key), None)
            else:
                state.aggregates[_parse_state_key(key)] = Decimal(value.decode())
        self._gauge()

    def release(self, tp: TP) -> None:
        self.state.pop(tp, None)

    def idle(self) -> None:
        self.contracts.poll()
        self.periods.poll()

    def _gauge(self) -> None:
        metrics.STATE_ENTRIES.labels(STAGE).set(sum(len(s.aggregates) for s in self.state.values()))

    def process(self, records: Sequence[InputRecord]) -> BatchResult:
        result = BatchResult()
        catalog = self.contracts.catalog
        by_partition: dict[TP, list[tuple[InputRecord, UsageEvent]]] = {}
        for record in records:
            tp = (record.topic, record.partition)
            counts = result.counts.get(tp)
            if counts is None:
                counts = result.counts[tp] = Counter()
            try:
                event = decode_usage(record.value or b"")
            except SchemaError as exc:
                self._reject(Rejected(MALFORMED, str(exc)), record, counts, result)
                continue
            if self.periods.is_closed(event.account_id, event.period):
                self._reject(
                    Rejected(PERIOD_CLOSED, f"period {event.period} is final"), record, counts, result
                )
                continue
            by_partition.setdefault(tp, []).append((record, event))
            if result.newest_event_time is None or event.event_time > result.newest_event_time:
                result.newest_event_time = event.event_time
        for tp, items in by_partition.items():
            counts = result.counts[tp]
            state = self.state.setdefault(tp, RatingState())
            batch = rate_batch(state, [event for _, event in items], catalog)
            rejected_at = {index: rejection for index, rejection in batch.rejected}
            rated_iter = iter(batch.rated)
            for index, (record, _event) in enumerate(items):
                rejection = rejected_at.get(index)
                if rejection is not None:
                    self._reject(rejection, record, counts, result)
                    continue
                rated = next(rated_iter)
                result.outputs.append(
                    OutputRecord(
                        RATED,
                        # The mediated bytes are the rated record's first fields: append, don't re-encode.
                        encode_rated_after(record.value or b"", rated),
                        record.key,
                        record.partition,
                        [(LINEAGE_HEADER, lineage_value(record.topic, record.partition, record.offset))],
                    )
                )
            counts["rated"] += len(batch.rated)
            changelog = result.changelog.setdefault(tp, [])
            for key in batch.changed:
                changelog.append((_state_key(key), str(state.aggregates[key]).encode()))
            for key, unique in batch.new_unique_values:
                changelog.append((_state_key(key) + _VALUE_SEP + unique.encode(), b""))
            metrics.RATED.labels(STAGE).inc(len(batch.rated))
            amounts: dict[str, Decimal] = {}
            for rated in batch.rated:
                amounts[rated.event.currency] = amounts.get(rated.event.currency, Decimal(0)) + rated.amount
            for currency, amount in amounts.items():
                metrics.AMOUNT_RATED.labels(currency).inc(float(amount))  # a dashboard figure, never billed
        self._gauge()
        return result

    def _reject(
        self, rejection: Rejected, record: InputRecord, counts: Counter[str], result: BatchResult
    ) -> None:
        counts[f"rejected.{rejection.reason}"] += 1
        metrics.REJECTED.labels(STAGE, rejection.reason).inc()
        origin = record.headers.get(ORIGIN_HEADER)
        topic, partition, offset = (
            origin.decode().split("\x1f")
            if origin
            else (record.topic, str(record.partition), str(record.offset))
        )
        result.outputs.append(
            OutputRecord(
                REJECTED,
                record.headers.get(RAW_HEADER, record.value),
                record.key,
                headers=dead_letter_headers(
                    rejection.reason, rejection.detail, STAGE, topic, int(partition), int(offset)
                ),
            )
        )
