"""rejected_events on the real embedded broker: the DLQ as a table of what is waiting.

* While the consolidator runs, DLQ records built as mediation builds them
  (meterline.kernel.dlq.dead_letter) become rows that answer "which customers have unbilled
  usage waiting, since when"; unreadable records still make rows; a second DLQ copy of
  one original is not a second row; the gauge of waiting records follows.
* The table's Parquet export answers the same while the worker holds billing.duckdb.
* The consolidation worker process SIGKILLed while it stores DLQ records: after the
  restart every DLQ record is a row exactly once (records without source headers too,
  which only the stored DLQ offsets keep from being stored twice).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from consolidation.lake import connect as connect_store
from consolidation.rejected import WAITING, parquet_path
from consolidation.rejected_feed import GROUP, catch_up
from consolidation.store import BillingStore
from meterline.app.pipeline import Workers
from meterline.app.publish import create_topics, publish_catalog
from meterline.kernel.catalog_file import load_catalog
from meterline.kernel.config import Settings
from meterline.kernel.dlq import dead_letter
from meterline.kernel.topics import REJECTED
from meterline.runtime.broker import EmbeddedBroker
from meterline.runtime.health import HEALTH
from tests.integration.harness import table
from tests.integration.test_consolidation import FLAT_CATALOG, InProcessConsolidator

pytestmark = pytest.mark.integration

RAW = "meterline.raw"
WAITING_SQL = """SELECT account_id, reason, count(*) AS events, min(dlq_time) AS since FROM rejected_events
                 WHERE NOT replayed GROUP BY ALL ORDER BY ALL"""


@pytest.fixture
def health() -> Iterator[None]:
    saved = (HEALTH.stage, HEALTH.started, HEALTH.fatal, HEALTH.stall_s)
    HEALTH.fatal = None
    yield
    HEALTH.stage, HEALTH.started, HEALTH.fatal, HEALTH.stall_s = saved


def _settings(broker: EmbeddedBroker, out: Path) -> Settings:
    return Settings(
        bootstrap_servers=broker.bootstrap_servers, partitions=2, out_dir=str(out), auto_close=False,
        instance_id="rejected",
    )  # fmt: skip


def _event(event_id: str, account: str, meter: str, time: str, **more: Any) -> bytes:
    fields = {"event_id": event_id, "account_id": account, "meter": meter, "timestamp": time}
    return orjson.dumps({**fields, "quantity": 1, **more})


def _produce(bootstrap: str, records: list[tuple[bytes | None, list[tuple[str, bytes]]]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for value, headers in records:
        producer.produce(REJECTED, value, b"k", headers=headers)
    assert producer.flush(10) == 0


def _letter(value: bytes, reason: str, offset: int, stage: str = "mediation") -> tuple[bytes | None, Any]:
    out = dead_letter(value, b"k", reason, f"{reason} detail", stage, RAW, 0, offset)
    return out.value, out.headers


def _until(condition: Callable[[], bool], worker: InProcessConsolidator, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert worker.error is None, f"consolidation failed: {worker.error!r}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_waiting_usage_by_account_and_reason_while_the_consolidator_runs(
    fresh_broker: EmbeddedBroker, tmp_path: Path, health: None
) -> None:
    out = tmp_path / "out"
    settings = _settings(fresh_broker, out)
    create_topics(settings)
    publish_catalog(settings, FLAT_CATALOG)
    letters = [
        _letter(_event("g1", "gamma", "api_calls", "2026-10-05T10:00:00Z"), "unknown_account", 1),
        _letter(_event("g2", "gamma", "api_calls", "2026-10-06T10:00:00Z"), "unknown_account", 2),
        _letter(_event("b1", "beta", "api_calls", "2026-12-01T12:00:00Z"), "no_contract_in_effect", 3),
        _letter(_event("a1", "alpha", "sms", "2026-10-31T23:30:00Z"), "unknown_meter", 4),
        _letter(
            _event("a2", "alpha", "storage", "2026-10-02T00:00:00Z", attributes={"region": "us"}),
            "no_matching_charge",
            5,
        ),
        _letter(b"\xff\x00 not a record", "malformed", 6),
        _letter(_event("g1", "gamma", "api_calls", "2026-10-05T10:00:00Z"), "unknown_account", 1),  # a copy
        (b"something else", []),  # no headers at all
    ]
    worker = InProcessConsolidator(settings, out, "waiting")
    reader = connect_store(worker.store.out, read_only=True)  # a reader beside the worker
    worker.start()
    try:
        _produce(fresh_broker.bootstrap_servers, letters)
        _until(lambda: reader.execute("SELECT count(*) FROM rejected_events").fetchall() == [(7,)], worker)
        since = {a: t for a, _, _, t in reader.execute(WAITING_SQL).fetchall()}
        rows = [(a, r, n) for a, r, n, _ in reader.execute(WAITING_SQL).fetchall()]
        assert rows == [
            ("alpha", "no_matching_charge", 1),
            ("alpha", "unknown_meter", 1),
            ("beta", "no_contract_in_effect", 1),
            ("gamma", "unknown_account", 2),
            (None, "malformed", 1),
            (None, None, 1),
        ]
        assert all(isinstance(t, datetime) and t.tzinfo is not None for t in since.values())
        assert abs((datetime.now(UTC) - since["gamma"]).total_seconds()) < 120
        periods = dict(reader.execute("SELECT event_id, period FROM rejected_events").fetchall())
        # alpha is in Paris: 23:30 UTC on 31 October is already November there.
        assert periods == {"g1": "2026-10", "g2": "2026-10", "b1": "2026-12", "a1": "2026-11",
                           "a2": "2026-10", None: None}  # fmt: skip
        # Another process cannot open billing.duckdb now: the Parquet export answers the same.
        exported = parquet_path(out)
        _until(lambda: exported.exists() and pq.read_metadata(exported).num_rows == 7, worker)
        waiting = (
            duckdb.connect()
            .execute(
                f"""SELECT account_id, reason, count(*) FROM read_parquet('{exported}') WHERE NOT replayed
                    GROUP BY ALL ORDER BY ALL"""
            )
            .fetchall()
        )
        assert waiting == rows
        assert WAITING.labels("unknown_account")._value.get() == 2
        assert WAITING.labels("none")._value.get() == 1
        assert WAITING.labels("unknown_meter")._value.get() == 1
    finally:
        reader.close()
        worker.stop()
    assert worker.error is None
    # Restarted: the stored DLQ offsets hold, a new record is added once.
    late = _letter(_event("x", "delta", "api_calls", "2026-10-01T00:00:00Z"), "unknown_account", 9)
    _produce(fresh_broker.bootstrap_servers, [late])
    worker = InProcessConsolidator(settings, out, "again")
    reader = connect_store(worker.store.out, read_only=True)
    worker.start()
    try:
        _until(lambda: reader.execute("SELECT count(*) FROM rejected_events").fetchall() == [(8,)], worker)
        distinct = "SELECT count(DISTINCT (dlq_partition, dlq_offset)) FROM rejected_events"
        assert reader.execute(distinct).fetchall() == [(8,)]
        assert reader.execute("SELECT period FROM rejected_events WHERE account_id = 'delta'").fetchall() == [
            ("2026-10",)
        ]
    finally:
        reader.close()
        worker.stop()
    assert worker.error is None


# -- the worker process, killed ------------------------------------------------------


def _committed(bootstrap: str, partitions: list[int]) -> int:
    """Offsets the consolidator's DLQ consumer committed to Kafka (after its DuckDB commits)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP, "enable.auto.commit": False})
    try:
        committed = consumer.committed([TopicPartition(REJECTED, p) for p in partitions], timeout=10)
        return sum(max(tp.offset, 0) for tp in committed)
    finally:
        consumer.close()


