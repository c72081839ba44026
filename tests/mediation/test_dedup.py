"""Deduplication: the seen-set, and the keyed step's rule that only an accepted copy holds
its key, whatever the copies' months, across batches, aborts and restarts."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import cast

from hypothesis import given, settings
from hypothesis import strategies as st

from mediation.dedup import KEY_BYTES, SeenSet, dedup_key
from mediation.stage import MediationProcessor
from meterline.kernel.catalog import Account, Catalog, Charge, ChargeFilters, Contract, Meter, Plan
from meterline.kernel.config import RawTopic, Settings
from meterline.kernel.messages import TP, BatchResult, InputRecord
from meterline.kernel.topics import MEDIATED, REJECTED
from meterline.runtime.tables import ContractsTable, PeriodsTable
from schemas.codec import decode_usage
from tests.mediation.test_stage import Contracts, Periods

KEYED = "raw.keyed"
TP0: TP = (KEYED, 0)
# api_calls is billed only in region eu: an event from us matches no charge.
PLAN = Plan(
    "p",
    "EUR",
    "half_even",
    (
        Charge(
            "api-eu",
            "api_calls",
            "flat",
            unit_price=Decimal("0.01"),
            filters=ChargeFilters(attributes={"region": frozenset({"eu"})}),
        ),
    ),
)


def catalog() -> Catalog:
    contract = Contract("acme-k", "acme", "p", date(2026, 3, 1), None)
    return Catalog(
        meters={"api_calls": Meter("api_calls", "call", "sum")},
        plans={"p": PLAN},
        accounts={"acme": Account("acme", "ACME", "Europe/Paris", (contract,))},
    )


def processor(periods: Periods | None = None) -> MediationProcessor:
    return MediationProcessor(
        Settings(raw_topics=(RawTopic(KEYED, keyed_by_account=True),)),
        cast(ContractsTable, Contracts(catalog())),
        cast(PeriodsTable, periods or Periods()),
        partitions=3,
    )


def copy(
    event_id: str,
    quantity: int,
    *,
    timestamp: str = "2026-09-20T10:00:00Z",
    meter: str = "api_calls",
    region: str = "eu",
    account: str = "acme",
) -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "account_id": account,
            "meter": meter,
            "quantity": quantity,
            "timestamp": timestamp,
            "attributes": {"region": region},
        }
    ).encode()


class Feed:
    """Batches of one keyed raw partition, committed as the runtime commits them."""

    def __init__(self, stage: MediationProcessor) -> None:
        self.stage = stage
        self.offset = 0
        self.changelog: list[tuple[bytes, bytes | None]] = []
        self.committed: list[BatchResult] = []

    def batch(self, *values: bytes, commit: bool = True) -> BatchResult:
        records = [
            InputRecord(KEYED, 0, self.offset + i, b"acme", value, {}) for i, value in enumerate(values)
        ]
        result = self.stage.process(records)
        if commit:
            self.offset += len(values)
            self.changelog.extend(result.changelog.get(TP0, []))
            self.committed.append(result)
        else:  # aborted: the runtime drops the partition's state and restores it from the changelog
            self.stage.release(TP0)
            self.stage.restore(TP0, iter(list(self.changelog)))
        return result

    def restart(self) -> None:
        """A new worker for the partition (after a crash): state from the changelog only."""
        fresh = MediationProcessor(self.stage.settings, self.stage.contracts, self.stage.periods, 3)
        fresh.restore(TP0, iter(list(self.changelog)))
        self.stage = fresh

    def mediated(self) -> list[tuple[str, Decimal, str]]:
        return [
            (event.event_id, event.quantity, event.period)
            for result in self.committed
            for event in (decode_usage(o.value or b"") for o in result.outputs if o.topic == MEDIATED)
        ]

    def reasons(self) -> list[str]:
        return [
            dict(o.headers or [])["meterline.reason"].decode()
            for result in self.committed
            for o in result.outputs
            if o.topic == REJECTED
        ]

    def counts(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for result in self.committed:
            total.update(result.counts.get(TP0, Counter()))
        return total


# --------------------------------------------------------------------------- the seen-set


def test_a_key_is_held_whatever_the_period_it_was_taken_in() -> None:
    seen = SeenSet()
    a, b, c = (dedup_key("acme", e) for e in ("a", "b", "c"))
    seen.take(a, "2026-09")
    seen.add_block("2026-10", b)  # restored from a changelog block: in the sorted array
    assert seen.held([a, b, c]) == [True, True, False]
    seen.by_period["2026-09"].compact()
    assert seen.held([c, a]) == [False, True]
    assert seen.forget_period("2026-09") == 1
    assert seen.held([a, b]) == [False, True]
    assert SeenSet().held([a]) == [False] and seen.held([]) == []


def test_admit_takes_each_key_nobody_holds_once() -> None:
    seen = SeenSet()
    a, b = dedup_key("acme", "a"), dedup_key("acme", "b")
    assert seen.admit([a, a, b], ["2026-09", "2026-10", "2026-10"]) == [True, False, True]
    assert seen.admit([a, b], ["2026-11", "2026-11"]) == [False, False]  # held in other periods
    assert sorted(seen.by_period) == ["2026-09", "2026-10"] and len(seen) == 2


# --------------------------------------------------------------------------- the keyed step


def test_unknown_meter_then_its_corrected_copy_then_an_exact_copy() -> None:
    # Before issue 15: the rejected copy took the key, so the corrected one was a duplicate.
    feed = Feed(processor())
    corrected = copy("um-1", 7)
    feed.batch(copy("um-1", 7, meter="api_cals"))
    feed.batch(corrected)
    feed.batch(corrected)
    assert feed.reasons() == ["unknown_meter"]
    assert feed.mediated() == [("um-1", Decimal(7), "2026-09")]
    assert feed.counts() == Counter(
        {"events_in": 3, "rejected.unknown_meter": 1, "mediated": 1, "duplicates": 1}
    )


def test_a_copy_stamped_in_another_month_is_a_duplicate() -> None:
    # Before issue 15: keys were looked up in the copy's own month only, so both were billed.
    september, october = copy("xp-1", 3), copy("xp-1", 3, timestamp="2026-10-20T10:00:00Z")
    feed = Feed(processor())
    feed.batch(september)
    feed.batch(october)
    feed.batch(october, september)  # the same, within one batch
    assert feed.mediated() == [("xp-1", Decimal(3), "2026-09")]
    assert feed.counts()["duplicates"] == 3
    feed.restart()  # held keys come back from the changelog, under the period that took them
    feed.batch(october)
    assert feed.counts()["duplicates"] == 4 and len(feed.mediated()) == 1


def test_no_matching_charge_is_decided_in_mediation_and_holds_no_key() -> None:
    feed = Feed(processor())
    feed.batch(copy("nc-1", 5, region="us"), copy("nc-1", 5, region="us"), copy("nc-1", 5))
    feed.batch(copy("nc-1", 5))
    assert feed.reasons() == ["no_matching_charge", "no_matching_charge"]
    [dead] = [o for r in feed.committed for o in r.outputs if o.topic == REJECTED][:1]
    headers = dict(dead.headers or [])
    assert headers["meterline.stage"] == b"mediation"
    assert b"'api_calls'" in headers["meterline.detail"] and b"'p'" in headers["meterline.detail"]
    assert feed.mediated() == [("nc-1", Decimal(5), "2026-09")]
    assert feed.counts()["duplicates"] == 1


def test_enrichment_and_period_rejections_hold_no_key() -> None:
    periods = Periods()
    periods.closed_accounts.add(("2026-08", "acme"))
    feed = Feed(processor(periods))
    feed.batch(
        copy("g-1", 1, account="ghost"),
        copy("c-1", 1, timestamp="2026-02-10T10:00:00Z"),  # before the contract
        copy("p-1", 1, timestamp="2026-08-10T10:00:00Z"),  # its period is final
        copy("c-1", 2),
        copy("p-1", 2),
        copy("g-1", 1, account="ghost"),
    )
    assert feed.reasons() == ["unknown_account", "no_contract_in_effect", "period_closed", "unknown_account"]
    assert [(e, q) for e, q, _ in feed.mediated()] == [("c-1", Decimal(2)), ("p-1", Decimal(2))]
    # Only the accepted copies' keys reach the changelog.
    assert sum(len(value or b"") for _, value in feed.changelog) == 2 * KEY_BYTES


def test_a_held_key_is_a_duplicate_before_enrichment_is_consulted() -> None:
    # Precedence: validation, then deduplication, then enrichment. A bad copy of an accepted
    # event is a duplicate (counted, not dead-lettered).
    feed = Feed(processor())
    feed.batch(copy("d-1", 1), copy("d-1", 1, meter="fax"), copy("d-1", 1, region="us"))
    assert feed.reasons() == [] and feed.counts()["duplicates"] == 2


def test_keys_are_forgotten_once_the_holding_period_is_closed_everywhere() -> None:
    periods = Periods()
    feed = Feed(processor(periods))
    feed.batch(copy("f-1", 1))
    periods.closed_all.add("2026-09")
    feed.stage.idle()
    tombstones = feed.batch(copy("other", 1, timestamp="2026-10-02T10:00:00Z")).changelog[TP0]
    assert [value for _, value in tombstones].count(None) == 1
    # The September invoice is final: a copy re-stamped in October is billed there now.
    feed.batch(copy("f-1", 1, timestamp="2026-10-20T10:00:00Z"))
    assert [e for e, _, p in feed.mediated()] == ["f-1", "other", "f-1"]


def test_an_aborted_batch_leaves_no_key_behind() -> None:
    feed = Feed(processor())
    feed.batch(copy("a-1", 1), copy("a-2", 1), commit=False)
    feed.batch(copy("a-1", 1), copy("a-2", 1))
    assert len(feed.mediated()) == 2 and feed.counts()["duplicates"] == 0


# --------------------------------------------------------------------------- property


@dataclass(frozen=True)
class Copy:
    event: int
    kind: str  # good | meter | charge | contract | ghost
    month: int  # 3..5 (2026), for good copies


KINDS = ("good", "good", "meter", "charge", "contract", "ghost")


def raw_of(item: Copy, sequence: int) -> bytes:
    event_id = f"e{item.event}"
    timestamp = f"2026-{item.month:02d}-15T12:00:00Z"
    if item.kind == "meter":
        return copy(event_id, sequence, timestamp=timestamp, meter="fax")
    if item.kind == "charge":
        return copy(event_id, sequence, timestamp=timestamp, region="us")
    if item.kind == "contract":
        return copy(event_id, sequence, timestamp="2026-02-10T12:00:00Z")
    return copy(event_id, sequence, timestamp=timestamp, account="ghost" if item.kind == "ghost" else "acme")


@settings(max_examples=150, deadline=None)
@given(
    copies=st.lists(
        st.builds(Copy, st.integers(0, 4), st.sampled_from(KINDS), st.integers(3, 5)), min_size=1, max_size=30
    ),
    cuts=st.lists(st.integers(1, 6), min_size=1, max_size=30),
    faults=st.lists(st.sampled_from(["commit", "commit", "abort", "restart"]), min_size=1, max_size=30),
)
def test_the_mediated_set_is_the_first_accepted_copy_per_key(
    copies: list[Copy], cuts: list[int], faults: list[str]
) -> None:
    feed = Feed(processor())
    values = [raw_of(item, sequence) for sequence, item in enumerate(copies)]
    start = turn = 0
    while start < len(values):
        size = cuts[turn % len(cuts)]
        fault = faults[turn % len(faults)]
        turn += 1
        batch = values[start : start + size]
        if fault == "abort":
            feed.batch(*batch, commit=False)  # then replayed, as the runtime does
        elif fault == "restart":
            feed.restart()
        feed.batch(*batch)
        start += size

    accepted: dict[tuple[str, int], int] = {}
    expected_rejected = 0
    for sequence, item in enumerate(copies):
        key = ("ghost" if item.kind == "ghost" else "acme", item.event)
        if key in accepted:
            continue  # a duplicate, good or bad
        if item.kind == "good":
            accepted[key] = sequence
        else:
            expected_rejected += 1
    expected = [
        (f"e{copies[s].event}", Decimal(s), f"2026-{copies[s].month:02d}") for s in sorted(accepted.values())
    ]
    assert feed.mediated() == expected
    assert len(feed.reasons()) == expected_rejected
    counts = feed.counts()
    assert counts["duplicates"] == len(copies) - len(expected) - expected_rejected
    assert counts["events_in"] == len(copies)
    # The changelog holds exactly the accepted copies' keys.
    held = b"".join(value or b"" for _, value in feed.changelog)
    assert sorted(held[i : i + KEY_BYTES] for i in range(0, len(held), KEY_BYTES)) == sorted(
        dedup_key("acme", event_id) for event_id, _, _ in expected
    )
