"""SIGKILL a real stage process mid-stream; after a restart the results equal an
uninterrupted run exactly (docs/operations.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterline.runtime.broker import EmbeddedBroker
from tests.integration.harness import USAGE_TOTALS, LivePipeline, run_reference, table, write_dataset

pytestmark = pytest.mark.integration

EVENTS = 50_000


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("crash")
    catalog, events = write_dataset(folder, accounts=60, events=EVENTS, seed=11)
    reference = folder / "reference"
    run_reference(catalog, events, reference)
    return catalog, events, reference


@pytest.mark.slow  # make test-slow; kept out of make test's 10 minutes
def test_rating_killed_halfway_gives_the_same_usage_totals(
    dataset: tuple[Path, Path, Path], fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    catalog, events, reference = dataset
    pipeline = LivePipeline(fresh_broker, tmp_path / "out")
    try:
        pipeline.publish(catalog, events)
        pipeline.start("mediation", "rating", "consolidation")
        before = pipeline.wait_until(lambda t: t.rated >= EVENTS // 3)
        pipeline.kill("rating")
        assert before.rated < EVENTS * 0.9, "the kill must land before the stream is done"
        pipeline.start("rating")  # same instance id: fences the dead one's open transaction
        totals = pipeline.wait_drained()
    finally:
        pipeline.stop()
    assert totals.events_in == EVENTS
    assert totals.events_in == totals.rated + totals.duplicates + totals.rejected_total
    assert table(tmp_path / "out", USAGE_TOTALS) == table(reference, USAGE_TOTALS)
    # Every rated event reached the sink exactly once.
    assert table(
        tmp_path / "out", "SELECT count(*), count(DISTINCT (account_id, event_id)) FROM rated_usage"
    ) == [(totals.rated, totals.rated)]