def _wave(first: int, count: int) -> list[tuple[bytes | None, Any]]:
    """DLQ records of mediation, and every third one a record without any meterline header
    (nothing but the stored DLQ offsets can tell a second reading of it from a new record)."""
    records = []
    for i in range(first, first + count):
        value = _event(f"e{i}", f"acct-{i % 7}", "api_calls", "2026-10-10T00:00:00Z")
        records.append((value, []) if i % 3 == 0 else _letter(value, "unknown_account", i))
    return records


def test_a_killed_worker_stores_every_dlq_record_once(
    fresh_broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    bootstrap = fresh_broker.bootstrap_servers
    settings = _settings(fresh_broker, out)
    create_topics(settings)
    publish_catalog(settings, FLAT_CATALOG)
    monkeypatch.setenv("METERLINE_BATCH_SIZE", "25")  # many small DLQ batches: the kill lands between two
    workers = Workers(settings, out, None)
    try:
        process = workers.start("consolidation")
        _produce(bootstrap, _wave(0, 600))
        partitions = list(range(settings.partitions))
        deadline = time.monotonic() + 120
        while _committed(bootstrap, partitions) < 100:
            assert process.poll() is None, f"the worker exited with {process.returncode}"
            assert time.monotonic() < deadline, "the worker stored no DLQ records"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        killed_at = _committed(bootstrap, partitions)
        _produce(bootstrap, _wave(600, 300))
        process = workers.start("consolidation")
        # Plain producer, no transaction markers: the 900 records take offsets 0..n-1 of their partitions.
        while _committed(bootstrap, partitions) < 900:
            assert process.poll() is None, f"the restarted worker exited with {process.returncode}"
            assert time.monotonic() < deadline, "the restarted worker did not store every DLQ record"
            time.sleep(0.1)
    finally:
        workers.stop()
    assert killed_at < 600, "the kill must land before the first wave is stored"
    distinct = "SELECT count(*), count(DISTINCT (dlq_partition, dlq_offset)) FROM rejected_events"
    assert table(out, distinct) == [(900, 900)]
    assert table(out, "SELECT count(*) FROM rejected_events WHERE reason IS NULL") == [(300,)]
    positions = table(
        out,  # positions are appended per batch: the latest of each partition counts
        f"SELECT partition, max(next_offset) FROM consumer_positions WHERE topic = '{REJECTED}' GROUP BY 1",
    )
    assert sum(offset for _, offset in positions) == 900
    assert pq.read_metadata(parquet_path(out)).num_rows == 900  # exported when the worker stopped


def test_catch_up_reads_the_dlq_to_its_end_once(fresh_broker: EmbeddedBroker, tmp_path: Path) -> None:
    """What `meterline run` does after its workers stopped: the table holds every rejection."""
    out = tmp_path / "out"
    settings = _settings(fresh_broker, out)
    create_topics(settings)
    _produce(fresh_broker.bootstrap_servers, _wave(0, 40))
    catalog = load_catalog(FLAT_CATALOG)
    store = BillingStore(out)
    try:
        assert catch_up(settings, store, catalog) == 40
        assert catch_up(settings, store, catalog) == 0
        _produce(fresh_broker.bootstrap_servers, _wave(40, 5))
        assert catch_up(settings, store, catalog) == 5
        rows = store.db.execute(
            "SELECT count(*), count(DISTINCT event_id), count(reason) FROM rejected_events"
        ).fetchall()
    finally:
        store.close()
    assert rows == [(45, 45, 30)]  # 15 records without headers: no reason
