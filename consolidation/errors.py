"""The consolidation worker's fatal errors: it stops, /healthz and one log line say why.

They are meterline.kafka_errors.FatalKafkaError, which the worker turns into exit code 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from meterline.kafka_errors import FatalKafkaError, OffsetsPastEndError


class FatalStageError(FatalKafkaError):
    """The stage cannot go on without losing or skipping data (unauthorized, a topic gone,
    a DLQ record refused for good, stored offsets past a recreated topic's end)."""


class StoredOffsetsPastEndError(FatalStageError, OffsetsPastEndError):
    """Offsets stored in the billing store lie past the end of their partitions."""

    @staticmethod
    def of(topic: str, past: Mapping[int, tuple[int, int]], out: Path) -> StoredOffsetsPastEndError:
        where = ", ".join(f"{topic}[{p}] stored offset {o}, end {e}" for p, (o, e) in sorted(past.items()))
        return StoredOffsetsPastEndError(
            f"stored positions lie past the end of their partitions ({where}): the topic was "
            "recreated or lost its data (a broker without persistent storage restarted?). Restore "
            f"the broker's data, or move {out} away to consolidate the new topic from its start; "
            "nothing is skipped"
        )
