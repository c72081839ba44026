"""SIGKILL the rating process on the real embedded broker, again and again and
during a rebalance; the results equal an uninterrupted run exactly.

Checked after every scenario:

- `usage_totals` equal those of `meterline run` on the same input (nothing killed);
- the rated topic, read with read_committed and passed through the lineage guard
  (what every reader does, see meterline.kernel.lineage), holds each mediated event once:
  count == distinct (account_id, event_id) == rated total;
- `rated_usage` in the sink holds each rated event once.

Tansu shows records of aborted transactions to read_committed readers; each
scenario prints how many such copies the guard had to drop (run with -rP or -s).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from generator import planned_counts
from meterline.kernel.lineage import LINEAGE_HEADER
from meterline.kernel.topics import RATED
from meterline.runtime.broker import EmbeddedBroker
from meterline.runtime.progress import Totals
from schemas.codec import decode_rated_record
from tests.integration.harness import (
    USAGE_TOTALS,
    LivePipeline,
    after_lineage_guard,
    read_topic,
    run_reference,
    table,
    write_dataset,
)

pytestmark = pytest.mark.integration

SMALL, BIG = 30_000, 100_000
# Delays after a kill point is reached, so the SIGKILLs land at different moments
# of a batch (mid-transform, mid-produce, around the commit).
DELAYS = (0.0, 0.35, 0.05, 0.8, 0.15)

Dataset = tuple[Path, Path, Path, int]


def _dataset(folder: Path, events: int, seed: int) -> Dataset:
    catalog, stream = write_dataset(folder, accounts=60, events=events, seed=seed)
    reference = folder / "reference"
    run_reference(catalog, stream, reference)
    # Every valid generated event is rated (generator.planned_counts).
    return catalog, stream, reference, planned_counts(events)["valid"]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return _dataset(tmp_path_factory.mktemp("rating-small"), SMALL, seed=23)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return _dataset(tmp_path_factory.mktemp("rating-big"), BIG, seed=29)


# -- helpers -------------------------------------------------------------------------


def start_rating(pipeline: LivePipeline, instance_id: str) -> subprocess.Popen[bytes]:
    """Another rating worker of the same group under its own instance (transactional) id.

    Registered with the pipeline's workers, so `wait_until` notices if it dies and
    `stop` terminates it.
    """
    command = pipeline.workers.command("rating")
    command[command.index("--instance-id") + 1] = instance_id
    name = f"rating@{instance_id}"
    log_path = pipeline.out / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as handle:  # the child keeps its own descriptor
        process = subprocess.Popen(
            command,
            stdout=handle,
            stderr=handle,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "METERLINE_PARTITIONS": str(pipeline.settings.partitions)},
        )
    pipeline.workers.processes[name] = process
    return process


def kill(pipeline: LivePipeline, name: str) -> None:
    process = pipeline.workers.processes[name]
    process.kill()  # SIGKILL
    process.wait(10)


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def wait_for_log(pipeline: LivePipeline, path: Path, start: int, needle: bytes, timeout: float = 60) -> None:
    """Wait until `needle` appears in the log after byte `start`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with path.open("rb") as handle:
            handle.seek(start)
            if needle in handle.read():
                return
        for stage, process in pipeline.workers.processes.items():
            assert process.poll() is None, f"{stage} worker died with {process.returncode}"
        time.sleep(0.01)
    raise AssertionError(f"{needle!r} never appeared in {path}")


