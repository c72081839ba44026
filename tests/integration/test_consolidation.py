"""Consolidation on the real embedded broker (docs/outputs.md).

* `meterline run --close-all` on a generated month of SaaS and telecom usage:
  one final draft per active account, Parquet equal to DuckDB row for row,
  reconciliation.
* The consolidation worker SIGKILLed at three points (mid-stream twice, then
  around the period close published with `meterline close`'s publish_close):
  the final invoices equal those of the uninterrupted run and every rated event
  is stored exactly once.
* Live previews: `open` drafts refreshed within the preview interval.
* Rated records that cannot be stored (decimals past DECIMAL(38,18), not Avro) go to
  the DLQ while the rest is stored; stored offsets past the end of a recreated topic
  stop the stage with a clear error and a failed /healthz, never a silent skip.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Context, Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from confluent_kafka import Producer

from consolidation.closing import accounts_active_in
from consolidation.lake import connect as connect_store
from consolidation.stage import Consolidator, FatalStageError
from consolidation.store import BillingStore
from meterline.app.publish import InputFile, create_topics, produce_inputs, publish_catalog, publish_close
from meterline.kernel.catalog_file import load_catalog
from meterline.kernel.config import Settings
from meterline.kernel.records import RatedUsage, UsageEvent, invoice_id_for
from meterline.kernel.topics import CONTRACTS, PERIODS, RATED, REJECTED
from meterline.runtime import metrics
from meterline.runtime.broker import EmbeddedBroker
from meterline.runtime.health import HEALTH
from meterline.runtime.progress import Totals
from meterline.runtime.tables import CompactedTable, ContractsTable, PeriodsTable
from schemas.codec import encode_rated
from tests.integration.harness import LivePipeline, meterline_run, read_topic, table, write_dataset

pytestmark = pytest.mark.integration

ACCOUNTS = 60
EVENTS = 30_000
PERIOD = "2026-10"  # the generator's month

DRAFT_COLUMNS = (
    "invoice_id, account_id, period, period_start, period_end, currency, subtotal, discount, tax, "
    "total, status, issue_date, due_date, event_count"  # all but generated_at
)
DRAFTS = f"SELECT {DRAFT_COLUMNS} FROM invoice_drafts ORDER BY ALL"
LINES = "SELECT * FROM invoice_lines ORDER BY ALL"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("consolidation")
    return write_dataset(folder, accounts=ACCOUNTS, events=EVENTS, seed=23)


@pytest.fixture(scope="module")
def reference(
    dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, int]]:
    """The uninterrupted run: `meterline run --close-all`."""
    catalog, events = dataset
    folder = tmp_path_factory.mktemp("reference")
    out, summary = folder / "out", folder / "summary.json"
    completed = meterline_run(
        catalog, f"json:{events}", out, "--close-all", "--summary-json", str(summary), partitions=4
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return out, json.loads(summary.read_text())


def _parquet_rows(path: Path) -> list[tuple[Any, ...]]:
    data = pq.read_table(path)
    return sorted(tuple(row.values()) for row in data.to_pylist())


def _db_rows(out: Path, sql: str) -> list[tuple[Any, ...]]:
    db = connect_store(out, read_only=True)
    try:
        return sorted(tuple(row.values()) for row in db.sql(sql).to_arrow_table().to_pylist())
    finally:
        db.close()


def _parquet_final(out: Path, name: str, drop: str | None = None) -> list[tuple[Any, ...]]:
    data = pq.read_table(out / "invoices" / f"period={PERIOD}" / f"{name}.parquet")
    if drop:
        data = data.drop_columns([drop])
    return sorted(tuple(row.values()) for row in data.to_pylist())


# -- 1. end to end -----------------------------------------------------------------


def test_one_final_draft_per_active_account(
    dataset: tuple[Path, Path], reference: tuple[Path, dict[str, int]]
) -> None:
    catalog_path, _ = dataset
    out, summary = reference
    catalog = load_catalog(catalog_path)
    drafts = table(out, "SELECT account_id, period, status, invoice_id FROM invoice_drafts")
    with_usage = {
        a for (a,) in table(out, f"SELECT DISTINCT account_id FROM usage_totals WHERE period = '{PERIOD}'")
    }
    expected = set(accounts_active_in(catalog, PERIOD)) | with_usage
    assert len(expected) >= 50
    assert Counter((a, p) for a, p, _, _ in drafts) == Counter({(a, PERIOD): 1 for a in expected})
    assert {s for _, _, s, _ in drafts} == {"final"}
    assert len({i for *_, i in drafts}) == len(drafts)
    assert summary["invoices"] == len(expected)
    # Mixed SaaS and telecom usage made it onto the invoices.
    meters = {m for (m,) in table(out, "SELECT DISTINCT meter FROM usage_totals")}
    assert {"voice", "api_calls"} <= meters, meters


def test_parquet_and_duckdb_hold_the_same_rows(reference: tuple[Path, dict[str, int]]) -> None:
    out, _ = reference
    folder = out / "invoices" / f"period={PERIOD}"
    drafts = _parquet_rows(folder / "invoice_drafts.parquet")
    lines = _parquet_rows(folder / "invoice_lines.parquet")
    assert drafts == _db_rows(out, "SELECT * FROM invoice_drafts")
    assert lines == _db_rows(out, "SELECT * FROM invoice_lines")
    assert len(drafts) >= 50 and len(lines) > len(drafts)
    for name in ("invoice_drafts", "invoice_lines"):
        schema = pq.read_schema(folder / f"{name}.parquet")
        for column in ("total", "subtotal", "amount", "quantity", "unit_price"):
            if column in schema.names:
                assert str(schema.field(column).type).startswith("decimal"), (name, column)
    # Each draft's total is the sum of its lines.
    mismatched = table(
        out,
        """SELECT d.invoice_id FROM invoice_drafts d JOIN invoice_lines l USING (invoice_id)
           GROUP BY d.invoice_id, d.total HAVING sum(l.amount) <> d.total""",
    )
    assert mismatched == []


def test_reconciliation_holds(reference: tuple[Path, dict[str, int]]) -> None:
    out, summary = reference
    assert summary["events_in"] == EVENTS
    assert summary["events_in"] == summary["rated"] + summary["duplicates"] + summary["rejected"]
    assert summary["rejected"] == sum(v for k, v in summary.items() if k.startswith("rejected."))
    mismatches = table(
        out,
        """WITH rated AS (SELECT account_id, charge_id, period, sum(amount) AS amount, count(*) AS n
                          FROM rated_usage GROUP BY ALL),
                totals AS (SELECT account_id, charge_id, period, sum(amount_exact) AS amount,
                                  sum(event_count) AS n FROM usage_totals GROUP BY ALL)
           SELECT * FROM totals t FULL OUTER JOIN rated r USING (account_id, charge_id, period)
           WHERE t.amount IS DISTINCT FROM r.amount OR t.n IS DISTINCT FROM r.n""",
    )
    assert mismatches == []
    assert table(out, "SELECT count(*), count(DISTINCT (account_id, event_id)) FROM rated_usage") == [
        (summary["rated"], summary["rated"])
    ]
    assert table(out, "SELECT sum(event_count) FROM invoice_drafts") == [(summary["rated"],)]


# -- 2. crash recovery -------------------------------------------------------------


def _stored_at_least(count: float) -> Callable[[Totals], bool]:
    return lambda totals: totals.stored >= count


def test_consolidator_killed_three_times_gives_the_same_invoices(
    dataset: tuple[Path, Path],
    reference: tuple[Path, dict[str, int]],
    fresh_broker: EmbeddedBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    catalog, events = dataset
    ref, summary = reference
    out = tmp_path / "out"
    pipeline = LivePipeline(fresh_broker, out)
    kills = []
    try:
        pipeline.publish(catalog, events)
        pipeline.start("mediation", "rating")
        # Small sink batches, so a kill lands between a Parquet write and its DuckDB commit as often
        # as between batches.
        monkeypatch.setenv("METERLINE_BATCH_SIZE", "1500")
        pipeline.start("consolidation")
        rated = summary["rated"]
        for fraction in (0.2, 0.5):
            before = pipeline.wait_until(_stored_at_least(rated * fraction))
            pipeline.kill("consolidation")
            kills.append(before.stored)
            pipeline.start("consolidation")
        assert kills[0] < rated * 0.9, "the first kill must land before the stream is done"
        totals = pipeline.wait_drained()
        # Close the period as `meterline close` does; the worker finalizes it. Kill it as soon
        # as the live store shows its first final draft, restart, and let it finish the close.
        publish_close(pipeline.settings, PERIOD)
        final = "SELECT count(*) FROM invoice_drafts WHERE status = 'final'"
        deadline = time.monotonic() + 60
        while table(out, final) == [(0,)]:
            assert time.monotonic() < deadline, "the worker did not start the close"
            time.sleep(0.05)
        pipeline.kill("consolidation")
        pipeline.start("consolidation")
        exported = out / "invoices" / f"period={PERIOD}" / "invoice_lines.parquet"
        drafts = exported.with_name("invoice_drafts.parquet")
        deadline = time.monotonic() + 120
        while not (exported.exists() and drafts.exists()):
            assert time.monotonic() < deadline, "the consolidation worker did not finalize the period"
            assert pipeline.workers.processes["consolidation"].poll() is None
            time.sleep(0.5)
        # SIGTERM (stop) lets the worker finish the close step it is in: it is marked done.
    finally:
        pipeline.stop()
    assert totals.rated == rated
    assert totals.events_in == totals.rated + totals.duplicates + totals.rejected_total
    # Final invoices: identical to the uninterrupted run, in DuckDB and in Parquet.
    assert table(out, DRAFTS) == table(ref, DRAFTS)
    assert table(out, LINES) == table(ref, LINES)
    assert {s for (s,) in table(out, "SELECT DISTINCT status FROM invoice_drafts")} == {"final"}
    assert _parquet_final(out, "invoice_drafts", "generated_at") == _parquet_final(
        ref, "invoice_drafts", "generated_at"
    )
    assert _parquet_final(out, "invoice_lines") == _parquet_final(ref, "invoice_lines")
    # Every rated event stored exactly once, the same events as the uninterrupted run.
    assert table(out, "SELECT count(*), count(DISTINCT (account_id, event_id)) FROM rated_usage") == [
        (rated, rated)
    ]
    events_sql = "SELECT account_id, event_id, charge_id, period, invoice_id FROM rated_usage ORDER BY ALL"
    assert table(out, events_sql) == table(ref, events_sql)
    assert table(out, "SELECT * FROM usage_totals ORDER BY ALL") == table(
        ref, "SELECT * FROM usage_totals ORDER BY ALL"
    )
    # No leftovers of interrupted writes next to the dataset.
    assert not [p for p in (out / "rated_usage").rglob("*") if p.is_file() and p.suffix != ".parquet"]


# -- 3. live previews --------------------------------------------------------------


def _split(events: Path, folder: Path) -> tuple[Path, Path]:
    lines = events.read_bytes().splitlines(keepends=True)
    cut = len(lines) * 2 // 3
    first, second = folder / "first.jsonl", folder / "second.jsonl"
    first.write_bytes(b"".join(lines[:cut]))
    second.write_bytes(b"".join(lines[cut:]))
    return first, second


def _check_previews(out: Path) -> dict[str, tuple[Any, ...]]:
    """Every account with usage has an open draft whose figures reflect all stored usage."""
    drafts = {
        row[0]: row[1:]
        for row in table(out, "SELECT account_id, status, event_count, total FROM invoice_drafts")
    }
    usage = dict(table(out, "SELECT account_id, sum(event_count) FROM usage_totals GROUP BY 1"))
    assert usage, "no usage stored"
    assert set(usage) <= set(drafts)
    assert {status for status, _, _ in drafts.values()} == {"open"}
    stale = {a: (drafts[a][1], n) for a, n in usage.items() if drafts[a][1] != n}
    assert stale == {}, f"previews not refreshed (draft events, stored events): {stale}"
    return drafts


def _previews_within(out: Path, seconds: float) -> dict[str, tuple[Any, ...]]:
    """Read the live store until every preview reflects the stored usage (at most `seconds`)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return _check_previews(out)
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.1)


