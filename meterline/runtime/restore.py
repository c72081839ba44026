"""The assigned partitions' state, rebuilt from the stage's changelog topic.

Changelog records carry the input offset their batch ended at (`ml.through`); on
restore, records of batches at or past the committed offset are ignored, because
they belong to aborted transactions (which the embedded broker does not filter out).
The runtime's own bookkeeping per partition (lineage guard, outcome counts) travels
in the same changelog under META_KEY, and its counts also go to the stats topic.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from meterline.kernel.config import Settings
from meterline.kernel.lineage import LineageGuard
from meterline.kernel.topics import changelog_topic
from meterline.runtime import metrics
from meterline.runtime.health import HEALTH
from meterline.runtime.kafka_config import consumer_config

TP = tuple[str, int]
META_KEY = b"\x00meta"
THROUGH_HEADER = "ml.through"

# Entries of one partition, handed to the stage in chunks (restore is additive).
Sink = Callable[[TP, Iterator[tuple[bytes, bytes | None]]], None]
# A record to produce: topic, value, key, partition, headers.
Record = tuple[str, bytes, bytes, int, list[tuple[str, bytes]] | None]


@dataclass(slots=True)
class PartitionMeta:
    guard: LineageGuard = field(default_factory=LineageGuard)
    counts: Counter[str] = field(default_factory=Counter)


class Partitions:
    """What the runtime keeps per assigned input partition, and the stage's state restore."""

    def __init__(
        self,
        settings: Settings,
        stage: str,
        restore: Sink,
        release: Callable[[TP], None],
        after_restore: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.stats_topic = settings.topics.stats
        self.stage = stage
        self.meta: dict[TP, PartitionMeta] = {}
        self._restore = restore
        self._release = release
        self._after_restore = after_restore
        self._log = structlog.get_logger().bind(stage=stage)

    def restore(self, committed: Mapping[TP, int]) -> None:
        """Rebuild the state of partitions from their changelogs, as of their committed offsets."""
        started = time.perf_counter()
        by_topic: dict[str, list[TP]] = {}
        for tp in committed:
            self._release(tp)
            self.meta[tp] = PartitionMeta()
            by_topic.setdefault(tp[0], []).append(tp)
        for topic, members in by_topic.items():
            metas = read_changelog(self.settings, self.stage, topic, members, committed, self._restore)
            for tp, state in metas.items():
                self.meta[tp] = PartitionMeta(LineageGuard(state["lineage"]), Counter(state["counts"]))
        elapsed = time.perf_counter() - started
        metrics.RESTORE_SECONDS.labels(self.stage).observe(elapsed)
        self._log.info("state_restored", partitions=len(committed), seconds=round(elapsed, 3))
        self._after_restore()

    def release(self, tp: TP) -> None:
        self._release(tp)
        self.meta.pop(tp, None)

    def meta_records(self, tp: TP, through: int) -> list[Record]:
        """The partition's bookkeeping as of input offset `through`: changelog and stats records."""
        meta = self.meta.get(tp)
        if meta is None:
            return []
        header = [(THROUGH_HEADER, str(through).encode())]
        state = {"lineage": meta.guard.applied, "counts": dict(meta.counts)}
        progress = {
            "stage": self.stage,
            "topic": tp[0],
            "partition": tp[1],
            "through": through,
            "counts": dict(meta.counts),
        }
        return [
            (changelog_topic(tp[0], self.stage), orjson.dumps(state), META_KEY, tp[1], header),
            (self.stats_topic, orjson.dumps(progress), f"{self.stage}/{tp[0]}/{tp[1]}".encode(), 0, None),
        ]


def read_changelog(
    settings: Settings,
    stage: str,
    input_topic: str,
    tps: list[TP],
    committed: Mapping[TP, int],
    restore: Sink,
) -> dict[TP, Any]:
    """Read the changelog partitions of `tps` to their end; returns each partition's meta state.

    One reader reads all the partitions; entries reach `restore` in chunks, so millions
    of keys never sit in one list.
    """
    s = settings
    reader = Consumer(
        consumer_config(
            s.bootstrap_servers,
            s.kafka,
            s.topics.group(f"meterline-{stage}-restore"),
            **{"enable.partition.eof": True},
        )
    )
    topic = changelog_topic(input_topic, stage)
    pending = {tp[1] for tp in tps}
    metas: dict[TP, Any] = {}
    try:
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in pending])
        while pending:
            chunk: dict[int, list[tuple[bytes, bytes | None]]] = {}
            for message in reader.consume(50000, 0.1):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(message.partition())
                        continue
                    raise KafkaException(error)
                partition = message.partition()
                headers = message.headers()
                through = int(dict(headers)[THROUGH_HEADER]) if headers else -1
                # Only batches that ended below the committed offset were committed.
                if through < 0 or through >= committed[(input_topic, partition)]:
                    continue
                key = message.key()
                if key == META_KEY:
                    metas[(input_topic, partition)] = orjson.loads(message.value())
                else:
                    chunk.setdefault(partition, []).append((key, message.value()))
            for partition, entries in chunk.items():
                restore((input_topic, partition), iter(entries))
            HEALTH.beat()
    finally:
        reader.close()
    return metas
