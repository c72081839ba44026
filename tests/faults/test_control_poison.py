"""Fault 8: garbage on the control topics (meterline.contracts, meterline.periods) and
closes of impossible periods, before the workers start and again mid-stream.

The workers keep running (the processes started first are the ones running at the
end, but for the restarts the full version makes on purpose, after the poison, to
replay it from the compacted topics), `meterline close` refuses impossible periods,
and the invoices equal the clean run. The fast version runs in `make test`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from meterline.app.publish import InputError, InputFile, publish_close
from meterline.app.workers import STAGES
from meterline.kernel.config import Settings
from meterline.runtime.kafka_config import plain_producer_config
from tests.faults.compare import compare_outputs, fail, reconciliation_problems
from tests.faults.conftest import Stream
from tests.faults.harness import FaultPipeline, StallableBroker, fault_seed
from tests.faults.poison import Record, contracts_poison, periods_poison
from tests.faults.report import FaultResult

IMPOSSIBLE_CLOSES = ("2026-13", "0000-01", "2026-00")


def publish_raw(settings: Settings, records: list[Record]) -> None:
    """Produce records as they are, the way a broken or hostile producer would."""
    failures: list[Any] = []
    producer = Producer(
        {
            **plain_producer_config(settings.bootstrap_servers, settings.kafka),
            "on_delivery": lambda error, _: failures.append(error) if error is not None else None,
        }
    )
    for topic, key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0, "poison records left undelivered"
    assert not failures, f"poison not delivered: {failures[:3]}"


def halves(stream: Stream, folder: Path) -> list[InputFile]:
    lines = [line for item in stream.files for line in item.path.read_bytes().splitlines()]
    files = []
    for number, part in enumerate((lines[: len(lines) // 2], lines[len(lines) // 2 :])):
        path = folder / f"half-{number}.jsonl"
        path.write_bytes(b"".join(line + b"\n" for line in part))
        files.append(InputFile(path, "json"))
    return files


def run_poison(
    stream: Stream, broker: StallableBroker, folder: Path, seed: int, fault: FaultResult, full: bool
) -> None:
    fault.fault, fault.seed, fault.runs = "8. control-topic poison", seed, 2
    rng = random.Random(seed)
    rounds = 5 if full else 1
    before = contracts_poison(rng, "before", semantic=full) + periods_poison(rng)
    after = [r for n in range(rounds) for r in contracts_poison(rng, f"after{n}", semantic=full)]
    after += [r for _ in range(rounds) for r in periods_poison(rng)]
    first, second = halves(stream, folder)
    out = folder / "out"
    pipeline = FaultPipeline(broker, out)
    try:
        pipeline.publish_catalog(stream.catalog)
        refused = []
        for period in IMPOSSIBLE_CLOSES:
            with pytest.raises(InputError):
                publish_close(pipeline.settings, period)
            refused.append(period)
        publish_raw(pipeline.settings, before)
        pipeline.start()
        pids = pipeline.pids()
        pipeline.publish([first])
        pipeline.wait_drained()
        publish_raw(pipeline.settings, after)
        fault.injections = [
            f"{len(before)} poison records before the start",
            f"{len(after)} after half of the stream",
        ]
        if full:  # a restart reads the poison back from the compacted topics
            for stage in STAGES:
                pipeline.restart(stage)
            fault.injections.append("every stage restarted after the poison")
            pids = pipeline.pids()
        pipeline.publish([second])
        fault.events = pipeline.published
        totals = pipeline.wait_drained()
        pipeline.close_periods(stream.periods)
        replaced = sorted(key for key, pid in pipeline.pids().items() if pids.get(key) != pid)
        fault.restarts = pipeline.restarts
    finally:
        pipeline.stop()
    fault.notes.append(f"`meterline close` refused {', '.join(refused)}")
    problems = [f"worker processes were replaced: {replaced}"] if replaced else []
    problems += reconciliation_problems(out, totals, fault.events, stream.summary)
    problems += compare_outputs(out, stream.reference)
    fail("fault 8 (control-topic poison)", seed, problems)


@pytest.mark.integration
@pytest.mark.faults
def test_control_topic_poison_fast(
    fast_stream: Stream, stallable_broker: StallableBroker, tmp_path: Path, fault: FaultResult
) -> None:
    run_poison(fast_stream, stallable_broker, tmp_path, fault_seed(8), fault, full=False)


@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.integration
def test_control_topic_poison(
    base_stream: Stream, stallable_broker: StallableBroker, tmp_path: Path, fault: FaultResult
) -> None:
    run_poison(base_stream, stallable_broker, tmp_path, fault_seed(88), fault, full=True)
