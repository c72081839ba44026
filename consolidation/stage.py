"""The consolidation stage: rated usage into the billing store, exactly once, with
live invoice previews and period close.

It stores consumed offsets in the store, in the same store transaction as the rows
and totals, and seeks to them on assignment (checked against the partitions' ends).
Workers in one consumer group each store, preview and close the accounts of the rated
partitions they own (an account's partition is fixed by its id). The loop, in order:

    1. consume a batch of rated records (read_committed)
    2. skip replays (lineage guard); sort the rest into rows, totals and rejections
       (consolidation.batch: every per-record failure is a DLQ record)
    3. DLQ records out and delivered (else rewind and retry the batch)
    4. the store checkpoint (consolidation.checkpoint): rows, totals and positions
       in one store transaction
    5. publish progress, report health and lag; refresh open drafts (and their site
       pages: consolidation.live_site) every preview interval; roll up and compact
       the store every maintenance interval
    6. rejected records of every stage (the DLQ, a consumer of its own) into
       rejected_events, with their DLQ offsets (consolidation.rejected_feed)
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

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

from consolidation.batch import STAGE, build_writable_batch
from consolidation.checkpoint import StoreCheckpoint
from consolidation.close_control import apply_closes, publish_due_closes
from consolidation.closing import accounts_active_in, refresh_previews
from consolidation.dead_letters import DeadLetterSender, Undelivered
from consolidation.errors import ConsumeErrors, StoredOffsetsPastEndError
from consolidation.errors import FatalStageError as FatalStageError
from consolidation.fetch import gather
from consolidation.live_site import LiveSite
from consolidation.maintenance import checkpoint, roll_up
from consolidation.rejected_feed import RejectedFeed
from consolidation.store import BillingStore, Position
from meterline.kernel.checkpoint import commit_checkpoint
from meterline.kernel.config import Settings
from meterline.kernel.dlq import max_bytes_of
from meterline.kernel.headers import partition_of
from meterline.kernel.lineage import LINEAGE_HEADER, LineageGuard
from meterline.kernel.messages import InputRecord
from meterline.runtime import metrics
from meterline.runtime.health import HEALTH
from meterline.runtime.kafka_config import consumer_config, plain_producer_config
from meterline.runtime.offsets import export_consumer_lag, past_end
from meterline.runtime.tables import ContractsTable, PeriodsTable

# Unbound: the worker binds `stage` through contextvars once logging is configured (a
# logger bound at import time would keep structlog's default console renderer).
log = structlog.get_logger()

_BROKER_DOWN = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT})
# How often an idle loop asks the broker for metadata, to tell idle from cut off.
IDLE_CHECK_S = 5.0


class Consolidator:
    def __init__(
        self,
        settings: Settings,
        contracts: ContractsTable,
        periods: PeriodsTable,
        store: BillingStore,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.contracts = contracts
        self.periods = periods
        self._topics = settings.topics  # the installation's (prefixed) topic names
        self._rated = settings.topics.rated
        self.store = store
        self.clock = clock
        self._positions: dict[int, Position] = {}
        self._read_at_assignment: dict[int, int | None] = {}  # what a commit expects in the store
        self._guards: dict[int, LineageGuard] = {}
        self._partition_count = 0  # of the rated topic, once assigned
        self._dirty: set[tuple[str, str]] = set()  # drafts to refresh at the next preview
        self._final: set[tuple[str, str]] = store.final_keys()
        self._closes_due = False
        self._stopping = False
        self._fatal: FatalStageError | None = None
        self._errors = ConsumeErrors(self._rated)
        s = settings
        self._producer = Producer(
            {**plain_producer_config(s.bootstrap_servers, s.kafka), "error_cb": self._client_error}
        )
        self._dlq = DeadLetterSender(self._producer, max_bytes_of(s.kafka), self._rated, s.topics.rejected)
        self._consumer = Consumer(
            consumer_config(
                s.bootstrap_servers,
                s.kafka,
                s.topics.group(f"meterline-{STAGE}"),
                # Never reset silently: an offset out of range is reported and stops the stage.
                **{"auto.offset.reset": "error", "error_cb": self._client_error},
            )
        )
        self._rejected = RejectedFeed(s, store, lambda: self.contracts.catalog, self._client_error)
        self._site = LiveSite(s.site_dir, store, lambda: self.contracts.catalog, clock)

    def request_stop(self, *_: object) -> None:
        self._stopping = True

    def owns(self, account_id: str) -> bool:
        """Whether the account's rated partition is this worker's (its usage, drafts, close)."""
        count = self._partition_count
        return count > 0 and partition_of(account_id.encode(), count) in self._positions

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Consume until stopped; raises FatalStageError (health already failed) when it cannot go on."""
        try:
            self._run(should_stop)
        except FatalStageError as exc:  # the worker logs it once and exits 1 (meterline.app.workers)
            HEALTH.fail(exc.reason)
            raise

    def _run(self, should_stop: Callable[[], bool]) -> None:
        s = self.settings
        self._consumer.subscribe(
            [self._rated], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        self._rejected.start()
        HEALTH.start(STAGE)
        metrics.READY.labels(STAGE).set(1)
        log.info("stage_started", out=str(self.store.out))
        last_preview = last_housekeeping = last_check = last_maintenance = time.monotonic()
        try:
            while not self._stopping and not should_stop():
                HEALTH.beat()
                if self.contracts.poll() | self.periods.poll():
                    self._closes_due = True  # a new close, or a catalog that may finish an earlier one
                messages = gather(self._consumer, s.store_batch_size, s.batch_timeout_s)
                if self._fatal is not None:
                    raise self._fatal
                if messages:
                    self._batch(messages)
                elif time.monotonic() - last_check >= IDLE_CHECK_S:
                    self._idle_check()
                    last_check = time.monotonic()
                if self._closes_due:
                    self._apply_closes()
                self._rejected.step()
                if time.monotonic() - last_preview >= s.preview_interval_s:
                    self._refresh_previews()
                    self._site.render()
                    last_preview = time.monotonic()
                if s.auto_close and time.monotonic() - last_housekeeping >= 60:
                    self._housekeeping()
                    last_housekeeping = time.monotonic()
                if time.monotonic() - last_maintenance >= s.store_maintenance_interval_s:
                    self.maintain()
                    last_maintenance = time.monotonic()
            self._refresh_previews()
            self._rejected.export()
        finally:
            self._consumer.close()
            self._rejected.close()
            self._producer.flush(10)
            log.info("stage_stopped")

    def _client_error(self, error: KafkaError) -> None:
        """librdkafka's client-level errors (error_cb): broker reachability and fatal errors."""
        if error.code() in _BROKER_DOWN:
            HEALTH.broker_down()
        if error.fatal():
            self._fatal = FatalStageError(f"fatal Kafka client error: {error}")
        log.warning("kafka_client_error", error=str(error))

    def _idle_check(self) -> None:
        """Idle is progress only while the broker answers."""
        try:
            self._consumer.list_topics(self._rated, timeout=IDLE_CHECK_S)
        except KafkaException as exc:
            HEALTH.broker_down()
            log.warning("broker_unreachable", error=str(exc))
            return
        HEALTH.broker_up()
        HEALTH.progress()

    def maintain(self) -> None:
        """Roll up this worker's own rows, then DuckLake's upkeep (merge files, expire history)."""
        roll_up(self.store, self._rated, list(self._positions))
        HEALTH.progress()
        checkpoint(self.store, self.settings.draft_history_days)
        HEALTH.progress()

    # -- assignment ------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        stored = self.store.positions(self._rated)
        s = self.settings
        mine = {
            (self._rated, tp.partition): stored[tp.partition].next_offset
            for tp in partitions
            if tp.partition in stored
        }
        try:
            past = past_end(s.bootstrap_servers, s.kafka, mine, prefix=s.topic_prefix)
            topic = consumer.list_topics(self._rated, timeout=10).topics[self._rated]
            self._partition_count = len(topic.partitions)
        except KafkaException as exc:  # the broker did not answer: fetching will tell
            log.warning("stored_offsets_not_checked", error=str(exc))
            past = {}
        if past:
            self._fatal = StoredOffsetsPastEndError.of(
                self._rated, {p: v for (_, p), v in past.items()}, self.store.out
            )
            HEALTH.fail(str(self._fatal))
            consumer.assign([])
            return
        for tp in partitions:
            position = stored.get(tp.partition, Position(0, {}, {}))
            self._positions[tp.partition] = position
            self._read_at_assignment[tp.partition] = (
                stored[tp.partition].next_offset if tp.partition in stored else None
            )
            self._guards[tp.partition] = LineageGuard(position.lineage)
            tp.offset = position.next_offset if tp.partition in stored else OFFSET_BEGINNING
            self._publish_progress(tp.partition)
        consumer.assign(partitions)
        # The new partitions' drafts that a killed owner left stale, and their closes.
        self._dirty |= self.store.stale_previews(self.owns)
        self._closes_due = True
        log.info("partitions_assigned", partitions=[p.partition for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._positions.pop(tp.partition, None)
            self._read_at_assignment.pop(tp.partition, None)
            self._guards.pop(tp.partition, None)
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(STAGE, self._rated, str(tp.partition))
        self._dirty = {key for key in self._dirty if self.owns(key[0])}

    # -- one batch -------------------------------------------------------------

    def _records(self, messages: list[Message]) -> tuple[list[InputRecord], dict[int, tuple[int, int]]]:
        """The new records of partitions this worker owns, and the offsets each partition spans."""
        fresh: list[InputRecord] = []
        offsets: dict[int, tuple[int, int]] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                self._errors.check(error)
                continue
            self._errors.ok()
            partition, offset = message.partition(), message.offset()
            guard = self._guards.get(partition)
            if guard is None:  # revoked inside consume(): no longer ours
                continue
            span = offsets.get(partition)
            offsets[partition] = (offset, offset) if span is None else (span[0], offset)
            headers = dict(message.headers() or [])
            if not guard.admit(headers.get(LINEAGE_HEADER)):
                metrics.REPLAYS_SKIPPED.labels(STAGE).inc()
                continue
            record = InputRecord(self._rated, partition, offset, message.key(), message.value(), headers)
            fresh.append(record)
        return fresh, offsets

    def _batch(self, messages: list[Message]) -> None:
        started = time.perf_counter()
        records, offsets = self._records(messages)
        if not offsets:
            return
        HEALTH.broker_up()
        batch, tables = build_writable_batch(records, self._final, self.store.stored_amounts)
        try:
            self._dlq.send(batch.rejected)
        except Undelivered as exc:
            if exc.fatal:
                raise FatalStageError(str(exc)) from exc
            self._rewind(offsets)
            HEALTH.broker_down()
            log.warning("batch_retried", reason=str(exc), partitions=sorted(offsets))
            return
        new_positions = {}
        for partition, (_, last) in offsets.items():
            merged = Counter(self._positions[partition].counts)
            merged.update(batch.counts.get(partition, Counter()))
            new_positions[partition] = Position(last + 1, dict(self._guards[partition].applied), dict(merged))
        deltas = [
            (key, Decimal(agg), amount, n, partition, offsets[partition][1])
            for key, (agg, amount, n, partition) in batch.totals.items()
        ]
        expected = {p: self._read_at_assignment.get(p) for p in new_positions}
        failure = commit_checkpoint(
            StoreCheckpoint(self.store, self._rated, tables.values(), deltas, new_positions, expected)
        )
        if failure is not None:
            HEALTH.aborted()
            self._reload(offsets)
            return
        self._positions.update(new_positions)
        self._read_at_assignment.update({p: pos.next_offset for p, pos in new_positions.items()})
        self._dirty |= {key for key in batch.touched if self.owns(key[0])}
        HEALTH.progress()
        for partition in new_positions:
            self._publish_progress(partition)
        metrics.BATCH_SECONDS.labels(STAGE).observe(time.perf_counter() - started)
        metrics.CONSUMED.labels(STAGE, self._rated).inc(len(messages))
        lag = {(self._rated, p): pos.next_offset for p, pos in new_positions.items()}
        export_consumer_lag(self._consumer, STAGE, lag)
        # Informational commit, for lag dashboards; the truth is in the store.
        self._consumer.commit(
            offsets=[TopicPartition(self._rated, p, pos.next_offset) for p, pos in new_positions.items()],
            asynchronous=True,
        )

    def _rewind(self, offsets: dict[int, tuple[int, int]]) -> None:
        """Back to the positions of the last commit: the batch is consumed again (guards too)."""
        if self._fatal is not None:
            raise self._fatal
        for partition in offsets:
            position = self._positions[partition]
            self._guards[partition] = LineageGuard(position.lineage)
            self._consumer.seek(TopicPartition(self._rated, partition, position.next_offset))

    def _reload(self, offsets: dict[int, tuple[int, int]]) -> None:
        """After an aborted checkpoint: back to the positions in the store, which another
        worker may have moved on (it owns the partition now; a rebalance will tell us)."""
        stored = self.store.positions(self._rated)
        for partition in offsets:
            if partition in stored:
                self._positions[partition] = stored[partition]
                self._read_at_assignment[partition] = stored[partition].next_offset
        self._rewind(offsets)

    def _publish_progress(self, partition: int) -> None:
        position = self._positions[partition]
        progress = {"stage": STAGE, "topic": self._rated, "partition": partition,
                    "through": position.next_offset - 1, "counts": position.counts}  # fmt: skip
        key = f"{STAGE}/{self._rated}/{partition}".encode()
        self._producer.produce(self._topics.stats, key=key, value=orjson.dumps(progress), partition=0)
        self._producer.poll(0)

    # -- invoices --------------------------------------------------------------

    def _refresh_previews(self) -> None:
        dirty = {key for key in self._dirty if self.owns(key[0])}
        self._dirty = set()
        if not dirty:
            return
        refresh_previews(self.store, self.contracts.catalog, dirty, self.clock())
        self._site.changed(account for account, _ in dirty)
        metrics.INVOICES.labels("open").set(self.store.count_drafts("open"))

    def _apply_closes(self) -> None:
        """Apply the published closes to this worker's accounts (consolidation.close_control)."""
        self._closes_due = False
        if not self._positions or self._partition_count == 0:
            return
        self._refresh_previews()
        closes: list[tuple[str, str | None]] = [(p, None) for p in sorted(self.periods.closed_all)]
        closes += sorted(self.periods.closed_accounts)
        apply_closes(
            self.store, self.contracts.catalog, closes, list(self._positions), self._partition_count,
            self.owns, self.clock(),
        )  # fmt: skip
        final, self._final = self._final, self.store.final_keys()
        self._site.changed(account for account, _ in self._final - final)
        metrics.INVOICES.labels("final").set(len(self._final))
        metrics.INVOICES.labels("open").set(self.store.count_drafts("open"))

    def _housekeeping(self) -> None:
        """Open drafts for the current period and publish closes that are due (end + grace)."""
        now = self.clock()
        catalog = self.contracts.catalog
        for period in {a.period_of(now) for a in catalog.accounts.values()}:
            self._dirty.update((a, period) for a in accounts_active_in(catalog, period))

        def published(period: str, account_id: str) -> bool:
            return period in self.periods.closed_all or (period, account_id) in self.periods.closed_accounts

        grace = timedelta(seconds=self.settings.close_grace_s)
        publish_due_closes(
            self.store, catalog, published, self.owns, self._producer, self._topics.periods, grace, now
        )
