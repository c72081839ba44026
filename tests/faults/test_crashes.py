"""Faults 1, 2, 3 and 7: processes killed, added, starved and stopped mid-stream.

Each runs METERLINE_FAULT_EVENTS events (default 500,000; the SIGKILL fault
METERLINE_FAULT_KILL_EVENTS, 1,000,000 under `make faults`) through worker processes on
the embedded broker, closes the period, and must give the final invoices, lines and
usage totals of the clean run of the same input, with exact reconciliation.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from meterline.runtime.progress import Totals
from tests.faults.compare import compare_outputs, fail, reconciliation_problems
from tests.faults.conftest import Stream
from tests.faults.harness import (
    FaultPipeline,
    Kill,
    StallableBroker,
    fault_seed,
    note_recoveries,
    progress_of,
)
from tests.faults.report import FaultResult

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.integration]

KILLS_PER_STAGE = 10
STALL_S = 20.0


def stage_totals(stream: Stream) -> dict[str, int]:
    """How many records each stage consumes in all (rating and consolidation: about the rated)."""
    return {
        "mediation": stream.events,
        "chained": stream.events,
        "rating": stream.summary["rated"],
        "consolidation": stream.summary["rated"],
    }


def finish(
    pipeline: FaultPipeline,
    stream: Stream,
    out: Path,
    fault: FaultResult,
    name: str,
    problems: Sequence[str] = (),
) -> None:
    """Drain, close every period, stop, and compare with the clean run."""
    totals = pipeline.wait_drained()
    pipeline.close_periods(stream.periods)
    problems = [*problems, *reconciliation_problems(out, totals, pipeline.published, stream.summary)]
    problems += compare_outputs(out, stream.reference)
    fault.restarts = pipeline.restarts
    fail(name, fault.seed or 0, problems)


def record(fault: FaultResult, kills: list[Kill]) -> None:
    fault.injections = [k.describe() for k in kills]
    fault.recover_s = [k.recovered_s for k in kills if k.recovered_s is not None]
    unmeasured = sum(k.recovered_s is None for k in kills)
    if unmeasured:
        fault.notes.append(
            f"{unmeasured} kills without a recovery time (the stage had nothing left to consume)"
        )


@pytest.mark.parametrize("chained", [False, True], ids=["apart", "chained"])
def test_sigkill_each_stage_at_random_points(
    kill_stream: Stream, stallable_broker: StallableBroker, tmp_path: Path, fault: FaultResult, chained: bool
) -> None:
    """Fault 1: every stage SIGKILLed at 10 random points of its progress and restarted each time;
    a stage is killed again only after it made progress since its last restart. Apart, and with
    mediation and rating chained in one worker."""
    name = "1. SIGKILL each stage" + (", mediation and rating chained" if chained else "")
    fault.fault, fault.seed, fault.runs = name, fault_seed(1), 2
    rng = random.Random(fault.seed)
    ends = stage_totals(kill_stream)
    out = tmp_path / "out"
    pipeline = FaultPipeline(stallable_broker, out, chained=chained)
    pending = {
        s: sorted(int(rng.uniform(0.03, 0.9) * ends[s]) for _ in range(KILLS_PER_STAGE))
        for s in pipeline.stages
    }
    kills: list[Kill] = []
    try:
        pipeline.publish_catalog(kill_stream.catalog)
        pipeline.start()
        pipeline.feed(kill_stream.files, tmp_path / "pieces")
        fault.events = kill_stream.events

        def inject(totals: Totals) -> bool:
            note_recoveries(kills, totals)
            for stage, points in pending.items():
                previous = [k for k in kills if k.stage == stage]
                ready = not previous or previous[-1].recovered_s is not None or pipeline.drained(totals)
                done = progress_of(stage, totals)
                if points and ready and done >= points[0]:
                    kills.append(Kill(stage, "a", done, ends[stage], time.monotonic()))
                    pipeline.restart(stage)
                    points.pop(0)
            return not any(pending.values())

        pipeline.watch(inject, 3600, f"{KILLS_PER_STAGE} kills of every stage")
        pipeline.wait_recovered(kills)
        assert len(kills) == KILLS_PER_STAGE * len(pipeline.stages)
        finish(pipeline, kill_stream, out, fault, "fault 1 (SIGKILL each stage)")
    finally:
        record(fault, kills)
        pipeline.stop()


@pytest.mark.parametrize("chained", [False, True], ids=["apart", "chained"])
def test_rebalance_second_process_joins_then_one_is_killed(
    base_stream: Stream, stallable_broker: StallableBroker, tmp_path: Path, fault: FaultResult, chained: bool
) -> None:
    """Fault 2: a second process of every stage joins at 20% (rebalance), then at 50% one
    process of every stage, chosen by the seed, is SIGKILLed and not restarted. Apart, and
    with mediation and rating chained in one worker."""
    name = "2. rebalances" + (", mediation and rating chained" if chained else "")
    fault.fault, fault.seed, fault.runs = name, fault_seed(2), 2
    rng = random.Random(fault.seed)
    rated = base_stream.summary["rated"]
    out = tmp_path / "out"
    pipeline = FaultPipeline(stallable_broker, out, chained=chained)
    kills: list[Kill] = []
    try:
        pipeline.publish_catalog(base_stream.catalog)
        pipeline.start()
        pipeline.feed(base_stream.files, tmp_path / "pieces")
        fault.events = base_stream.events
        pipeline.keep_going = True  # a process that cannot join is reported, the others go on
        joined = pipeline.watch(lambda t: t.consolidation_consumed >= rated * 0.2, 1800, "20% consolidated")
        pipeline.start(instance="b")
        fault.injections.append(
            f"instance b of every stage joins at {joined.consolidation_consumed:,} consolidated"
        )
        halfway = pipeline.watch(lambda t: t.consolidation_consumed >= rated * 0.5, 1800, "50% consolidated")
        ends = stage_totals(base_stream)
        for stage in pipeline.stages:
            running = sorted(i for s, i in pipeline.alive if s == stage)
            if len(running) < 2:
                fault.notes.append(f"{stage}: not killed, only {running} left")
                continue
            victim = rng.choice(running)
            kills.append(Kill(stage, victim, progress_of(stage, halfway), ends[stage], time.monotonic()))
            pipeline.kill(stage, victim)
        pipeline.wait_recovered(kills)
        fault.injections += [f"SIGKILL {k.stage}-{k.instance} at {k.describe()}" for k in kills]
        finish(pipeline, base_stream, out, fault, "fault 2 (rebalances)", pipeline.deaths)
    finally:
        fault.recover_s = [k.recovered_s for k in kills if k.recovered_s is not None]
        pipeline.stop()


def test_broker_stall_is_ridden_out_without_restarts(
    base_stream: Stream, stallable_broker: StallableBroker, tmp_path: Path, fault: FaultResult
) -> None:
    """Fault 3: the broker SIGSTOPped for 20 s at 30% of the stream, then SIGCONT; every worker
    process started at the beginning is still the one running at the end."""
    fault.fault, fault.seed, fault.runs = "3. broker stall", fault_seed(3), 2
    rated = base_stream.summary["rated"]
    out = tmp_path / "out"
    pipeline = FaultPipeline(stallable_broker, out)
    try:
        pipeline.publish_catalog(base_stream.catalog)
        pipeline.start()
        pids = pipeline.pids()
        pipeline.feed(base_stream.files, tmp_path / "pieces")
        fault.events = base_stream.events
        before = pipeline.watch(lambda t: t.consolidation_consumed >= rated * 0.3, 1800, "30% consolidated")
        assert pipeline.feeder is not None
        pipeline.feeder.paused = True  # publishing to a stopped broker would only time out
        stallable_broker.send(signal.SIGSTOP)
        try:
            pipeline.hold(STALL_S)
        finally:
            stallable_broker.send(signal.SIGCONT)
            pipeline.feeder.paused = False
        resumed = time.monotonic()
        fault.injections = [
            f"broker SIGSTOP for {STALL_S:.0f}s at {before.consolidation_consumed:,} consolidated"
        ]
        after = pipeline.watch(
            lambda t: t.consolidation_consumed > before.consolidation_consumed or pipeline.drained(t),
            600,
            "consolidation to move on after the stall",
        )
        fault.recover_s = [time.monotonic() - resumed]
        fault.notes.append(f"consolidated {after.consolidation_consumed:,} when progress resumed")
        assert pipeline.pids() == pids, "a worker process was replaced during the stall"
        finish(pipeline, base_stream, out, fault, "fault 3 (broker stall)")
    finally:
        pipeline.stop()


def test_slow_consumer_catches_up(
    base_stream: Stream, stallable_broker: StallableBroker, tmp_path: Path, fault: FaultResult
) -> None:
    """Fault 7: consolidation terminated at 15% and restarted once rating is halfway through,
    then SIGSTOPped (evicted from its group) until rating is done, and continued; it catches up."""
    fault.fault, fault.seed, fault.runs = "7. slow consumer", fault_seed(7), 2
    rated = base_stream.summary["rated"]
    out = tmp_path / "out"
    pipeline = FaultPipeline(stallable_broker, out)
    kills: list[Kill] = []
    try:
        pipeline.publish_catalog(base_stream.catalog)
        pipeline.start()
        fault.events = pipeline.publish(base_stream.files)
        first = pipeline.watch(lambda t: t.consolidation_consumed >= rated * 0.15, 1800, "15% consolidated")
        kills.append(Kill("consolidation", "a", first.consolidation_consumed, rated, time.monotonic()))
        pipeline.kill("consolidation", signum=signal.SIGTERM)
        pipeline.watch(lambda t: t.rating_consumed >= rated * 0.5, 1800, "rating halfway")
        pipeline.start("consolidation")
        pipeline.restarts += 1
        pipeline.wait_recovered(kills)
        stopped = pipeline.totals()
        pid = pipeline.process("consolidation").pid
        kills.append(Kill("consolidation", "a", stopped.consolidation_consumed, rated, time.monotonic()))
        pipeline.pause("consolidation")
        try:
            pipeline.hold(10)  # longer than the group session timeout: the group drops it
            upstream = pipeline.watch(
                lambda t: t.rating_consumed >= t.mediated and t.events_in >= pipeline.published,
                1800,
                "mediation and rating to finish while consolidation is stopped",
            )
        finally:
            pipeline.resume("consolidation")
        kills[-1].at = resumed = time.monotonic()  # catch-up counts from the SIGCONT
        pipeline.wait_recovered(kills[-1:])
        caught_up = pipeline.wait_drained()
        fault.injections = [
            f"SIGTERM at {kills[0].describe()}, restarted when rating was halfway",
            f"SIGSTOP at {kills[1].describe()} until rating consumed all {upstream.rating_consumed:,}",
        ]
        fault.recover_s = [k.recovered_s for k in kills if k.recovered_s is not None]
        backlog = upstream.rated - stopped.consolidation_consumed
        fault.notes.append(
            f"backlog at the SIGCONT: {backlog:,} records, drained {time.monotonic() - resumed:.1f}s later"
        )
        fault.notes.append(f"drained at {caught_up.consolidation_consumed:,} consolidated")
        assert pipeline.process("consolidation").pid == pid
        finish(pipeline, base_stream, out, fault, "fault 7 (slow consumer)")
    finally:
        pipeline.stop()
