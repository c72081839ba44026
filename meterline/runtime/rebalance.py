"""A stage's partitions as its consumer group moves them.

On assignment the committed positions are checked (a position the broker does not
have is an error, never a silent reset) and the partitions' state is restored before
any of their records is read; on revocation or loss their state is dropped. After an
aborted batch the runtime rewinds through here too: state restored, positions sought
back to the committed offsets.
"""

from __future__ import annotations

import contextlib
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from meterline.kernel.config import Settings
from meterline.kernel.messages import TP
from meterline.runtime import metrics
from meterline.runtime.offsets import check_positions
from meterline.runtime.restore import Partitions


class Rebalance:
    """The consumer's rebalance callbacks, and the rewind after an aborted batch."""

    def __init__(self, settings: Settings, stage: str, partitions: Partitions, log: Any) -> None:
        self.settings = settings
        self.stage = stage
        self.partitions = partitions
        self.log = log

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self.log.info("partitions_assigned", partitions=[f"{t}[{p}]" for t, p in tps])
        committed = self.committed_offsets(consumer, tps)
        s = self.settings
        # raises OffsetsPastEndError
        check_positions(s.bootstrap_servers, s.kafka, committed, prefix=s.topic_prefix)
        self.partitions.restore(committed)
        consumer.assign(
            [TopicPartition(t, p, o if o >= 0 else OFFSET_BEGINNING) for (t, p), o in committed.items()]
        )

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Transactions never outlive a batch and consume() is only called between
        # batches, so nothing is in flight here: drop the partitions' state.
        for p in partitions:
            tp = (p.topic, p.partition)
            self.partitions.release(tp)
            # Stop reporting lag for partitions this worker no longer owns.
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(self.stage, p.topic, str(p.partition))
        self.log.info("partitions_revoked", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def reload(self, consumer: Consumer, tps: list[TP]) -> None:
        """Restore the partitions' state and rewind them to their committed offsets."""
        committed = self.committed_offsets(consumer, tps)
        self.partitions.restore(committed)
        for (topic, partition), offset in committed.items():
            consumer.seek(TopicPartition(topic, partition, offset if offset >= 0 else OFFSET_BEGINNING))

    def committed_offsets(self, consumer: Consumer, tps: list[TP]) -> dict[TP, int]:
        found = consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=30)
        return {(c.topic, c.partition): c.offset for c in found}
