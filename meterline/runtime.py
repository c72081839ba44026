"""The exactly-once consume-transform-produce loop shared by every Kafka stage.

One obvious place for the Kafka loop (DESIGN.md §9):

    1. consume a batch (read_committed)
    2. drop replayed upstream records (lineage guard, see meterline.lineage)
    3. transform it: the stage's pure `process()`
    4. in one transaction: outputs + DLQ records, changelog (state) records,
       per-partition progress (stats), consumer offsets
    5. commit; on an abortable error abort, restore state, rewind, replay

State lives in memory per assigned partition and is made durable in a compacted
changelog topic (partition = input partition). On assignment it is restored from
the changelog before any record of the partition is processed. Changelog records
carry the input offset their batch ended at; on restore, records of batches at or
past the committed offset are ignored, because they belong to aborted
transactions (which the embedded broker does not filter out).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Protocol

import orjson
import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from meterline import metrics
from meterline.config import Settings
from meterline.health import HEALTH
from meterline.kafka_config import consumer_config, transactional_producer_config
from meterline.lineage import LINEAGE_HEADER, LineageGuard
from meterline.messages import InputRecord, OutputRecord
from meterline.topics import STATS, changelog_topic

log = structlog.get_logger()

TP = tuple[str, int]
META_KEY = b"\x00meta"
THROUGH_HEADER = "ml.through"


@dataclass(slots=True)
class BatchResult:
    outputs: list[OutputRecord] = field(default_factory=list)
    # State updates per input partition: (key, value); value None deletes.
    changelog: dict[TP, list[tuple[bytes, bytes | None]]] = field(default_factory=dict)
    # Outcome counts per input partition (events_in, rejected.<reason>, ...).
    counts: dict[TP, Counter[str]] = field(default_factory=dict)
    # Event time of the newest event in the batch, for the event-time lag metric.
    newest_event_time: datetime | None = None


class Processor(Protocol):
    """A stage: a transform with per-partition state, plugged into the runtime."""

    stage: str

    def restore(self, tp: TP, entries: Iterator[tuple[bytes, bytes | None]]) -> None: ...

    def release(self, tp: TP) -> None: ...

    def process(self, records: Sequence[InputRecord]) -> BatchResult: ...

    def idle(self) -> None: ...


@dataclass(slots=True)
class _PartitionMeta:
    guard: LineageGuard = field(default_factory=LineageGuard)
    counts: Counter[str] = field(default_factory=Counter)


class StageRunner:
    """Runs one processor as a member of the stage's consumer group until stopped."""

    def __init__(
        self,
        processor: Processor,
        settings: Settings,
        input_topics: Sequence[str],
        after_restore: Callable[[], None] = lambda: None,
    ) -> None:
        self.processor = processor
        # Called once restored state is in place (workers settle the heap: meterline.heap).
        self._after_restore = after_restore
        self.stage = processor.stage
        self.settings = settings
        self.input_topics = list(input_topics)
        self._meta: dict[TP, _PartitionMeta] = {}
        self._stopping = False
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._log = log.bind(stage=self.stage)
        # Where the loop's time went (logged at stop): waiting in consume, the transform, the commit.
        self._spent: dict[str, float] = {"consume": 0.0, "transform": 0.0, "produce_commit": 0.0}
        self._batches = 0

    # -- lifecycle -------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        self._stopping = True

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        s = self.settings
        self._producer = self._new_producer()
        self._consumer = Consumer(consumer_config(s.bootstrap_servers, s.kafka, f"meterline-{self.stage}"))
        self._consumer.subscribe(
            self.input_topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        HEALTH.start(self.stage)
        metrics.READY.labels(self.stage).set(1)
        self._log.info("stage_started", inputs=self.input_topics, instance=s.instance_id)
        try:
            while not self._stopping and not should_stop():
                HEALTH.beat()
                self.processor.idle()
                waited = time.perf_counter()
                messages = self._consumer.consume(s.batch_size, s.batch_timeout_s)
                self._spent["consume"] += time.perf_counter() - waited
                records = self._records(messages)
                if records:
                    self._run_batch(records)
        finally:
            self._log.info(
                "stage_stopping",
                batches=self._batches,
                **{f"{k}_s": round(v, 2) for k, v in self._spent.items()},
            )
            self._consumer.close()
            self._producer.flush(10)

    def _new_producer(self) -> Producer:
        s = self.settings
        transactional_id = f"meterline-{self.stage}-{s.instance_id}"
        producer = Producer(transactional_producer_config(s.bootstrap_servers, s.kafka, transactional_id))
        # Fences any earlier incarnation with the same id and aborts its open transaction.
        producer.init_transactions(60)
        return producer

    def _records(self, messages: list[Message]) -> list[InputRecord]:
        records = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                self._log.warning("consume_error", error=str(error))
                continue
            raw_headers = message.headers()
            records.append(
                InputRecord(
                    message.topic(),
                    message.partition(),
                    message.offset(),
                    message.key(),
                    message.value(),
                    dict(raw_headers) if raw_headers else {},
                )
            )
        return records

    # -- one batch -------------------------------------------------------------

    def _run_batch(self, records: list[InputRecord]) -> None:
        started = time.perf_counter()
        next_offsets: dict[TP, int] = {}
        fresh: list[InputRecord] = []
        skipped = 0
        for record in records:
            tp = (record.topic, record.partition)
            next_offsets[tp] = record.offset + 1
            meta = self._meta.get(tp)
            if meta is None:  # partition revoked inside consume(); its records are no longer ours
                continue
            if meta.guard.admit(record.headers.get(LINEAGE_HEADER)):
                fresh.append(record)
            else:
                skipped += 1
        if skipped:
            metrics.REPLAYS_SKIPPED.labels(self.stage).inc(skipped)
        transformed = time.perf_counter()
        result = self.processor.process(fresh)
        self._spent["transform"] += time.perf_counter() - transformed
        self._batches += 1
        for tp, counts in result.counts.items():
            self._meta[tp].counts.update(counts)
        committing = time.perf_counter()
        self._commit(records, result, next_offsets)
        self._spent["produce_commit"] += time.perf_counter() - committing
        metrics.BATCH_SECONDS.labels(self.stage).observe(time.perf_counter() - started)
        per_topic = Counter(r.topic for r in records)
        for topic, count in per_topic.items():
            metrics.CONSUMED.labels(self.stage, topic).inc(count)
        if result.newest_event_time is not None:
            lag = datetime.now(UTC) - result.newest_event_time
            metrics.EVENT_TIME_LAG.labels(self.stage).set(lag.total_seconds())
        self._export_consumer_lag(next_offsets)

    def _export_consumer_lag(self, next_offsets: dict[TP, int]) -> None:
        assert self._consumer is not None
        for (topic, partition), position in next_offsets.items():
            # cached=True reads the high watermark of the last fetch response: no broker round trip.
            _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            if high >= 0:
                metrics.CONSUMER_LAG.labels(self.stage, topic, str(partition)).set(max(high - position, 0))

    def _commit(self, records: list[InputRecord], result: BatchResult, next_offsets: dict[TP, int]) -> None:
        assert self._producer is not None and self._consumer is not None
        producer = self._producer
        try:
            producer.begin_transaction()
            produce = producer.produce
            for out in result.outputs:
                # _produce inlined for the common case (a Python call per record is measurable);
                # it still handles a full local queue.
                try:
                    produce(out.topic, out.value, out.key, -1 if out.partition is None else out.partition,
                            headers=out.headers)  # fmt: skip
                except BufferError:
                    self._produce(out.topic, out.value, out.key, out.partition, out.headers)
            for tp, entries in result.changelog.items():
                topic = changelog_topic(tp[0], self.stage)
                through = [(THROUGH_HEADER, str(next_offsets[tp] - 1).encode())]
                for key, value in entries:
                    self._produce(topic, value, key, tp[1], through)
            for tp, offset in next_offsets.items():
                self._write_meta(tp, offset - 1)
            offsets = [TopicPartition(t, p, o) for (t, p), o in next_offsets.items() if (t, p) in self._meta]
            producer.send_offsets_to_transaction(offsets, self._consumer.consumer_group_metadata(), 30)
            committed = time.perf_counter()
            self._commit_with_retry()
            metrics.COMMIT_SECONDS.labels(self.stage).observe(time.perf_counter() - committed)
        except KafkaException as exc:
            self._recover(exc.args[0] if exc.args else None)
            return
        for topic, count in Counter(out.topic for out in result.outputs).items():
            metrics.PRODUCED.labels(self.stage, topic).inc(count)

    def _commit_with_retry(self) -> None:
        assert self._producer is not None
        for attempt in range(10):
            try:
                self._producer.commit_transaction(30)
                return
            except KafkaException as exc:
                error = exc.args[0]
                if not error.retriable() or attempt == 9:
                    raise
                self._log.warning("commit_retry", error=str(error), attempt=attempt)
                time.sleep(0.2 * (attempt + 1))

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int | None,
        headers: list[tuple[str, bytes]] | None,
    ) -> None:
        assert self._producer is not None
        target = -1 if partition is None else partition  # -1: let the partitioner choose
        while True:
            try:
                self._producer.produce(topic, value, key, target, headers=headers)
                return
            except BufferError:
                self._producer.poll(0.05)  # local queue full: let deliveries drain

    def _write_meta(self, tp: TP, through: int) -> None:
        meta = self._meta.get(tp)
        if meta is None:
            return
        header = [(THROUGH_HEADER, str(through).encode())]
        state = {"lineage": meta.guard.applied, "counts": dict(meta.counts)}
        self._produce(changelog_topic(tp[0], self.stage), orjson.dumps(state), META_KEY, tp[1], header)
        progress = {
            "stage": self.stage,
            "topic": tp[0],
            "partition": tp[1],
            "through": through,
            "counts": dict(meta.counts),
        }
        self._produce(STATS, orjson.dumps(progress), f"{self.stage}/{tp[0]}/{tp[1]}".encode(), 0, None)

    def _recover(self, error: KafkaError | None) -> None:
        """Abort (or replace a fenced producer), then restore state and rewind to committed offsets."""
        assert self._producer is not None
        fatal = error is not None and error.fatal()
        self._log.warning("transaction_failed", error=str(error), fatal=fatal)
        metrics.ABORTS.labels(self.stage, "fatal" if fatal else "abortable").inc()
        if fatal:
            self._producer = self._new_producer()
        else:
            try:
                self._producer.abort_transaction(30)
            except KafkaException as exc:
                self._log.warning("abort_failed", error=str(exc))
                self._producer = self._new_producer()
        self._reload(list(self._meta))

    def _reload(self, tps: list[TP]) -> None:
        assert self._consumer is not None
        positions = self._restore(tps)
        for tp, offset in positions.items():
            self._consumer.seek(TopicPartition(tp[0], tp[1], offset))

    # -- rebalancing and restore -----------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self._log.info("partitions_assigned", partitions=[f"{t}[{p}]" for t, p in tps])
        self._restore(tps)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Transactions never outlive a batch and consume() is only called between
        # batches, so nothing is in flight here: drop the partitions' state.
        for p in partitions:
            tp = (p.topic, p.partition)
            self.processor.release(tp)
            self._meta.pop(tp, None)
            # Stop reporting lag for partitions this worker no longer owns.
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(self.stage, p.topic, str(p.partition))
        self._log.info("partitions_revoked", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def _restore(self, tps: list[TP]) -> dict[TP, int]:
        """Rebuild the state of partitions from their changelogs; return where to resume.

        One reader per changelog topic reads all the partitions to their end;
        entries reach the processor in chunks (restore is additive), so millions
        of keys never sit in one list.
        """
        assert self._consumer is not None
        started = time.perf_counter()
        committed = {
            (c.topic, c.partition): c.offset
            for c in self._consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=30)
        }
        for tp in tps:
            self.processor.release(tp)
            self._meta[tp] = _PartitionMeta()
        by_topic: dict[str, list[TP]] = {}
        for tp in tps:
            by_topic.setdefault(tp[0], []).append(tp)
        for topic, members in by_topic.items():
            self._read_changelog(topic, members, committed)
        metrics.RESTORE_SECONDS.labels(self.stage).observe(time.perf_counter() - started)
        self._log.info("state_restored", partitions=len(tps), seconds=round(time.perf_counter() - started, 3))
        self._after_restore()
        return {tp: (offset if offset >= 0 else OFFSET_BEGINNING) for tp, offset in committed.items()}

    def _read_changelog(self, input_topic: str, tps: list[TP], committed: dict[TP, int]) -> None:
        s = self.settings
        topic = changelog_topic(input_topic, self.stage)
        reader = Consumer(
            consumer_config(
                s.bootstrap_servers,
                s.kafka,
                f"meterline-{self.stage}-restore",
                **{"enable.partition.eof": True},
            )
        )
        pending = {tp[1] for tp in tps}
        try:
            reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in pending])
            while pending:
                chunk: dict[int, list[tuple[bytes, bytes | None]]] = {}
                for message in reader.consume(50000, 0.1):
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            pending.discard(message.partition())
                            continue
                        raise KafkaException(error)
                    partition = message.partition()
                    headers = message.headers()
                    through = int(dict(headers)[THROUGH_HEADER]) if headers else -1
                    # Only batches that ended below the committed offset were committed.
                    if through < 0 or through >= committed[(input_topic, partition)]:
                        continue
                    key = message.key()
                    if key == META_KEY:
                        state = orjson.loads(message.value())
                        self._meta[(input_topic, partition)] = _PartitionMeta(
                            LineageGuard(state["lineage"]), Counter(state["counts"])
                        )
                    else:
                        chunk.setdefault(partition, []).append((key, message.value()))
                for partition, entries in chunk.items():
                    self.processor.restore((input_topic, partition), iter(entries))
                HEALTH.beat()
        finally:
            reader.close()
