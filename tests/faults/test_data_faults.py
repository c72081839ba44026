"""Faults 4 and 6: what the data does rather than the processes.

4. A duplicate storm: 30% exact duplicates in the stream, and one of its input files
   replayed in full once the rest is drained. Compared with the clean run of the same
   input (the same files in the same order, the replay included).
6. Late data after the close: fresh events for the closed period and a replay of the
   start of the stream arrive after the period's invoices are final; fresh ones are
   rejected `period_closed`, nothing is rated, and the final invoices, their Parquet
   export included, stay as they were.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from generator import generate_events
from meterline.app.publish import InputFile
from tests.faults.compare import compare_outputs, fail, reconciliation_problems
from tests.faults.conftest import Stream
from tests.faults.harness import EVENTS, MONTH, FaultPipeline, StallableBroker, fault_seed
from tests.faults.report import FaultResult

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.integration]

STORM_RATE = 0.30


def test_duplicate_storm_and_replayed_file(
    stream_factory: Callable[..., Stream],
    stallable_broker: StallableBroker,
    tmp_path: Path,
    fault: FaultResult,
) -> None:
    seed = fault_seed(4)
    fault.fault, fault.seed, fault.runs = "4. duplicate storm", seed, 2
    storm = stream_factory(
        "storm", accounts=200, events=EVENTS, seed=seed, duplicate_rate=STORM_RATE, parts=3, replay_first=True
    )
    out = tmp_path / "out"
    pipeline = FaultPipeline(stallable_broker, out)
    try:
        pipeline.publish_catalog(storm.catalog)
        pipeline.start()
        pipeline.publish(storm.files[:3])
        first = pipeline.wait_drained()
        pipeline.publish(storm.files[3:])  # the first file again, in full
        fault.events = pipeline.published
        totals = pipeline.wait_drained()
        pipeline.close_periods(storm.periods)
    finally:
        pipeline.stop()
    replayed = totals.events_in - first.events_in
    fault.injections = [
        f"{round(EVENTS * STORM_RATE):,} duplicates in the stream",
        f"{storm.files[0].path.name} ({replayed:,} records) replayed after the drain",
    ]
    fault.notes.append(f"duplicates: {first.duplicates:,} before the replay, {totals.duplicates:,} after")
    problems = []
    if totals.duplicates < first.duplicates + replayed * 0.9 or first.duplicates < round(EVENTS * STORM_RATE):
        problems.append(f"too few duplicates: {first.duplicates:,} then {totals.duplicates:,}")
    problems += reconciliation_problems(out, totals, fault.events, storm.summary)
    problems += compare_outputs(out, storm.reference)
    fail("fault 4 (duplicate storm)", seed, problems)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.parquet"))}


def test_late_data_after_close(
    base_stream: Stream, stallable_broker: StallableBroker, tmp_path: Path, fault: FaultResult
) -> None:
    seed = fault_seed(6)
    fault.fault, fault.seed, fault.runs = "6. late data after close", seed, 2
    late = max(1_000, EVENTS // 20)
    fresh = tmp_path / "late.jsonl"
    lines = generate_events(base_stream.document, late, seed, MONTH, duplicate_rate=0, bad_rate=0)
    fresh.write_bytes(b"".join(line + b"\n" for line in lines))
    again = tmp_path / "replay.jsonl"
    head = base_stream.files[0].path.read_bytes().splitlines(keepends=True)[: late // 2]
    again.write_bytes(b"".join(head))
    out = tmp_path / "out"
    exports = [out / "invoices" / f"period={p}" for p in base_stream.periods]
    pipeline = FaultPipeline(stallable_broker, out)
    try:
        pipeline.publish_catalog(base_stream.catalog)
        pipeline.start()
        pipeline.publish(base_stream.files)
        closed = pipeline.wait_drained()
        pipeline.close_periods(base_stream.periods, stop=False)
        exported = [_digest(folder) for folder in exports]
        pipeline.publish([InputFile(fresh, "json"), InputFile(again, "json")])
        fault.events = pipeline.published
        totals = pipeline.wait_drained()
        pipeline.stop()
    finally:
        pipeline.stop()
    fault.injections = [f"{late:,} fresh events and {len(head):,} replayed lines after the close"]
    period_closed = totals.rejected.get("period_closed", 0) - closed.rejected.get("period_closed", 0)
    duplicates = totals.duplicates - closed.duplicates
    fault.notes.append(f"after the close: {period_closed:,} period_closed, {duplicates:,} duplicates")
    problems = []
    if totals.rated != closed.rated:
        problems.append(f"{totals.rated - closed.rated:,} events were rated after the close")
    if period_closed < late:
        problems.append(
            f"only {period_closed:,} of the {late:,} fresh late events were rejected period_closed"
        )
    if [_digest(folder) for folder in exports] != exported:
        problems.append("the exported final invoices changed after the close")
    problems += reconciliation_problems(out, totals, fault.events)
    problems += compare_outputs(out, base_stream.reference)
    fail("fault 6 (late data after close)", seed, problems)
