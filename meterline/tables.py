"""Compacted topics read in full as in-memory tables (contracts, closed periods).

Every stage reads the whole topic before it starts processing, then keeps
following it between batches, so a contract published while stages run takes
effect without a restart.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from meterline.catalog import Catalog
from meterline.catalog_file import document_from_entities, parse_catalog
from meterline.kafka_config import consumer_config

log = structlog.get_logger()


class CompactedTable:
    """Latest value per key of a compacted topic (tombstones delete)."""

    def __init__(self, topic: str, bootstrap_servers: str, kafka: Mapping[str, str], name: str) -> None:
        self.topic = topic
        self.values: dict[bytes, bytes] = {}
        self._consumer = Consumer(
            consumer_config(
                bootstrap_servers, kafka, f"meterline-table-{name}", **{"enable.partition.eof": True}
            )
        )
        metadata = self._consumer.list_topics(topic, timeout=10).topics[topic]
        self._partitions = sorted(metadata.partitions)
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in self._partitions])

    def load(self, timeout: float = 60.0) -> None:
        """Block until every partition has been read to its end."""
        pending = set(self._partitions)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for message in self._consumer.consume(10000, 0.1):
                error = message.error()
                if error is None:
                    self._apply(message.key(), message.value())
                elif error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
        if pending:
            raise TimeoutError(f"could not read {self.topic} to its end within {timeout:.0f}s")

    def poll(self) -> bool:
        """Apply whatever arrived since the last call; True if the table changed."""
        changed = False
        for message in self._consumer.consume(10000, 0):
            if message.error() is None:
                self._apply(message.key(), message.value())
                changed = True
        return changed

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value

    def close(self) -> None:
        self._consumer.close()


class _DerivedTable:
    """A view rebuilt from a CompactedTable whenever the topic brings something new."""

    def __init__(self, table: CompactedTable) -> None:
        self._table = table

    def load(self) -> None:
        self._table.load()
        self._rebuild()

    def poll(self) -> bool:
        if self._table.poll():
            self._rebuild()
            return True
        return False

    def _rebuild(self) -> None:
        raise NotImplementedError


class ContractsTable(_DerivedTable):
    """The contract catalog as published to `meterline.contracts`."""

    def __init__(self, table: CompactedTable) -> None:
        super().__init__(table)
        self.catalog = Catalog.empty()

    def _rebuild(self) -> None:
        entities: list[Any] = [orjson.loads(v) for v in self._table.values.values()]
        try:
            self.catalog = parse_catalog(document_from_entities(entities), source="meterline.contracts")
        except ValueError as exc:
            # A publisher validates before publishing; keep the last good catalog if not.
            log.error("catalog_rejected", topic=self._table.topic, error=str(exc))


class PeriodsTable(_DerivedTable):
    """Closed billing periods as published to `meterline.periods`.

    Key `YYYY-MM` closes a period for every account, `YYYY-MM/<account>` for one.
    """

    def __init__(self, table: CompactedTable) -> None:
        super().__init__(table)
        self.closed_all: set[str] = set()
        self.closed_accounts: set[tuple[str, str]] = set()

    def _rebuild(self) -> None:
        self.closed_all = set()
        self.closed_accounts = set()
        for key in self._table.values:
            period, _, account = key.decode().partition("/")
            if account:
                self.closed_accounts.add((period, account))
            else:
                self.closed_all.add(period)

    def is_closed(self, account_id: str, period: str) -> bool:
        return period in self.closed_all or (period, account_id) in self.closed_accounts
