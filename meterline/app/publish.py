"""Publishing into the pipeline: the catalog, raw event files, period closes.

These back the user's commands, so they tell the truth: a broker that cannot be
reached is one KafkaUnavailable within a bounded time, with librdkafka's own log
lines kept off the terminal (meterline.runtime.command_clients), and a command succeeds
only once every record it produced was acknowledged; otherwise DeliveryError says
how many were not.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, NoReturn

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from mediation.formats import account_of
from meterline.kernel.catalog_changes import accounts_of_entities, blocked_removals, describe
from meterline.kernel.catalog_file import (
    catalog_entities,
    parse_catalog,
    read_catalog_document,
    validate_document,
)
from meterline.kernel.command_errors import UserError
from meterline.kernel.config import Settings
from meterline.kernel.dlq import max_bytes_of, record_size
from meterline.kernel.headers import (
    CDR_TIMEZONE_HEADER,
    FORMAT_HEADER,
    FORMATS,
    SOURCE_FILE_HEADER,
    SOURCE_LINE_HEADER,
    TRUNCATED_HEADER,
    SourceLines,
)
from meterline.runtime.command_clients import (
    ClientErrors,
    DeliveryError,
    check_reachable,
    plain_producer,
    quiet,
    transactional_producer,
)
from meterline.runtime.kafka_config import client_config
from meterline.runtime.tables import CompactedTable, PeriodsTable
from meterline.runtime.topic_admin import ensure_topics

# How long a command waits for the acknowledgements of what it produced.
DELIVERY_TIMEOUT_S: Final = 60.0
_PERIOD: Final = re.compile(r"^(\d{4})-(\d{2})$")


class InputError(UserError):
    """An input argument or file a user got wrong."""


class RemovalRefused(UserError):
    """A catalog would remove accounts or contracts that may have usage in an open period."""


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class InputFile:
    path: Path
    format: str


def parse_input(spec: str, default_format: str = "auto") -> InputFile:
    """`FILE` or `FORMAT:FILE` (docs/input-formats.md).

    A prefix is a format when it is followed by `:` and holds no `/`; an unknown one
    is named as such (unless the whole argument names an existing file).
    """
    prefix, sep, rest = spec.partition(":")
    if sep and prefix and "/" not in prefix and not Path(spec).is_file():
        path, chosen = Path(rest), prefix
        if chosen not in FORMATS:
            raise InputError(f"{spec}: unknown format {chosen!r}; use one of {', '.join(FORMATS)}")
    else:
        path, chosen = Path(spec), default_format
        if chosen not in FORMATS:
            raise InputError(f"unknown format {chosen!r}; use one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise InputError(f"{path}: no such input file")
    if chosen == "auto" and path.suffix.lower() == ".csv":
        chosen = "asterisk-csv"
    return InputFile(path, chosen)


def create_topics(settings: Settings) -> None:
    """Create the pipeline's missing topics; KafkaUnavailable if no broker answers."""
    check_reachable(settings)
    errors = ClientErrors()
    admin = AdminClient(quiet(client_config(settings.bootstrap_servers, settings.kafka), errors))
    ensure_topics(
        admin,
        settings.topics.pipeline([t.name for t in settings.raw_topics], settings.partitions),
        settings.replication_factor,
    )


# --------------------------------------------------------------------------- catalog


def publish_catalog(
    settings: Settings, path: str | Path, force: bool = False, now: datetime | None = None
) -> int:
    """Validate a catalog file and publish it as keyed entities (removed ones tombstoned).

    Refuses (RemovalRefused) to remove an account or contract that may have usage in
    an open period (see meterline.kernel.catalog_changes) unless `force`.
    """
    document = read_catalog_document(path)
    source = Path(path).name
    parse_catalog(document, source=source)  # raises CatalogError with file, path and problem
    entities = catalog_entities(document, source)
    create_topics(settings)
    topics = settings.topics
    current = CompactedTable(
        topics.contracts, settings.bootstrap_servers, settings.kafka, "publisher", prefix=topics.prefix
    )
    try:
        current.load()
    finally:
        current.close()
    wanted = {key.encode(): orjson.dumps(value) for key, value in entities}
    removed = current.values.keys() - wanted.keys()
    if not force:
        wanted_accounts = {spec["id"]: spec for spec in validate_document(document, source)["accounts"]}
        blocked = blocked_removals(
            accounts_of_entities(current.values),
            wanted_accounts,
            _closed_periods(settings),
            now or datetime.now(UTC),
        )
        if blocked:
            raise RemovalRefused(
                f"{source} would remove what may have usage in an open period: {describe(blocked)}; "
                "close those periods first, or pass --force"
            )
    changes: list[tuple[bytes, bytes | None]] = [
        (key, value) for key, value in wanted.items() if current.values.get(key) != value
    ]
    changes += [(key, None) for key in sorted(removed)]
    if changes:
        _publish_transaction(settings, changes)
    return len(wanted)


