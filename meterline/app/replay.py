"""`meterline replay`: rejected records back to the raw topic they came from.

Once the catalog is fixed (a late contract, a meter added after its events), the
records the DLQ holds for a catalog gap can be billed: replay re-publishes each
selected DLQ record's original bytes to its source raw topic, and mediation takes
them like any other record. The DLQ keeps its records; the copy carries
`meterline.replay.of` = "DLQ_TOPIC/PARTITION/OFFSET".

Safe to interrupt and to rerun:
- the DLQ is read to its end as of the start (read_committed, partition EOF, which
  follows fetch high watermarks rather than ListOffsets), then the copies are
  published; re-rejections of this run's copies are new DLQ records for a later run;
- copies go out in Kafka transactions together with one marker per DLQ record on the
  compacted topic `meterline.replays` (same key as the header), so a record is
  replayed at most once unless asked again (`include_replayed`); an interrupted
  transaction publishes neither copies nor markers;
- a copy replayed twice bills nothing twice: a dedup key is held only by an accepted
  record, so once one copy is accepted every later one is a duplicate.

Skipped, and counted by reason and why: a DLQ copy that holds only a prefix
(`meterline.truncated`), one whose source is not a raw topic (consolidation's
records hold rated records, not raw bytes), one replayed before, and one whose
event falls in a period already closed for its account.
"""

from __future__ import annotations

import argparse
import contextlib
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from confluent_kafka import KafkaError, KafkaException

from meterline.app.replay_options import UsageError, parse_reasons, parse_time
from meterline.app.replay_select import (
    Copy,
    ReplayReport,
    Selection,
    read_to_end,
    select,
)
from meterline.kernel.catalog import Catalog
from meterline.kernel.config import Settings
from meterline.runtime.command_clients import ClientErrors, DeliveryError, transactional_producer
from meterline.runtime.tables import CompactedTable, ContractsTable, PeriodsTable

# Copies per transaction: a rerun after an interrupt redoes at most this many.
CHUNK: Final = 1000
TRANSACTION_TIMEOUT_S: Final = 60.0


def replayed_letters(settings: Settings) -> set[str]:
    """The DLQ records replayed before (keys of `meterline.replays`)."""
    found: set[str] = set()
    for message in read_to_end(settings, settings.topics.replays, "replay-markers"):
        key = message.key()
        if key is not None:
            # A tombstone gives a record back to replay.
            (found.add if message.value() else found.discard)(key.decode("utf-8", "replace"))
    return found


def _catalog_and_periods(settings: Settings) -> tuple[Catalog, PeriodsTable]:
    servers, kafka, topics = settings.bootstrap_servers, settings.kafka, settings.topics
    contracts_topic = CompactedTable(topics.contracts, servers, kafka, "replay", prefix=topics.prefix)
    periods_topic = CompactedTable(topics.periods, servers, kafka, "replay-periods", prefix=topics.prefix)
    contracts, periods = ContractsTable(contracts_topic), PeriodsTable(periods_topic)
    try:
        contracts.load()
        periods.load()
    finally:
        contracts_topic.close()
        periods_topic.close()
    return contracts.catalog, periods


# --------------------------------------------------------------------------- publishing


def replay(settings: Settings, selection: Selection, dry_run: bool = False) -> ReplayReport:
    """Select DLQ records and (unless `dry_run`) re-publish them; the report counts both.

    Raises KafkaUnavailable when no broker answers and DeliveryError unless every copy
    was published (the report of a failed run is lost with it: rerunning is safe).
    """
    from meterline.app.publish import create_topics

    create_topics(settings)  # the markers' topic among them
    catalog, periods = _catalog_and_periods(settings)
    before = replayed_letters(settings)
    report = ReplayReport()
    raw_topics = {settings.topics.name(t.name): t for t in settings.raw_topics}
    copies = select(
        read_to_end(settings, settings.topics.rejected, "replay"),
        selection,
        raw_topics,
        catalog,
        periods.is_closed,
        before,
        settings.max_record_bytes,
        report,
    )
    if not dry_run and copies:
        _publish(settings, copies)
    return report


def _publish(settings: Settings, copies: list[Copy]) -> None:
    producer = transactional_producer(settings, ClientErrors(), "meterline-replay")
    markers = settings.topics.replays
    done = 0
    try:
        producer.init_transactions(30)
        for start in range(0, len(copies), CHUNK):
            chunk = copies[start : start + CHUNK]
            producer.begin_transaction()
            at = datetime.now(UTC).isoformat()
            for item in chunk:
                producer.produce(item.topic, value=item.value, key=item.key, headers=item.headers)
                marker: dict[str, Any] = {"replayed_at": at, "topic": item.topic, "reason": item.reason}
                producer.produce(markers, key=item.letter.encode(), value=orjson.dumps(marker))
                producer.poll(0)
            producer.commit_transaction(TRANSACTION_TIMEOUT_S)
            done += len(chunk)
    except (KafkaException, BufferError) as exc:
        error = exc.args[0] if exc.args else None
        why = error.str() if isinstance(error, KafkaError) else str(exc)
        with contextlib.suppress(KafkaException):  # else it times out on the broker: never read
            producer.abort_transaction(10)
        raise DeliveryError(
            f"{len(copies) - done:,} of {len(copies):,} records were not replayed ({done:,} were; "
            f"rerun to replay the rest): {why}"
        ) from exc


def command(settings: Settings, args: argparse.Namespace) -> int:
    """`meterline replay` (options from meterline.app.replay_options.add_parser): prints the report."""
    if args.account is not None and not args.account:
        raise UsageError("--account must not be empty")
    selection = Selection(
        reasons=parse_reasons(args.reason),
        account=args.account,
        since=parse_time(args.since, "--since") if args.since else None,
        until=parse_time(args.until, "--until") if args.until else None,
        include_replayed=args.include_replayed,
    )
    report = replay(settings, selection, dry_run=args.dry_run)
    if args.dry_run:
        print("dry run: nothing was published")
    for line in report.lines(args.dry_run):
        print(line)
    return 0
