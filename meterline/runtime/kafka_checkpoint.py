"""The Kafka stages' checkpoint: one batch, one Kafka transaction (see meterline.kernel.checkpoint).

1. begin the producer's transaction
2. outputs and DLQ records
3. state changes, into the changelog partition of their input partition
4. per-partition progress: lineage and counts (changelog), counts (stats topic)
5. the consumed offsets, sent to the transaction
6. commit
7. abort on a Kafka error (or replace a fenced producer: meterline.runtime.transaction), or on
   an output the client refuses (a str value, say); the runner restores and rewinds
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable

from confluent_kafka import KafkaException, TopicPartition

from meterline.kernel.checkpoint import Failure
from meterline.kernel.messages import TP, BatchResult
from meterline.kernel.topics import changelog_topic
from meterline.runtime import metrics
from meterline.runtime.kafka_errors import error_of
from meterline.runtime.restore import THROUGH_HEADER, Record
from meterline.runtime.transaction import Transactions


class KafkaCheckpoint:
    failures: tuple[type[Exception], ...] = (KafkaException, TypeError, ValueError)

    def __init__(
        self,
        txn: Transactions,
        stage: str,
        result: BatchResult,
        next_offsets: dict[TP, int],
        owned: Collection[TP],
        meta_records: Callable[[TP, int], Iterable[Record]],
        group_metadata: object,
    ) -> None:
        self.txn = txn
        self.stage = stage
        self.result = result
        self.next_offsets = next_offsets
        self.owned = owned
        self.meta_records = meta_records
        self.group_metadata = group_metadata

    def begin(self) -> None:
        self.txn.producer.begin_transaction()

    def write_outputs(self) -> None:
        txn = self.txn
        produce = txn.producer.produce
        for out in self.result.outputs:
            # txn.produce inlined for the common case (a Python call per record is measurable);
            # it still handles a full local queue.
            try:
                produce(out.topic, out.value, out.key, -1 if out.partition is None else out.partition,
                        headers=out.headers)  # fmt: skip
            except BufferError:
                txn.produce(out.topic, out.value, out.key, out.partition, out.headers)

    def write_state(self) -> None:
        for tp, entries in self.result.changelog.items():
            topic = changelog_topic(tp[0], self.stage)
            through = [(THROUGH_HEADER, str(self.next_offsets[tp] - 1).encode())]
            for key, value in entries:
                self.txn.produce(topic, value, key, tp[1], through)

    def write_progress(self) -> None:
        for tp, offset in self.next_offsets.items():
            for topic, value, key, partition, headers in self.meta_records(tp, offset - 1):
                self.txn.produce(topic, value, key, partition, headers)

    def write_offsets(self) -> None:
        offsets = [TopicPartition(t, p, o) for (t, p), o in self.next_offsets.items() if (t, p) in self.owned]
        self.txn.send_offsets(offsets, self.group_metadata)

    def commit(self) -> None:
        started = time.perf_counter()
        self.txn.commit()
        metrics.COMMIT_SECONDS.labels(self.stage).observe(time.perf_counter() - started)

    def abort(self, error: Exception) -> Failure:
        if isinstance(error, KafkaException):
            return self.txn.abort(error_of(error))
        return self.txn.abort(None, f"{type(error).__name__}: {error}")
