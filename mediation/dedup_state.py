"""Mediation's dedup state, partition by partition, and its changelog.

Dedup state reaches the changelog as one block per batch, partition and period
(the batch's new keys, concatenated), not one record per key; when a period is
closed for every account its keys are forgotten and its blocks tombstoned.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator

from mediation.dedup import SeenSet
from meterline.kernel.messages import TP, BatchResult

BLOCK = b"B"  # changelog key prefix of a block of dedup keys: B<period>\x1f<last offset>


class DedupState:
    """The held keys of each partition (`seen`), the changelog blocks that hold them by
    period, and the tombstones of forgotten periods' blocks waiting for a batch."""

    def __init__(self) -> None:
        self.seen: dict[TP, SeenSet] = {}
        # Changelog block keys per partition and period, to tombstone them when the period is forgotten.
        self.blocks: dict[TP, dict[str, list[bytes]]] = {}
        self.tombstones: dict[TP, list[bytes]] = {}
        self.forgettable: set[str] = set()
        self.forgettable_known = False  # computed on the first idle, then when a table changes

    def restore(self, tp: TP, entries: Iterator[tuple[bytes, bytes | None]]) -> None:
        seen = self.seen.setdefault(tp, SeenSet())
        blocks = self.blocks.setdefault(tp, {})
        for key, value in entries:
            if not key.startswith(BLOCK):
                continue
            period = key[1:].split(b"\x1f", 1)[0].decode()
            if value is None:  # tombstone of a forgotten period's block
                continue
            seen.add_block(period, value)
            blocks.setdefault(period, []).append(key)

    def release(self, tp: TP) -> None:
        self.seen.pop(tp, None)
        self.blocks.pop(tp, None)
        self.tombstones.pop(tp, None)

    def partition(self, tp: TP) -> SeenSet:
        return self.seen.setdefault(tp, SeenSet())

    def set_forgettable(self, periods: set[str]) -> None:
        self.forgettable = periods
        self.forgettable_known = True

    def forget_closed_periods(self) -> None:
        """Drop the forgettable periods' keys; their blocks wait in `tombstones`."""
        if not self.forgettable:
            return
        for tp, seen in self.seen.items():
            for period in self.forgettable.intersection(seen.by_period):
                seen.forget_period(period)
                self.tombstones.setdefault(tp, []).extend(self.blocks.get(tp, {}).pop(period, []))

    def add_blocks(
        self, tp: TP, new_keys: dict[str, list[bytes]], last_offset: int, result: BatchResult
    ) -> None:
        """One changelog block per period of the keys a batch of `tp` took."""
        last = str(last_offset).encode()
        blocks = self.blocks.setdefault(tp, {})
        changelog = result.changelog.setdefault(tp, [])
        for period, block in new_keys.items():
            block_key = BLOCK + period.encode() + b"\x1f" + last
            changelog.append((block_key, b"".join(block)))
            blocks.setdefault(period, []).append(block_key)

    def add_tombstones(self, result: BatchResult) -> None:
        """The waiting tombstones of the partitions `result` holds a batch of."""
        for tp, keys in self.tombstones.items():
            if tp in result.counts:  # a changelog record needs a batch of this partition to ride on
                result.changelog.setdefault(tp, []).extend((key, None) for key in keys)
                keys.clear()

    def entries(self) -> int:
        return sum(len(s) for s in self.seen.values())


def closed_everywhere(
    closed_all: Iterable[str], closed_accounts: Iterable[tuple[str, str]], accounts: Collection[str]
) -> set[str]:
    """Periods closed for every account (closed for all, or for each of `accounts` one by
    one): their invoices can no longer change."""
    closed = set(closed_all)
    everyone = set(accounts)
    per_period: dict[str, set[str]] = {}
    for period, account in closed_accounts:
        per_period.setdefault(period, set()).add(account)
    closed.update(p for p, done in per_period.items() if everyone and everyone <= done)
    return closed
