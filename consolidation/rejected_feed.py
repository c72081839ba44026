"""The consolidator's step that turns the DLQ into `rejected_events` (consolidation.rejected).

A consumer of its own (group `meterline-consolidation-dlq`) reads
`meterline.usage.rejected` (both with the installation's topic_prefix) read_committed,
from the DLQ offsets stored in the billing store.
Each turn of the stage's loop takes what it has fetched, without waiting, and stores
the rows with the new offsets in one store transaction, then sets the gauge of
records waiting by reason.

The table is also exported to `DIR/rejected/rejected_events.parquet` (rewritten at most
every preview interval while it changes, and when the stage stops), for readers
that read plain Parquet.

`catch_up` reads the DLQ to its end once, without a group: `meterline run` calls it
after the workers stopped, so the table holds every rejection of the run.

Both also follow `meterline replay`'s markers (consolidation.replay_markers): a row
is `replayed` while a marker names its DLQ record, and the gauge counts the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from consolidation.errors import ConsumeErrors, FatalStageError, StoredOffsetsPastEndError
from consolidation.rejected import DeadLetter, export_parquet, export_waiting, row_of, save_rejected
from consolidation.replay_markers import ReplayMarkers, sync_replayed
from consolidation.store import BillingStore
from meterline.kernel.catalog import Catalog
from meterline.kernel.config import Settings
from meterline.runtime.kafka_config import consumer_config
from meterline.runtime.offsets import past_end

log = structlog.get_logger()

GROUP: Final = "meterline-consolidation-dlq"
STORE_INTERVAL_S: Final = 1.0


class RejectedFeed:
    def __init__(
        self,
        settings: Settings,
        store: BillingStore,
        catalog: Callable[[], Catalog],
        error_cb: Callable[[KafkaError], None] | None = None,
        topic: str | None = None,
        group: bool = True,
    ) -> None:
        self.settings = settings
        self.store = store
        topics = settings.topics
        self.topic = topics.rejected if topic is None else topic
        self._rated = topics.rated
        self._catalog = catalog
        self._formats = {topics.name(t.name): t.format for t in settings.raw_topics}
        self._next: dict[int, int] = {}  # assigned partitions -> next offset to store
        self._errors = ConsumeErrors(self.topic)
        self._fatal: FatalStageError | None = None
        self._group = group  # False: partitions assigned by catch_up, nothing committed to Kafka
        extra: dict[str, Any] = {"auto.offset.reset": "error"}  # never reset silently
        if error_cb is not None:
            extra["error_cb"] = error_cb
        if not group:
            extra["enable.partition.eof"] = True
        self._consumer = Consumer(
            consumer_config(settings.bootstrap_servers, settings.kafka, topics.group(GROUP), **extra)
        )
        self._markers = ReplayMarkers(settings)
        export_waiting(store.db)
        # Exported once at start too: a killed worker may have stored rows it never exported.
        self._changed = True
        self._exported = 0.0
        # Fetched, not yet stored: a store transaction costs tens of milliseconds whatever it
        # holds, and DLQ records trickle in, so they are stored at most every STORE_INTERVAL_S
        # (or once a batch is waiting). Not stored means not done: a crash re-reads them.
        self._pending: list[Message] = []
        self._stored_at = 0.0

    def start(self) -> None:
        self.load_markers()
        self._consumer.subscribe(
            [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )

    def close(self) -> None:
        self._consumer.close()
        self._markers.close()

    def load_markers(self) -> None:
        """Read the replay markers to their end and make the table follow them."""
        self._markers.load()
        self._sync_markers()

    def _sync_markers(self) -> None:
        changed = sync_replayed(self.store, self._markers.marked)
        if changed:
            self._changed = True
            log.info("replay_markers_applied", rows=changed)
        export_waiting(self.store.db)

    def step(self) -> int:
        """Store what the consumer has fetched (no waiting); returns the records consumed."""
        if self._markers.poll():
            self._sync_markers()
        self._pending.extend(self._consumer.consume(self.settings.batch_size, 0))
        if self._fatal is not None:
            raise self._fatal
        stored = 0
        due = time.monotonic() - self._stored_at >= STORE_INTERVAL_S
        if self._pending and (due or len(self._pending) >= self.settings.batch_size):
            messages, self._pending = self._pending, []
            stored = self.store_messages(messages)
            self._stored_at = time.monotonic()
        if self._changed and time.monotonic() - self._exported >= self.settings.preview_interval_s:
            self.export()
        return stored

    def export(self) -> None:
        """Rewrite the Parquet export if the table changed since the last one."""
        if self._changed:
            export_parquet(self.store.db, self.store.out)
            self._changed = False
            self._exported = time.monotonic()

    def store_messages(self, messages: list[Message]) -> int:
        letters: list[DeadLetter] = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    self._errors.check(error)
                continue
            self._errors.ok()
            if message.partition() not in self._next:  # revoked inside consume(): no longer ours
                continue
            letters.append(letter_of(message))
        if not letters:
            return 0
        catalog = self._catalog()
        rows = [row_of(letter, self._formats, catalog, self._rated) for letter in letters]
        ends: dict[int, int] = {}
        for letter in letters:
            ends[letter.partition] = max(ends.get(letter.partition, 0), letter.offset + 1)
        save_rejected(self.store, self.topic, rows, ends)
        # Markers read before their DLQ record arrived.
        new = [(letter.topic, letter.partition, letter.offset) for letter in letters]
        sync_replayed(self.store, self._markers.marked, new)
        self._next.update(ends)
        self._changed = True
        export_waiting(self.store.db)
        if self._group:  # informational commit, for lag dashboards; the truth is in the store
            self._consumer.commit(
                offsets=[TopicPartition(self.topic, p, o) for p, o in ends.items()], asynchronous=True
            )
        log.info("rejected_events_stored", records=len(letters))
        return len(letters)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            starts = self.positions(partitions)
        except StoredOffsetsPastEndError as exc:
            self._fatal = exc
            consumer.assign([])
            return
        consumer.assign(partitions)
        log.info("dlq_partitions_assigned", partitions=sorted(starts))

    def positions(self, partitions: list[TopicPartition]) -> dict[int, int]:
        """Set each partition's offset to the stored position (the start if none), after
        checking none lies past its partition's end; raises StoredOffsetsPastEndError."""
        stored = self.store.positions(self.topic)
        mine = {
            (self.topic, tp.partition): stored[tp.partition].next_offset
            for tp in partitions
            if tp.partition in stored
        }
        try:
            s = self.settings
            past = past_end(s.bootstrap_servers, s.kafka, mine, prefix=s.topic_prefix)
        except KafkaException as exc:  # the broker did not answer: fetching will tell
            log.warning("stored_offsets_not_checked", topic=self.topic, error=str(exc))
            past = {}
        if past:
            ends = {p: v for (_, p), v in past.items()}
            raise StoredOffsetsPastEndError.of(self.topic, ends, self.store.out)
        for tp in partitions:
            position = stored.get(tp.partition)
            tp.offset = position.next_offset if position is not None else OFFSET_BEGINNING
            self._next[tp.partition] = max(tp.offset, 0)
        return {tp.partition: tp.offset for tp in partitions}

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {tp.partition for tp in partitions}
        for partition in revoked:
            self._next.pop(partition, None)
        self._pending = [m for m in self._pending if m.partition() not in revoked]


