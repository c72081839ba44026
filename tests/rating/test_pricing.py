"""Pricing models (docs/catalog.md): worked examples, edge cases, and properties against a naive oracle."""

from __future__ import annotations

import math
from decimal import Context, Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterline.kernel.catalog import Charge, EventRounding, Tier
from rating.pricing import PriceSchedule, add_quantity, price, round_event_quantity, schedule_for
from tests.strategies import charges, decimals, event_roundings, quantities

D = Decimal

# The saas-pro example catalog of docs/catalog.md.
API = Charge(
    "api",
    "api_calls",
    "graduated",
    included=D(1000),
    tiers=(Tier(D(100_000), D("0.001")), Tier(None, D("0.0005"), flat_fee=D(5))),
)
SEATS = Charge("seats", "active_users", "volume", tiers=(Tier(D(10), D(8)), Tier(None, D(6))))
SMS = Charge("sms", "sms", "package", included=D(50), package_size=D(100), package_price=D(2))
STORAGE = Charge("storage", "storage", "flat", unit_price=D("0.025"))


def test_flat_is_quantity_times_unit_price() -> None:
    # 123.4 GB-hours * 0.025 = 3.085
    assert price(STORAGE, D("123.4")) == D("3.085")
    assert price(STORAGE, D(0)) == 0


def test_graduated_charges_each_unit_at_its_tier_and_each_entered_tier_fee() -> None:
    # A = 1,000 is all included: B = 0.
    assert price(API, D(1000)) == 0
    # A = 60,000 -> B = 59,000, all in tier 1: 59,000 * 0.001 = 59.
    assert price(API, D(60_000)) == D(59)
    # A = 101,000 -> B = 100,000 = tier 1's up_to exactly: tier 2 not entered, no fee: 100.
    assert price(API, D(101_000)) == D(100)
    # A = 101,001 -> B = 100,001: 100 + 1 * 0.0005 + fee 5 = 105.0005.
    assert price(API, D(101_001)) == D("105.0005")
    # A = 1,001,000 -> B = 1,000,000: 100 + 900,000 * 0.0005 + 5 = 555.
    assert price(API, D(1_001_000)) == D(555)


def test_graduated_with_three_tiers_and_fees() -> None:
    charge = Charge(
        "g",
        "m",
        "graduated",
        tiers=(Tier(D(10), D(1), D("0.5")), Tier(D(20), D(2), D(3)), Tier(None, D(4), D(7))),
    )
    # B = 0: no tier entered, not even the first one's fee.
    assert price(charge, D(0)) == 0
    # B = 0.1: 0.1 * 1 + 0.5 = 0.6.
    assert price(charge, D("0.1")) == D("0.6")
    # B = 25: 10 * 1 + 0.5 + 10 * 2 + 3 + 5 * 4 + 7 = 60.5.
    assert price(charge, D(25)) == D("60.5")


def test_volume_prices_all_units_at_the_tier_containing_the_aggregate() -> None:
    # 10 seats: all at 8 = 80. 11 seats: all at 6 = 66, cheaper than 10.
    assert price(SEATS, D(10)) == D(80)
    assert price(SEATS, D(11)) == D(66)
    assert price(SEATS, D(0)) == 0


def test_volume_adds_the_containing_tiers_flat_fee_only() -> None:
    charge = Charge("v", "m", "volume", tiers=(Tier(D(10), D(8), D(1)), Tier(None, D(6), D(20))))
    # B = 10: 10 * 8 + 1 = 81; B = 11: 11 * 6 + 20 = 86; B = 0: zero, no fee.
    assert price(charge, D(10)) == D(81)
    assert price(charge, D(11)) == D(86)
    assert price(charge, D(0)) == 0


def test_package_counts_started_packages_after_included_units() -> None:
    # 50 included: A = 50 -> B = 0 -> 0; A = 51 -> 1 package = 2; A = 150 -> B = 100 -> 1 package;
    # A = 151 -> B = 101 -> 2 packages = 4.
    assert price(SMS, D(50)) == 0
    assert price(SMS, D(51)) == D(2)
    assert price(SMS, D(150)) == D(2)
    assert price(SMS, D(151)) == D(4)


def test_price_is_exact_beyond_the_default_28_digit_context() -> None:
    charge = Charge("f", "m", "flat", unit_price=D("1.000000000000000001"))
    # 123456789012.345678901234567891 * 1.000000000000000001
    #   = 123456789012.345679024691356903345678901234567891 exactly (48 digits);
    # half-even to 18 places: ...356903. The default context would give ...3569 (28 digits).
    assert price(charge, D("123456789012.345678901234567891")) == D("123456789012.345679024691356903")


def test_price_rounds_half_even_to_18_places() -> None:
    charge = Charge("f", "m", "flat", unit_price=D("0.5"))
    # 0.000000000000000005 * 0.5 = 2.5e-18 -> 2e-18 (half to even); 1.5e-18 -> 2e-18.
    assert price(charge, D("0.000000000000000005")) == D("0.000000000000000002")
    assert price(charge, D("0.000000000000000003")) == D("0.000000000000000002")
    assert price(charge, D(1)).as_tuple().exponent == -18


def test_aggregates_add_exactly() -> None:
    # 30 significant digits: the default context would round the sum.
    total = add_quantity(D("123456789012.345678901234567891"), D("0.000000000000000001"))
    assert total == D("123456789012.345678901234567892")


