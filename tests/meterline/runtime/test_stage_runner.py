"""The exactly-once runtime against the real embedded broker.

A small real transform (a per-key running count with a changelog) is driven by
StageRunner. The tests plant what a crashed or aborted transaction leaves on
Tansu, which shows aborted records to read_committed readers, and check that
restore and the lineage guard ignore it.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import cast

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client import REGISTRY

from meterline.kernel.config import Settings
from meterline.kernel.dlq import dead_letter_headers
from meterline.kernel.lineage import LINEAGE_HEADER, lineage_value
from meterline.kernel.messages import TP, BatchResult, InputRecord, OutputRecord
from meterline.kernel.topics import LOG, REJECTED, STATS, changelog_topic
from meterline.runtime.broker import EmbeddedBroker, free_port
from meterline.runtime.health import HEALTH
from meterline.runtime.kafka_errors import FatalKafkaError, OffsetsPastEndError
from meterline.runtime.metrics import serve_metrics
from meterline.runtime.stage_runner import StageRunner
from meterline.runtime.topic_admin import ensure_topics

pytestmark = pytest.mark.integration

IN, OUT = "test.counts.in", "test.counts.out"


class RunningCount:
    """Counts records per key; emits the running count for each record."""

    stage = "counter"

    def __init__(self) -> None:
        self.counts: dict[TP, Counter[bytes]] = {}

    def restore(self, tp: TP, entries: Iterator[tuple[bytes, bytes | None]]) -> None:
        state = self.counts.setdefault(tp, Counter())
        for key, value in entries:
            state[key] = int(value or b"0")

    def release(self, tp: TP) -> None:
        self.counts.pop(tp, None)

    def idle(self) -> None:
        return None

    def state_entries(self) -> int:
        return sum(len(counts) for counts in self.counts.values())

    def process(self, records: Sequence[InputRecord]) -> BatchResult:
        result = BatchResult()
        for record in records:
            tp = (record.topic, record.partition)
            state = self.counts.setdefault(tp, Counter())
            key = record.key or b""
            state[key] += 1
            result.outputs.append(OutputRecord(OUT, str(state[key]).encode(), key, record.partition))
            result.changelog.setdefault(tp, []).append((key, str(state[key]).encode()))
            result.counts.setdefault(tp, Counter())["seen"] += 1
        return result


def run_until(broker: EmbeddedBroker, processor: RunningCount, expected_seen: int) -> dict[bytes, int]:
    """Run the stage until `expected_seen` outputs are committed (one per record, in the same
    transactions as the offsets); the counts then."""
    settings = Settings(bootstrap_servers=broker.bootstrap_servers, instance_id="t", batch_size=50)
    runner = StageRunner(processor, settings, [IN])
    done = threading.Event()
    thread = threading.Thread(target=runner.run, kwargs={"should_stop": lambda: done.is_set()})
    thread.start()
    try:
        wait(lambda: len(read_all(broker, OUT)) >= expected_seen, 60, f"{expected_seen} committed outputs")
        return dict(processor.counts[(IN, 0)])
    finally:
        done.set()
        thread.join(30)


def read_all(broker: EmbeddedBroker, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap_servers,
            "group.id": "reader",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    found: list[tuple[bytes | None, bytes | None]] = []
    while True:
        message = consumer.poll(5)
        assert message is not None, "no end of partition"
        error = message.error()
        if error is not None and error.code() == KafkaError._PARTITION_EOF:
            break
        found.append((message.key(), message.value()))
    consumer.close()
    return found


def test_restore_ignores_aborted_changelog_and_guard_skips_replays(fresh_broker: EmbeddedBroker) -> None:
    admin = AdminClient({"bootstrap.servers": fresh_broker.bootstrap_servers})
    ensure_topics(
        admin, {IN: (1, LOG), OUT: (1, LOG), STATS: (1, LOG), changelog_topic(IN, "counter"): (1, LOG)}
    )
    producer = Producer({"bootstrap.servers": fresh_broker.bootstrap_servers})
    for i in range(30):
        producer.produce(
            IN, key=b"k", value=b"x", partition=0, headers=[(LINEAGE_HEADER, lineage_value("up", 0, i))]
        )
    producer.flush()

    assert run_until(fresh_broker, RunningCount(), 30) == {b"k": 30}

    # What a crashed or aborted transaction leaves behind on Tansu, visible to read_committed readers:
    # a changelog value from a batch past the committed offset, and a replayed upstream copy.
    zombie = Producer({"bootstrap.servers": fresh_broker.bootstrap_servers, "transactional.id": "zombie"})
    zombie.init_transactions()
    zombie.begin_transaction()
    zombie.produce(
        changelog_topic(IN, "counter"), key=b"k", value=b"999", partition=0, headers=[("ml.through", b"1000")]
    )
    zombie.produce(
        IN, key=b"k", value=b"x", partition=0, headers=[(LINEAGE_HEADER, lineage_value("up", 0, 29))]
    )
    zombie.flush()
    zombie.abort_transaction()
    producer.produce(
        IN, key=b"k", value=b"x", partition=0, headers=[(LINEAGE_HEADER, lineage_value("up", 0, 30))]
    )
    producer.flush()

    # Restored 30 (not the aborted 999), skipped the replayed copy of upstream offset 29, counted offset 30.
    assert run_until(fresh_broker, RunningCount(), 31) == {b"k": 31}
    outputs = [int(v or b"0") for _, v in read_all(fresh_broker, OUT)]
    assert outputs == list(range(1, 32))


# -- failures: isolation, fatal errors, offsets past the end --------------------------------------

HUGE = 999_000  # fits the producer's 1,000,000-byte limit alone, not with DLQ headers around it


class HugeCopies(RunningCount):
    """Like a stage that rejects a huge record with a DLQ copy of it (the original bytes plus
    headers): a copy larger than the producer's limit, so the transaction cannot commit."""

    def process(self, records: Sequence[InputRecord]) -> BatchResult:
        small = [r for r in records if len(r.value or b"") < HUGE]
        result = super().process(small)
        for record in records:
            if len(record.value or b"") >= HUGE:
                headers = dead_letter_headers(
                    "too_large", "x" * 1000, self.stage, record.topic, record.partition, record.offset
                )
                result.outputs.append(OutputRecord(REJECTED, record.value, record.key, headers=headers))
                tp = (record.topic, record.partition)
                result.counts.setdefault(tp, Counter())["rejected.too_large"] += 1
        return result


