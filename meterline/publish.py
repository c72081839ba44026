"""Publishing into the pipeline: the catalog, raw event files, period closes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

from mediation.formats import FORMATS, account_of
from meterline.catalog_file import catalog_entities, parse_catalog, read_catalog_document
from meterline.config import Settings
from meterline.kafka_config import client_config, plain_producer_config, transactional_producer_config
from meterline.tables import CompactedTable
from meterline.topics import CONTRACTS, PERIODS, ensure_topics, pipeline_topics

FORMAT_HEADER = "meterline.format"


class InputError(ValueError):
    """An input argument or file a user got wrong."""


@dataclass(frozen=True, slots=True)
class InputFile:
    path: Path
    format: str


def parse_input(spec: str, default_format: str = "auto") -> InputFile:
    """`FILE` or `FORMAT:FILE` (DESIGN.md §3)."""
    fmt, sep, rest = spec.partition(":")
    if sep and fmt in FORMATS:
        path, chosen = Path(rest), fmt
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
    admin = AdminClient(client_config(settings.bootstrap_servers, settings.kafka))
    ensure_topics(
        admin,
        pipeline_topics([t.name for t in settings.raw_topics], settings.partitions),
        settings.replication_factor,
    )


def publish_catalog(settings: Settings, path: str | Path) -> int:
    """Validate a catalog file and publish it as keyed entities (removed ones tombstoned)."""
    document = read_catalog_document(path)
    parse_catalog(document, source=str(path))  # raises CatalogError with file, path and problem
    entities = catalog_entities(document)
    create_topics(settings)
    current = CompactedTable(CONTRACTS, settings.bootstrap_servers, settings.kafka, "publisher")
    current.load()
    current.close()
    wanted = {key.encode(): orjson.dumps(value) for key, value in entities}
    producer = Producer(
        transactional_producer_config(
            settings.bootstrap_servers,
            settings.kafka,
            f"meterline-contracts-publisher-{settings.instance_id}",
        )
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for key, value in wanted.items():
        if current.values.get(key) != value:
            producer.produce(CONTRACTS, key=key, value=value)
    for key in current.values.keys() - wanted.keys():
        producer.produce(CONTRACTS, key=key, value=None)
    producer.commit_transaction(30)
    return len(wanted)


def read_records(item: InputFile) -> Iterator[bytes]:
    """One raw record per non-empty line (JSON Lines, or one CDR row per line)."""
    with item.path.open("rb") as handle:
        for line in handle:
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield line


def produce_inputs(
    settings: Settings,
    inputs: list[InputFile],
    topic: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    key_by_account: bool = False,
) -> int:
    """Publish raw records, files in the order given; each carries its file's format.

    With `key_by_account` each record is keyed by its account id (read the way
    mediation reads it), so the raw topic can be declared `keyed_by_account` and
    mediation skips the repartition hop.
    """
    failures: list[Any] = []

    def delivered(error: Any, _: Any) -> None:
        if error is not None:
            failures.append(error)

    # Reports of failed deliveries only: a Python callback per delivered record costs as much as producing it.
    producer = Producer(
        {
            **plain_producer_config(settings.bootstrap_servers, settings.kafka),
            "on_delivery": delivered,
            "delivery.report.only.error": True,
        }
    )
    topic = topic or settings.raw_topics[0].name

    count = 0
    for item in inputs:
        headers = [(FORMAT_HEADER, item.format.encode())]
        for record in read_records(item):
            account = account_of(record, item.format, settings.max_record_bytes) if key_by_account else None
            key = account.encode() if account is not None else None
            while True:
                try:
                    producer.produce(topic, value=record, key=key, headers=headers)
                    break
                except BufferError:
                    producer.poll(0.05)
            count += 1
            if count % 50000 == 0:
                producer.poll(0)
                if on_progress:
                    on_progress(count)
    producer.flush(120)
    if failures:
        raise KafkaException(failures[0])
    return count


def publish_close(settings: Settings, period: str, account_id: str | None = None) -> None:
    if len(period) != 7 or period[4] != "-" or not (period[:4] + period[5:]).isdigit():
        raise InputError(f"--period must look like YYYY-MM, got {period!r}")
    create_topics(settings)
    producer = Producer(plain_producer_config(settings.bootstrap_servers, settings.kafka))
    key = f"{period}/{account_id}" if account_id else period
    value = {
        "period": period,
        "account_id": account_id,
        "closed_at": datetime.now(UTC).isoformat(),
        "by": "close",
    }
    producer.produce(PERIODS, key=key.encode(), value=orjson.dumps(value))
    producer.flush(30)