def letter_of(message: Message) -> DeadLetter:
    kind, timestamp = message.timestamp()
    return DeadLetter(
        message.topic() or "",
        message.partition() or 0,
        message.offset() or 0,
        None if kind == TIMESTAMP_NOT_AVAILABLE else timestamp,
        message.value(),
        message.headers() or [],
    )


def catch_up(
    settings: Settings,
    store: BillingStore,
    catalog: Catalog,
    timeout_s: float = 60.0,
    topic: str | None = None,
) -> int:
    """Read the DLQ (the installation's, unless `topic`) from the stored positions to its end
    into rejected_events (no group: call it with no consolidation worker running on this
    store); returns the records read."""
    feed = RejectedFeed(settings, store, lambda: catalog, topic=topic, group=False)
    topic = feed.topic
    consumer = feed._consumer
    try:
        feed.load_markers()
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        if metadata.error is not None:
            raise FatalStageError(f"cannot read {topic}: {metadata.error}")
        partitions = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
        feed.positions(partitions)
        consumer.assign(partitions)
        left = {tp.partition for tp in partitions}
        read = 0
        deadline = time.monotonic() + timeout_s
        while left:
            if time.monotonic() > deadline:
                raise FatalStageError(f"{topic} was not read to its end within {timeout_s:.0f}s")
            messages = consumer.consume(settings.batch_size, 0.5)
            left -= {m.partition() for m in messages if _at_end(m)}
            read += feed.store_messages(messages)
        feed.export()
        return read
    finally:
        feed.close()


def _at_end(message: Message) -> bool:
    error = message.error()
    return error is not None and error.code() == KafkaError._PARTITION_EOF
