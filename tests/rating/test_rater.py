"""The incremental rater: worked examples from docs/catalog.md and order-independence properties."""

from __future__ import annotations

import copy
import dataclasses
import random
from datetime import UTC, datetime, time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterline.kernel.catalog import Charge, ChargeFilters, EventRounding, LocalTimeWindow, Meter, Plan, Tier
from meterline.kernel.reasons import (
    INTERNAL_ERROR,
    INVALID_QUANTITY,
    MISSING_FIELD,
    NO_MATCHING_CHARGE,
    UNKNOWN_METER,
    Rejected,
)
from meterline.kernel.records import UsageEvent, invoice_id_for
from rating.pricing import price, round_event_quantity
from rating.rater import AggregateKey, RatingState, rate, rate_batch
from tests.strategies import (
    ACCOUNT_ID,
    CONTRACT_ID,
    PERIOD,
    RatingScenario,
    catalog_with,
    rating_scenarios,
    usage_event,
)

D = Decimal


def key(charge_id: str, period: str = PERIOD) -> AggregateKey:
    return (ACCOUNT_ID, CONTRACT_ID, charge_id, period)


# --- worked examples ---------------------------------------------------------------------------

API_CALLS = Meter("api_calls", "call", "sum")
API = Charge(
    "api",
    "api_calls",
    "graduated",
    included=D(1000),
    tiers=(Tier(D(100_000), D("0.001")), Tier(None, D("0.0005"), flat_fee=D(5))),
)


def test_graduated_api_plan_crossing_a_tier_inside_one_event() -> None:
    catalog = catalog_with([API_CALLS], [API])
    state = RatingState()
    calls = [D(60_000), D(50_000), D(500)]
    rated = [rate(state, usage_event(f"e{i}", q, meter="api_calls"), catalog) for i, q in enumerate(calls)]
    # 1st: A 0 -> 60,000, B 0 -> 59,000, all tier 1: 59,000 * 0.001 = 59.
    # 2nd: A -> 110,000, B = 109,000 crosses 100,000 inside the event:
    #      41,000 * 0.001 = 41, then 9,000 * 0.0005 = 4.5, plus tier 2's fee 5 -> 50.5.
    # 3rd: B = 109,500: 500 * 0.0005 = 0.25 (tier 2 already entered, no second fee).
    assert [r.amount for r in rated] == [D(59), D("50.5"), D("0.25")]
    assert [(r.aggregate_before, r.aggregate_after) for r in rated] == [
        (D(0), D(60_000)),
        (D(60_000), D(110_000)),
        (D(110_000), D(110_500)),
    ]
    # 100 + 9,500 * 0.0005 + 5 = 109.75 = 59 + 50.5 + 0.25.
    assert sum(r.amount for r in rated) == price(API, D(110_500)) == D("109.75")
    assert state.aggregates == {key("api"): D(110_500)}
    first = rated[0]
    assert (first.charge_id, first.model, first.quantity) == ("api", "graduated", D(60_000))
    assert first.invoice_id == invoice_id_for(ACCOUNT_ID, PERIOD)
    assert first.event.event_id == "e0"


ACTIVE_USERS = Meter("active_users", "user", "unique_count", value_property="user_id")
SEATS = Charge("seats", "active_users", "volume", tiers=(Tier(D(10), D(8)), Tier(None, D(6))))


def test_volume_seats_crossing_a_tier_give_a_negative_delta() -> None:
    catalog = catalog_with([ACTIVE_USERS], [SEATS])
    state = RatingState()
    users = [f"user-{n}" for n in range(1, 11)] + ["user-11", "user-3", "user-12"]
    events = [usage_event(f"e{i}", 1, meter="active_users", value=u) for i, u in enumerate(users)]
    batch = rate_batch(state, events, catalog)
    amounts = [r.amount for r in batch.rated]
    # Users 1..10: each seat at 8 -> +8 each, 80 in all.
    assert amounts[:10] == [D(8)] * 10
    # User 11 moves all 11 seats to 6: 66 - 80 = -14.
    assert amounts[10] == D(-14)
    # user-3 again: already counted, aggregate stays 11, amount 0.
    assert amounts[11] == 0
    assert batch.rated[11].aggregate_before == batch.rated[11].aggregate_after == D(11)
    # User 12: 72 - 66 = +6. Sum 80 - 14 + 0 + 6 = 72 = 12 * 6.
    assert amounts[12] == D(6)
    assert sum(amounts) == price(SEATS, D(12)) == D(72)
    assert state.aggregates[key("seats")] == D(12)
    assert state.unique_values[key("seats")] == {f"user-{n}" for n in range(1, 13)}
    # The repeat is not a new value, and the changelog gets one entry for the key.
    assert [value for _, value in batch.new_unique_values] == [f"user-{n}" for n in range(1, 13)]
    assert batch.changed == {key("seats")}