def test_open_drafts_are_refreshed_within_the_preview_interval(
    dataset: tuple[Path, Path],
    reference: tuple[Path, dict[str, int]],
    fresh_broker: EmbeddedBroker,
    tmp_path: Path,
) -> None:
    catalog, events = dataset
    ref, _ = reference
    first, second = _split(events, tmp_path)
    out = tmp_path / "out"
    pipeline = LivePipeline(fresh_broker, out)
    interval = pipeline.settings.preview_interval_s
    try:
        pipeline.publish(catalog, first)
        pipeline.start("mediation", "rating", "consolidation")
        pipeline.wait_drained()
        # Read while the worker runs (the store is live); then SIGKILL, not SIGTERM: a clean
        # stop refreshes the previews itself, a kill keeps what the worker had written.
        early = _previews_within(out, interval + 5)
        pipeline.kill("consolidation")

        pipeline.start("consolidation")
        pipeline.published += produce_inputs(pipeline.settings, [InputFile(second, "json")])
        pipeline.wait_drained()
        late = _previews_within(out, interval + 5)
        pipeline.kill("consolidation")
    finally:
        pipeline.stop()
    grown = [a for a in early if a in late and late[a][1] > early[a][1]]
    assert grown, "the second batch of usage should have moved some previews"
    # With all usage in, the open previews carry the figures of the final invoices.
    final = {
        r[0]: (r[1], r[2]) for r in table(ref, "SELECT account_id, event_count, total FROM invoice_drafts")
    }
    with_usage = {a: (n, total) for a, (_, n, total) in late.items() if n}
    assert with_usage == {a: v for a, v in final.items() if a in with_usage}
    assert sum(n for n, _ in with_usage.values()) == sum(n for n, _ in final.values())


