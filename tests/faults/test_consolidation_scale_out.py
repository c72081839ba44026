"""Fault 9: consolidation scaled out on the default SQLite catalog, one process SIGKILLed.

Two `meterline consolidation` processes (instance ids fault-a and fault-b, one
consumer group, one --out and so one DuckLake store with its catalog in
billing.sqlite) start together beside one mediation and one rating process and
split the rated partitions. Once the process chosen by the seed has committed
batches for its partitions, and before the stream is done, it is SIGKILLed and
restarted. The period is then closed by the two processes together, and the store
must hold exactly the final invoices, lines and usage totals of the clean
one-process `meterline run --close-all`, every rated event once, and the same
final-invoice Parquet exports.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from meterline.runtime.progress import Totals
from tests.faults.compare import compare_outputs, fail, reconciliation_problems
from tests.faults.conftest import Stream
from tests.faults.harness import FaultPipeline, Kill, StallableBroker, fault_seed
from tests.faults.report import FaultResult
from tests.integration.harness import table

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.integration]

INSTANCES = ("a", "b")
TIMEOUT_S = 1800.0
# The rated events, as a count and an order-free digest of what each one landed on.
EVENTS_DIGEST = (
    "SELECT count(*), count(DISTINCT (account_id, event_id)),"
    " sum(hash(account_id, event_id, charge_id, period, invoice_id)::HUGEINT) FROM rated_usage"
)


def log_path(pipeline: FaultPipeline, instance: str) -> Path:
    return pipeline.out / "logs" / pipeline.workers(instance).log_name.format(stage="consolidation")


def log_events(pipeline: FaultPipeline, instance: str, name: str) -> list[dict[str, Any]]:
    """The entries named `name` of an instance's consolidation log (restarts append to it)."""
    try:
        lines = log_path(pipeline, instance).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    found = []
    for line in lines:
        if line.startswith("{") and f'"{name}"' in line:
            entry: dict[str, Any] = json.loads(line)
            if entry.get("event") == name:
                found.append(entry)
    return found


def assignments(pipeline: FaultPipeline, instance: str) -> list[list[int]]:
    """The partitions each `partitions_assigned` of an instance's consolidation log gave it."""
    return [sorted(e["partitions"]) for e in log_events(pipeline, instance, "partitions_assigned")]


def stored_positions(pipeline: FaultPipeline) -> dict[int, int]:
    """The rated topic's next offsets stored in the billing store, by partition."""
    rated = pipeline.settings.topics.rated
    rows = table(
        pipeline.out,
        f"SELECT partition, max(next_offset) FROM consumer_positions WHERE topic = '{rated}' GROUP BY 1",
    )
    return {int(p): int(o) for p, o in rows}


def exports_differ(out: Path, reference: Path, periods: list[str]) -> list[str]:
    """Final-invoice Parquet exports that differ from the clean run's (generated_at aside)."""
    problems = []
    for period in periods:
        for name, drop in (("invoice_drafts", "generated_at"), ("invoice_lines", None)):
            ours = pq.read_table(out / "invoices" / f"period={period}" / f"{name}.parquet")
            theirs = pq.read_table(reference / "invoices" / f"period={period}" / f"{name}.parquet")
            if drop:
                ours, theirs = ours.drop_columns([drop]), theirs.drop_columns([drop])
            if sorted(map(str, ours.to_pylist())) != sorted(map(str, theirs.to_pylist())):
                problems.append(f"invoices/period={period}/{name}.parquet differs from the clean run's")
    return problems


def test_two_consolidation_processes_one_killed_give_the_invoices_of_one(
    base_stream: Stream, stallable_broker: StallableBroker, tmp_path: Path, fault: FaultResult
) -> None:
    fault.fault, fault.seed, fault.runs = "9. consolidation scale-out", fault_seed(9), 2
    rng = random.Random(fault.seed)
    victim = rng.choice(INSTANCES)
    point = rng.uniform(0.2, 0.6)
    rated = base_stream.summary["rated"]
    out = tmp_path / "out"
    pipeline = FaultPipeline(stallable_broker, out)
    kills: list[Kill] = []
    try:
        pipeline.publish_catalog(base_stream.catalog)
        pipeline.start()
        pipeline.start("consolidation", instance="b")  # both at once, as the deployments start them
        pipeline.feed(base_stream.files, tmp_path / "pieces")
        fault.events = base_stream.events

        def both_consuming(totals: Totals) -> bool:
            return totals.consolidation_consumed >= rated * point and all(
                assignments(pipeline, i) and assignments(pipeline, i)[-1] for i in INSTANCES
            )

        pipeline.watch(both_consuming, TIMEOUT_S, f"{point:.0%} consolidated by both processes")
        # The victim's partitions, and their stored positions now: it is killed once it has
        # committed past them (batches of its own in the store), the stream not yet done.
        mine = assignments(pipeline, victim)[-1]
        seen = stored_positions(pipeline)

        def committed(totals: Totals) -> bool:
            now = stored_positions(pipeline)
            return all(now.get(p, 0) > seen.get(p, 0) for p in mine) or pipeline.drained(totals)

        at_kill = pipeline.watch(committed, TIMEOUT_S, f"consolidation-{victim} to commit for {mine}")
        assert not pipeline.drained(at_kill), "the stream was done before the kill"
        assert assignments(pipeline, victim)[-1] == mine, "the victim's partitions moved meanwhile"
        kills.append(Kill("consolidation", victim, at_kill.consolidation_consumed, rated, time.monotonic()))
        pipeline.kill("consolidation", victim)
        pipeline.start("consolidation", instance=victim)
        pipeline.restarts += 1
        fault.injections.append(
            f"SIGKILL consolidation-{victim} at {kills[0].describe()}, owning partitions {mine}, "
            f"after it committed past {[seen.get(p, 0) for p in mine]}; restarted"
        )
        pipeline.wait_recovered(kills)
        totals = pipeline.wait_drained()
        pipeline.close_periods(base_stream.periods)  # published as `meterline close` does; stops
        problems = reconciliation_problems(out, totals, pipeline.published, base_stream.summary)
        problems += compare_outputs(out, base_stream.reference)
        problems += exports_differ(out, base_stream.reference, base_stream.periods)
        ours, theirs = table(out, EVENTS_DIGEST), table(base_stream.reference, EVENTS_DIGEST)
        if ours != theirs:
            problems.append(f"rated_usage (rows, distinct, digest) {ours} != the clean run's {theirs}")
        for instance in INSTANCES:
            if not any(assignments(pipeline, instance)):
                problems.append(f"consolidation-{instance} never got a partition")
        fault.restarts = pipeline.restarts
        fault.notes.append(
            "partitions assigned: " + "; ".join(f"{i}: {assignments(pipeline, i)}" for i in INSTANCES)
        )
        # Batches whose store commit failed (a conflict, a busy catalog) were consumed again.
        fault.notes.append(
            "store batches aborted and replayed: "
            + "; ".join(f"{i}: {len(log_events(pipeline, i, 'store_batch_aborted'))}" for i in INSTANCES)
        )
        fail("fault 9 (consolidation scale-out)", fault.seed, problems)
    finally:
        fault.recover_s = [k.recovered_s for k in kills if k.recovered_s is not None]
        pipeline.stop()