SMS_METER = Meter("sms", "message", "count")
SMS = Charge("sms", "sms", "package", included=D(50), package_size=D(100), package_price=D(2))


def test_sms_packages_after_included_messages() -> None:
    catalog = catalog_with([SMS_METER], [SMS])
    state = RatingState()
    # Count meters count events; the quantity field does not matter.
    events = [usage_event(f"sms-{i}", 0, meter="sms") for i in range(151)]
    batch = rate_batch(state, events, catalog)
    charged = {i: r.amount for i, r in enumerate(batch.rated) if r.amount}
    # Messages 1-50 are included. Message 51 (index 50) opens the 1st package of 100 (51-150): +2.
    # Message 151 (index 150) opens the 2nd: +2. Everything else is free.
    assert charged == {50: D(2), 150: D(2)}
    assert all(r.quantity == 1 for r in batch.rated)
    assert state.aggregates[key("sms")] == D(151)
    assert sum(r.amount for r in batch.rated) == price(SMS, D(151)) == D(4)


VOICE = Meter("voice", "minute", "sum", source_unit="second")
PER_STARTED_MINUTE = EventRounding(increment=D(1), minimum=D(1))
VOICE_CHARGES = (
    Charge(
        "voice-uk-peak",
        "voice",
        "flat",
        unit_price=D("0.05"),
        filters=ChargeFilters(
            destination_prefixes=("44",),
            local_time=LocalTimeWindow(frozenset(range(5)), time(8), time(20)),
        ),
        rounding=PER_STARTED_MINUTE,
    ),
    # No time filter: takes every UK call the peak charge (listed first) refused.
    Charge(
        "voice-uk-off-peak",
        "voice",
        "flat",
        unit_price=D("0.02"),
        filters=ChargeFilters(destination_prefixes=("44",)),
        rounding=PER_STARTED_MINUTE,
    ),
    Charge(
        "voice-us-night",
        "voice",
        "flat",
        unit_price=D("0.10"),
        filters=ChargeFilters(
            destination_prefixes=("1",), local_time=LocalTimeWindow(None, time(22), time(6))
        ),
        rounding=PER_STARTED_MINUTE,
    ),
    Charge(
        "voice-intl",
        "voice",
        "flat",
        unit_price=D("0.30"),
        filters=ChargeFilters(destination_prefixes=("1", "33")),
        rounding=PER_STARTED_MINUTE,
    ),
)


def minutes(seconds: int) -> Decimal:
    """billsec converted to minutes on ingest, half-even to 18 places (mediation's job)."""
    return (D(seconds) / 60).quantize(D("1e-18"))


def call(event_id: str, destination: str, utc: datetime, seconds: int) -> UsageEvent:
    return usage_event(
        event_id,
        minutes(seconds),
        meter="voice",
        event_time=utc,
        attributes={"destination": destination, "disposition": "ANSWERED"},
        period="2026-07",
    )