def split_input(events: Path, folder: Path) -> tuple[Path, Path]:
    """The input file cut in two halves, in order (published one after the other = the whole file)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = events.read_bytes().splitlines(keepends=True)
    head, tail = folder / "head.jsonl", folder / "tail.jsonl"
    head.write_bytes(b"".join(lines[: len(lines) // 2]))
    tail.write_bytes(b"".join(lines[len(lines) // 2 :]))
    return head, tail


@dataclass(frozen=True)
class RatedTopic:
    raw: int  # read_committed records, before the lineage guard
    admitted: int  # after the guard
    distinct: int  # distinct (account_id, event_id) among the admitted

    @property
    def leaked(self) -> int:
        return self.raw - self.admitted


def read_rated(pipeline: LivePipeline) -> RatedTopic:
    """The whole rated topic, read_committed, through the lineage guard."""
    everything = read_topic(pipeline.settings.bootstrap_servers, RATED)
    assert all(LINEAGE_HEADER in dict(m.headers() or []) for m in everything), (
        "every rated record carries its lineage"
    )
    admitted = after_lineage_guard(everything)
    keys = {(r["account_id"], r["event_id"]) for r in (decode_rated_record(m.value()) for m in admitted)}
    return RatedTopic(len(everything), len(admitted), len(keys))


def check_exactly_once(
    pipeline: LivePipeline, out: Path, reference: Path, totals: Totals, events: int, valid: int, label: str
) -> None:
    assert totals.events_in == events
    assert totals.events_in == totals.rated + totals.duplicates + totals.rejected_total
    assert totals.rated == valid, "every valid generated event is rated once"
    rated = read_rated(pipeline)
    print(
        f"{label}: rated topic read_committed {rated.raw} records, {rated.leaked} leaked aborted "
        f"copies dropped by the lineage guard, {rated.admitted} admitted, {rated.distinct} distinct"
    )
    assert rated.admitted == rated.distinct == totals.rated
    assert table(out, USAGE_TOTALS) == table(reference, USAGE_TOTALS)
    assert table(out, "SELECT count(*), count(DISTINCT (account_id, event_id)) FROM rated_usage") == [
        (totals.rated, totals.rated)
    ]


# -- scenarios -----------------------------------------------------------------------


def kill_rating_at(dataset: Dataset, broker: EmbeddedBroker, out: Path, fractions: list[float]) -> None:
    """SIGKILL rating once rated passes each fraction of the valid events; restart it each time."""
    catalog, events, reference, valid = dataset
    pipeline = LivePipeline(broker, out)
    try:
        published = pipeline.publish(catalog, events)
        pipeline.start("mediation", "rating", "consolidation")
        for number, fraction in enumerate(fractions):
            before = pipeline.wait_until(lambda t, f=fraction: t.rated >= valid * f)
            time.sleep(DELAYS[number % len(DELAYS)])
            pipeline.kill("rating")
            assert before.rated < valid, f"kill {number + 1} must land before rating is done"
            pipeline.start("rating")  # same instance id: fences the dead one's open transaction
        totals = pipeline.wait_drained()
    finally:
        pipeline.stop()  # consolidation lets go of billing.duckdb
    check_exactly_once(pipeline, out, reference, totals, published, valid, f"{len(fractions)} kills")


@pytest.mark.slow  # make test-slow; kept out of make test's 10 minutes
def test_rating_killed_twice_gives_the_same_results(
    small: Dataset, fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    kill_rating_at(small, fresh_broker, tmp_path / "out", [0.2, 0.6])


@pytest.mark.slow
def test_rating_killed_at_five_points_of_100k_events_gives_the_same_results(
    big: Dataset, fresh_broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small batches: progress moves in small steps, so each kill lands where it is aimed,
    # however fast the stages are (with 10,000-record batches the last one found rating done).
    monkeypatch.setenv("METERLINE_BATCH_SIZE", "2000")
    kill_rating_at(big, fresh_broker, tmp_path / "out", [0.05, 0.25, 0.45, 0.65, 0.85])


def kill_during_rebalance(
    dataset: Dataset, broker: EmbeddedBroker, out: Path, victim: str, join_at: float
) -> None:
    """A second rating worker joins the group once `join_at` of the events are rated;
    one of the two is SIGKILLed mid-rebalance. The first half of the input is
    published up front and the rest only after the kill, so the kill always lands
    mid-stream however fast rating is compared with a group join (seconds).

    victim "first": the running worker, right after it gave up its partitions.
    victim "second": the joining worker, right after it was assigned partitions
    (while it restores their state from the changelog).
    The killed one is restarted under its instance id, which fences its open
    transaction; both then run until the input is drained.
    """
    catalog, events, reference, valid = dataset
    pipeline = LivePipeline(broker, out)
    first = pipeline.settings.instance_id
    second = f"{first}-b"
    logs = out / "logs"
    try:
        head, tail = split_input(events, out.parent / "input")
        pipeline.publish(catalog, head)
        pipeline.start("mediation", "rating", "consolidation")
        pipeline.wait_until(lambda t: t.rated >= max(valid * join_at, 1))
        first_log = logs / "rating.log"
        mark = log_size(first_log)
        start_rating(pipeline, second)
        if victim == "first":
            wait_for_log(pipeline, first_log, mark, b"partitions_revoked")
            kill(pipeline, "rating")
            before = pipeline.totals()
            pipeline.start("rating")
        else:
            wait_for_log(pipeline, logs / f"rating@{second}.log", 0, b"partitions_assigned")
            kill(pipeline, f"rating@{second}")
            before = pipeline.totals()
            start_rating(pipeline, second)
        assert before.rated < valid, "the kill must land before rating is done"
        published = pipeline.publish(catalog, tail)
        totals = pipeline.wait_drained()
    finally:
        pipeline.stop()  # consolidation lets go of billing.duckdb
    # Both workers took part after the rebalance.
    for path in (first_log, logs / f"rating@{second}.log"):
        assert b"partitions_assigned" in path.read_bytes()
    check_exactly_once(pipeline, out, reference, totals, published, valid, f"rebalance, {victim} killed")


def test_rating_killed_while_a_second_worker_joins_gives_the_same_results(
    small: Dataset, fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    kill_during_rebalance(small, fresh_broker, tmp_path / "out", "first", join_at=0.0)


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["first", "second"])
def test_rating_killed_during_a_rebalance_of_100k_events_gives_the_same_results(
    victim: str, big: Dataset, fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    kill_during_rebalance(big, fresh_broker, tmp_path / "out", victim, join_at=0.1)
