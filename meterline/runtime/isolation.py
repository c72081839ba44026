"""What the runtime does with a batch that keeps failing: replay, split, dead-letter.

An aborted batch is replayed, with backoff, up to `max_aborts` times in a row while
the broker answers (a broker that does not answer is nobody's record's fault, and
/healthz says so). After that, or at once when the transform itself raised, the
batch is isolated: replayed in halves, each half in its own transaction, halving
again whenever a piece fails, down to one record, which then goes to the DLQ. The
pieces that commit are done; isolation ends once the failing batch's records are
all committed or dead-lettered, and batches are full-sized again.

Pure bookkeeping, no Kafka: the runtime (meterline.runtime.stage_runner) acts on the answers.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Final

from meterline.runtime.health import MAX_CONSECUTIVE_ABORTS

TP = tuple[str, int]

REPLAY: Final = "replay"
SPLIT: Final = "split"
DEAD_LETTER: Final = "dead_letter"


class Isolation:
    def __init__(self, batch_size: int, max_aborts: int = MAX_CONSECUTIVE_ABORTS) -> None:
        self.batch_size = batch_size
        self.max_aborts = max_aborts
        self.limit = batch_size  # the most records the next batch may hold
        self.failures = 0  # failed attempts in a row, 0 after a commit
        self.pending: dict[TP, int] = {}  # end offsets of the batch being isolated

    def failed(
        self, records: int, next_offsets: Mapping[TP, int], split: bool, broker_reachable: bool
    ) -> str:
        """A batch of `records` records failed (and was rewound): REPLAY, SPLIT or DEAD_LETTER it."""
        self.failures += 1
        repeated = self.failures >= self.max_aborts and broker_reachable
        if not (split or self.pending or repeated):
            return REPLAY
        if records <= 1:
            return DEAD_LETTER
        if not self.pending:
            self.pending = dict(next_offsets)
        self.limit = max(1, records // 2)
        return SPLIT

    def backoff_s(self) -> float:
        """How long to wait before a replay."""
        return float(min(0.1 * 2 ** (self.failures - 1), 5.0))

    def committed(self, next_offsets: Mapping[TP, int], assigned: Container[TP]) -> bool:
        """A batch committed up to `next_offsets`; True when that ended an isolation."""
        self.failures = 0
        for tp, end in list(self.pending.items()):
            if next_offsets.get(tp, -1) >= end or tp not in assigned:
                del self.pending[tp]
        if self.pending or self.limit == self.batch_size:
            return False
        self.limit = self.batch_size
        return True

    def dead_lettered(self) -> None:
        """The record that failed alone is in the DLQ: the isolation is over."""
        self.pending.clear()
