"""One commit path for every stage: a batch's effects become durable together, or not at all.

A checkpoint makes a batch's effects durable in one transaction, always in these steps:

    1. begin the transaction
    2. outputs: the records (or rows) the batch produced, and its DLQ records
    3. state changes: what the stage must remember (changelog records, running totals)
    4. progress: per input partition, the lineage and counts of what was consumed
    5. the consumed offsets, in the same transaction
    6. commit
    7. on any failure of 1-6: abort; the caller restores its state and replays the batch

Two implementations: a Kafka transaction for the Kafka stages (meterline.runtime.stage_runner),
a billing-store transaction for the consolidator (consolidation.checkpoint). Kafka-free.
"""

from __future__ import annotations

from typing import Protocol

# What an aborted checkpoint leaves to decide on: the error, and whether the other end
# (the broker, the store's catalog) looked unreachable rather than the batch at fault.
Failure = tuple[str, bool]


class Checkpoint(Protocol):
    """The transaction of one batch; `commit_checkpoint` calls the steps in order."""

    # The errors that abort the checkpoint (any other error propagates).
    failures: tuple[type[Exception], ...]

    def begin(self) -> None: ...

    def write_outputs(self) -> None: ...

    def write_state(self) -> None: ...

    def write_progress(self) -> None: ...

    def write_offsets(self) -> None: ...

    def commit(self) -> None: ...

    def abort(self, error: Exception) -> Failure: ...


def commit_checkpoint(checkpoint: Checkpoint) -> Failure | None:
    """None once the batch is committed; else why it was aborted."""
    try:
        checkpoint.begin()  # 1
        checkpoint.write_outputs()  # 2
        checkpoint.write_state()  # 3
        checkpoint.write_progress()  # 4
        checkpoint.write_offsets()  # 5
        checkpoint.commit()  # 6
    except checkpoint.failures as exc:
        return checkpoint.abort(exc)  # 7
    return None
