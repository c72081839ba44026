"""The rating stage: price mediated events incrementally with durable running
aggregates. A plain transform (meterline.kernel.messages.Processor) that the Kafka runtime
runs, alone or chained after mediation.

No record stops it: one that fails unexpectedly goes to the DLQ as internal_error and
leaves the aggregates as they were. An account's aggregates of a period are forgotten
(and tombstoned in the changelog) once that period is closed for the account: every
later event of theirs is rejected period_closed, so nothing can read them again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from decimal import Decimal

from meterline.kernel.catalog import Catalog
from meterline.kernel.dlq import DEFAULT_MAX_BYTES, cut_short, dead_letter, log_internal_error
from meterline.kernel.headers import ORIGIN_HEADER, RAW_HEADER, partition_of
from meterline.kernel.lineage import LINEAGE_HEADER, lineage_value
from meterline.kernel.messages import TP, BatchResult, InputRecord, OutputRecord
from meterline.kernel.reasons import MALFORMED, PERIOD_CLOSED, Rejected, internal_error
from meterline.kernel.records import RatedUsage, UsageEvent
from meterline.kernel.topics import RATED, REJECTED
from meterline.kernel.views import CatalogView, PeriodsView
from rating.rater import AggregateKey, RatingState, rate_batch
from schemas.codec import SchemaError, decode_usage, encode_rated_after

STAGE = "rating"
_SEP = "\x1f"
_VALUE_SEP = b"\x1e"


def _state_key(key: AggregateKey) -> bytes:
    return _SEP.join(key).encode()


def _parse_state_key(raw: bytes) -> AggregateKey:
    account, contract, charge, period = raw.decode().split(_SEP)
    return account, contract, charge, period


class RatingProcessor:
    stage = STAGE

    def __init__(
        self,
        contracts: CatalogView,
        periods: PeriodsView,
        max_dlq_bytes: int = DEFAULT_MAX_BYTES,
        rated_topic: str = RATED,
        dlq_topic: str = REJECTED,
        rated_partitions: int | None = None,
    ) -> None:
        self.contracts = contracts
        self.periods = periods
        self.max_dlq_bytes = max_dlq_bytes
        # The installation's output and DLQ topics (with its topic prefix, if any).
        self.rated_topic = rated_topic
        self.dlq_topic = dlq_topic
        # A rated record goes to its input's partition (the mediated topic is partitioned by
        # account); chained after mediation on a raw partition, to its account's partition of
        # this many (the same rule as mediation's, so rated stays co-partitioned).
        self.rated_partitions = rated_partitions
        self.state: dict[TP, RatingState] = {}
        # Changelog tombstones of forgotten aggregates, written with the partition's next batch.
        self._tombstones: dict[TP, list[bytes]] = {}
        self._forget_due = True  # look for closed periods on the next idle turn

    def restore(self, tp: TP, entries: Iterator[tuple[bytes, bytes | None]]) -> None:
        state = self.state.setdefault(tp, RatingState())
        for key, value in entries:
            if _VALUE_SEP in key:  # one distinct value of a unique_count aggregate
                agg, _, unique = key.partition(_VALUE_SEP)
                values = state.unique_values.setdefault(_parse_state_key(agg), set())
                if value is None:  # tombstone of a forgotten period's value
                    values.discard(unique.decode())
                else:
                    values.add(unique.decode())
            elif value is None:
                state.aggregates.pop(_parse_state_key(key), None)
            else:
                state.aggregates[_parse_state_key(key)] = Decimal(value.decode())
        for empty in [agg for agg, values in state.unique_values.items() if not values]:
            del state.unique_values[empty]
        self._forget_due = True

    def release(self, tp: TP) -> None:
        self.state.pop(tp, None)
        self._tombstones.pop(tp, None)

    def idle(self) -> None:
        self.contracts.poll()
        self.refresh(periods_changed=self.periods.poll())

    def refresh(self, periods_changed: bool) -> None:
        """After the tables were polled (by `idle`, or by a chain of stages sharing them)."""
        if periods_changed or self._forget_due:
            self._forget_closed_periods()
            self._forget_due = False

    def _forget_closed_periods(self) -> None:
        """Drop the aggregates (and unique values) of every account and period now closed."""
        is_closed = self.periods.is_closed
        for tp, state in self.state.items():
            closed = [key for key in state.aggregates if is_closed(key[0], key[3])]
            closed_values = [key for key in state.unique_values if is_closed(key[0], key[3])]
            if not closed and not closed_values:
                continue
            tombstones = self._tombstones.setdefault(tp, [])
            for key in closed:
                del state.aggregates[key]
                tombstones.append(_state_key(key))
            for key in closed_values:
                prefix = _state_key(key) + _VALUE_SEP
                tombstones.extend(prefix + value.encode() for value in sorted(state.unique_values.pop(key)))

    def state_entries(self) -> int:
        return sum(len(s.aggregates) for s in self.state.values())

    def process(self, records: Sequence[InputRecord]) -> BatchResult:
        return self._process(records, None)

    def process_mediated(self, records: Sequence[InputRecord], events: Sequence[UsageEvent]) -> BatchResult:
        """Rate mediated records whose events are at hand (chained after mediation, which
        just encoded them): the same as `process`, without decoding the records again."""
        return self._process(records, events)

    def _process(self, records: Sequence[InputRecord], events: Sequence[UsageEvent] | None) -> BatchResult:
        result = BatchResult()
        catalog = self.contracts.catalog
        by_partition: dict[TP, list[tuple[InputRecord, UsageEvent]]] = {}
        for index, record in enumerate(records):
            tp = (record.topic, record.partition)
            counts = result.counts.get(tp)
            if counts is None:
                counts = result.counts[tp] = Counter()
            try:
                event = self._admit(record, None if events is None else events[index])
            except Rejected as rejection:
                self._reject(rejection, record, counts, result)
                continue
            except Exception as exc:  # containment: one record never stops the stage
                self._reject(internal_error(exc), record, counts, result)
                continue
            by_partition.setdefault(tp, []).append((record, event))
            if result.newest_event_time is None or event.event_time > result.newest_event_time:
                result.newest_event_time = event.event_time
        for tp, items in by_partition.items():
            self._rate_partition(tp, items, catalog, result)
        for tp, keys in self._tombstones.items():
            if keys and tp in result.counts:  # a changelog record needs a batch of this partition to ride on
                result.changelog.setdefault(tp, []).extend((key, None) for key in keys)
                keys.clear()
        return result

    def _admit(self, record: InputRecord, event: UsageEvent | None) -> UsageEvent:
        """The mediated event of a record (decoded unless given), if its period is still open."""
        if event is None:
            try:
                event = decode_usage(record.value or b"")
            except SchemaError as exc:
                raise Rejected(MALFORMED, str(exc)) from None
        if self.periods.is_closed(event.account_id, event.period):
            raise Rejected(PERIOD_CLOSED, f"period {event.period} is final")
        return event

    def _rate_partition(
        self, tp: TP, items: list[tuple[InputRecord, UsageEvent]], catalog: Catalog, result: BatchResult
    ) -> None:
        counts = result.counts[tp]
        state = self.state.setdefault(tp, RatingState())
        failed: dict[int, Rejected] = {}
        while True:
            kept: Sequence[int] = (
                [index for index in range(len(items)) if index not in failed] if failed else range(len(items))
            )
            batch = rate_batch(state, [items[index][1] for index in kept], catalog)
            rejected_at = {kept[index]: rejection for index, rejection in batch.rejected}
            outputs = self._rated_outputs(items, kept, rejected_at, batch.rated)
            if isinstance(outputs, list):
                break
            # A rated record failed to encode: its aggregate moved, but nothing would be emitted.
            # Rate the partition's batch again without it, from the state as it was.
            state.undo(batch)
            failed[outputs[0]] = outputs[1]
        rejected_at.update(failed)
        rated_iter = iter(outputs)
        for index, (record, _event) in enumerate(items):
            rejection = rejected_at.get(index)
            if rejection is not None:
                self._reject(rejection, record, counts, result)
            else:
                result.outputs.append(next(rated_iter))
        counts["rated"] += len(batch.rated)
        changelog = result.changelog.setdefault(tp, [])
        for key in batch.changed:
            changelog.append((_state_key(key), str(state.aggregates[key]).encode()))
        for key, unique in batch.new_unique_values:
            changelog.append((_state_key(key) + _VALUE_SEP + unique.encode(), b""))
        amounts = result.amounts
        for rated in batch.rated:
            amounts[rated.event.currency] = amounts.get(rated.event.currency, Decimal(0)) + rated.amount

    def _rated_outputs(
        self,
        items: list[tuple[InputRecord, UsageEvent]],
        kept: Sequence[int],
        rejected_at: dict[int, Rejected],
        rated: list[RatedUsage],
    ) -> list[OutputRecord] | tuple[int, Rejected]:
        """The rated records to emit, in order; or the first (index, rejection) that failed."""
        outputs: list[OutputRecord] = []
        rated_iter = iter(rated)
        partitions = self.rated_partitions
        for index in kept:
            if index in rejected_at:
                continue
            record = items[index][0]
            key = record.key or b""
            partition = record.partition if partitions is None else partition_of(key, partitions)
            try:
                outputs.append(
                    OutputRecord(
                        self.rated_topic,
                        # The mediated bytes are the rated record's first fields: append, don't re-encode.
                        encode_rated_after(record.value or b"", next(rated_iter)),
                        record.key,
                        partition,
                        [(LINEAGE_HEADER, lineage_value(record.topic, record.partition, record.offset))],
                    )
                )
            except Exception as exc:
                return index, internal_error(exc)
        return outputs

    def _reject(
        self, rejection: Rejected, record: InputRecord, counts: Counter[str], result: BatchResult
    ) -> None:
        counts[f"rejected.{rejection.reason}"] += 1
        log_internal_error(STAGE, rejection, record.topic, record.partition, record.offset)
        topic, partition, offset = _origin(record)
        original = record.headers.get(RAW_HEADER, record.value)
        letter = dead_letter(
            original,
            record.key,
            rejection.reason,
            rejection.detail,
            STAGE,
            topic,
            partition,
            offset,
            max_bytes=self.max_dlq_bytes,
            dlq_topic=self.dlq_topic,
        )
        if cut_short(letter, original):
            counts["dlq_truncated"] += 1
        result.outputs.append(letter)


def _origin(record: InputRecord) -> tuple[str, int, int]:
    """Where the record's original bytes entered the pipeline (its own position if unknown)."""
    origin = record.headers.get(ORIGIN_HEADER)
    if origin:
        try:
            topic, partition, offset = origin.decode().split("\x1f")
            return topic, int(partition), int(offset)
        except ValueError:
            pass
    return record.topic, record.partition, record.offset