@pytest.mark.parametrize(
    ("destination", "utc", "seconds", "charge_id", "billed_minutes", "amount"),
    [
        # London is on BST (UTC+1) in July; Friday 3 July 2026.
        # 07:15Z = 08:15 BST Fri: peak (it would be off-peak read in UTC). 30 s -> 1 started minute.
        ("447700900123", datetime(2026, 7, 3, 7, 15, tzinfo=UTC), 30, "voice-uk-peak", D(1), D("0.05")),
        # 19:30Z = 20:30 BST: peak ended at 20:00 local. 61 s = 1.016666666666666667 min -> 2 minutes.
        ("447700900123", datetime(2026, 7, 3, 19, 30, tzinfo=UTC), 61, "voice-uk-off-peak", D(2), D("0.04")),
        # 21:30Z = 22:30 BST: US night rate. 90 s -> 2 minutes * 0.10.
        ("12125550100", datetime(2026, 7, 3, 21, 30, tzinfo=UTC), 90, "voice-us-night", D(2), D("0.20")),
        # 04:59Z = 05:59 BST Saturday: still night, the window wrapped past midnight. 59 s -> 1.
        ("12125550100", datetime(2026, 7, 4, 4, 59, tzinfo=UTC), 59, "voice-us-night", D(1), D("0.10")),
        # 05:00Z = 06:00 BST: the night window's end is exclusive -> international rate. 60 s -> 1.
        ("12125550100", datetime(2026, 7, 4, 5, 0, tzinfo=UTC), 60, "voice-intl", D(1), D("0.30")),
        # France at any hour: 600 s = 10 minutes * 0.30.
        ("33142685300", datetime(2026, 7, 3, 22, 0, tzinfo=UTC), 600, "voice-intl", D(10), D("3.00")),
    ],
)
def test_voice_per_started_minute_with_peak_and_destination_filters(
    destination: str, utc: datetime, seconds: int, charge_id: str, billed_minutes: Decimal, amount: Decimal
) -> None:
    catalog = catalog_with([VOICE], VOICE_CHARGES, timezone="Europe/London")
    state = RatingState()
    rated = rate(state, call("c1", destination, utc, seconds), catalog)
    assert (rated.charge_id, rated.quantity, rated.amount) == (charge_id, billed_minutes, amount)
    assert state.aggregates == {(ACCOUNT_ID, CONTRACT_ID, charge_id, "2026-07"): billed_minutes}


def test_a_call_no_charge_matches_is_rejected_and_leaves_the_state_alone() -> None:
    catalog = catalog_with([VOICE], VOICE_CHARGES, timezone="Europe/London")
    state = RatingState()
    uk = call("c1", "447700900123", datetime(2026, 7, 3, 12, 0, tzinfo=UTC), 120)
    germany = call("c2", "4930123456", datetime(2026, 7, 3, 12, 5, tzinfo=UTC), 120)
    batch = rate_batch(state, [uk, germany, uk], catalog)
    assert [r.event.event_id for r in batch.rated] == ["c1", "c1"]
    [(index, rejection)] = batch.rejected
    assert index == 1
    assert rejection.reason == NO_MATCHING_CHARGE
    assert "voice" in rejection.detail
    # Only the two UK calls count: 2 + 2 minutes at peak.
    assert state.aggregates == {(ACCOUNT_ID, CONTRACT_ID, "voice-uk-peak", "2026-07"): D(4)}
    with pytest.raises(Rejected) as raised:
        rate(state, germany, catalog)
    assert raised.value.reason == NO_MATCHING_CHARGE
    assert state.aggregates == {(ACCOUNT_ID, CONTRACT_ID, "voice-uk-peak", "2026-07"): D(4)}


def test_unknown_meter_and_missing_unique_value_are_rejected() -> None:
    catalog = catalog_with([ACTIVE_USERS], [SEATS])
    state = RatingState()
    batch = rate_batch(
        state,
        [usage_event("a", 1, meter="storage"), usage_event("b", 1, meter="active_users", value=None)],
        catalog,
    )
    assert [(index, r.reason) for index, r in batch.rejected] == [(0, UNKNOWN_METER), (1, MISSING_FIELD)]
    assert batch.rated == []
    assert state == RatingState()
    assert batch.changed == set()


def test_max_meter_keeps_the_peak_and_charges_only_its_growth() -> None:
    meter = Meter("storage_peak", "GB", "max")
    charge = Charge("peak", "storage_peak", "flat", unit_price=D(2))
    catalog = catalog_with([meter], [charge])
    state = RatingState()
    rated = [
        rate(state, usage_event(f"e{i}", q, meter="storage_peak"), catalog) for i, q in enumerate([5, 3, 8])
    ]
    # 5 -> +10; 3 is below the peak -> 0; 8 -> +6 (16 - 10).
    assert [r.amount for r in rated] == [D(10), D(0), D(6)]
    assert state.aggregates[key("peak")] == D(8)


def test_aggregates_are_kept_per_contract_and_period() -> None:
    catalog = catalog_with([API_CALLS], [API])
    state = RatingState()
    events = [
        usage_event("e1", 2000, meter="api_calls"),
        usage_event("e2", 3000, meter="api_calls", period="2026-04"),
        usage_event("e3", 4000, meter="api_calls", contract_id="acct-1-renewal"),
    ]
    batch = rate_batch(state, events, catalog)
    # Each key starts from 0 with its own 1,000 included calls: 1,000 / 2,000 / 3,000 * 0.001.
    assert [r.amount for r in batch.rated] == [D(1), D(2), D(3)]
    assert batch.changed == {key("api"), key("api", "2026-04"), (ACCOUNT_ID, "acct-1-renewal", "api", PERIOD)}
    assert batch.rated[1].invoice_id == invoice_id_for(ACCOUNT_ID, "2026-04")