class Explodes(RunningCount):
    """A stage with a bug on one record: process() raises for any batch that holds it."""

    def process(self, records: Sequence[InputRecord]) -> BatchResult:
        if any(r.value == b"boom" for r in records):
            raise ZeroDivisionError("a stage bug")
        return super().process(records)


class BadOutput(RunningCount):
    """A stage with a bug on one record: it emits a value the Kafka client refuses (not bytes)."""

    def process(self, records: Sequence[InputRecord]) -> BatchResult:
        result = super().process([r for r in records if r.value != b"int"])
        if any(r.value == b"int" for r in records):
            result.outputs.append(OutputRecord(OUT, cast(bytes, 42)))
        return result


class HealthWatch:
    """Reads /healthz over HTTP every 20 ms from a thread; keeps each distinct answer."""

    def __init__(self) -> None:
        self.server = serve_metrics(free_port())
        assert self.server is not None
        self.port = self.server.server_address[1]
        self.seen: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def status(self) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as answer:
                return answer.status, answer.read().decode().strip()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode().strip()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            answer = self.status()
            if not self.seen or self.seen[-1] != answer:
                self.seen.append(answer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()


def dead_letters(broker: EmbeddedBroker) -> list[dict[str, bytes]]:
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap_servers,
            "group.id": "dlq-reader",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(REJECTED, 0, OFFSET_BEGINNING)])
    found = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        message = consumer.poll(1)
        if message is None:
            continue
        if message.error() is not None:
            break
        found.append(dict(message.headers() or []))
    consumer.close()
    return found


