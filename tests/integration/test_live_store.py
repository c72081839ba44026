"""The live billing store: readers beside a running `meterline consolidation` worker.

Rated usage flows through real mediation, rating and consolidation worker processes
on the embedded broker, in waves, so that store batches keep committing for a while
(small batches, previews every 0.5 s). Meanwhile:

* `meterline query --format json` (the real CLI, a process per sample) runs every
  0.5 s: the drafts' event count never decreases, and every snapshot holds whole
  batches only (rated rows and usage deltas commit in one transaction, so
  count(rated_usage) = sum(usage_totals.event_count) in each);
* a plain DuckDB connection (consolidation.lake.connect, read-only) stays open for
  the whole test and queries every 0.5 s; the worker goes on committing and
  finishes while it is open, and it still answers at the end;
* the totals at the end are what was produced, and `--at` a time between two
  samples returns an open draft's earlier figures.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from consolidation import lake
from meterline.app.publish import InputFile, produce_inputs
from meterline.runtime.broker import EmbeddedBroker
from meterline.runtime.progress import drained
from tests.integration.harness import LivePipeline, table, write_dataset

pytestmark = pytest.mark.integration

ACCOUNTS = 20
EVENTS = 8000
WAVES = 4
INTERVAL_S = 0.5  # between samples, and between preview refreshes
DEADLINE_S = 120.0

# One snapshot, read in one statement: the snapshot's id and time, the drafts' event
# count, the rated rows, the usage totals' event count, and each draft's figures.
SAMPLE = """
SELECT s.id AS snapshot_id,
       (SELECT snapshot_time FROM ducklake_snapshots('billing') WHERE snapshot_id = s.id) AS snapshot_time,
       (SELECT coalesce(sum(event_count), 0) FROM invoice_drafts) AS n,
       (SELECT count(*) FROM rated_usage) AS rated,
       (SELECT coalesce(sum(event_count), 0) FROM usage_totals) AS totals,
       (SELECT coalesce(list({'invoice_id': invoice_id, 'status': status, 'total': total,
                              'event_count': event_count} ORDER BY invoice_id), [])
        FROM invoice_drafts) AS drafts
