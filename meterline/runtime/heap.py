"""Keeping Python's cyclic garbage collector off the hot path of a stage."""

from __future__ import annotations

import gc


def settle_heap() -> None:
    """Take what exists now (modules, catalog, clients, restored state) out of the collector's sight.

    A stage allocates a few short-lived objects per event; under the default
    thresholds the collector runs every 700 allocations and keeps rescanning the
    long-lived heap (a catalog can hold 100,000 accounts, a rating state as many
    aggregates): about 10% of a stage's CPU. Per-event objects are freed by
    reference counting anyway, so collections are made rarer too. Workers call
    this once started and again after each state restore; what was frozen before is
    thawed and collected first, so state released on a rebalance or an abort is not
    kept forever. A process-wide policy: only worker processes call it.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