@pytest.mark.parametrize(
    ("charge", "problem"),
    [
        (Charge("x", "m", "flat"), "needs unit_price"),
        (Charge("x", "m", "package", package_size=D(10)), "needs package_price"),
        (Charge("x", "m", "package", package_size=D(0), package_price=D(1)), "must be positive"),
        (Charge("x", "m", "volume"), "needs tiers"),
        (
            Charge("x", "m", "graduated", tiers=(Tier(D(10), D(1)), Tier(D(5), D(1)), Tier(None, D(1)))),
            "tier 2",
        ),
        (Charge("x", "m", "graduated", tiers=(Tier(None, D(1)), Tier(None, D(1)))), "tier 1"),
    ],
)
def test_a_charge_missing_what_its_model_needs_is_refused(charge: Charge, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        PriceSchedule.of(charge)


def test_schedules_are_cached_per_charge_object() -> None:
    assert schedule_for(API) is schedule_for(API)
    twin = Charge(API.id, API.meter, API.model, included=D(0), tiers=API.tiers)
    # Same id, different terms (a catalog update): never the stale schedule.
    assert schedule_for(twin).included == 0
    assert price(twin, D(1000)) == D(1)


@pytest.mark.parametrize(
    ("rule", "quantity", "expected"),
    [
        (None, D("1.7"), D("1.7")),
        # Per started minute: 61 s = 1.016666666666666667 min -> 2; 30 s -> 1; exactly 1 min stays 1.
        (EventRounding(D(1), D(1)), D("1.016666666666666667"), D(2)),
        (EventRounding(D(1), D(1)), D("0.5"), D(1)),
        (EventRounding(D(1), D(1)), D(1), D(1)),
        # Zero stays zero even with a minimum (an unanswered second is not a started minute).
        (EventRounding(D(1), D(1)), D(0), D(0)),
        # Per 6 s with a 30 s minimum: 7 -> 12 -> 30; 31 -> 36.
        (EventRounding(D(6), D(30)), D(7), D(30)),
        (EventRounding(D(6), D(30)), D(31), D(36)),
        (EventRounding(D("0.5")), D("1.2"), D("1.5")),
    ],
)
def test_round_event_quantity(rule: EventRounding | None, quantity: Decimal, expected: Decimal) -> None:
    assert round_event_quantity(rule, quantity) == expected


# --- properties ------------------------------------------------------------------------------

_ORACLE = Context(prec=200)


def oracle_price(charge: Charge, aggregate: Decimal) -> Decimal:
    """docs/catalog.md's pricing read literally, 200-digit context, none of the schedule's shortcuts."""
    with localcontext(_ORACLE):
        billable = max(aggregate - charge.included, D(0))
        if charge.model == "flat":
            assert charge.unit_price is not None
            exact = billable * charge.unit_price
        elif charge.model == "package":
            assert charge.package_size is not None and charge.package_price is not None
            packages = math.ceil(billable / charge.package_size)
            exact = packages * charge.package_price
        elif charge.model == "graduated":
            exact, lower = D(0), D(0)
            for index, tier in enumerate(charge.tiers):
                upper = None if index == len(charge.tiers) - 1 else tier.up_to
                if billable > lower:
                    top = billable if upper is None else min(billable, upper)
                    exact += (top - lower) * tier.unit_price + tier.flat_fee
                lower = upper if upper is not None else lower
        else:
            exact, lower = D(0), D(0)
            for index, tier in enumerate(charge.tiers):
                last = index == len(charge.tiers) - 1
                if billable > 0 and billable > lower and (last or billable <= (tier.up_to or 0)):
                    exact = billable * tier.unit_price + tier.flat_fee
                    break
                lower = tier.up_to or lower
        return exact.quantize(D("1e-18"))


@given(charges(), decimals(20_000, 6))
def test_price_matches_the_oracle(charge: Charge, aggregate: Decimal) -> None:
    assert price(charge, aggregate) == oracle_price(charge, aggregate)


@given(charges(), st.sampled_from([0, 1, -1]), st.data())
def test_price_matches_the_oracle_at_tier_bounds(charge: Charge, side: int, data: st.DataObject) -> None:
    # Boundaries are where an off-by-one in (lower, upper] would hide.
    bounds = [tier.up_to for tier in charge.tiers if tier.up_to is not None] or [D(100)]
    aggregate = max(data.draw(st.sampled_from(bounds)) + charge.included + side * D("0.01"), D(0))
    assert price(charge, aggregate) == oracle_price(charge, aggregate)


@given(charges(), decimals(20_000, 6))
def test_nothing_is_charged_up_to_the_included_units(charge: Charge, aggregate: Decimal) -> None:
    assert price(charge, min(aggregate, charge.included)) == 0


@given(charges(models=("flat", "graduated", "package")), decimals(20_000, 6), decimals(20_000, 6))
def test_flat_graduated_and_package_never_decrease(charge: Charge, a: Decimal, b: Decimal) -> None:
    low, high = sorted((a, b))
    assert price(charge, low) <= price(charge, high)


@given(event_roundings(), quantities())
def test_rounded_quantity_is_the_smallest_allowed_step_covering_the_event(
    rule: EventRounding | None, quantity: Decimal
) -> None:
    rounded = round_event_quantity(rule, quantity)
    if rule is None or quantity == 0:
        assert rounded == quantity
        return
    assert rounded >= quantity
    assert rounded >= rule.minimum
    if rounded > rule.minimum:
        # A whole number of increments, less than one increment above the quantity.
        assert rounded % rule.increment == 0
        assert rounded - quantity < rule.increment