FROM ducklake_current_snapshot('billing') s
"""
DRAFT = "SELECT invoice_id, status, total, event_count FROM invoice_drafts WHERE invoice_id = '{}'"


@dataclass(frozen=True)
class Sample:
    snapshot_id: int
    snapshot_time: datetime
    n: int  # sum(event_count) over invoice_drafts
    rated: int  # count(*) of rated_usage
    totals: int  # sum(event_count) over usage_totals
    drafts: dict[str, tuple[str, Decimal, int]]  # invoice_id: (status, total, event_count)


def _sample(row: dict[str, Any]) -> Sample:
    moment = row["snapshot_time"]
    return Sample(
        snapshot_id=int(row["snapshot_id"]),
        snapshot_time=moment if isinstance(moment, datetime) else datetime.fromisoformat(moment),
        n=int(row["n"]),
        rated=int(row["rated"]),
        totals=int(row["totals"]),
        drafts={
            d["invoice_id"]: (d["status"], Decimal(str(d["total"])), int(d["event_count"]))
            for d in row["drafts"]
        },
    )


def cli_query(out: Path, sql: str, *options: str) -> list[dict[str, Any]]:
    """`meterline query SQL --out OUT --format json [options]`, its JSON array."""
    completed = subprocess.run(
        [sys.executable, "-m", "meterline", "query", sql, "--out", str(out), "--format", "json", *options],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows: list[dict[str, Any]] = json.loads(completed.stdout)
    return rows


class Sampler:
    """Takes a sample every INTERVAL_S on a thread of its own until stopped."""

    def __init__(self, name: str, take: Callable[[], Sample]) -> None:
        self.name = name
        self.take = take
        self.samples: list[Sample] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                self.samples.append(self.take())
                # The sampling cadence the readers are meant to keep, not a wait for some state.
                self._stop.wait(max(0.0, INTERVAL_S - (time.monotonic() - started)))
        except BaseException as exc:
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    def check(self) -> None:
        assert self.error is None, f"{self.name} failed: {self.error!r}"
        assert self._stop.is_set() or self._thread.is_alive(), f"{self.name} stopped"

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), f"{self.name} did not stop"


def _consistent(samples: list[Sample], who: str) -> None:
    """Every snapshot holds whole batches; drafts and snapshots never go back."""
    for sample in samples:
        assert sample.rated == sample.totals, f"{who}: half a batch in snapshot {sample}"
        # Previews are made from usage already committed: they never run ahead of it.
        assert sample.n <= sample.rated, f"{who}: drafts count more events than stored: {sample}"
    for before, after in itertools.pairwise(samples):
        assert after.snapshot_id >= before.snapshot_id, f"{who}: snapshot went back: {before} -> {after}"
        assert after.n >= before.n, f"{who}: sum(event_count) of drafts decreased: {before} -> {after}"


def _waves(events: Path, folder: Path) -> list[Path]:
    lines = events.read_bytes().splitlines(keepends=True)
    size = -(-len(lines) // WAVES)
    paths = []
    for number in range(WAVES):
        path = folder / f"wave-{number}.jsonl"
        path.write_bytes(b"".join(lines[number * size : (number + 1) * size]))
        paths.append(path)
    return paths


def _until(condition: Callable[[], bool], check: Callable[[], None], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        check()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_readers_see_whole_batches_while_consolidation_commits(
    fresh_broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog, events = write_dataset(tmp_path / "data", accounts=ACCOUNTS, events=EVENTS, seed=16)
    waves = _waves(events, tmp_path / "data")
    out = tmp_path / "out"
    # Small batches and frequent previews: many store commits while the readers read.
    monkeypatch.setenv("METERLINE_BATCH_SIZE", "250")
    monkeypatch.setenv("METERLINE_PREVIEW_INTERVAL_S", str(INTERVAL_S))
    pipeline = LivePipeline(fresh_broker, out)
    reader: duckdb.DuckDBPyConnection | None = None
    samplers: list[Sampler] = []

    def check() -> None:
        for sampler in samplers:
            sampler.check()
        for stage, process in pipeline.workers.processes.items():
            assert process.poll() is None, f"{stage} worker exited with {process.returncode}"

    try:
        pipeline.publish(catalog, waves[0])
        pipeline.start("mediation", "rating", "consolidation")

        def opened() -> bool:
            nonlocal reader
            if not (out / lake.CATALOG_FILE).exists():
                return False
            try:  # the worker creates the store, then its tables
                reader = reader or lake.connect(out, read_only=True)
                reader.execute("SELECT count(*) FROM invoice_drafts").fetchall()
            except duckdb.Error:
                return False
            return True

        _until(opened, check, "the worker to create the store")
        assert reader is not None
        plain = reader

        def from_connection() -> Sample:
            result = plain.execute(SAMPLE)
            names = [d[0] for d in result.description]
            row = result.fetchone()
            assert row is not None
            return _sample(dict(zip(names, row, strict=True)))

        samplers = [
            Sampler("meterline query", lambda: _sample(cli_query(out, SAMPLE)[0])),
            Sampler("plain duckdb connection", from_connection),
        ]
        for sampler in samplers:
            sampler.start()
        for wave in waves[1:]:
            pipeline.wait_until(lambda t: drained(t, pipeline.published))
            check()
            pipeline.published += produce_inputs(pipeline.settings, [InputFile(wave, "json")])
        totals = pipeline.wait_drained()
        rated = totals.rated
        assert totals.events_in == pipeline.published == EVENTS
        assert totals.events_in == rated + totals.duplicates + totals.rejected_total

        def caught_up() -> bool:
            return all((s := sampler.latest()) is not None and s.n == rated for sampler in samplers)

        _until(caught_up, check, f"both readers to see all {rated} events on the drafts")
        for sampler in samplers:
            sampler.stop()
        check()
    finally:
        for sampler in samplers:
            sampler.stop()
        pipeline.stop()

    cli, connection = (sampler.samples for sampler in samplers)
    print(
        f"samples: meterline query {len(cli)} ({len({s.snapshot_id for s in cli})} snapshots), "
        f"plain connection {len(connection)} ({len({s.snapshot_id for s in connection})} snapshots); "
        f"{rated} rated events"
    )
    for who, samples in (("meterline query", cli), ("plain connection", connection)):
        _consistent(samples, who)
        assert samples[-1].rated == samples[-1].totals == samples[-1].n == rated
        # Sampled while batches committed: more than the empty store and the end.
        assert len({s.n for s in samples}) >= 3, f"{who} saw too few states: {sorted({s.n for s in samples})}"
    # The open connection saw the store from (nearly) empty to the end: the worker made all
    # that progress while it was open, and the connection still answers now.
    assert connection[0].rated < rated
    assert len(connection) >= 10
    final = plain.execute(SAMPLE).fetchone()
    assert final is not None and final[2:5] == (rated, rated, rated)
    assert table(out, "SELECT count(*), count(DISTINCT (account_id, event_id)) FROM rated_usage") == [
        (rated, rated)
    ]
    plain.close()

    # --at: a time between two samples whose totals differ reads the earlier one's drafts.
    latest = _sample(cli_query(out, SAMPLE)[0])
    snapshots = "SELECT snapshot_id, snapshot_time FROM ducklake_snapshots('billing') ORDER BY snapshot_id"
    history = [
        (int(r["snapshot_id"]), datetime.fromisoformat(r["snapshot_time"])) for r in cli_query(out, snapshots)
    ]

    def changed(sample: Sample) -> list[str]:
        """Open drafts of `sample` whose figures are not their latest ones."""
        return [
            invoice
            for invoice, (status, total, count) in sample.drafts.items()
            if status == "open" and (total, count) != latest.drafts[invoice][1:]
        ]

    def next_time(sample: Sample) -> datetime | None:
        """When the snapshot after the sample's was made; None unless every earlier snapshot
        is older and every later one younger (a snapshot's time is when its transaction
        started, so a writer's long transaction can commit after a younger one)."""
        earlier = [t for i, t in history if i <= sample.snapshot_id]
        later = [t for i, t in history if i > sample.snapshot_id]
        if max(earlier) != sample.snapshot_time or not later or min(later) <= sample.snapshot_time:
            return None
        return min(later)

    pairs = [
        (a, b) for a, b in itertools.pairwise(cli) if a.n < b.n and changed(a) and next_time(a) is not None
    ]
    assert pairs, f"no two samples apart with an open draft changed later: {[s.n for s in cli]}"
    before, after = pairs[0]
    following = next_time(before)
    assert following is not None and following <= after.snapshot_time
    moment = before.snapshot_time + (following - before.snapshot_time) / 2
    invoice = changed(before)[0]
    [earlier] = cli_query(out, DRAFT.format(invoice), "--at", moment.isoformat())
    [now] = cli_query(out, DRAFT.format(invoice))
    assert (earlier["status"], Decimal(earlier["total"]), earlier["event_count"]) == before.drafts[invoice]
    assert (Decimal(now["total"]), now["event_count"]) == latest.drafts[invoice][1:]
    assert (Decimal(now["total"]), now["event_count"]) != (Decimal(earlier["total"]), earlier["event_count"])
