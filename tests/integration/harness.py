"""A live pipeline on the real embedded broker for crash tests: real worker
processes that a test can SIGKILL and restart."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consolidation.lake import connect as connect_store
from generator import write_month
from meterline.app.pipeline import Workers
from meterline.app.publish import InputFile, create_topics, produce_inputs, publish_catalog
from meterline.kernel.config import RawTopic, Settings, settings_to_toml
from meterline.runtime.broker import EmbeddedBroker
from meterline.runtime.progress import StatsReader, Totals, drained


def write_dataset(folder: Path, accounts: int, events: int, seed: int) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return write_month(folder, accounts, events, seed)


class LivePipeline:
    def __init__(
        self,
        broker: EmbeddedBroker,
        out: Path,
        partitions: int = 4,
        topic_prefix: str = "",
        keyed_by_account: bool = False,
    ) -> None:
        """`keyed_by_account`: the raw topic is published keyed by account, as `meterline run`
        does, which the chained worker needs."""
        self.settings = Settings(
            bootstrap_servers=broker.bootstrap_servers,
            partitions=partitions,
            instance_id="crash-test",
            topic_prefix=topic_prefix,
            raw_topics=(RawTopic("meterline.raw", keyed_by_account=keyed_by_account),),
        )
        self.out = out
        create_topics(self.settings)
        config = None
        if keyed_by_account:  # the workers learn it from a config file
            out.mkdir(parents=True, exist_ok=True)
            config = out.parent / f"{out.name}-meterline.toml"
            config.write_text(settings_to_toml(self.settings))
        self.workers = Workers(self.settings, out, str(config) if config else None)
        self.keyed = keyed_by_account
        topics = self.settings.topics
        self.reader = StatsReader(
            self.settings.bootstrap_servers, {}, topics.stats, topics.group("meterline-progress")
        )
        self.published = 0

    def publish(self, catalog: Path, events: Path) -> int:
        publish_catalog(self.settings, catalog)
        self.published += produce_inputs(
            self.settings, [InputFile(events, "json")], key_by_account=self.keyed
        )
        return self.published

    def start(self, *stages: str) -> None:
        for stage in stages:
            self.workers.start(stage)

    def kill(self, stage: str, restart_later: bool = True) -> None:
        """SIGKILL a stage's worker; without `restart_later` it is gone for good (not watched)."""
        process = self.workers.processes[stage] if restart_later else self.workers.processes.pop(stage)
        assert process.poll() is None, f"{stage} had already exited with {process.returncode}"
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def totals(self) -> Totals:
        self.reader.poll(0.2)
        return self.reader.totals([self.settings.topics.name(t.name) for t in self.settings.raw_topics])

    def wait_until(self, condition: Callable[[Totals], bool], timeout: float = 300) -> Totals:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            totals = self.totals()
            if condition(totals):
                return totals
            for stage, process in self.workers.processes.items():
                assert process.poll() is None, f"{stage} worker died with {process.returncode}"
        raise AssertionError(f"timed out; last totals {self.totals()}")

    def wait_drained(self, timeout: float = 300) -> Totals:
        return self.wait_until(lambda t: drained(t, self.published), timeout)

    def stop(self) -> None:
        self.workers.stop()
        self.reader.close()


def meterline_run(
    catalog: Path, inputs: str, out: Path, *options: str, partitions: int = 4, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`meterline run` in its own process (its own embedded broker); `inputs` is one `[FORMAT:]FILE`."""
    return subprocess.run(
        [sys.executable, "-m", "meterline", "run", "--catalog", str(catalog), "--input", inputs,
         "--out", str(out), "--partitions", str(partitions), *options],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def run_reference(catalog: Path, events: Path, out: Path) -> None:
    """The same input through `meterline run` with nothing killed."""
    completed = meterline_run(catalog, f"json:{events}", out)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def table(out: Path, sql: str) -> list[tuple[Any, ...]]:
    db = connect_store(out, read_only=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


USAGE_TOTALS = "SELECT * FROM usage_totals ORDER BY ALL"


def read_topic(bootstrap_servers: str, topic: str) -> list[Any]:
    """Every record of a topic as read_committed readers see it (all partitions, to the end)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": "test-reader",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    partitions = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    pending, found = set(partitions), []
    try:
        while pending:
            for message in consumer.consume(10000, 2.0):
                error = message.error()
                if error is None:
                    found.append(message)
                elif error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
    finally:
        consumer.close()
    return found


def after_lineage_guard(messages: list[Any]) -> list[Any]:
    """What a reader applying the lineage guard keeps (drops replayed copies of aborted transactions)."""
    from meterline.kernel.lineage import LINEAGE_HEADER, LineageGuard

    guards: dict[int, LineageGuard] = {}
    kept = []
    for message in messages:
        guard = guards.setdefault(message.partition(), LineageGuard())
        if guard.admit(dict(message.headers() or []).get(LINEAGE_HEADER)):
            kept.append(message)
    return kept