# -- 4. hostile rated records, stored offsets past a recreated topic ---------------

FLAT_CATALOG = Path(__file__).parent.parent / "data" / "flat" / "catalog.yaml"
HUGE = "60000000000000000000"  # 6 * 10^19: two of them on one sum meter reach 1.2 * 10^20


def _rated(event_id: str, quantity: str, before: str, after: str, amount: str) -> bytes:
    """A rated record of flat.yaml's alpha, as rating encodes it."""
    event = UsageEvent(
        event_id, "alpha", "api_calls", Decimal(quantity), datetime(2026, 9, 10, tzinfo=UTC), {}, None,
        "json", "alpha-1", "basic-eur", "EUR", "2026-09",
    )  # fmt: skip
    rated = RatedUsage(
        event, "eur-api", "flat", Decimal(quantity), Decimal(amount), Decimal(before), Decimal(after),
        invoice_id_for("alpha", "2026-09"),
    )  # fmt: skip
    if abs(Decimal(after)) < 10**20:
        return encode_rated(rated)
    # Past what rating (and the codec) will ever write: hand-write the Avro decimal
    # bytes of aggregate_after, the last decimal before the invoice id.
    zero = RatedUsage(
        event, "eur-api", "flat", Decimal(quantity), Decimal(amount), Decimal(before), Decimal(0),
        rated.invoice_id,
    )  # fmt: skip
    invoice = rated.invoice_id.encode()
    tail = bytes([len(invoice) << 1]) + invoice
    encoded = encode_rated(zero)
    assert encoded.endswith(b"\x02\x00" + tail)
    unscaled = int(Decimal(after).scaleb(18, Context(prec=60)))
    size = (abs(unscaled).bit_length() + 8) // 8
    return encoded[: -len(tail) - 2] + bytes([size << 1]) + unscaled.to_bytes(size, "big", signed=True) + tail


