"""The chained worker (mediation and rating in one process) SIGKILLed mid-stream, and
joined by a second one that is then killed: the results equal an uninterrupted run
exactly, each rated event stored once (docs/operations.md)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from meterline.runtime.broker import EmbeddedBroker
from meterline.runtime.progress import Totals
from tests.integration.harness import USAGE_TOTALS, LivePipeline, run_reference, table, write_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make test-slow

EVENTS = 60_000


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("chained")
    catalog, events = write_dataset(folder, accounts=80, events=EVENTS, seed=23)
    reference = folder / "reference"
    run_reference(catalog, events, reference)
    return catalog, events, reference


def reached(events: int) -> Callable[[Totals], bool]:
    return lambda totals: totals.events_in >= events


def check_same_as_reference(out: Path, reference: Path, rated: int) -> None:
    assert table(out, USAGE_TOTALS) == table(reference, USAGE_TOTALS)
    assert table(out, "SELECT count(*), count(DISTINCT (account_id, event_id)) FROM rated_usage") == [
        (rated, rated)
    ]


def test_chained_worker_killed_twice_gives_the_same_usage_totals(
    dataset: tuple[Path, Path, Path], fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    catalog, events, reference = dataset
    pipeline = LivePipeline(fresh_broker, tmp_path / "out", keyed_by_account=True)
    try:
        pipeline.publish(catalog, events)
        pipeline.start("chained", "consolidation")
        for share in (0.25, 0.6):
            before = pipeline.wait_until(reached(int(EVENTS * share)))
            pipeline.kill("chained")
            assert before.events_in < EVENTS, "the kill must land before the stream is done"
            pipeline.start("chained")  # same instance id: fences the dead one's open transaction
        totals = pipeline.wait_drained()
    finally:
        pipeline.stop()
    assert totals.events_in == EVENTS
    assert totals.events_in == totals.rated + totals.duplicates + totals.rejected_total
    check_same_as_reference(tmp_path / "out", reference, totals.rated)


def test_a_second_chained_worker_joins_then_one_is_killed(
    dataset: tuple[Path, Path, Path], fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    catalog, events, reference = dataset
    first = LivePipeline(fresh_broker, tmp_path / "out", keyed_by_account=True)
    second = LivePipeline(fresh_broker, tmp_path / "out2", keyed_by_account=True)
    second.settings = first.settings.with_overrides(instance_id="crash-test-b")
    second.workers.settings = second.settings
    try:
        first.publish(catalog, events)
        first.start("chained", "consolidation")
        first.wait_until(lambda t: t.events_in >= EVENTS * 0.2)
        second.start("chained")  # a rebalance: partitions move to the new member with their state
        first.wait_until(lambda t: t.events_in >= EVENTS * 0.5)
        first.kill("chained", restart_later=False)  # its partitions go back to the second
        totals = first.wait_drained()
    finally:
        second.stop()
        first.stop()
    assert totals.events_in == EVENTS
    check_same_as_reference(tmp_path / "out", reference, totals.rated)
