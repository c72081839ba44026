"""Two consolidation workers sharing one billing store whose catalog is PostgreSQL.

A real PostgreSQL (tests/support/postgres.py) holds the DuckLake catalog; the data
files are in the output folder both workers name. The workers are `meterline
consolidation` processes with distinct instance ids and a `--config` file setting
`store_catalog`, in one consumer group on the real embedded broker, fed by real
mediation and rating workers; one of them is SIGKILLed mid-stream and restarted.
Their store must end up with exactly the invoices of a one-process `meterline run`
on the default SQLite catalog.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import pyarrow.parquet as pq
import pytest

from consolidation import lake
from meterline.app.publish import publish_close
from meterline.kernel.config import settings_to_toml
from meterline.runtime.broker import EmbeddedBroker
from meterline.runtime.progress import Totals
from tests.integration.harness import LivePipeline, meterline_run, write_dataset
from tests.support.postgres import PostgresServer, running_postgres

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ACCOUNTS = 40
EVENTS = 20_000
PARTITIONS = 4
WORKERS = ("consolidation-a", "consolidation-b")

DRAFTS = (
    "SELECT invoice_id, account_id, period, period_start, period_end, currency, subtotal, discount, tax,"
    " total, status, issue_date, due_date, event_count FROM invoice_drafts ORDER BY ALL"
)  # all but generated_at
LINES = "SELECT * FROM invoice_lines ORDER BY ALL"
USAGE = "SELECT * FROM usage_totals ORDER BY ALL"
# Not each event's amount: the raw topic here is unkeyed, so an account's events may reach
# rating in another order than in the keyed reference run, and tiers price them apart
# (their sums, usage_totals and the invoices, are equal).
EVENTS_SQL = "SELECT account_id, event_id, charge_id, period, invoice_id FROM rated_usage ORDER BY ALL"


def rows(out: Path, sql: str, catalog: str = "") -> list[tuple[Any, ...]]:
    db = lake.connect(out, catalog=catalog, read_only=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


class ConsolidationWorkers:
    """`meterline consolidation` processes of one store, by instance id."""

    def __init__(self, config: Path, out: Path, logs: Path) -> None:
        self.config = config
        self.out = out
        self.logs = logs
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._handles: list[IO[bytes]] = []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, instance_id: str) -> None:
        handle = (self.logs / f"{instance_id}.log").open("ab")
        self._handles.append(handle)
        command = [
            sys.executable, "-m", "meterline", "consolidation", "--config", str(self.config),
            "--instance-id", instance_id, "--out", str(self.out), "--no-auto-close",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("METERLINE_")}
        self.processes[instance_id] = subprocess.Popen(
            command, stdout=handle, stderr=handle, stdin=subprocess.DEVNULL, env=env
        )

    def kill(self, instance_id: str) -> None:
        process = self.processes[instance_id]
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def check(self) -> None:
        for instance_id, process in self.processes.items():
            assert process.poll() is None, (
                f"{instance_id} exited with {process.returncode}:\n{self.log(instance_id)[-3000:]}"
            )

    def log(self, instance_id: str) -> str:
        return (self.logs / f"{instance_id}.log").read_text(errors="replace")

    def events(self, instance_id: str, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log(instance_id).splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("event") == name:
                    found.append(entry)
        return found

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for handle in self._handles:
            handle.close()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_dataset(tmp_path_factory.mktemp("postgres-store"), accounts=ACCOUNTS, events=EVENTS, seed=41)


@pytest.fixture(scope="module")
def reference(
    dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, int]]:
    """One consolidation process on the SQLite catalog: `meterline run --close-all`."""
    catalog, events = dataset
    folder = tmp_path_factory.mktemp("reference")
    out, summary = folder / "out", folder / "summary.json"
    completed = meterline_run(
        catalog, f"json:{events}", out, "--close-all", "--summary-json", str(summary), partitions=PARTITIONS
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert (out / lake.CATALOG_FILE).is_file()
    return out, json.loads(summary.read_text())


def _until(
    condition: Callable[[], bool], workers: ConsolidationWorkers, what: str, timeout: float = 300
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        workers.check()
        time.sleep(0.5)


def test_two_workers_on_a_postgres_catalog_give_the_invoices_of_one(
    dataset: tuple[Path, Path],
    reference: tuple[Path, dict[str, int]],
    postgres: PostgresServer,
    fresh_broker: EmbeddedBroker,
    tmp_path: Path,
) -> None:
    catalog, events = dataset
    ref, summary = reference
    periods = [p for (p,) in rows(ref, "SELECT DISTINCT period FROM invoice_drafts ORDER BY 1")]
    assert periods
    dsn = postgres.create_database("billing")
    out = tmp_path / "out"
    pipeline = LivePipeline(fresh_broker, out, partitions=PARTITIONS)
    config = tmp_path / "meterline.toml"
    # Small batches: many store commits from each worker, and the kill lands between them.
    settings = replace(
        pipeline.settings, store_catalog=dsn, out_dir=str(out), auto_close=False, batch_size=1500
    )
    config.write_text(settings_to_toml(settings))
    workers = ConsolidationWorkers(config, out, tmp_path / "logs")
    rated = summary["rated"]
    try:
        pipeline.publish(catalog, events)
        pipeline.start("mediation", "rating")
        for instance_id in WORKERS:  # at once, as compose and the StatefulSet start them
            workers.start(instance_id)

        def stored(count: float) -> Callable[[Totals], bool]:
            return lambda totals: totals.stored >= count

        _until(lambda: stored(rated * 0.3)(pipeline.totals()), workers, "30% of the events stored")
        workers.kill(WORKERS[1])
        workers.start(WORKERS[1])
        _until(lambda: stored(rated)(pipeline.totals()), workers, "every rated event stored")
        totals = pipeline.wait_drained()
        reference_usage = rows(ref, USAGE)
        _until(
            lambda: rows(out, USAGE, dsn) == reference_usage, workers, "usage_totals equal to the reference"
        )

        for period in periods:
            publish_close(settings, period)
        exports = [
            out / "invoices" / f"period={p}" / f"{n}.parquet"
            for p in periods
            for n in ("invoice_drafts", "invoice_lines")
        ]

        def closed() -> bool:
            return all(e.exists() for e in exports) and rows(
                out, "SELECT count(*) FROM invoice_drafts WHERE status <> 'final'", dsn
            ) == [(0,)]

        _until(closed, workers, "the periods closed by the two workers")
    finally:
        workers.stop()
        pipeline.stop()

    assert totals.rated == rated
    assert totals.events_in == totals.rated + totals.duplicates + totals.rejected_total
    # Both workers consumed: the group split the rated partitions between them.
    for instance_id in WORKERS:
        assigned = {p for e in workers.events(instance_id, "partitions_assigned") for p in e["partitions"]}
        assert assigned, f"{instance_id} never got a partition"
    # The store: on PostgreSQL, nothing in SQLite, data files relative to the folder.
    assert not (out / lake.CATALOG_FILE).exists()
    assert rows(
        out, "SELECT value FROM __ducklake_metadata_billing.ducklake_metadata WHERE key = 'data_path'", dsn
    ) == [("data/",)]
    # Exactly the invoices of the one-process run, every rated event stored once.
    assert rows(out, DRAFTS, dsn) == rows(ref, DRAFTS)
    assert rows(out, LINES, dsn) == rows(ref, LINES)
    assert rows(out, USAGE, dsn) == rows(ref, USAGE)
    assert rows(out, "SELECT count(*), count(DISTINCT (account_id, event_id)) FROM rated_usage", dsn) == [
        (rated, rated)
    ]
    assert rows(out, EVENTS_SQL, dsn) == rows(ref, EVENTS_SQL)
    for period in periods:
        for name, drop in (("invoice_drafts", "generated_at"), ("invoice_lines", None)):
            ours = pq.read_table(out / "invoices" / f"period={period}" / f"{name}.parquet")
            theirs = pq.read_table(ref / "invoices" / f"period={period}" / f"{name}.parquet")
            if drop:
                ours, theirs = ours.drop_columns([drop]), theirs.drop_columns([drop])
            assert sorted(map(str, ours.to_pylist())) == sorted(map(str, theirs.to_pylist())), (period, name)
