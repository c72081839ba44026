"""The mediation stage: parse + validate raw records, repartition by account,
deduplicate, enrich. A transform plugged into meterline.runtime.

Two steps share one process and one transaction:
- raw step (raw topics not keyed by account): parse and validate, reject to the
  DLQ, forward valid events to the repartition topic keyed by account, carrying
  the original bytes and their origin in headers;
- keyed step (repartition topic, or raw topics keyed by account): dedup on
  (account_id, event_id) with durable state, enrich, emit to the mediated topic.

Dedup state reaches the changelog as one block per batch, partition and period
(the batch's new keys, concatenated), not one record per key; when a period is
closed for every account its keys are forgotten and its blocks tombstoned.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from functools import lru_cache

from mediation.dedup import SeenSet, dedup_key
from mediation.enrich import dedup_bucket, enrich, local_time
from mediation.formats import parse_record
from meterline import metrics
from meterline.catalog import Account
from meterline.config import RawTopic, Settings
from meterline.dlq import dead_letter_headers
from meterline.lineage import LINEAGE_HEADER, lineage_value
from meterline.messages import InputRecord, OutputRecord
from meterline.reasons import MALFORMED, PERIOD_CLOSED, Rejected
from meterline.records import UsageEvent
from meterline.runtime import TP, BatchResult
from meterline.tables import ContractsTable, PeriodsTable
from meterline.topics import MEDIATED, REJECTED, REPARTITION
from schemas.codec import SchemaError, decode_usage, encode_usage

STAGE = "mediation"
RAW_HEADER = "ml.raw"  # original bytes, so later rejections still dead-letter them unchanged
ORIGIN_HEADER = "ml.origin"  # "topic\x1fpartition\x1foffset" of the raw record
FORMAT_HEADER = "meterline.format"  # set by `meterline produce` per input file
BLOCK = b"B"  # changelog key prefix of a block of dedup keys: B<period>\x1f<last offset>


def partition_for(account_id: str, partitions: int) -> int:
    # Explicit, stable partitioning so repartition, mediated and rated topics stay co-partitioned.
    return zlib.crc32(account_id.encode()) % partitions


@lru_cache(maxsize=1 << 16)
def _route(account_id: str, partitions: int) -> tuple[bytes, int]:
    """Key and partition of an account's records (memoised: computed for every event)."""
    return account_id.encode(), partition_for(account_id, partitions)


class _Keyed:
    """An event waiting for the keyed step, with where it came from (one per event: a
    plain class, which mypyc builds much faster than a NamedTuple)."""

    __slots__ = ("event", "origin", "original", "record")

    def __init__(
        self, record: InputRecord, event: UsageEvent, original: bytes, origin: tuple[str, int, int]
    ) -> None:
        self.record = record
        self.event = event
        self.original = original
        self.origin = origin