def _closed_periods(settings: Settings) -> Callable[[str, str], bool]:
    topic = settings.topics.periods
    table = CompactedTable(
        topic, settings.bootstrap_servers, settings.kafka, "publisher-periods", prefix=settings.topic_prefix
    )
    periods = PeriodsTable(table)
    try:
        periods.load()
    finally:
        table.close()
    return periods.is_closed


def _publish_transaction(settings: Settings, changes: list[tuple[bytes, bytes | None]]) -> None:
    producer = transactional_producer(settings, ClientErrors(), "meterline-contracts-publisher")
    try:
        producer.init_transactions(30)
        producer.begin_transaction()
        for key, value in changes:
            producer.produce(settings.topics.contracts, key=key, value=value)
        producer.commit_transaction(DELIVERY_TIMEOUT_S)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        reason = error.str() if isinstance(error, KafkaError) else str(exc)
        raise DeliveryError(f"catalog not published to {settings.topics.contracts}: {reason}") from exc


# --------------------------------------------------------------------------- raw records


def read_records(item: InputFile) -> Iterator[bytes]:
    """One raw record per non-empty line (JSON Lines, or one CDR row per line)."""
    for _, record in numbered_records(item):
        yield record


def numbered_records(item: InputFile) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, record) per non-empty line."""
    with item.path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield number, line


def produce_inputs(
    settings: Settings,
    inputs: list[InputFile],
    topic: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    key_by_account: bool = False,
    cdr_timezone: str | None = None,
    lines: SourceLines | None = None,
) -> int:
    """Publish raw records, files in the order given; each carries its file's format and
    its file and line (`meterline.source.file`, `meterline.source.line`), and records of
    Asterisk CSV files the `cdr_timezone` if one is given (`meterline.cdr_timezone`).

    Returns the count once every record is acknowledged; raises KafkaUnavailable when
    no broker answers and DeliveryError when any record was not delivered.

    With `key_by_account` each record is keyed by its account id (read the way
    mediation reads it), so the raw topic can be declared `keyed_by_account` and
    mediation skips the repartition hop.

    A record too large for the producer is published as its longest prefix that fits,
    with header `meterline.truncated` = its length in bytes; mediation rejects it as
    `too_large`, so one huge line never stops a run.

    With `lines` (for a topic that was empty), each record's partition is chosen here
    and noted there with its file and line, so a DLQ record can name its input line.
    """
    check_reachable(settings)
    failures: list[KafkaError] = []
    errors = ClientErrors()
    producer = plain_producer(settings, errors, failures)
    topic = topic or settings.topics.name(settings.raw_topics[0].name)
    max_bytes = max_bytes_of(settings.kafka)

    if lines is not None:
        partitions = producer.list_topics(topic, timeout=10).topics[topic].partitions
        lines = lines if lines.partitions == len(partitions) else None
    count = 0
    for item in inputs:
        name = str(item.path)
        headers = [(FORMAT_HEADER, item.format.encode()), (SOURCE_FILE_HEADER, name.encode())]
        if cdr_timezone is not None and item.format == "asterisk-csv":
            headers.append((CDR_TIMEZONE_HEADER, cdr_timezone.encode()))
        file = lines.file(name) if lines is not None else 0
        # Below this a record fits whatever its key (keys are account ids, far shorter) and line.
        fits = max_bytes - record_size(b"", None, headers) - 1024
        for number, record in numbered_records(item):
            account = account_of(record, item.format, settings.max_record_bytes) if key_by_account else None
            key = account.encode() if account is not None else None
            record_headers = [*headers, (SOURCE_LINE_HEADER, str(number).encode())]
            if len(record) > fits:
                record, key, record_headers = _fit(record, key, record_headers, max_bytes)
            partition = -1 if lines is None else lines.partition(key)
            while not failures:
                try:
                    producer.produce(
                        topic, value=record, key=key, headers=record_headers, partition=partition
                    )
                    if lines is not None:
                        lines.add(partition, file, number)
                    break
                except BufferError:  # the queue is full: wait for acknowledgements
                    if not _drain(producer, len(producer) - 1, failures):
                        _fail(producer, count, topic, failures, errors)
            else:
                break
            count += 1
            if count % 50000 == 0:
                producer.poll(0)
                if on_progress:
                    on_progress(count)
            if failures:
                break  # the broker refuses or is gone: stop rather than fail every record
        if failures:
            break
    _await_delivery(producer, count, topic, failures, errors)
    return count


def _fit(
    record: bytes, key: bytes | None, headers: list[tuple[str, bytes]], max_bytes: int
) -> tuple[bytes, bytes | None, list[tuple[str, bytes]]]:
    """The record, key and headers to publish: the record as is, or its longest prefix that fits."""
    if record_size(record, key, headers) <= max_bytes:
        return record, key, headers
    cut = [*headers, (TRUNCATED_HEADER, str(len(record)).encode())]
    if record_size(b"", key, cut) > max_bytes:
        key = None
    room = max(max_bytes - record_size(b"", key, cut), 0)
    return record[:room], key, cut


def _drain(producer: Producer, most: int, failures: list[KafkaError]) -> bool:
    """Serve acknowledgements until at most `most` records wait, or a delivery fails.

    False when none was acknowledged for DELIVERY_TIMEOUT_S: a large queue may take a
    while, but a broker that has stopped acknowledging is given up on.
    """
    waiting = len(producer)
    since = time.monotonic()
    while waiting > most and not failures:
        producer.poll(0.05)
        now_waiting = len(producer)
        if now_waiting < waiting:
            waiting, since = now_waiting, time.monotonic()
        elif time.monotonic() - since > DELIVERY_TIMEOUT_S:
            return False
    return True


def _await_delivery(
    producer: Producer, count: int, topic: str, failures: list[KafkaError], errors: ClientErrors
) -> None:
    """Wait for every acknowledgement; DeliveryError (after dropping the rest) if any is missing."""
    if _drain(producer, 0, failures) and not failures:
        return
    _fail(producer, count, topic, failures, errors)


def _fail(
    producer: Producer, count: int, topic: str, failures: list[KafkaError], errors: ClientErrors
) -> NoReturn:
    undelivered = max(len(producer) + len(failures), 1)
    if failures:
        why = f": {failures[0].str()}"
    else:
        why = f": no acknowledgement for {DELIVERY_TIMEOUT_S:.0f}s"
        if errors.last is not None:
            why += f" ({errors.last.str()})"
    producer.purge()  # what is left will not be sent once the command has failed
    producer.flush(0)
    raise DeliveryError(f"{undelivered:,} of {count:,} records were not delivered to {topic}{why}")


def check_period(period: str) -> str:
    """`YYYY-MM` with a month 01-12 and a year from 0001; InputError otherwise."""
    match = _PERIOD.match(period)
    if match is None:
        raise InputError(f"--period must look like YYYY-MM, got {period!r}")
    year, month = int(match.group(1)), int(match.group(2))
    if year < 1:
        raise InputError(f"--period {period}: year 0000 does not exist")
    if not 1 <= month <= 12:
        raise InputError(f"--period {period}: month must be 01 to 12")
    return period


def publish_close(settings: Settings, period: str, account_id: str | None = None) -> None:
    """Publish a period close; the consolidation workers finalize the drafts."""
    check_period(period)
    if account_id is not None and not account_id:
        raise InputError("--account must not be empty")
    create_topics(settings)
    failures: list[KafkaError] = []
    errors = ClientErrors()
    producer = plain_producer(
        settings, errors, failures, **{"message.timeout.ms": int(DELIVERY_TIMEOUT_S * 1000)}
    )
    key = f"{period}/{account_id}" if account_id else period
    value = {
        "period": period,
        "account_id": account_id,
        "closed_at": datetime.now(UTC).isoformat(),
        "by": "close",
    }
    producer.produce(settings.topics.periods, key=key.encode(), value=orjson.dumps(value))
    _await_delivery(producer, 1, settings.topics.periods, failures, errors)