def make_topics(broker: EmbeddedBroker) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
    ensure_topics(
        admin,
        {
            IN: (1, LOG),
            OUT: (1, LOG),
            STATS: (1, LOG),
            REJECTED: (1, LOG),
            changelog_topic(IN, "counter"): (1, LOG),
        },
    )


def run_in_thread(runner: StageRunner) -> tuple[threading.Thread, threading.Event, list[BaseException]]:
    done = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            runner.run(should_stop=done.is_set)
        except BaseException as exc:  # the test asserts on it
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, done, errors


def wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("processor", [HugeCopies, Explodes, BadOutput])
def test_a_batch_that_cannot_commit_is_isolated_to_one_dead_letter(
    fresh_broker: EmbeddedBroker, processor: type[RunningCount]
) -> None:
    """Reproduced on c9cf9a2: a DLQ copy larger than the producer limit aborted, restored and
    retried the same batch forever while /healthz stayed green."""
    make_topics(fresh_broker)
    bad = {HugeCopies: b"x" * HUGE, Explodes: b"boom", BadOutput: b"int"}[processor]
    producer = Producer({"bootstrap.servers": fresh_broker.bootstrap_servers})
    values = [b"v"] * 10 + [bad] + [b"v"] * 10
    for value in values:
        producer.produce(IN, key=b"k", value=value, partition=0)
    assert producer.flush(10) == 0
    stage = processor()
    settings = Settings(bootstrap_servers=fresh_broker.bootstrap_servers, instance_id="t")
    runner = StageRunner(stage, settings, [IN])
    watch = HealthWatch()
    thread, done, errors = run_in_thread(runner)
    try:
        # Wait on what was committed: the stage's in-memory counts run ahead of a transaction
        # that may still abort, and the embedded broker shows aborted outputs to readers. The
        # group's committed offset moves in the transaction of the batch: 21 = every record.
        group = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "meterline-counter"})
        try:
            wait(lambda: group.committed([TopicPartition(IN, 0)], timeout=10)[0].offset >= len(values), 180,
                 "every record committed")  # fmt: skip
        finally:
            group.close()
        wait(lambda: watch.seen[-1][0] == 200, 20, "a healthy stage")
        # The partition's state as restored or kept (a rebalance on a loaded machine drops it
        # until the partition is assigned again).
        wait(lambda: (IN, 0) in stage.counts, 60, "the partition's state")
        counts = dict(stage.counts[(IN, 0)])
    finally:
        done.set()
        thread.join(30)
        watch.close()
    assert not errors
    assert counts == {b"k": 20}
    outputs = [int(v or b"0") for _, v in read_all(fresh_broker, OUT)]
    # The embedded broker hands aborted transactions to read_committed readers as well (see
    # meterline.kernel.lineage), so the outputs of the aborted whole-batch attempts may come first;
    # the committed run is the last twenty, and nothing else was written.
    assert outputs[-20:] == list(range(1, 21))
    assert all(1 <= value <= 20 for value in outputs[:-20])
    letters = dead_letters(fresh_broker)
    internal = [h for h in letters if h["meterline.reason"] == b"internal_error"]
    assert len(internal) == 1
    assert internal[0]["meterline.source.offset"] == b"10"
    assert internal[0]["meterline.stage"] == b"counter"
    cause = {
        HugeCopies: b"MSG_SIZE_TOO_LARGE",
        Explodes: b"ZeroDivisionError: a stage bug",
        BadOutput: b"TypeError",
    }[processor]
    assert cause in internal[0]["meterline.detail"]
    if processor is HugeCopies:
        # Repeated aborts made /healthz say so before the record was isolated.
        assert any(status == 503 and "aborted" in body for status, body in watch.seen), watch.seen
    assert watch.seen[-1] == (200, "ok")


