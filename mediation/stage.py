"""The mediation stage: parse + validate raw records, repartition by account,
deduplicate, enrich. A transform plugged into meterline.runtime.

Two steps share one process and one transaction:
- raw step (raw topics not keyed by account): parse and validate, reject to the
  DLQ, forward valid events to the repartition topic keyed by account, carrying
  the original bytes and their origin in headers;
- keyed step (repartition topic, or raw topics keyed by account): dedup on
  (account_id, event_id) with durable state, enrich, emit to the mediated topic.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from mediation.dedup import SeenSet, dedup_key
from mediation.enrich import dedup_bucket, enrich
from mediation.formats import parse_record
from meterline import metrics
from meterline.config import RawTopic, Settings
from meterline.dlq import dead_letter_headers
from meterline.lineage import LINEAGE_HEADER, lineage_value
from meterline.reasons import PERIOD_CLOSED, Rejected
from meterline.records import UsageEvent
from meterline.runtime import TP, BatchResult, InputRecord, OutputRecord
from meterline.tables import ContractsTable, PeriodsTable
from meterline.topics import MEDIATED, REJECTED, REPARTITION
from schemas.codec import SchemaError, decode_usage, encode_usage

STAGE = "mediation"
RAW_HEADER = "ml.raw"  # original bytes, so later rejections still dead-letter them unchanged
ORIGIN_HEADER = "ml.origin"  # "topic\x1fpartition\x1foffset" of the raw record
FORMAT_HEADER = "meterline.format"  # set by `meterline produce` per input file


def partition_for(account_id: str, partitions: int) -> int:
    # Explicit, stable partitioning so repartition, mediated and rated topics stay co-partitioned.
    return zlib.crc32(account_id.encode()) % partitions


class MediationProcessor:
    stage = STAGE

    def __init__(
        self,
        settings: Settings,
        contracts: ContractsTable,
        periods: PeriodsTable,
        partitions: int,
        now: type[datetime] = datetime,
    ) -> None:
        self.settings = settings
        self.contracts = contracts
        self.periods = periods
        self.partitions = partitions
        self.raw_topics: dict[str, RawTopic] = {t.name: t for t in settings.raw_topics}
        self.seen: dict[TP, SeenSet] = {}
        self._now = now

    # -- state -----------------------------------------------------------------

    def restore(self, tp: TP, entries: Iterator[tuple[bytes, bytes | None]]) -> None:
        seen = self.seen.setdefault(tp, SeenSet())
        for key, value in entries:
            if key.startswith(b"\x01"):  # a period forgotten after its close
                seen.forget_period(key[1:].decode())
            elif value is not None:
                seen.add_if_new(key, value.decode())
        metrics.STATE_ENTRIES.labels(STAGE).set(sum(len(s) for s in self.seen.values()))

    def release(self, tp: TP) -> None:
        self.seen.pop(tp, None)

    def idle(self) -> None:
        self.contracts.poll()
        self.periods.poll()

    # -- transform -------------------------------------------------------------

    def process(self, records: Sequence[InputRecord]) -> BatchResult:
        result = BatchResult()
        now = self._now.now(UTC)
        for record in records:
            tp = (record.topic, record.partition)
            counts = result.counts.get(tp)
            if counts is None:
                counts = result.counts[tp] = Counter()
            raw = self.raw_topics.get(record.topic)
            if raw is None:
                self._keyed_step(record, tp, counts, result, None)
            else:
                counts["events_in"] += 1
                event = self._parse(record, raw, now, counts, result)
                if event is None:
                    continue
                if raw.keyed_by_account:
                    self._keyed_step(record, tp, counts, result, event)
                else:
                    counts["forwarded"] += 1
                    origin = lineage_value(record.topic, record.partition, record.offset)
                    result.outputs.append(
                        OutputRecord(
                            REPARTITION,
                            encode_usage(event),
                            event.account_id.encode(),
                            partition_for(event.account_id, self.partitions),
                            [
                                (LINEAGE_HEADER, origin),
                                (ORIGIN_HEADER, origin),
                                (RAW_HEADER, record.value or b""),
                            ],
                        )
                    )
        metrics.STATE_ENTRIES.labels(STAGE).set(sum(len(s) for s in self.seen.values()))
        return result

    def _parse(
        self, record: InputRecord, raw: RawTopic, now: datetime, counts: Counter[str], result: BatchResult
    ) -> UsageEvent | None:
        fmt = record.headers.get(FORMAT_HEADER)
        try:
            return parse_record(
                record.value or b"",
                fmt.decode() if fmt else raw.format,
                self.contracts.catalog.meters,
                now,
                self.settings.max_record_bytes,
            )
        except Rejected as rejection:
            self._reject(
                rejection,
                record,
                record.value or b"",
                (record.topic, record.partition, record.offset),
                counts,
                result,
            )
            return None

    def _keyed_step(
        self,
        record: InputRecord,
        tp: TP,
        counts: Counter[str],
        result: BatchResult,
        parsed: UsageEvent | None,
    ) -> None:
        if parsed is None:
            original = record.headers.get(RAW_HEADER, record.value or b"")
            origin_header = record.headers.get(ORIGIN_HEADER)
            origin = (
                _origin(origin_header) if origin_header else (record.topic, record.partition, record.offset)
            )
            try:
                event = decode_usage(record.value or b"")
            except SchemaError as exc:
                self._reject(Rejected("malformed", str(exc)), record, original, origin, counts, result)
                return
        else:
            event, original = parsed, record.value or b""
            origin = (record.topic, record.partition, record.offset)
        catalog = self.contracts.catalog
        seen = self.seen.setdefault(tp, SeenSet())
        key = dedup_key(event.account_id, event.event_id)
        bucket = dedup_bucket(event, catalog)
        if not seen.add_if_new(key, bucket):
            counts["duplicates"] += 1
            metrics.DEDUPLICATED.labels(STAGE).inc()
            return
        result.changelog.setdefault(tp, []).append((key, bucket.encode()))
        try:
            enriched = enrich(event, catalog)
            if self.periods.is_closed(enriched.account_id, enriched.period):
                raise Rejected(PERIOD_CLOSED, f"period {enriched.period} of {enriched.account_id!r} is final")
        except Rejected as rejection:
            self._reject(rejection, record, original, origin, counts, result)
            return
        counts["mediated"] += 1
        if result.newest_event_time is None or enriched.event_time > result.newest_event_time:
            result.newest_event_time = enriched.event_time
        headers = [
            (LINEAGE_HEADER, lineage_value(record.topic, record.partition, record.offset)),
            (RAW_HEADER, original),
            (ORIGIN_HEADER, lineage_value(*origin)),
        ]
        result.outputs.append(
            OutputRecord(
                MEDIATED,
                encode_usage(enriched),
                enriched.account_id.encode(),
                partition_for(enriched.account_id, self.partitions),
                headers,
            )
        )

    def _reject(
        self,
        rejection: Rejected,
        record: InputRecord,
        original: bytes,
        origin: tuple[str, int, int],
        counts: Counter[str],
        result: BatchResult,
    ) -> None:
        counts[f"rejected.{rejection.reason}"] += 1
        metrics.REJECTED.labels(STAGE, rejection.reason).inc()
        result.outputs.append(
            OutputRecord(
                REJECTED,
                original,
                record.key,
                headers=dead_letter_headers(rejection.reason, rejection.detail, STAGE, *origin),
            )
        )


def _origin(value: bytes) -> tuple[str, int, int]:
    topic, partition, offset = value.decode().split("\x1f")
    return topic, int(partition), int(offset)