def test_undo_restores_the_state_before_the_batch() -> None:
    catalog = catalog_with([ACTIVE_USERS, API_CALLS], [SEATS, API])
    state = RatingState()
    rate_batch(state, [usage_event("e0", 1, meter="active_users", value="user-0")], catalog)
    before = copy.deepcopy(state)
    batch = rate_batch(
        state,
        [
            usage_event("e1", 1, meter="active_users", value="user-1"),
            usage_event("e2", 1, meter="active_users", value="user-0"),
            usage_event("e3", 5000, meter="api_calls"),
        ],
        catalog,
    )
    assert batch.previous == {key("seats"): D(1), key("api"): None}
    state.undo(batch)
    assert state == before


# --- properties ----------------------------------------------------------------------------------


def final_aggregate(scenario: RatingScenario) -> Decimal:
    """The aggregate A of §6, computed directly from the events."""
    events, aggregation = scenario.events, scenario.meter.aggregation
    if aggregation == "count":
        return D(len(events))
    if aggregation == "unique_count":
        return D(len({event.value for event in events}))
    rounded = [round_event_quantity(scenario.charge.rounding, event.quantity) for event in events]
    return sum(rounded, D(0)) if aggregation == "sum" else max(rounded)


@settings(deadline=None)
@given(rating_scenarios(), st.randoms(use_true_random=False))
def test_deltas_sum_to_the_price_of_the_final_aggregate_in_any_order(
    scenario: RatingScenario, shuffler: random.Random
) -> None:
    events = list(scenario.events)
    shuffler.shuffle(events)
    state = RatingState()
    batch = rate_batch(state, events, scenario.catalog)
    assert batch.rejected == []
    aggregate = final_aggregate(scenario)
    assert state.aggregates[key("c")] == aggregate
    assert sum((r.amount for r in batch.rated), D(0)) == price(scenario.charge, aggregate)
    # Each record is its own before/after step, and the steps chain.
    running = D(0)
    for rated in batch.rated:
        assert rated.aggregate_before == running
        assert rated.amount == price(scenario.charge, rated.aggregate_after) - price(
            scenario.charge, rated.aggregate_before
        )
        running = rated.aggregate_after


@settings(deadline=None)
@given(rating_scenarios(models=("flat", "graduated", "package"), aggregations=("sum",)))
def test_flat_graduated_and_package_sum_meters_never_give_a_negative_delta(scenario: RatingScenario) -> None:
    batch = rate_batch(RatingState(), scenario.events, scenario.catalog)
    assert all(r.amount >= 0 for r in batch.rated)


@settings(deadline=None)
@given(rating_scenarios(), st.integers(0, 25))
def test_splitting_into_batches_changes_nothing(scenario: RatingScenario, split: int) -> None:
    whole, parts = RatingState(), RatingState()
    one = rate_batch(whole, scenario.events, scenario.catalog)
    first = rate_batch(parts, scenario.events[:split], scenario.catalog)
    second = rate_batch(parts, scenario.events[split:], scenario.catalog)
    assert parts == whole
    assert [r.amount for r in first.rated + second.rated] == [r.amount for r in one.rated]


@settings(deadline=None)
@given(rating_scenarios(), st.integers(0, 25))
def test_undo_after_any_batch_restores_the_state(scenario: RatingScenario, split: int) -> None:
    state = RatingState()
    rate_batch(state, scenario.events[:split], scenario.catalog)
    snapshot = copy.deepcopy(state)
    batch = rate_batch(state, scenario.events[split:], scenario.catalog)
    assert batch.changed <= set(state.aggregates)
    state.undo(batch)
    assert state == snapshot


# --- limits and containment ----------------------------------------------------------------------

STORAGE = Meter("m", "GB", "sum")
PER_GB = Charge("c", "m", "flat", unit_price=D("0.01"))
LIMIT = D(10) ** 20


