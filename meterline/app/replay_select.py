"""Which DLQ records `meterline replay` re-publishes, and how each copy looks.

The DLQ is read to its end as of the start (read_committed, partition EOF, which
follows fetch high watermarks rather than ListOffsets, which the embedded broker may
answer short). A selected record is skipped, and counted by reason and why, when its
DLQ copy holds only a prefix (`meterline.truncated`), when its source is not a raw
topic (consolidation's records hold rated records, not raw bytes), when it was
replayed before, or when its event falls in a period already closed for its account.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Final
from zoneinfo import ZoneInfo

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from mediation.enrich import local_time, period_of
from mediation.formats import account_of, parse_record
from meterline.app.replay_options import CATALOG_GAP_REASONS
from meterline.kernel.catalog import Catalog
from meterline.kernel.config import RawTopic, Settings
from meterline.kernel.headers import (
    CDR_TIMEZONE_HEADER,
    DETAIL_HEADER,
    FORMAT_HEADER,
    REASON_HEADER,
    STAGE_HEADER,
    TRUNCATED_HEADER,
)
from meterline.kernel.reasons import Rejected
from meterline.runtime.command_clients import ClientErrors, DeliveryError, quiet
from meterline.runtime.kafka_config import consumer_config

REPLAY_OF_HEADER: Final = "meterline.replay.of"
SOURCE_TOPIC: Final = "meterline.source.topic"
SOURCE_PARTITION: Final = "meterline.source.partition"
SOURCE_OFFSET: Final = "meterline.source.offset"
# Headers the DLQ adds; any other header a DLQ record carries came with the original.
_DLQ_HEADERS: Final = frozenset(
    {REASON_HEADER, DETAIL_HEADER, STAGE_HEADER, TRUNCATED_HEADER, REPLAY_OF_HEADER}
    | {SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET}
)

CE_SUBJECT_HEADER: Final = "ce_subject"  # CloudEvents binary content mode: the account
# Why a selected record was not replayed.
TRUNCATED: Final = "truncated"
NOT_RAW: Final = "source_not_a_raw_topic"
ALREADY_REPLAYED: Final = "already_replayed"
PERIOD_CLOSED: Final = "period_closed"


@dataclass(frozen=True, slots=True)
class Selection:
    """Which DLQ records to replay: by reason, account and time they reached the DLQ
    (`since` inclusive, `until` exclusive)."""

    reasons: frozenset[str] = frozenset(CATALOG_GAP_REASONS)
    account: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    include_replayed: bool = False

    def in_time(self, at: datetime) -> bool:
        return (self.since is None or at >= self.since) and (self.until is None or at < self.until)


@dataclass(slots=True)
class Copy:
    """One DLQ record to publish again."""

    letter: str  # DLQ_TOPIC/PARTITION/OFFSET
    reason: str
    account: str | None
    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass(slots=True)
class ReplayReport:
    replayed: Counter[str] = field(default_factory=Counter)
    # (reason, why) -> count
    skipped: Counter[tuple[str, str]] = field(default_factory=Counter)
    # (reason, account or "") -> count, of the records replayed (or that would be)
    by_account: Counter[tuple[str, str]] = field(default_factory=Counter)
    skipped_periods: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def lines(self, dry_run: bool) -> list[str]:
        verb = "would_replay" if dry_run else "replayed"
        out = [f"{verb}: {sum(self.replayed.values())}"]
        out += [f"{verb}.{reason}: {n}" for reason, n in sorted(self.replayed.items())]
        if dry_run:
            out += [
                f"{verb}.{reason}.{account or '?'}: {n}"
                for (reason, account), n in sorted(self.by_account.items())
            ]
        out.append(f"skipped: {sum(self.skipped.values())}")
        out += [f"skipped.{reason}.{why}: {n}" for (reason, why), n in sorted(self.skipped.items())]
        out += [
            f"closed: {account or '?'} {period} ({reason}): {n}"
            for (reason, account, period), n in sorted(self.skipped_periods.items())
        ]
        return out


# --------------------------------------------------------------------------- reading


def read_to_end(settings: Settings, topic: str, name: str, timeout: float = 60.0) -> Iterator[Message]:
    """Every committed record of `topic`, partition by partition to the end seen at the start.

    The end is where each partition first reports EOF (fetch high watermarks, not
    ListOffsets, which the embedded broker may answer short); records appended later
    are not read.
    """
    errors = ClientErrors()
    consumer = Consumer(
        quiet(
            consumer_config(
                settings.bootstrap_servers,
                settings.kafka,
                settings.topics.group(f"meterline-{name}"),
                **{"enable.partition.eof": True},
            ),
            errors,
        )
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return
        partitions = sorted(metadata.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        pending = set(partitions)
        since = time.monotonic()
        while pending:
            for message in consumer.consume(10000, 0.2):
                since = time.monotonic()
                error = message.error()
                if error is None:
                    if message.partition() in pending:
                        yield message
                elif error.code() == KafkaError._PARTITION_EOF and message.partition() in pending:
                    pending.discard(message.partition())
                    consumer.pause([TopicPartition(topic, message.partition())])
            if time.monotonic() - since > timeout:
                raise DeliveryError(f"could not read {topic} to its end: nothing read for {timeout:.0f}s")
    finally:
        consumer.close()


# --------------------------------------------------------------------------- selecting


def select(
    letters: Iterator[Message],
    selection: Selection,
    raw_topics: Mapping[str, RawTopic],
    catalog: Catalog,
    is_closed: Callable[[str, str], bool],
    replayed_before: set[str],
    max_record_bytes: int,
    report: ReplayReport,
) -> list[Copy]:
    """The copies to publish; what is skipped is counted in `report`."""
    now = datetime.now(UTC)
    copies: list[Copy] = []
    for message in letters:
        headers = {name: value for name, value in message.headers() or [] if value is not None}
        reason = headers.get(REASON_HEADER, b"").decode("utf-8", "replace")
        if reason not in selection.reasons:
            continue
        _, stamp = message.timestamp()
        if not selection.in_time(datetime.fromtimestamp(stamp / 1000, UTC)):
            continue
        letter = f"{message.topic()}/{message.partition()}/{message.offset()}"
        value = message.value() or b""
        topic = headers.get(SOURCE_TOPIC, b"").decode("utf-8", "replace")
        raw = raw_topics.get(topic)
        fmt = _format(headers, raw, value)
        account = _account(headers, value, fmt, max_record_bytes) if raw is not None else None
        if selection.account is not None and account != selection.account:
            continue
        why = _why_not(headers, raw, letter, selection, replayed_before)
        if why is None:
            zone = _zone(headers, raw) if fmt == "asterisk-csv" else None
            period = _closed_period(value, fmt, zone, catalog, is_closed, now, max_record_bytes)
            if period is not None:
                why = PERIOD_CLOSED
                report.skipped_periods[(reason, account or "", period)] += 1
        if why is not None:
            report.skipped[(reason, why)] += 1
            continue
        key = account.encode() if account else message.key()
        copy_headers = [(n, v) for n, v in message.headers() or [] if n not in _DLQ_HEADERS and v is not None]
        if fmt != (raw.format if raw else fmt) and not any(n == FORMAT_HEADER for n, _ in copy_headers):
            copy_headers.append((FORMAT_HEADER, fmt.encode()))
        copy_headers.append((REPLAY_OF_HEADER, letter.encode()))
        copies.append(Copy(letter, reason, account, topic, value, key, copy_headers))
        report.replayed[reason] += 1
        report.by_account[(reason, account or "")] += 1
    return copies


def _why_not(
    headers: Mapping[str, bytes], raw: RawTopic | None, letter: str, selection: Selection, before: set[str]
) -> str | None:
    if TRUNCATED_HEADER in headers:
        return TRUNCATED  # a prefix is not the record: replaying it would bill something else
    if raw is None:
        return NOT_RAW
    if letter in before and not selection.include_replayed:
        return ALREADY_REPLAYED
    return None


def _format(headers: Mapping[str, bytes], raw: RawTopic | None, value: bytes) -> str:
    """The original's format: its header if the DLQ kept it, else the raw topic's, where
    `auto` reads a record that is not a JSON object as an Asterisk CDR row (the DLQ keeps
    no input headers, and `produce` marks CSV files only by header)."""
    given = headers.get(FORMAT_HEADER)
    if given is not None:
        return given.decode("utf-8", "replace")
    fmt = raw.format if raw is not None else "auto"
    if fmt == "auto" and CE_SUBJECT_HEADER not in headers and not value.lstrip().startswith(b"{"):
        return "asterisk-csv"
    return fmt


def _account(headers: Mapping[str, bytes], value: bytes, fmt: str, max_record_bytes: int) -> str | None:
    """The account of the original: a binary-mode CloudEvent names it in a header."""
    subject = headers.get(CE_SUBJECT_HEADER)
    if subject is not None:
        return subject.decode("utf-8", "replace") or None
    return account_of(value, fmt, max_record_bytes)


def _zone(headers: Mapping[str, bytes], raw: RawTopic | None) -> tzinfo | None:
    """The zone of an Asterisk record's times, as mediation reads it: its header (should the
    DLQ keep it), else its raw topic's setting; None is UTC."""
    given = headers.get(CDR_TIMEZONE_HEADER)
    name = given.decode("utf-8", "replace") if given is not None else raw.cdr_timezone if raw else None
    try:
        return ZoneInfo(name) if name else None
    except (ValueError, KeyError, OSError):
        return None  # mediation rejects such a record; nothing closed to report


def _closed_period(
    value: bytes,
    fmt: str,
    zone: tzinfo | None,
    catalog: Catalog,
    is_closed: Callable[[str, str], bool],
    now: datetime,
    max_record_bytes: int,
) -> str | None:
    """The event's period if it is closed for its account; None if open or unreadable
    (mediation decides about those)."""
    try:
        event = parse_record(value, fmt, catalog.meters, now, max_record_bytes, cdr_zone=zone)
        _, local = local_time(event, catalog)
    except Rejected:
        return None
    period = period_of(local)
    return period if is_closed(event.account_id, period) else None
