"""mediation.dedup_state: a batch's new keys reach the changelog as one block per period,
a restore rebuilds the held keys from those blocks, and a period closed for every account
is forgotten, its blocks tombstoned on the next batch of their partition."""

from __future__ import annotations

from collections import Counter

from mediation.dedup import dedup_key
from mediation.dedup_state import BLOCK, DedupState, closed_everywhere
from meterline.kernel.messages import TP, BatchResult

TP0: TP = ("repartition", 0)
TP1: TP = ("repartition", 1)
A, B, C = (dedup_key("acme", f"e-{n}") for n in range(3))


def batch_of(*tps: TP) -> BatchResult:
    return BatchResult(counts={tp: Counter() for tp in tps})


def test_a_batch_writes_one_block_per_period_keyed_by_its_last_offset() -> None:
    state = DedupState()
    result = batch_of(TP0)
    state.add_blocks(TP0, {"2026-09": [A, B], "2026-10": [C]}, 41, result)
    assert result.changelog[TP0] == [
        (BLOCK + b"2026-09\x1f41", A + B),
        (BLOCK + b"2026-10\x1f41", C),
    ]


def test_restore_holds_the_keys_of_blocks_and_skips_tombstones_and_other_keys() -> None:
    state = DedupState()
    entries = [
        (BLOCK + b"2026-09\x1f41", A + B),
        (BLOCK + b"2026-08\x1f12", None),  # a forgotten period's block
        (b"other", b"ignored"),
    ]
    state.restore(TP0, iter(entries))
    assert state.partition(TP0).held([A, B, C]) == [True, True, False]
    assert set(state.blocks[TP0]) == {"2026-09"}
    assert state.entries() == 2


def test_a_forgotten_period_is_tombstoned_on_the_next_batch_of_its_partition() -> None:
    state = DedupState()
    state.restore(TP0, iter([(BLOCK + b"2026-09\x1f41", A), (BLOCK + b"2026-10\x1f50", B)]))
    state.set_forgettable({"2026-09"})
    state.forget_closed_periods()
    assert state.partition(TP0).held([A, B]) == [False, True]

    other = batch_of(TP1)
    state.add_tombstones(other)
    assert other.changelog == {}  # no batch of TP0 to ride on: the tombstone waits

    own = batch_of(TP0)
    state.add_tombstones(own)
    assert own.changelog[TP0] == [(BLOCK + b"2026-09\x1f41", None)]
    again = batch_of(TP0)
    state.add_tombstones(again)
    assert not again.changelog.get(TP0)  # sent once


def test_release_drops_a_partitions_keys_blocks_and_tombstones() -> None:
    state = DedupState()
    state.restore(TP0, iter([(BLOCK + b"2026-09\x1f41", A)]))
    state.set_forgettable({"2026-09"})
    state.forget_closed_periods()
    state.release(TP0)
    assert (state.seen, state.blocks, state.tombstones) == ({}, {}, {})


def test_a_period_is_closed_everywhere_when_closed_for_all_or_for_each_account() -> None:
    per_account = [("2026-09", "acme"), ("2026-09", "globex"), ("2026-10", "acme")]
    assert closed_everywhere({"2026-08"}, per_account, {"acme", "globex"}) == {"2026-08", "2026-09"}
    # With no accounts in the catalog, only a close for all counts.
    assert closed_everywhere(set(), per_account, set()) == set()
