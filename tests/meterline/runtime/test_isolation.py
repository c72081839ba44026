"""Isolation bookkeeping: replay, then halves, then one record to the DLQ (no Kafka)."""

from __future__ import annotations

from meterline.runtime.isolation import DEAD_LETTER, REPLAY, SPLIT, Isolation

TP = ("in", 0)


def test_replays_then_halves_then_dead_letters() -> None:
    isolation = Isolation(batch_size=100, max_aborts=3)
    ends = {TP: 64}
    assert isolation.failed(64, ends, split=False, broker_reachable=True) == REPLAY
    assert isolation.failed(64, ends, split=False, broker_reachable=True) == REPLAY
    assert isolation.backoff_s() == 0.2
    assert isolation.failed(64, ends, split=False, broker_reachable=True) == SPLIT
    assert isolation.limit == 32
    # The first half commits; the limit stays while the failing batch is not through.
    assert not isolation.committed({TP: 32}, {TP})
    assert isolation.limit == 32 and isolation.failures == 0
    # Every further failure halves at once, down to one record, which is dead-lettered.
    sizes = []
    for records in (32, 16, 8, 4, 2):
        assert isolation.failed(records, ends, split=False, broker_reachable=True) == SPLIT
        sizes.append(isolation.limit)
    assert sizes == [16, 8, 4, 2, 1]
    assert isolation.failed(1, ends, split=False, broker_reachable=True) == DEAD_LETTER
    isolation.dead_lettered()
    assert isolation.committed({}, {TP})
    assert isolation.limit == 100 and isolation.failures == 0


def test_an_unreachable_broker_only_replays() -> None:
    isolation = Isolation(batch_size=10, max_aborts=2)
    for _ in range(20):
        assert isolation.failed(10, {TP: 10}, split=False, broker_reachable=False) == REPLAY
    assert isolation.backoff_s() == 5.0


def test_a_failed_transform_splits_at_once_and_isolation_ends_past_the_batch() -> None:
    isolation = Isolation(batch_size=10)
    assert isolation.failed(10, {TP: 10, ("in", 1): 5}, split=True, broker_reachable=True) == SPLIT
    assert not isolation.committed({TP: 10}, {TP, ("in", 1)})
    assert isolation.committed({}, {TP})  # partition 1 was revoked: nothing left to isolate
    assert isolation.limit == 10