class MediationProcessor:
    stage = STAGE

    def __init__(
        self, settings: Settings, contracts: ContractsTable, periods: PeriodsTable, partitions: int
    ) -> None:
        self.settings = settings
        self.contracts = contracts
        self.periods = periods
        self.partitions = partitions
        self.raw_topics: dict[str, RawTopic] = {t.name: t for t in settings.raw_topics}
        self.seen: dict[TP, SeenSet] = {}
        # Changelog block keys per partition and period, to tombstone them when the period is forgotten.
        self.blocks: dict[TP, dict[str, list[bytes]]] = {}
        self._tombstones: dict[TP, list[bytes]] = {}
        self._forgettable: set[str] = set()
        self._forgettable_known = False  # computed on the first idle, then when a table changes

    # -- state -----------------------------------------------------------------

    def restore(self, tp: TP, entries: Iterator[tuple[bytes, bytes | None]]) -> None:
        seen = self.seen.setdefault(tp, SeenSet())
        blocks = self.blocks.setdefault(tp, {})
        for key, value in entries:
            if not key.startswith(BLOCK):
                continue
            period = key[1:].split(b"\x1f", 1)[0].decode()
            if value is None:  # tombstone of a forgotten period's block
                continue
            seen.add_block(period, value)
            blocks.setdefault(period, []).append(key)
        self._gauge()

    def release(self, tp: TP) -> None:
        self.seen.pop(tp, None)
        self.blocks.pop(tp, None)
        self._tombstones.pop(tp, None)

    def idle(self) -> None:
        catalog_changed = self.contracts.poll()
        if self.periods.poll() or catalog_changed or not self._forgettable_known:
            self._forgettable = self._closed_everywhere()
            self._forgettable_known = True
        if self._forgettable:
            self._forget_closed_periods()

    def _closed_everywhere(self) -> set[str]:
        """Periods closed for every account: their invoices can no longer change."""
        closed = set(self.periods.closed_all)
        accounts = set(self.contracts.catalog.accounts)
        per_period: dict[str, set[str]] = {}
        for period, account in self.periods.closed_accounts:
            per_period.setdefault(period, set()).add(account)
        closed.update(p for p, done in per_period.items() if accounts and accounts <= done)
        return closed

    def _forget_closed_periods(self) -> None:
        for tp, seen in self.seen.items():
            for period in self._forgettable.intersection(seen.by_period):
                seen.forget_period(period)
                self._tombstones.setdefault(tp, []).extend(self.blocks.get(tp, {}).pop(period, []))

    def _gauge(self) -> None:
        metrics.STATE_ENTRIES.labels(STAGE).set(sum(len(s) for s in self.seen.values()))

    # -- transform -------------------------------------------------------------

    def process(self, records: Sequence[InputRecord]) -> BatchResult:
        result = BatchResult()
        now = datetime.now(UTC)
        keyed: dict[TP, list[_Keyed]] = {}
        for record in records:
            tp = (record.topic, record.partition)
            counts = result.counts.get(tp)
            if counts is None:
                counts = result.counts[tp] = Counter()
            raw = self.raw_topics.get(record.topic)
            if raw is None:
                item = self._decode_forwarded(record, counts, result)
                if item is not None:
                    keyed.setdefault(tp, []).append(item)
                continue
            counts["events_in"] += 1
            event = self._parse(record, raw, now, counts, result)
            if event is None:
                continue
            origin = (record.topic, record.partition, record.offset)
            if raw.keyed_by_account:
                keyed.setdefault(tp, []).append(_Keyed(record, event, record.value or b"", origin))
                continue
            counts["forwarded"] += 1
            lineage = lineage_value(*origin)
            result.outputs.append(
                OutputRecord(
                    REPARTITION,
                    encode_usage(event),
                    *_route(event.account_id, self.partitions),
                    [(LINEAGE_HEADER, lineage), (ORIGIN_HEADER, lineage), (RAW_HEADER, record.value or b"")],
                )
            )
        for tp, items in keyed.items():
            self._keyed_step(tp, items, result)
        for tp, keys in self._tombstones.items():
            if tp in result.counts:  # a changelog record needs a batch of this partition to ride on
                result.changelog.setdefault(tp, []).extend((key, None) for key in keys)
                keys.clear()
        self._gauge()
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
            origin = (record.topic, record.partition, record.offset)
            self._reject(rejection, record, record.value or b"", origin, counts, result)
            return None

    def _decode_forwarded(
        self, record: InputRecord, counts: Counter[str], result: BatchResult
    ) -> _Keyed | None:
        original = record.headers.get(RAW_HEADER, record.value or b"")
        origin_header = record.headers.get(ORIGIN_HEADER)
        origin = _origin(origin_header) if origin_header else (record.topic, record.partition, record.offset)
        try:
            return _Keyed(record, decode_usage(record.value or b""), original, origin)
        except SchemaError as exc:
            self._reject(Rejected(MALFORMED, str(exc)), record, original, origin, counts, result)
            return None

    def _keyed_step(self, tp: TP, items: list[_Keyed], result: BatchResult) -> None:
        catalog = self.contracts.catalog
        counts = result.counts[tp]
        keys = [dedup_key(i.event.account_id, i.event.event_id) for i in items]
        located = [local_time(i.event, catalog) for i in items]
        buckets = [dedup_bucket(local) for _, local in located]
        verdicts = self.seen.setdefault(tp, SeenSet()).admit(keys, buckets)
        new_keys: dict[str, list[bytes]] = {}
        for item, key, bucket, new, (account, local) in zip(
            items, keys, buckets, verdicts, located, strict=True
        ):
            if not new:
                counts["duplicates"] += 1
                continue
            new_keys.setdefault(bucket, []).append(key)
            self._enrich_one(item, account, local, counts, result)
        if verdicts.count(False):
            metrics.DEDUPLICATED.labels(STAGE).inc(verdicts.count(False))
        last = str(items[-1].record.offset).encode()
        blocks = self.blocks.setdefault(tp, {})
        changelog = result.changelog.setdefault(tp, [])
        for bucket, block in new_keys.items():
            block_key = BLOCK + bucket.encode() + b"\x1f" + last
            changelog.append((block_key, b"".join(block)))
            blocks.setdefault(bucket, []).append(block_key)

    def _enrich_one(
        self,
        item: _Keyed,
        account: Account | None,
        local: datetime,
        counts: Counter[str],
        result: BatchResult,
    ) -> None:
        record = item.record
        try:
            enriched = enrich(item.event, self.contracts.catalog, account, local)
            if self.periods.is_closed(enriched.account_id, enriched.period):
                raise Rejected(PERIOD_CLOSED, f"period {enriched.period} of {enriched.account_id!r} is final")
        except Rejected as rejection:
            self._reject(rejection, record, item.original, item.origin, counts, result)
            return
        counts["mediated"] += 1
        if result.newest_event_time is None or enriched.event_time > result.newest_event_time:
            result.newest_event_time = enriched.event_time
        position = (record.topic, record.partition, record.offset)
        lineage = lineage_value(*position)
        headers = [
            (LINEAGE_HEADER, lineage),
            (RAW_HEADER, item.original),
            # On a keyed raw topic the record is its own origin.
            (ORIGIN_HEADER, lineage if item.origin == position else lineage_value(*item.origin)),
        ]
        key, partition = _route(enriched.account_id, self.partitions)
        result.outputs.append(OutputRecord(MEDIATED, encode_usage(enriched), key, partition, headers))

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