def test_offsets_past_the_end_stop_the_stage(fresh_broker: EmbeddedBroker) -> None:
    """A topic recreated under a stored position (a broker restarted with memory storage) stops
    the stage with a fatal error on /healthz, rather than waiting there and skipping silently."""
    make_topics(fresh_broker)
    group = Consumer({"bootstrap.servers": fresh_broker.bootstrap_servers, "group.id": "meterline-counter"})
    group.commit(offsets=[TopicPartition(IN, 0, 51)], asynchronous=False)
    group.close()
    producer = Producer({"bootstrap.servers": fresh_broker.bootstrap_servers})
    for _ in range(5):
        producer.produce(IN, key=b"k", value=b"v", partition=0)
    assert producer.flush(10) == 0
    runner = StageRunner(RunningCount(), Settings(bootstrap_servers=fresh_broker.bootstrap_servers), [IN])
    thread, done, errors = run_in_thread(runner)
    thread.join(60)
    done.set()
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], OffsetsPastEndError), errors
    assert "test.counts.in[0] at 51 (end 5)" in str(errors[0])
    healthy, reason = HEALTH.status()
    assert not healthy and reason.startswith("fatal: stored positions lie beyond")


def test_a_producer_fenced_twice_stops_the_stage(fresh_broker: EmbeddedBroker) -> None:
    """Fencing is fatal for the fenced producer: it is replaced once (a transaction that outlived
    its timeout), and a second fencing stops the stage instead of fencing back and forth."""
    make_topics(fresh_broker)
    bootstrap = fresh_broker.bootstrap_servers
    stage = RunningCount()
    runner = StageRunner(stage, Settings(bootstrap_servers=bootstrap, instance_id="t"), [IN])
    thread, done, errors = run_in_thread(runner)
    producer = Producer({"bootstrap.servers": bootstrap})

    def send(count: int) -> None:
        for _ in range(count):
            producer.produce(IN, key=b"k", value=b"v", partition=0)
        assert producer.flush(10) == 0

    group = Consumer({"bootstrap.servers": bootstrap, "group.id": "meterline-counter"})

    def committed() -> int:
        offset: int = group.committed([TopicPartition(IN, 0)], timeout=10)[0].offset
        return offset

    try:
        send(3)
        wait(lambda: committed() >= 3, 180, "the first records")
        for round in range(2):
            twin = Producer({"bootstrap.servers": bootstrap, "transactional.id": "meterline-counter-t"})
            twin.init_transactions(30)  # fences the stage's producer
            send(2)
            if round == 0:
                wait(lambda: committed() >= 5, 180, "the records after a replaced producer")
        thread.join(60)
    finally:
        done.set()
        thread.join(30)
        group.close()
    assert len(errors) == 1 and isinstance(errors[0], FatalKafkaError), errors
    assert "fenced again" in str(errors[0])
    assert HEALTH.status()[1].startswith("fatal: producer meterline-counter-t fenced again")
    assert [int(v or b"0") for _, v in read_all(fresh_broker, OUT)] == list(range(1, 6))


def test_a_committed_batch_s_counts_become_the_stage_s_metrics() -> None:
    """Stages only count outcomes; the runtime turns a committed batch's counts into metrics."""

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"stage": "counter", **labels}) or 0.0

    names = {
        "rejected": ("meterline_events_rejected_total", {"reason": "internal_error"}),
        "internal": ("meterline_internal_errors_total", {}),
        "duplicates": ("meterline_events_deduplicated_total", {}),
        "truncated": ("meterline_dlq_truncated_total", {}),
    }
    before = {key: sample(name, **labels) for key, (name, labels) in names.items()}
    runner = StageRunner(RunningCount(), Settings(bootstrap_servers="127.0.0.1:9"), [IN])
    counts = Counter({"rejected.internal_error": 2, "duplicates": 3, "dlq_truncated": 1, "events_in": 9})
    runner._observe(BatchResult(counts={(IN, 0): counts}))
    after = {key: sample(name, **labels) for key, (name, labels) in names.items()}
    assert {key: after[key] - before[key] for key in names} == {
        "rejected": 2, "internal": 2, "duplicates": 3, "truncated": 1,
    }  # fmt: skip