def test_an_aggregate_reaching_ten_to_the_twenty_is_rejected_and_the_state_stays() -> None:
    # Reproduced on c9cf9a2: both were rated (aggregate 1.2 * 10^20), and consolidation then
    # died storing the aggregate as DECIMAL(38,18).
    catalog = catalog_with([STORAGE], [PER_GB])
    state = RatingState()
    big = D("60000000000000000000")
    batch = rate_batch(state, [usage_event("a", big), usage_event("b", big), usage_event("c", 1)], catalog)
    assert [r.event.event_id for r in batch.rated] == ["a", "c"]
    [(index, rejection)] = batch.rejected
    assert (index, rejection.reason) == (1, INVALID_QUANTITY)
    assert "10^20" in rejection.detail
    assert state.aggregates == {key("c"): big + 1}
    assert batch.rated[1].aggregate_before == big


def test_a_price_reaching_ten_to_the_twenty_is_rejected() -> None:
    catalog = catalog_with([STORAGE], [Charge("c", "m", "flat", unit_price=D(1000))])
    state = RatingState()
    batch = rate_batch(state, [usage_event("a", D(10) ** 16), usage_event("b", D(10) ** 17)], catalog)
    assert [r.aggregate_after for r in batch.rated] == [D(10) ** 16]
    assert [(i, r.reason) for i, r in batch.rejected] == [(1, INVALID_QUANTITY)]
    assert state.aggregates == {key("c"): D(10) ** 16}


@settings(deadline=None)
@given(
    rating_scenarios(aggregations=("sum", "max")),
    st.lists(
        st.tuples(st.integers(0, 25), st.decimals(min_value="1e19", max_value=LIMIT - 1, places=0)),
        max_size=4,
    ),
)
def test_the_limit_leaves_the_state_as_if_the_rejected_events_never_came(
    scenario: RatingScenario, inserts: list[tuple[int, Decimal]]
) -> None:
    events = list(scenario.events)
    for position, quantity in inserts:
        events.insert(position, usage_event(f"big-{position}", quantity, event_time=events[0].event_time))
    state = RatingState()
    batch = rate_batch(state, events, scenario.catalog)
    assert {rejection.reason for _, rejection in batch.rejected} <= {INVALID_QUANTITY}
    for rated in batch.rated:
        assert max(abs(rated.aggregate_after), abs(rated.amount)) < LIMIT
        assert price(scenario.charge, rated.aggregate_after) < LIMIT
    rejected = {index for index, _ in batch.rejected}
    replayed = RatingState()
    again = rate_batch(replayed, [e for i, e in enumerate(events) if i not in rejected], scenario.catalog)
    assert again.rejected == []
    assert replayed == state
    assert [r.amount for r in again.rated] == [r.amount for r in batch.rated]


class _BrokenPlans(dict[str, Plan]):
    """A catalog view whose lookup of one plan fails unexpectedly."""

    def get(self, plan_id: str, default: Any = None) -> Any:
        if plan_id == "broken":
            raise RuntimeError("plan table corrupted")
        return super().get(plan_id, default)


def test_an_unexpected_failure_is_an_internal_error_and_the_batch_goes_on() -> None:
    plain = catalog_with([STORAGE], [PER_GB])
    catalog = dataclasses.replace(plain, plans=_BrokenPlans(plain.plans))
    state = RatingState()
    events = [usage_event("a", 2), usage_event("b", 3, plan_id="broken"), usage_event("c", 4)]
    batch = rate_batch(state, events, catalog)
    assert [r.event.event_id for r in batch.rated] == ["a", "c"]
    [(index, rejection)] = batch.rejected
    assert (index, rejection.reason) == (1, INTERNAL_ERROR)
    assert rejection.detail == "RuntimeError: plan table corrupted"
    assert state.aggregates == {key("c"): D(6)}


def test_a_failure_after_pricing_leaves_the_state_untouched() -> None:
    # An account id that cannot be encoded fails in the invoice id, after the event was priced:
    # the aggregate must not have moved for an event that is not rated.
    odd = "acct-\ud800"
    plain, other = catalog_with([STORAGE], [PER_GB]), catalog_with([STORAGE], [PER_GB], account_id=odd)
    catalog = dataclasses.replace(plain, accounts={**plain.accounts, **other.accounts})
    state = RatingState()
    batch = rate_batch(state, [usage_event("a", 2, account_id=odd), usage_event("b", 3)], catalog)
    assert [(i, r.reason) for i, r in batch.rejected] == [(0, INTERNAL_ERROR)]
    assert "UnicodeEncodeError" in batch.rejected[0][1].detail
    assert state.aggregates == {key("c"): D(3)}
    assert batch.changed == {key("c")}
