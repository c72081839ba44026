"""The exactly-once consume-transform-produce loop shared by every Kafka stage.

One loop, one commit path, in numbered steps:

    1. consume a batch (read_committed)
    2. drop replayed upstream records (lineage guard, see meterline.kernel.lineage)
    3. transform it: the stage's pure `process()`
    4. the checkpoint, one Kafka transaction (meterline.kernel.checkpoint's numbered steps,
       meterline.runtime.kafka_checkpoint): outputs + DLQ records, changelog (state) records,
       per-partition progress (stats), consumer offsets; commit
    5. on failure: abort, restore state, rewind; then replay the batch, split it,
       or dead-letter its one record (meterline.runtime.isolation decides)

Kafka errors follow librdkafka's classes (meterline.runtime.kafka_errors, applied in
meterline.runtime.transaction). A record no transaction can commit (an output too large,
say), or one the transform raises on, ends in the DLQ as `internal_error`; if even
its DLQ copy cannot be committed, the worker stops. Fatal errors stop the worker:
/healthz and one log line say why, and it exits non-zero (meterline.app.workers).

State lives in memory per assigned partition and is made durable in a compacted
changelog topic (partition = input partition), restored on assignment before any
record of the partition is processed (meterline.runtime.restore, meterline.runtime.rebalance).
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import Final

import structlog
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from meterline.kernel.checkpoint import Failure, commit_checkpoint
from meterline.kernel.config import Settings
from meterline.kernel.dlq import cut_short, dead_letter, max_bytes_of
from meterline.kernel.headers import TRUNCATED_HEADER
from meterline.kernel.lineage import LINEAGE_HEADER
from meterline.kernel.messages import TP, BatchResult, InputRecord, Processor
from meterline.kernel.reasons import INTERNAL_ERROR
from meterline.runtime import metrics
from meterline.runtime.health import HEALTH
from meterline.runtime.isolation import DEAD_LETTER, REPLAY, Isolation
from meterline.runtime.kafka_checkpoint import KafkaCheckpoint
from meterline.runtime.kafka_config import consumer_config
from meterline.runtime.kafka_errors import FatalKafkaError, consumer_failure, describe, error_of
from meterline.runtime.offsets import export_consumer_lag
from meterline.runtime.rebalance import Rebalance
from meterline.runtime.restore import Partitions
from meterline.runtime.transaction import Transactions

log = structlog.get_logger()

# An idle loop asks the broker for metadata at most this often: an answer is progress.
PROBE_INTERVAL_S: Final = 1.0
PROBE_TIMEOUT_S: Final = 5.0


def input_records(messages: list[Message]) -> tuple[list[InputRecord], list[Message]]:
    """The records among consumed messages, and the messages that carry an error instead."""
    records = []
    errors = []
    for message in messages:
        if message.error() is not None:
            errors.append(message)
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
    return records, errors


class StageRunner:
    """Runs one processor as a member of the stage's consumer group until stopped."""

    def __init__(
        self,
        processor: Processor,
        settings: Settings,
        input_topics: Sequence[str],
        after_restore: Callable[[], None] = lambda: None,
        entry_topics: Sequence[str] = (),
    ) -> None:
        self.processor = processor
        self.stage = processor.stage
        self.settings = settings
        self.input_topics = list(input_topics)
        # Inputs whose records count as `events_in` (the raw topics): a dead-lettered one too.
        self._entry_topics = frozenset(entry_topics)
        # after_restore: called once restored state is in place (workers settle the heap: runtime.heap).
        self._partitions = Partitions(
            settings, self.stage, processor.restore, processor.release, after_restore
        )
        self._meta = self._partitions.meta  # the same dict, for the per-record loop
        self._log = log.bind(stage=self.stage)
        self._rebalance = Rebalance(settings, self.stage, self._partitions, self._log)
        self._stopping = False
        self._consumer: Consumer | None = None
        self._txn: Transactions | None = None
        # Where the loop's time went (logged at stop): waiting in consume, the transform, the commit.
        self._spent: dict[str, float] = {"consume": 0.0, "transform": 0.0, "produce_commit": 0.0}
        self._batches = 0
        self._isolation = Isolation(settings.batch_size)
        self._last_contact = 0.0  # monotonic time of the broker's last answer

    # -- lifecycle -------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        self._stopping = True

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """The loop; raises FatalKafkaError (after /healthz says why) when the stage cannot go on."""
        s = self.settings
        HEALTH.configure(s.health_stall_s, s.broker_timeout_s)
        self._consumer = Consumer(
            consumer_config(
                s.bootstrap_servers,
                s.kafka,
                s.topics.group(f"meterline-{self.stage}"),
                # A stored position the broker does not have is an error, never a silent reset.
                **{"auto.offset.reset": "error"},
            )
        )
        try:
            self._txn = Transactions(s, self.stage, lambda: self._stopping)
            self._consumer.subscribe(
                self.input_topics,
                on_assign=self._rebalance.on_assign,
                on_revoke=self._rebalance.on_revoke,
                on_lost=self._rebalance.on_revoke,
            )
            HEALTH.start(self.stage)
            metrics.READY.labels(self.stage).set(1)
            self._log.info("stage_started", inputs=self.input_topics, instance=s.instance_id)
            while not self._stopping and not should_stop():
                HEALTH.beat()
                self.processor.idle()
                waited = time.perf_counter()
                messages = self._consumer.consume(self._isolation.limit, s.batch_timeout_s)
                self._spent["consume"] += time.perf_counter() - waited
                records = self._records(messages)
                if records:
                    self._run_batch(records)
                elif self._isolation.failures == 0:  # not while a replay is pending: no progress
                    self._idle_turn()
        except KafkaException as exc:  # from a client call outside the commit path (a restore, say)
            raise self._failed(FatalKafkaError(f"Kafka: {describe(error_of(exc))}")) from None
        except FatalKafkaError as exc:
            raise self._failed(exc) from None
        finally:
            self._log.info(
                "stage_stopping",
                batches=self._batches,
                **{f"{k}_s": round(v, 2) for k, v in self._spent.items()},
            )
            # Every transaction is committed or aborted by now: the producer holds nothing to
            # deliver. A fenced producer's client raises on any call, so none is made.
            try:
                self._consumer.close()
            except KafkaException as exc:  # must not hide the error that stopped the stage
                self._log.warning("consumer_close_failed", error=describe(error_of(exc)))

    def _failed(self, exc: FatalKafkaError) -> FatalKafkaError:
        """/healthz says why at once; the caller logs it (meterline.app.workers: one line) and exits."""
        HEALTH.fail(exc.reason)
        metrics.READY.labels(self.stage).set(0)
        return exc

    def _records(self, messages: list[Message]) -> list[InputRecord]:
        records, errors = input_records(messages)
        for message in errors:
            error = message.error()
            fatal = consumer_failure(error, message.topic(), message.partition())
            if fatal is not None:
                raise fatal
            self._log.warning("consume_error", error=describe(error))
        return records

    def _idle_turn(self) -> None:
        """Nothing to consume: progress, once the broker has answered (asked at most every second)."""
        assert self._consumer is not None
        if time.monotonic() - self._last_contact >= PROBE_INTERVAL_S:
            try:
                self._consumer.list_topics(self.input_topics[0], timeout=PROBE_TIMEOUT_S)
            except KafkaException:
                HEALTH.broker_down()
                return
            self._contact()
        HEALTH.progress()

    def _contact(self) -> None:
        self._last_contact = time.monotonic()
        HEALTH.broker_up()

    # -- one batch -------------------------------------------------------------

    def _run_batch(self, records: list[InputRecord]) -> None:
        started = time.perf_counter()
        self._contact()  # a fetch answered
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
        try:
            result = self.processor.process(fresh)
        except Exception as exc:  # a stage bug: find its record, as one that cannot commit
            detail = f"{type(exc).__name__}: {exc}"
            self._log.error("transform_failed", error=detail, exc_info=True)
            self._after_failure(records, next_offsets, (detail, False), split=True)
            return
        self._spent["transform"] += time.perf_counter() - transformed
        self._batches += 1
        for tp, counts in result.counts.items():
            self._meta[tp].counts.update(counts)
        committing = time.perf_counter()
        failure = self._commit(result, next_offsets)
        self._spent["produce_commit"] += time.perf_counter() - committing
        if failure is not None:
            self._after_failure(records, next_offsets, failure, split=False)
            return
        self._committed(next_offsets)
        self._observe(result)
        metrics.BATCH_SECONDS.labels(self.stage).observe(time.perf_counter() - started)
        per_topic = Counter(r.topic for r in records)
        for topic, count in per_topic.items():
            metrics.CONSUMED.labels(self.stage, topic).inc(count)
        if result.newest_event_time is not None:
            lag = datetime.now(UTC) - result.newest_event_time
            metrics.EVENT_TIME_LAG.labels(self.stage).set(lag.total_seconds())
        assert self._consumer is not None
        export_consumer_lag(self._consumer, self.stage, next_offsets)

    def _observe(self, result: BatchResult) -> None:
        """Metrics of a committed batch (an aborted attempt counts nothing)."""
        stage = self.stage
        for topic, count in Counter(out.topic for out in result.outputs).items():
            metrics.PRODUCED.labels(stage, topic).inc(count)
        outcomes: Counter[str] = Counter()
        for counts in result.counts.values():
            outcomes.update(counts)
        for name, count in outcomes.items():
            if name.startswith("rejected."):
                reason = name.removeprefix("rejected.")
                metrics.REJECTED.labels(stage, reason).inc(count)
                if reason == INTERNAL_ERROR:
                    metrics.INTERNAL_ERRORS.labels(stage).inc(count)
        if outcomes["duplicates"]:
            metrics.DEDUPLICATED.labels(stage).inc(outcomes["duplicates"])
        if outcomes["rated"]:
            metrics.RATED.labels(stage).inc(outcomes["rated"])
        if outcomes["dlq_truncated"]:
            metrics.DLQ_TRUNCATED.labels(stage).inc(outcomes["dlq_truncated"])
        for currency, amount in result.amounts.items():
            metrics.AMOUNT_RATED.labels(currency).inc(float(amount))  # a dashboard figure, never billed
        metrics.STATE_ENTRIES.labels(stage).set(self.processor.state_entries())

    def _commit(self, result: BatchResult, next_offsets: dict[TP, int]) -> Failure | None:
        """One transaction for one batch (meterline.kernel.checkpoint's steps): None once committed,
        else why it was aborted."""
        assert self._txn is not None and self._consumer is not None
        checkpoint = KafkaCheckpoint(
            self._txn, self.stage, result, next_offsets, self._meta, self._partitions.meta_records,
            self._consumer.consumer_group_metadata(),
        )  # fmt: skip
        return commit_checkpoint(checkpoint)

    def _after_failure(
        self, records: list[InputRecord], next_offsets: dict[TP, int], failure: Failure, split: bool
    ) -> None:
        """After an aborted batch: restore state and rewind, then replay it, split it, or
        dead-letter its one record (meterline.runtime.isolation decides)."""
        detail, broker_unreachable = failure
        aborts = HEALTH.aborted()
        if broker_unreachable:
            HEALTH.broker_down()
        assert self._consumer is not None
        self._rebalance.reload(self._consumer, list(self._meta))
        reachable = not broker_unreachable and HEALTH.broker_reachable()
        action = self._isolation.failed(len(records), next_offsets, split, reachable)
        if action == REPLAY:
            time.sleep(self._isolation.backoff_s())
        elif action == DEAD_LETTER:
            self._dead_letter(records[0], detail)
        else:
            self._log.error("batch_split", records=len(records), aborts=aborts, error=detail)

    def _dead_letter(self, record: InputRecord, detail: str) -> None:
        """Isolation's last step: the one record no transaction could commit goes to the DLQ as
        internal_error, with its offset, in a transaction of its own. If even that fails: fatal."""
        assert self._txn is not None and self._consumer is not None
        tp = (record.topic, record.partition)
        meta = self._meta.get(tp)
        if meta is None:  # revoked meanwhile: its new owner meets the record
            return
        meta.guard.admit(record.headers.get(LINEAGE_HEADER))
        meta.counts[f"rejected.{INTERNAL_ERROR}"] += 1
        if record.topic in self._entry_topics:
            meta.counts["events_in"] += 1
        letter = dead_letter(
            record.value, record.key, INTERNAL_ERROR, detail, self.stage, record.topic, record.partition,
            record.offset, truncated=record.headers.get(TRUNCATED_HEADER),
            max_bytes=max_bytes_of(self.settings.kafka), dlq_topic=self.settings.topics.rejected,
        )  # fmt: skip
        txn = self._txn
        try:
            txn.producer.begin_transaction()
            txn.produce(letter.topic, letter.value, letter.key, letter.partition, letter.headers)
            self._write_meta(tp, record.offset)
            offset = [TopicPartition(record.topic, record.partition, record.offset + 1)]
            txn.send_offsets(offset, self._consumer.consumer_group_metadata())
            txn.commit()
        except KafkaException as exc:
            raise FatalKafkaError(
                f"cannot commit even the DLQ copy of {record.topic}[{record.partition}] offset "
                f"{record.offset} ({describe(error_of(exc))}) after: {detail}"
            ) from None
        metrics.REJECTED.labels(self.stage, INTERNAL_ERROR).inc()
        metrics.INTERNAL_ERRORS.labels(self.stage).inc()
        if cut_short(letter, record.value):
            metrics.DLQ_TRUNCATED.labels(self.stage).inc()
        self._log.error(
            "record_dead_lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=INTERNAL_ERROR,
            error=detail,
        )
        self._consumer.seek(TopicPartition(record.topic, record.partition, record.offset + 1))
        self._isolation.dead_lettered()
        self._committed({})

    def _committed(self, next_offsets: dict[TP, int]) -> None:
        HEALTH.progress()
        self._contact()
        if self._isolation.committed(next_offsets, self._meta):
            self._log.info("batch_isolation_done")

    def _write_meta(self, tp: TP, through: int) -> None:
        assert self._txn is not None
        for topic, value, key, partition, headers in self._partitions.meta_records(tp, through):
            self._txn.produce(topic, value, key, partition, headers)

    def _restore(self, tps: list[TP]) -> None:
        """Rebuild the state of partitions as of their committed offsets (benchmarks call it)."""
        assert self._consumer is not None
        self._partitions.restore(self._rebalance.committed_offsets(self._consumer, tps))
