"""Compacted topics read in full as in-memory tables (contracts, closed periods).

Every stage reads the whole topic before it starts processing, then keeps
following it between batches, so a contract published while stages run takes
effect without a restart.

A control record that cannot be read (not JSON, the wrong shape, an impossible
period) is skipped with an error log and `meterline_control_records_skipped_total`,
never raised: every stage reads these topics, and a compacted topic replays the
record on every restart, so one bad record would stop billing everywhere. A skipped
record leaves the key's previous value in place.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import orjson
import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from meterline.kernel.catalog import Catalog
from meterline.kernel.catalog_file import ENTITY_VERSION, SECTIONS, document_from_entities, parse_catalog
from meterline.runtime import metrics
from meterline.runtime.kafka_config import consumer_config

log = structlog.get_logger()

# Says why a record (key, value; value None is a tombstone) cannot be applied, or None.
Validator = Callable[[bytes, bytes | None], str | None]
_PERIOD_KEY: Final = re.compile(r"([0-9]{4})-([0-9]{2})(?:/\S+)?")


class CompactedTable:
    """Latest value per key of a compacted topic (tombstones delete)."""

    def __init__(
        self,
        topic: str,
        bootstrap_servers: str,
        kafka: Mapping[str, str],
        name: str,
        validate: Validator | None = None,
        prefix: str = "",
    ) -> None:
        self.topic = topic
        self.values: dict[bytes, bytes] = {}
        # Stages' tables skip what they cannot read; a publisher reads the raw values (and
        # tombstones garbage keys when it publishes).
        self.validate = validate
        self._consumer = Consumer(
            consumer_config(
                # Assigned, never subscribed: the group id (with the installation's
                # topic_prefix) only names the reader.
                bootstrap_servers,
                kafka,
                f"{prefix}meterline-table-{name}",
                **{"enable.partition.eof": True},
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
                    self._apply(message)
                elif error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
        if pending:
            raise TimeoutError(f"could not read {self.topic} to its end within {timeout:.0f}s")

    def poll(self) -> bool:
        """Apply whatever arrived since the last call; True if the table changed."""
        changed = False
        for message in self._consumer.consume(10000, 0):
            if message.error() is None and self._apply(message):
                changed = True
        return changed

    def _apply(self, message: Message) -> bool:
        key, value = message.key(), message.value()
        if key is None:
            problem: str | None = "no key"
        else:
            try:
                problem = self.validate(key, value) if self.validate is not None else None
            except Exception as exc:  # a validator's own bug must not stop every stage either
                problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            self._skip(message, problem)
            return False
        assert key is not None
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value
        return True

    def _skip(self, message: Message, problem: str) -> None:
        key = message.key()
        log.error(
            "control_record_skipped",
            topic=self.topic,
            partition=message.partition(),
            offset=message.offset(),
            key=None if key is None else key[:100].decode("utf-8", "replace"),
            error=problem,
        )
        metrics.CONTROL_RECORDS_SKIPPED.labels(self.topic).inc()

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
    """The contract catalog as published to `meterline.contracts`.

    An entity the catalog as a whole cannot take (a contract naming an unknown plan, a
    currency that is not ISO 4217) is set aside on its own: it falls back to its last
    good version, or is left out if it never had one, and the rest of the catalog takes
    effect. So one bad entity never leaves a freshly started stage without a catalog.
    """

    def __init__(self, table: CompactedTable) -> None:
        super().__init__(table)
        table.validate = catalog_entity_error
        self.catalog = Catalog.empty()
        self._good: dict[bytes, bytes] = {}  # the entity values of self.catalog

    def _rebuild(self) -> None:
        values = dict(self._table.values)
        for _ in range(len(values) + 1):
            if values == self._good and self.catalog.accounts:
                return  # nothing but set-aside entities changed: keep the catalog as it is
            try:
                entities: list[Any] = [orjson.loads(v) for v in values.values()]
                document = document_from_entities(entities)
                catalog = parse_catalog(document, source=self._table.topic)
            except Exception as exc:
                culprit = _culprit(exc, values)
                self._set_aside(exc, culprit)
                if culprit is None:
                    return  # cannot tell which entity: keep the last good catalog
                if culprit in self._good:
                    values[culprit] = self._good[culprit]
                else:
                    del values[culprit]
                continue
            self.catalog, self._good = catalog, values
            return

    def _set_aside(self, exc: Exception, culprit: bytes | None) -> None:
        # A publisher validates before publishing, and each entity was checked on arrival.
        log.error(
            "catalog_entity_rejected" if culprit else "catalog_rejected",
            topic=self._table.topic,
            entity=culprit.decode("utf-8", "replace") if culprit else None,
            error=f"{type(exc).__name__}: {exc}",
            kept_accounts=len(self.catalog.accounts),
        )
        metrics.CONTROL_RECORDS_SKIPPED.labels(self._table.topic).inc()


_ENTITY_PATH: Final = re.compile(r"(\w+)\[(\d+)\]")


def _culprit(exc: Exception, values: Mapping[bytes, bytes]) -> bytes | None:
    """The key of the entity a catalog error points at (`plans[2]...` is the third plan
    by id, as the document is assembled), or None."""
    match = _ENTITY_PATH.match(getattr(exc, "path", ""))
    kinds = {section: kind for kind, (section, _) in SECTIONS.items()}
    if match is None or match.group(1) not in kinds:
        return None
    kind = kinds[match.group(1)]
    prefix = kind.encode() + b"/"
    ids = sorted(
        (key[len(prefix) :].decode("utf-8", "replace"), key) for key in values if key.startswith(prefix)
    )
    index = int(match.group(2))
    return ids[index][1] if index < len(ids) else None


class PeriodsTable(_DerivedTable):
    """Closed billing periods as published to `meterline.periods`.

    Key `YYYY-MM` closes a period for every account, `YYYY-MM/<account>` for one.
    """

    def __init__(self, table: CompactedTable) -> None:
        super().__init__(table)
        table.validate = period_key_error
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


def catalog_entity_error(key: bytes, value: bytes | None) -> str | None:
    """Why a `meterline.contracts` record is not a catalog entity, or None.

    An entity is `{"kind", "id", "version", "spec"}` under key `<kind>/<id>` (see
    meterline.kernel.catalog_file.catalog_entities); a tombstone (None) removes one.
    """
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return "key is not UTF-8"
    if value is None:
        return None
    try:
        entity = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return f"value is not JSON: {exc}"
    if not isinstance(entity, dict):
        return f"value is a JSON {type(entity).__name__}, not an object"
    kind, entity_id, spec = entity.get("kind"), entity.get("id"), entity.get("spec")
    if kind not in SECTIONS:
        return f"kind {kind!r} is none of {', '.join(SECTIONS)}"
    if entity.get("version") != ENTITY_VERSION:
        return f"unsupported entity version {entity.get('version')!r}"
    if not isinstance(entity_id, str) or not entity_id:
        return f"id {entity_id!r} is not a non-empty string"
    if text != f"{kind}/{entity_id}":
        return f"key does not match the entity {kind}/{entity_id}"
    if not isinstance(spec, dict):
        return "spec is not an object"
    id_field = SECTIONS[kind][1]
    if spec.get(id_field) != entity_id:
        return f"spec.{id_field} {spec.get(id_field)!r} differs from the entity id"
    return None


def period_key_error(key: bytes, value: bytes | None) -> str | None:
    """Why a `meterline.periods` key is not `YYYY-MM` or `YYYY-MM/<account>`, or None."""
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return "key is not UTF-8"
    match = _PERIOD_KEY.fullmatch(text)
    if match is None:
        return "key is not YYYY-MM or YYYY-MM/<account>"
    if int(match.group(1)) < 1:
        return "year 0000 does not exist"
    if not 1 <= int(match.group(2)) <= 12:
        return "month is not 01 to 12"
    return None
