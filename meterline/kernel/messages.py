"""A consumed record and a record to produce, as plain values: what the runtime hands
a stage's `process()` and what `process()` hands back, and the stage's side of that
contract (TP, Processor, BatchResult). No Kafka client here: stages are plain code.

Plain classes that mypyc compiles (setup.py): one of each is built per record, and a
compiled constructor costs a fraction of a NamedTuple's, which is interpreted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Final, Protocol

TP = tuple[str, int]


class InputRecord:
    __slots__ = ("headers", "key", "offset", "partition", "topic", "value")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: dict[str, bytes],
    ) -> None:
        self.topic: Final = topic
        self.partition: Final = partition
        self.offset: Final = offset
        self.key: Final = key
        self.value: Final = value
        self.headers: Final = headers


class OutputRecord:
    __slots__ = ("headers", "key", "partition", "topic", "value")

    def __init__(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,  # None: the producer's partitioner chooses
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.topic: Final = topic
        self.value: Final = value
        self.key: Final = key
        self.partition: Final = partition
        self.headers: Final = headers


@dataclass(slots=True)
class BatchResult:
    outputs: list[OutputRecord] = field(default_factory=list)
    # State updates per input partition: (key, value); value None deletes.
    changelog: dict[TP, list[tuple[bytes, bytes | None]]] = field(default_factory=dict)
    # Outcome counts per input partition (events_in, rejected.<reason>, ...).
    counts: dict[TP, Counter[str]] = field(default_factory=dict)
    # Event time of the newest event in the batch, for the event-time lag metric.
    newest_event_time: datetime | None = None
    # Money rated in the batch by currency, for a dashboard (never billed from).
    amounts: dict[str, Decimal] = field(default_factory=dict)


class Processor(Protocol):
    """A stage: a transform with per-partition state, plugged into the runtime."""

    stage: str

    def restore(self, tp: TP, entries: Iterator[tuple[bytes, bytes | None]]) -> None: ...

    def release(self, tp: TP) -> None: ...

    def process(self, records: Sequence[InputRecord]) -> BatchResult: ...

    def idle(self) -> None: ...

    def state_entries(self) -> int: ...
