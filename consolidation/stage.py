"""The consolidation stage: rated usage into DuckDB and Parquet, exactly once,
with live invoice previews and period close.

It writes outside Kafka, so instead of a Kafka transaction it stores consumed
offsets in DuckDB in the same DuckDB transaction as the aggregates, and seeks to
them on assignment. The loop, in order:

    1. consume a batch of rated records (read_committed)
    2. skip replays (lineage guard) and events of final periods (DLQ period_closed)
    3. write the batch's rated-usage Parquet files (temp + rename, deterministic names)
    4. one DuckDB transaction: usage_totals upserts + consumed positions
    5. publish progress; refresh open drafts every preview interval
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition

from consolidation.closing import accounts_active_in, finalize_period, refresh_previews
from consolidation.store import BillingStore, Position, RatedRows
from meterline import metrics
from meterline.catalog import period_bounds, period_start_instant
from meterline.config import Settings
from meterline.dlq import dead_letter_headers
from meterline.health import HEALTH
from meterline.kafka_config import consumer_config, plain_producer_config
from meterline.lineage import LINEAGE_HEADER, LineageGuard
from meterline.reasons import MALFORMED, PERIOD_CLOSED
from meterline.tables import ContractsTable, PeriodsTable
from meterline.topics import PERIODS, RATED, REJECTED, STATS
from schemas.codec import RATED_FIELDS, SchemaError, decode_rated_row

STAGE = "consolidation"
# Positions in a decode_rated_row row of the fields the running totals need.
_ACCOUNT, _PERIOD, _CHARGE, _METER, _CONTRACT, _AMOUNT, _AGGREGATE_AFTER = (
    RATED_FIELDS.index(name)
    for name in ("account_id", "period", "charge_id", "meter", "contract_id", "amount", "aggregate_after")
)
# Unbound: the worker binds `stage` through contextvars once logging is configured (a
# logger bound at import time would keep structlog's default console renderer).
log = structlog.get_logger()

TotalKey = tuple[str, str, str, str, str]  # account, period, charge, meter, contract


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
        self.store = store
        self.clock = clock
        self._positions: dict[int, Position] = {}
        self._guards: dict[int, LineageGuard] = {}
        # Drafts to refresh at the next preview; after a crash, those whose usage moved on.
        self._dirty: set[tuple[str, str]] = store.stale_previews()
        self._final: set[tuple[str, str]] = store.final_keys()
        self._stopping = False
        s = settings
        self._producer = Producer(plain_producer_config(s.bootstrap_servers, s.kafka))
        self._consumer = Consumer(consumer_config(s.bootstrap_servers, s.kafka, f"meterline-{STAGE}"))

    def request_stop(self, *_: object) -> None:
        self._stopping = True

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        s = self.settings
        self._consumer.subscribe(
            [RATED], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )
        self._apply_closes()
        HEALTH.start(STAGE)
        metrics.READY.labels(STAGE).set(1)
        log.info("stage_started", out=str(self.store.out))
        last_preview = last_housekeeping = time.monotonic()
        try:
            while not self._stopping and not should_stop():
                self.contracts.poll()
                if self.periods.poll():
                    self._apply_closes()
                messages = self._consumer.consume(s.batch_size, s.batch_timeout_s)
                if messages:
                    self._batch(messages)
                if time.monotonic() - last_preview >= s.preview_interval_s:
                    self._refresh_previews()
                    last_preview = time.monotonic()
                if s.auto_close and time.monotonic() - last_housekeeping >= 60:
                    self._housekeeping()
                    last_housekeeping = time.monotonic()
        finally:
            self._refresh_previews()
            self._consumer.close()
            self._producer.flush(10)
            log.info("stage_stopped")

    # -- assignment ------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        stored = self.store.positions(RATED)
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

    # -- one batch -------------------------------------------------------------

    def _batch(self, messages: list[Message]) -> None:
        started = time.perf_counter()
        rows: dict[int, RatedRows] = {}
        offsets: dict[int, tuple[int, int]] = {}
        counts: dict[int, Counter[str]] = {}
        totals: dict[TotalKey, list[Any]] = {}
        for message in messages:
            if message.error() is not None:
                log.warning("consume_error", error=str(message.error()))
                continue
            partition, offset = message.partition(), message.offset()
            guard = self._guards.get(partition)
            if guard is None:
                continue
            span = offsets.get(partition)
            offsets[partition] = (offset, offset) if span is None else (span[0], offset)
            headers = dict(message.headers() or [])
            if not guard.admit(headers.get(LINEAGE_HEADER)):
                metrics.REPLAYS_SKIPPED.labels(STAGE).inc()
                continue
            count = counts.get(partition)
            if count is None:
                count = counts[partition] = Counter()
            try:
                row = decode_rated_row(message.value() or b"")
            except SchemaError as exc:
                self._reject(MALFORMED, str(exc), message, count)
                continue
            account, period = row[_ACCOUNT], row[_PERIOD]
            if (account, period) in self._final:
                self._reject(PERIOD_CLOSED, f"invoice of {account!r} for {period} is final", message, count)
                continue
            count["stored"] += 1
            amount = Decimal(row[_AMOUNT])
            batch_rows = rows.get(partition)
            if batch_rows is None:
                batch_rows = rows[partition] = RatedRows()
            batch_rows.append(row, partition, offset)
            key = (account, period, row[_CHARGE], row[_METER], row[_CONTRACT])
            total = totals.get(key)
            if total is None:
                totals[key] = [row[_AGGREGATE_AFTER], amount, 1]
            else:  # records of one key arrive in order: the last aggregate is the current one
                total[0] = row[_AGGREGATE_AFTER]
                total[1] += amount
                total[2] += 1
            self._dirty.add((account, period))
        for partition, (first, last) in offsets.items():
            if partition in rows:
                self.store.write_rated_files(partition, first, last, rows[partition])
        new_positions = {}
        for partition, (_, last) in offsets.items():
            previous = self._positions[partition]
            merged = Counter(previous.counts)
            merged.update(counts.get(partition, Counter()))
            new_positions[partition] = Position(last + 1, dict(self._guards[partition].applied), dict(merged))
        self.store.apply_batch(
            RATED,
            new_positions,
            [(key, Decimal(agg), amount, n) for key, (agg, amount, n) in totals.items()],
        )
        self._positions.update(new_positions)
        self._producer.flush(10)  # DLQ records of this batch are out before progress says so
        for partition in new_positions:
            self._publish_progress(partition)
        metrics.BATCH_SECONDS.labels(STAGE).observe(time.perf_counter() - started)
        metrics.CONSUMED.labels(STAGE, RATED).inc(len(messages))
        # Informational commit, for lag dashboards; the truth is in DuckDB.
        self._consumer.commit(
            offsets=[TopicPartition(RATED, p, pos.next_offset) for p, pos in new_positions.items()],
            asynchronous=True,
        )

    def _reject(self, reason: str, detail: str, message: Message, count: Counter[str]) -> None:
        # Not transactional with DuckDB: after a crash the DLQ may hold a copy twice;
        # readers tell copies apart by the source topic/partition/offset headers.
        count[f"rejected.{reason}"] += 1
        metrics.REJECTED.labels(STAGE, reason).inc()
        headers = dict(message.headers() or [])
        original = headers.get("ml.raw", message.value())
        self._producer.produce(
            REJECTED,
            value=original,
            key=message.key(),
            headers=dead_letter_headers(reason, detail, STAGE, RATED, message.partition(), message.offset()),
        )

    def _publish_progress(self, partition: int) -> None:
        position = self._positions[partition]
        progress = {
            "stage": STAGE,
            "topic": RATED,
            "partition": partition,
            "through": position.next_offset - 1,
            "counts": position.counts,
        }
        self._producer.produce(
            STATS, key=f"{STAGE}/{RATED}/{partition}".encode(), value=orjson.dumps(progress), partition=0
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
        """Finalize every close published to meterline.periods that is not done yet."""
        catalog = self.contracts.catalog
        self._refresh_previews()
        closes: list[tuple[str, str | None]] = [(p, None) for p in sorted(self.periods.closed_all)]
        closes += sorted(self.periods.closed_accounts)
        for period, account in closes:
            if self.store.close_done(period, account):
                continue
            finalize_period(self.store, catalog, period, self.clock(), account)
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
            account = catalog.accounts.get(account_id)
            if account is None:
                continue
            _, following = period_bounds(period)
            end = period_start_instant(f"{following.year:04d}-{following.month:02d}", account.timezone)
            if now >= end + grace:
                self._producer.produce(
                    PERIODS,
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
        self._producer.flush(10)