class InProcessConsolidator:
    """The consolidation stage run on a thread of the test, until stopped or failed."""

    def __init__(self, settings: Settings, out: Path, name: str) -> None:
        bootstrap = settings.bootstrap_servers
        self.contracts = ContractsTable(CompactedTable(CONTRACTS, bootstrap, {}, f"c-{name}"))
        self.periods = PeriodsTable(CompactedTable(PERIODS, bootstrap, {}, f"p-{name}"))
        self.contracts.load()
        self.periods.load()
        self.store = BillingStore(out)
        self.stage = Consolidator(settings, self.contracts, self.periods, self.store)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.stage.run(self._stop.is_set)
        except BaseException as exc:
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        self.store.close()


@pytest.fixture
def health() -> Iterator[None]:
    saved = (HEALTH.stage, HEALTH.started, HEALTH.fatal, HEALTH.stall_s)
    HEALTH.fatal = None
    yield
    HEALTH.stage, HEALTH.started, HEALTH.fatal, HEALTH.stall_s = saved


def _consumed() -> float:
    return float(metrics.CONSUMED.labels("consolidation", RATED)._value.get())


def _lag() -> dict[str, float]:
    return {
        s.labels["partition"]: s.value
        for s in next(iter(metrics.CONSUMER_LAG.collect())).samples
        if s.labels["stage"] == "consolidation"
    }


