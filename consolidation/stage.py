"""The consolidation stage: rated usage into DuckDB and Parquet, exactly once,
with live invoice previews and period close.

It writes outside Kafka, so instead of a Kafka transaction it stores consumed
offsets in DuckDB in the same DuckDB transaction as the aggregates, and seeks to
them on assignment (after checking they are not past the partitions' ends). The
loop, in order:

    1. consume a batch of rated records (read_committed)
    2. skip replays (lineage guard); sort the rest into rows, totals and rejections
       (consolidation.batch: every per-record failure is a DLQ record)
    3. DLQ records out and delivered (else rewind and retry the batch)
    4. write the batch's rated-usage Parquet files (temp + rename, deterministic names)
    5. one DuckDB transaction: usage_totals upserts + consumed positions
    6. publish progress, report health and lag, compact the partitions' files;
       refresh open drafts every preview interval
    7. rejected records of every stage (the DLQ, a consumer of its own) into
       rejected_events, with their DLQ offsets (consolidation.rejected_feed)
"""

from __future__ import annotations

import contextlib
import re
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

from consolidation.batch import STAGE, Batch, build_writable_batch
from consolidation.closing import accounts_active_in, finalize_period, refresh_previews
from consolidation.compaction import compact_partition
from consolidation.dead_letters import DeadLetterSender, Undelivered
from consolidation.errors import ConsumeErrors, StoredOffsetsPastEndError
from consolidation.errors import FatalStageError as FatalStageError
from consolidation.rejected_feed import RejectedFeed
from consolidation.store import BillingStore, Position
from meterline import metrics
from meterline.catalog import period_bounds, period_start_instant
from meterline.config import Settings
from meterline.dlq import max_bytes_of
from meterline.health import HEALTH
from meterline.kafka_config import consumer_config, plain_producer_config
from meterline.lineage import LINEAGE_HEADER, LineageGuard
from meterline.messages import InputRecord
from meterline.offsets import past_end
from meterline.tables import ContractsTable, PeriodsTable

# Unbound: the worker binds `stage` through contextvars once logging is configured (a
# logger bound at import time would keep structlog's default console renderer).
log = structlog.get_logger()

