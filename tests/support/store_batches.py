"""Batches into a BillingStore without Kafka, for tests of the store and of closing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal

import pyarrow as pa

from consolidation.checkpoint import store_batch
from consolidation.store import BillingStore, Position

Key = tuple[str, str, str, str, str]  # account, period, charge, meter, contract


def apply_batch(
    store: BillingStore,
    topic: str,
    positions: Mapping[int, Position],
    totals: Sequence[tuple[Key, Decimal, Decimal, int]],
    rows: Iterable[pa.Table] = (),
) -> None:
    """Store a batch's totals (key, aggregate after, amount, events) as of the positions'
    first partition, with its rated rows."""
    partition = min(positions, default=0)
    through = positions[partition].next_offset - 1 if positions else 0
    deltas = [(key, agg, amount, n, partition, through) for key, agg, amount, n in totals]
    store_batch(store, topic, rows, deltas, positions)
