"""The mediation stage: parse + validate raw records, repartition by account,
deduplicate, enrich. A plain transform (meterline.kernel.messages.Processor) that the Kafka
runtime runs, alone or chained with rating.

Two steps share one process and one transaction:
- raw step (raw topics not keyed by account): parse and validate, reject to the
  DLQ, forward valid events to the repartition topic keyed by account, carrying
  the original bytes and their origin in headers;
- keyed step (repartition topic, or raw topics keyed by account): dedup on
  (account_id, event_id) with durable state, enrich (contract, plan, period, and a
  charge that rates the event), emit to the mediated topic.

A dedup key is taken only by a copy that is emitted: a copy rejected by enrichment,
charge matching or a closed period holds none, so a corrected copy is mediated. A copy
whose key is held, in whatever period, is a duplicate. The keys held, and their
changelog, are mediation.dedup_state's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, tzinfo
from functools import lru_cache

from mediation.cloudevents import parse_binary_cloudevent
from mediation.dedup import dedup_key
from mediation.dedup_state import BLOCK as BLOCK  # still importable from here
from mediation.dedup_state import DedupState, closed_everywhere
from mediation.enrich import ChargeCache, enrich, local_time
from mediation.formats import CE_CONTENT_TYPE, CE_SPECVERSION, parse_record
from meterline.kernel.catalog import Account
from meterline.kernel.config import RawTopic, Settings
from meterline.kernel.dlq import cut_short, dead_letter, log_internal_error, max_bytes_of
from meterline.kernel.headers import (
    CDR_TIMEZONE_HEADER,
    FORMAT_HEADER,
    ORIGIN_HEADER,
    RAW_HEADER,
    TRUNCATED_HEADER,
    cdr_zone,
    partition_of,
)
from meterline.kernel.lineage import LINEAGE_HEADER, lineage_value
from meterline.kernel.messages import TP, BatchResult, InputRecord, OutputRecord
from meterline.kernel.reasons import (
    INVALID_TIMESTAMP,
    MALFORMED,
    PERIOD_CLOSED,
    TOO_LARGE,
    Rejected,
    internal_error,
)
from meterline.kernel.records import UsageEvent
from meterline.kernel.views import CatalogView, PeriodsView
from schemas.codec import SchemaError, decode_usage, encode_usage

STAGE = "mediation"
# Headers saying how a raw record is read (with every `ce_` header): its DLQ copy keeps them,
# so that a replay reads it as it was read; forwarded with it when they say more than its topic.
_READING_HEADERS = frozenset((FORMAT_HEADER, CDR_TIMEZONE_HEADER, CE_CONTENT_TYPE))


@lru_cache(maxsize=1 << 16)
def _route(account_id: str, partitions: int) -> tuple[bytes, int]:
    """Key and partition of an account's records (memoised: computed for every event). The
    partition is explicit, so that repartition, mediated and rated topics stay co-partitioned."""
    key = account_id.encode()
    return key, partition_of(key, partitions)


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
        self, settings: Settings, contracts: CatalogView, periods: PeriodsView, partitions: int
    ) -> None:
        self.settings = settings
        self.contracts = contracts
        self.periods = periods
        self.partitions = partitions
        topics = settings.topics
        self.repartition_topic = topics.repartition
        self.mediated_topic = topics.mediated
        self.rejected_topic = topics.rejected
        # By the names the records come from (with this installation's topic prefix).
        self.raw_topics: dict[str, RawTopic] = {topics.name(t.name): t for t in settings.raw_topics}
        # Validated when the settings were loaded.
        self.cdr_zones: dict[str, tzinfo | None] = {
            topics.name(t.name): cdr_zone(t.cdr_timezone) if t.cdr_timezone else None
            for t in settings.raw_topics
        }
        self.max_dlq_bytes = max_bytes_of(settings.kafka)
        self.state = DedupState()
        # With keep_events, the events emitted to the mediated topic by the last batch with the
        # records they came from, in order (a chained rating takes them as they are, no decode).
        self.keep_events = False
        self.mediated_events: list[tuple[InputRecord, UsageEvent]] = []
        self.seen = self.state.seen  # the held keys, by partition

    # -- state -----------------------------------------------------------------

    def restore(self, tp: TP, entries: Iterator[tuple[bytes, bytes | None]]) -> None:
        self.state.restore(tp, entries)

    def release(self, tp: TP) -> None:
        self.state.release(tp)

    def idle(self) -> None:
        catalog_changed = self.contracts.poll()
        self.refresh(catalog_changed, self.periods.poll())

    def refresh(self, catalog_changed: bool, periods_changed: bool) -> None:
        """After the tables were polled (by `idle`, or by a chain of stages sharing them)."""
        if periods_changed or catalog_changed or not self.state.forgettable_known:
            periods, accounts = self.periods, self.contracts.catalog.accounts
            self.state.set_forgettable(
                closed_everywhere(periods.closed_all, periods.closed_accounts, accounts)
            )
        self.state.forget_closed_periods()

    def state_entries(self) -> int:
        return self.state.entries()

    # -- transform -------------------------------------------------------------

    def process(self, records: Sequence[InputRecord]) -> BatchResult:
        """Transform a batch. No record stops it: one that fails unexpectedly goes to the
        DLQ as internal_error, leaving no trace in the state, and the rest goes on."""
        result = BatchResult()
        self.mediated_events = []
        now = datetime.now(UTC)
        keyed: dict[TP, list[_Keyed]] = {}
        for record in records:
            tp = (record.topic, record.partition)
            counts = result.counts.get(tp)
            if counts is None:
                counts = result.counts[tp] = Counter()
            raw = self.raw_topics.get(record.topic)
            if raw is not None:
                counts["events_in"] += 1
            try:
                item = (
                    self._decode_forwarded(record, counts, result)
                    if raw is None
                    else self._raw_step(record, raw, now, counts, result)
                )
            except Exception as exc:  # containment: one record never stops the stage
                original, origin = _source(record)
                self._reject(internal_error(exc), record, original, origin, counts, result)
                continue
            if item is not None:
                keyed.setdefault(tp, []).append(item)
        for tp, items in keyed.items():
            self._keyed_step(tp, items, result)
        self.state.add_tombstones(result)
        return result

    def _raw_step(
        self, record: InputRecord, raw: RawTopic, now: datetime, counts: Counter[str], result: BatchResult
    ) -> _Keyed | None:
        """Validate a raw record; forward it to the repartition topic, or return it for the
        keyed step when its topic is keyed by account."""
        headers = record.headers
        named = headers.get(FORMAT_HEADER)
        fmt = named.decode("utf-8", "replace") if named else raw.format
        event = self._parse(record, raw, fmt, now, counts, result)
        if event is None:
            return None
        origin = (record.topic, record.partition, record.offset)
        if raw.keyed_by_account:
            return _Keyed(record, event, record.value or b"", origin)
        lineage = lineage_value(*origin)
        forwarded = [(LINEAGE_HEADER, lineage), (ORIGIN_HEADER, lineage), (RAW_HEADER, record.value or b"")]
        # JSON formats tell themselves apart under auto; CSV, binary CloudEvents and time zones do not.
        if (
            CE_SPECVERSION in headers
            or CDR_TIMEZONE_HEADER in headers
            or (fmt == "asterisk-csv" and raw.format != fmt)
        ):
            forwarded.extend(_reading(headers))
        output = OutputRecord(
            self.repartition_topic, encode_usage(event), *_route(event.account_id, self.partitions), forwarded
        )
        counts["forwarded"] += 1
        result.outputs.append(output)
        return None

    def _parse(
        self,
        record: InputRecord,
        raw: RawTopic,
        fmt: str,
        now: datetime,
        counts: Counter[str],
        result: BatchResult,
    ) -> UsageEvent | None:
        headers = record.headers
        meters = self.contracts.catalog.meters
        try:
            truncated = headers.get(TRUNCATED_HEADER)
            if truncated is not None:
                # Publishers cut a record too large to publish and say how large it was.
                length = truncated.decode("ascii", "replace")
                kept = len(record.value or b"")
                raise Rejected(TOO_LARGE, f"{length} bytes, cut by the publisher to {kept}")
            if CE_SPECVERSION in headers and (fmt == "auto" or fmt == "cloudevents"):
                return parse_binary_cloudevent(
                    record.value or b"", headers, meters, now, self.settings.max_record_bytes
                )
            return parse_record(
                record.value or b"",
                fmt,
                meters,
                now,
                self.settings.max_record_bytes,
                self._cdr_zone(record) if fmt == "asterisk-csv" else None,
            )
        except Rejected as rejection:
            origin = (record.topic, record.partition, record.offset)
            self._reject(rejection, record, record.value or b"", origin, counts, result)
            return None

    def _cdr_zone(self, record: InputRecord) -> tzinfo | None:
        named = record.headers.get(CDR_TIMEZONE_HEADER)
        if named is None:
            return self.cdr_zones.get(record.topic)
        try:
            return cdr_zone(named.decode("utf-8"))
        except ValueError as exc:  # not UTF-8, or no such zone: the header is the record's own defect
            raise Rejected(INVALID_TIMESTAMP, f"header {CDR_TIMEZONE_HEADER}: {exc}") from None

    def _decode_forwarded(
        self, record: InputRecord, counts: Counter[str], result: BatchResult
    ) -> _Keyed | None:
        original, origin = _source(record)
        try:
            return _Keyed(record, decode_usage(record.value or b""), original, origin)
        except SchemaError as exc:
            self._reject(Rejected(MALFORMED, str(exc)), record, original, origin, counts, result)
            return None

    def _keyed_step(self, tp: TP, items: list[_Keyed], result: BatchResult) -> None:
        catalog = self.contracts.catalog
        counts = result.counts[tp]
        seen = self.state.partition(tp)
        located: list[_Keyed] = []
        keys: list[bytes] = []
        locals_: list[tuple[Account | None, datetime]] = []
        for item in items:
            try:
                key = dedup_key(item.event.account_id, item.event.event_id)
                where = local_time(item.event, catalog)
            except Exception as exc:  # invalid_timestamp (no local time), or containment
                rejection = exc if isinstance(exc, Rejected) else internal_error(exc)
                self._reject(rejection, item.record, item.original, item.origin, counts, result)
                continue
            located.append(item)
            keys.append(key)
            locals_.append(where)
        # One lookup for the batch; keys taken by this batch's accepted copies are in `taken`.
        held = seen.held(keys)
        taken: set[bytes] = set()
        new_keys: dict[str, list[bytes]] = {}
        charges: ChargeCache = {}
        duplicates = 0
        for index, item in enumerate(located):
            key = keys[index]
            if held[index] or key in taken:
                duplicates += 1
                continue
            account, local = locals_[index]
            period = self._enrich_one(item, account, local, charges, counts, result)
            if period is not None:  # accepted: its key is held from now on, under its period
                taken.add(key)
                seen.take(key, period)
                new_keys.setdefault(period, []).append(key)
        if duplicates:
            counts["duplicates"] += duplicates
        self.state.add_blocks(tp, new_keys, items[-1].record.offset, result)

    def _enrich_one(
        self,
        item: _Keyed,
        account: Account | None,
        local: datetime,
        charges: ChargeCache,
        counts: Counter[str],
        result: BatchResult,
    ) -> str | None:
        """Enrich and emit one event whose key nobody holds: its period if it was emitted
        (then it takes the key), None if it went to the DLQ (then it takes none)."""
        record = item.record
        try:
            enriched = enrich(item.event, self.contracts.catalog, account, local, charges)
            if self.periods.is_closed(enriched.account_id, enriched.period):
                raise Rejected(PERIOD_CLOSED, f"period {enriched.period} of {enriched.account_id!r} is final")
            position = (record.topic, record.partition, record.offset)
            lineage = lineage_value(*position)
            headers = [
                (LINEAGE_HEADER, lineage),
                (RAW_HEADER, item.original),
                # On a keyed raw topic the record is its own origin.
                (ORIGIN_HEADER, lineage if item.origin == position else lineage_value(*item.origin)),
            ]
            key, partition = _route(enriched.account_id, self.partitions)
            output = OutputRecord(self.mediated_topic, encode_usage(enriched), key, partition, headers)
        except Exception as exc:  # a rejection, or containment: one record never stops the stage
            rejection = exc if isinstance(exc, Rejected) else internal_error(exc)
            self._reject(rejection, record, item.original, item.origin, counts, result)
            return None
        counts["mediated"] += 1
        if result.newest_event_time is None or enriched.event_time > result.newest_event_time:
            result.newest_event_time = enriched.event_time
        result.outputs.append(output)
        if self.keep_events:
            self.mediated_events.append((record, enriched))
        return enriched.period

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
        log_internal_error(STAGE, rejection, record.topic, record.partition, record.offset)
        letter = dead_letter(
            original,
            record.key,
            rejection.reason,
            rejection.detail,
            STAGE,
            *origin,
            truncated=record.headers.get(TRUNCATED_HEADER),
            max_bytes=self.max_dlq_bytes,
            kept=_reading(record.headers),
            dlq_topic=self.rejected_topic,
        )
        if cut_short(letter, original):
            counts["dlq_truncated"] += 1
        result.outputs.append(letter)


def _reading(headers: dict[str, bytes]) -> list[tuple[str, bytes]]:
    return [(n, v) for n, v in headers.items() if n in _READING_HEADERS or n.startswith("ce_")]


def _origin(value: bytes) -> tuple[str, int, int]:
    topic, partition, offset = value.decode().split("\x1f")
    return topic, int(partition), int(offset)


def _source(record: InputRecord) -> tuple[bytes, tuple[str, int, int]]:
    """The original bytes of a record and where they entered the pipeline, as well as
    can be told (for a record that failed before it was read)."""
    original = record.headers.get(RAW_HEADER, record.value or b"")
    position = (record.topic, record.partition, record.offset)
    origin_header = record.headers.get(ORIGIN_HEADER)
    try:
        return original, _origin(origin_header) if origin_header else position
    except ValueError:
        return original, position