_PERIOD = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
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
        self._guards: dict[int, LineageGuard] = {}
        # Drafts to refresh at the next preview; after a crash, those whose usage moved on.
        self._dirty: set[tuple[str, str]] = store.stale_previews()
        self._final: set[tuple[str, str]] = store.final_keys()
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

    def request_stop(self, *_: object) -> None:
        self._stopping = True

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Consume until stopped; raises FatalStageError (health already failed) when it cannot go on."""
        try:
            self._run(should_stop)
        except FatalStageError as exc:  # the worker logs it once and exits 1 (meterline.workers)
            HEALTH.fail(exc.reason)
            raise

    def _run(self, should_stop: Callable[[], bool]) -> None:
        s = self.settings
        self._consumer.subscribe(
            [self._rated], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        self._rejected.start()
        HEALTH.start(STAGE)
        self._apply_closes()
        metrics.READY.labels(STAGE).set(1)
        log.info("stage_started", out=str(self.store.out))
        last_preview = last_housekeeping = last_check = time.monotonic()
        try:
            while not self._stopping and not should_stop():
                HEALTH.beat()
                if self.contracts.poll() | self.periods.poll():
                    self._apply_closes()  # a new close, or a catalog that may finish an earlier one
                messages = self._consumer.consume(s.batch_size, s.batch_timeout_s)
                if self._fatal is not None:
                    raise self._fatal
                if messages:
                    self._batch(messages)
                elif time.monotonic() - last_check >= IDLE_CHECK_S:
                    self._idle_check()
                    last_check = time.monotonic()
                self._rejected.step()
                if time.monotonic() - last_preview >= s.preview_interval_s:
                    self._refresh_previews()
                    last_preview = time.monotonic()
                if s.auto_close and time.monotonic() - last_housekeeping >= 60:
                    self._housekeeping()
                    last_housekeeping = time.monotonic()
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
            self._guards[tp.partition] = LineageGuard(position.lineage)
            self.store.discard_uncommitted_files(tp.partition, position.next_offset)
            tp.offset = position.next_offset if tp.partition in stored else OFFSET_BEGINNING
            self._publish_progress(tp.partition)
        consumer.assign(partitions)
        log.info("partitions_assigned", partitions=[p.partition for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._positions.pop(tp.partition, None)
            self._guards.pop(tp.partition, None)
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(STAGE, self._rated, str(tp.partition))

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
        for partition, (first, last) in offsets.items():
            if partition in tables:
                self.store.write_rated_files(partition, first, last, tables[partition])
        new_positions = {}
        for partition, (_, last) in offsets.items():
            merged = Counter(self._positions[partition].counts)
            merged.update(batch.counts.get(partition, Counter()))
            new_positions[partition] = Position(last + 1, dict(self._guards[partition].applied), dict(merged))
        self.store.apply_batch(
            self._rated,
            new_positions,
            [(key, Decimal(agg), amount, n) for key, (agg, amount, n) in batch.totals.items()],
        )
        self._positions.update(new_positions)
        self._dirty |= batch.touched
        HEALTH.progress()
        for partition in new_positions:
            self._publish_progress(partition)
        metrics.BATCH_SECONDS.labels(STAGE).observe(time.perf_counter() - started)
        metrics.CONSUMED.labels(STAGE, self._rated).inc(len(messages))
        self._export_consumer_lag(new_positions)
        # Informational commit, for lag dashboards; the truth is in DuckDB.
        self._consumer.commit(
            offsets=[TopicPartition(self._rated, p, pos.next_offset) for p, pos in new_positions.items()],
            asynchronous=True,
        )
        self._compact(batch, new_positions)

    def _rewind(self, offsets: dict[int, tuple[int, int]]) -> None:
        """Back to the stored positions: the batch is consumed again (guards as stored too)."""
        if self._fatal is not None:
            raise self._fatal
        for partition in offsets:
            position = self._positions[partition]
            self._guards[partition] = LineageGuard(position.lineage)
            self._consumer.seek(TopicPartition(self._rated, partition, position.next_offset))

    def _export_consumer_lag(self, positions: dict[int, Position]) -> None:
        for partition, position in positions.items():
            # cached=True reads the high watermark of the last fetch response: no broker round trip.
            tp = TopicPartition(self._rated, partition)
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0:
                lag = max(high - position.next_offset, 0)
                metrics.CONSUMER_LAG.labels(STAGE, self._rated, str(partition)).set(lag)

    def _compact(self, batch: Batch, positions: dict[int, Position]) -> None:
        for partition, rows in batch.rows.items():
            for period in rows.periods:
                compact_partition(self.store, period, partition, positions[partition].next_offset)

    def _publish_progress(self, partition: int) -> None:
        position = self._positions[partition]
        progress = {
            "stage": STAGE,
            "topic": self._rated,
            "partition": partition,
            "through": position.next_offset - 1,
            "counts": position.counts,
        }
        self._producer.produce(
            self._topics.stats,
            key=f"{STAGE}/{self._rated}/{partition}".encode(),
            value=orjson.dumps(progress),
            partition=0,
        )
        self._producer.poll(0)

    # -- invoices --------------------------------------------------------------

    def _refresh_previews(self) -> None:
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        refresh_previews(self.store, self.contracts.catalog, dirty, self.clock())
        metrics.INVOICES.labels("open").set(self.store.count_drafts("open"))

    def _apply_closes(self) -> None:
        """Finalize every close published to meterline.periods that is not done yet.

        A close that had to leave an account open (see consolidation.closing) is not done:
        it runs again on the next catalog change or restart, and finishes once it can.
        """
        catalog = self.contracts.catalog
        self._refresh_previews()
        closes: list[tuple[str, str | None]] = [(p, None) for p in sorted(self.periods.closed_all)]
        closes += sorted(self.periods.closed_accounts)
        for period, account in closes:
            if self.store.close_done(period, account):
                continue
            if not _PERIOD.fullmatch(period):
                log.error("close_ignored", period=period, account=account, error="not a YYYY-MM period")
                self.store.mark_close_done(period, account)
                continue
            finalize_period(self.store, catalog, period, self.clock(), account, self._rated)
            left = [a for _, a, _, _ in self.store.close_problems(period) if account in (None, a)]
            if not left:
                self.store.mark_close_done(period, account)
        self._final = self.store.final_keys()
        metrics.INVOICES.labels("final").set(len(self._final))
        metrics.INVOICES.labels("open").set(self.store.count_drafts("open"))

    def _housekeeping(self) -> None:
        """Open drafts for the current period and publish closes that are due (end + grace)."""
        now = self.clock()
        catalog = self.contracts.catalog
        grace = timedelta(seconds=self.settings.close_grace_s)
        current = {a.period_of(now) for a in catalog.accounts.values()}
        for period in current:
            self._dirty.update((a, period) for a in accounts_active_in(catalog, period))
        for account_id, period in self.store.open_drafts():
            if period in self.periods.closed_all or (period, account_id) in self.periods.closed_accounts:
                continue  # published already; a close left open is retried on catalog changes
            account = catalog.accounts.get(account_id)
            # An account the catalog lost is closed too, once its period is over in every zone:
            # the close reports it (close_problems) instead of leaving its usage open unseen.
            zone = account.timezone if account is not None else "Etc/GMT+12"
            _, following = period_bounds(period)
            end = period_start_instant(f"{following.year:04d}-{following.month:02d}", zone)
            if now >= end + grace:
                self._producer.produce(
                    self._topics.periods,
                    key=f"{period}/{account_id}".encode(),
                    value=orjson.dumps(
                        {
                            "period": period,
                            "account_id": account_id,
                            "closed_at": now.isoformat(),
                            "by": "auto-close",
                        }
                    ),
                )
        left = self._producer.flush(10)
        if left:  # the next housekeeping publishes them again
            log.error("auto_close_not_published", records=left)