def _produce_rated(bootstrap: str, records: list[tuple[int, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition, value in records:
        producer.produce(RATED, value, b"alpha", partition)
    assert producer.flush(10) == 0


def _settings(broker: EmbeddedBroker, out: Path) -> Settings:
    return Settings(
        bootstrap_servers=broker.bootstrap_servers, partitions=2, out_dir=str(out), auto_close=False,
        instance_id="in-process",
    )  # fmt: skip


def _until(condition: Callable[[], bool], worker: InProcessConsolidator, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert worker.error is None, f"consolidation failed: {worker.error!r}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_rated_records_that_do_not_fit_the_store_go_to_the_dlq_and_the_rest_is_stored(
    fresh_broker: EmbeddedBroker, tmp_path: Path, health: None
) -> None:
    settings = _settings(fresh_broker, tmp_path / "out")
    create_topics(settings)
    publish_catalog(settings, FLAT_CATALOG)
    records = [
        (0, _rated("e1", "1", "0", "1", "0.002")),
        (0, _rated("huge-1", HUGE, "1", "60000000000000000001", "120000000000000000")),
        (0, _rated("huge-2", HUGE, "60000000000000000001", "120000000000000000001", "120000000000000000")),
        (0, _rated("e2", "2", "60000000000000000001", "60000000000000000003", "0.004")),
        (1, b"\x00\x00\x00\x00\x02not Avro"),
    ]
    before = _consumed()
    worker = InProcessConsolidator(settings, tmp_path / "out", "fit")
    worker.start()
    answers: list[tuple[bool, str]] = []
    try:
        _until(lambda: HEALTH.started, worker)
        _produce_rated(fresh_broker.bootstrap_servers, records)

        def consumed_all() -> bool:
            answers.append(HEALTH.status())
            return _consumed() - before >= len(records)

        _until(consumed_all, worker)
        # Consumer lag per partition, like the other stages.
        _until(lambda: _lag() == {"0": 0.0, "1": 0.0}, worker)
        assert worker.running()
        # Its own DLQ records come back as rows of rejected_events, read as rated records.
        reader = connect_store(worker.store.out, read_only=True)
        rejected = """SELECT source_topic, source_partition, source_offset, reason, account_id, event_id,
                             period FROM rejected_events ORDER BY ALL"""
        _until(lambda: len(reader.execute(rejected).fetchall()) == 2, worker)
        assert reader.execute(rejected).fetchall() == [
            (RATED, 0, 2, "invalid_quantity", "alpha", "huge-2", "2026-09"),
            (RATED, 1, 0, "malformed", None, None, None),
        ]
        reader.close()
    finally:
        worker.stop()
    assert worker.error is None
    assert [a for a in answers if not a[0]] == []
    letters = {}
    for message in read_topic(fresh_broker.bootstrap_servers, REJECTED):
        headers = {k: v.decode() for k, v in message.headers()}
        where = (int(headers["meterline.source.partition"]), int(headers["meterline.source.offset"]))
        letters[where] = headers["meterline.reason"]
    assert letters == {(0, 2): "invalid_quantity", (1, 0): "malformed"}
    out = tmp_path / "out"
    assert table(out, "SELECT event_id FROM rated_usage ORDER BY 1") == [("e1",), ("e2",), ("huge-1",)]
    assert table(out, "SELECT aggregate, amount_exact, event_count FROM usage_totals") == [
        (Decimal("60000000000000000003"), Decimal("120000000000000000.006"), 3)
    ]
    positions = f"SELECT partition, next_offset FROM consumer_positions WHERE topic = '{RATED}' ORDER BY 1"
    assert table(out, positions) == [(0, 4), (1, 1)]


def test_stored_offsets_past_a_recreated_topic_stop_consolidation_with_a_clear_error(
    fresh_broker: EmbeddedBroker, tmp_path: Path, health: None
) -> None:
    out = tmp_path / "out"
    settings = _settings(fresh_broker, out)
    create_topics(settings)
    publish_catalog(settings, FLAT_CATALOG)
    first = [(0, _rated(f"a{i}", "1", str(i), str(i + 1), "0.002")) for i in range(30)]
    first += [(1, _rated(f"b{i}", "1", str(i), str(i + 1), "0.002")) for i in range(10)]
    before = _consumed()
    worker = InProcessConsolidator(settings, out, "first")
    worker.start()
    try:
        _produce_rated(fresh_broker.bootstrap_servers, first)
        _until(lambda: _consumed() - before >= len(first), worker)
    finally:
        worker.stop()
    assert worker.error is None

    # The broker restarted with memory storage: the topics come back empty, the store stays.
    with EmbeddedBroker() as restarted:
        settings = _settings(restarted, out)
        create_topics(settings)
        publish_catalog(settings, FLAT_CATALOG)
        _produce_rated(restarted.bootstrap_servers, first[:5])
        worker = InProcessConsolidator(settings, out, "second")
        worker.start()
        try:
            deadline = time.monotonic() + 60
            while worker.running() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not worker.running(), "consolidation neither failed nor consumed: a silent skip"
        finally:
            worker.stop()
        # The worker process: exit code 1 and one log line saying why.
        completed = subprocess.run(
            [sys.executable, "-m", "meterline", "consolidation", "--bootstrap-servers",
             restarted.bootstrap_servers, "--out", str(out), "--no-auto-close"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert isinstance(worker.error, FatalStageError), worker.error
    message = str(worker.error)
    assert f"{RATED}[0] stored offset 30, end 5" in message
    assert f"{RATED}[1] stored offset 10, end 0" in message
    assert "Restore the broker's data" in message and str(out) in message
    assert completed.returncode == 1, completed.stdout + completed.stderr
    fatal = [json.loads(line) for line in completed.stderr.splitlines() if '"worker_fatal"' in line]
    assert len(fatal) == 1 and "stored offset 30, end 5" in fatal[0]["reason"], completed.stderr
    assert "Traceback" not in completed.stdout + completed.stderr
    ok, reason = HEALTH.status()
    assert not ok and reason.startswith("fatal: stored positions lie past the end")
    # Nothing was consumed from the new topic: the store is as the first broker left it.
    positions = table(out, "SELECT partition, next_offset FROM consumer_positions ORDER BY 1")
    assert positions == [(0, 30), (1, 10)]


def test_a_close_reports_an_account_the_catalog_lost_and_finishes_once_it_is_back(
    fresh_broker: EmbeddedBroker, tmp_path: Path, health: None
) -> None:
    out = tmp_path / "out"
    settings = _settings(fresh_broker, out)
    create_topics(settings)
    publish_catalog(settings, FLAT_CATALOG)
    document = yaml.safe_load(FLAT_CATALOG.read_text())
    document["accounts"] = [a for a in document["accounts"] if a["id"] != "alpha"]
    without_alpha = tmp_path / "without-alpha.yaml"
    without_alpha.write_text(yaml.safe_dump(document))
    records = [(0, _rated(f"a{i}", "1", str(i), str(i + 1), "0.002")) for i in range(3)]
    before = _consumed()
    worker = InProcessConsolidator(settings, out, "lost")
    reader = connect_store(worker.store.out, read_only=True)  # a reader beside the worker

    def rows(sql: str) -> list[tuple[Any, ...]]:
        return reader.execute(sql).fetchall()

    worker.start()
    try:
        _produce_rated(fresh_broker.bootstrap_servers, records)
        _until(lambda: _consumed() - before >= len(records), worker)
        # Published without alpha (as a user could, with --force), then the period closed.
        publish_catalog(settings, without_alpha, force=True)
        publish_close(settings, "2026-09")
        problems = "SELECT account_id, reason FROM close_problems"
        _until(lambda: rows(problems) == [("alpha", "account_missing")], worker)
        drafts = "SELECT account_id, status FROM invoice_drafts WHERE period = '2026-09' ORDER BY 1"
        assert ("alpha", "final") not in rows(drafts) and ("beta", "final") in rows(drafts)
        assert rows("SELECT count(*) FROM closes_done") == [(0,)]  # the close is not done
        # The catalog fixed: the same close finishes, nothing to publish again.
        publish_catalog(settings, FLAT_CATALOG)
        _until(lambda: rows(drafts) == [("alpha", "final"), ("beta", "final")], worker)
        done = "SELECT DISTINCT period, account_id FROM closes_done"  # a row per partition
        _until(lambda: rows(done) == [("2026-09", None)], worker)
        assert rows("SELECT * FROM close_problems") == []
    finally:
        reader.close()
        worker.stop()
    assert worker.error is None
    assert table(out, "SELECT event_count FROM invoice_drafts WHERE account_id = 'alpha'") == [(3,)]
