"""Skipping upstream records that were already applied.

Why: the embedded broker (Tansu 0.6) lets `read_committed` readers see records of
*aborted* transactions (it returns no aborted-transaction list in fetch
responses). After a crash or an abort, the upstream stage replays the same input
deterministically, so a reader can meet two copies of one upstream output: the
aborted one and the committed replay. Every output carries its lineage (source
topic, partition, offset) in a header; a reader keeps, per source partition, the
highest source offset it has applied and skips anything at or below it. On a real
Kafka cluster aborted records never arrive and this guard never fires.
"""

from __future__ import annotations

from collections.abc import Mapping

LINEAGE_HEADER = "ml.src"


def lineage_value(topic: str, partition: int, offset: int) -> bytes:
    return f"{topic}\x1f{partition}\x1f{offset}".encode()


def parse_lineage(value: bytes) -> tuple[str, int]:
    """(source key "topic\\x1fpartition", source offset)."""
    head, _, offset = value.rpartition(b"\x1f")
    return head.decode(), int(offset)


class LineageGuard:
    """Highest applied source offset per source partition, for one input partition."""

    __slots__ = ("applied",)

    def __init__(self, applied: Mapping[str, int] | None = None) -> None:
        self.applied: dict[str, int] = dict(applied or {})

    def admit(self, lineage: bytes | None) -> bool:
        """True if the record is new (and remember it); False for a replayed copy."""
        if lineage is None:
            return True
        source, offset = parse_lineage(lineage)
        if offset <= self.applied.get(source, -1):
            return False
        self.applied[source] = offset
        return True
