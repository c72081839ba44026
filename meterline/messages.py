"""A consumed Kafka record and a record to produce, as plain values: what the runtime
hands a stage's `process()` and what `process()` hands back (see meterline.runtime).

Plain classes that mypyc compiles (setup.py): one of each is built per record, and a
compiled constructor costs a fraction of a NamedTuple's, which is interpreted.
"""

from __future__ import annotations

from typing import Final


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
