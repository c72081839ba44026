"""Charge selection (docs/catalog.md): first match wins, absent filters match."""

from __future__ import annotations

from datetime import UTC, datetime, time
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediation.enrich import enrich, local_time
from meterline.kernel.catalog import Charge, ChargeFilters, LocalTimeWindow, Meter, Plan
from meterline.kernel.reasons import NO_MATCHING_CHARGE, Rejected
from meterline.kernel.records import UsageEvent
from rating.charges import filters_match, in_window, select_charge
from rating.rater import RatingState, rate
from tests.strategies import ACCOUNT_ID, PLAN_ID, catalog_with, usage_event

MON, TUE, WED, THU, FRI, SAT, SUN = range(7)
WEEKDAYS = frozenset({MON, TUE, WED, THU, FRI})
NEW_YORK = ZoneInfo("America/New_York")
NOON_UTC = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)  # a Wednesday


def flat(
    charge_id: str,
    meter: str = "storage",
    *,
    attributes: dict[str, frozenset[str]] | None = None,
    local_time: LocalTimeWindow | None = None,
) -> Charge:
    filters = ChargeFilters(attributes=attributes or {}, local_time=local_time)
    return Charge(charge_id, meter, "flat", unit_price=Decimal(1), filters=filters)


STORAGE_PLAN = Plan(
    id="p",
    currency="EUR",
    rounding="half_even",
    charges=(
        flat("api", meter="api_calls"),
        flat("storage-eu", attributes={"region": frozenset({"eu-west", "eu-central"})}),
        flat("storage"),
    ),
)


def test_the_first_matching_charge_of_the_event_meter_wins() -> None:
    eu = usage_event(meter="storage", attributes={"region": "eu-west"})
    us = usage_event(meter="storage", attributes={"region": "us-east"})
    bare = usage_event(meter="storage")
    assert select_charge(STORAGE_PLAN, eu, NOON_UTC) is STORAGE_PLAN.charges[1]
    # The catch-all comes later in the plan, so it only takes what storage-eu refused.
    assert select_charge(STORAGE_PLAN, us, NOON_UTC) is STORAGE_PLAN.charges[2]
    assert select_charge(STORAGE_PLAN, bare, NOON_UTC) is STORAGE_PLAN.charges[2]


def test_no_charge_for_another_meter() -> None:
    assert select_charge(STORAGE_PLAN, usage_event(meter="sms"), NOON_UTC) is None


def test_every_listed_attribute_must_hold_one_of_its_values() -> None:
    filters = ChargeFilters(
        attributes={"region": frozenset({"eu-west"}), "tier": frozenset({"gold", "silver"})}
    )
    assert filters_match(filters, usage_event(attributes={"region": "eu-west", "tier": "gold"}), NOON_UTC)
    assert not filters_match(
        filters, usage_event(attributes={"region": "eu-west", "tier": "bronze"}), NOON_UTC
    )
    # A missing key never matches, even though the other one does.
    assert not filters_match(filters, usage_event(attributes={"region": "eu-west"}), NOON_UTC)


def test_destination_prefixes() -> None:
    filters = ChargeFilters(destination_prefixes=("44", "33"))
    assert filters_match(filters, usage_event(attributes={"destination": "447700900123"}), NOON_UTC)
    assert filters_match(filters, usage_event(attributes={"destination": "33142685300"}), NOON_UTC)
    # Prefix, not substring: a 44 inside the number is not a UK destination.
    assert not filters_match(filters, usage_event(attributes={"destination": "14475550100"}), NOON_UTC)
    assert not filters_match(filters, usage_event(attributes={}), NOON_UTC)


def test_empty_filters_match_anything() -> None:
    assert filters_match(ChargeFilters(), usage_event(attributes={"x": "y"}), NOON_UTC)


PEAK = LocalTimeWindow(days=WEEKDAYS, start=time(8), end=time(20))
NIGHT = LocalTimeWindow(days=None, start=time(22), end=time(6))


@pytest.mark.parametrize(
    ("window", "local", "expected"),
    [
        (PEAK, datetime(2026, 3, 4, 8, 0), True),  # start is inclusive
        (PEAK, datetime(2026, 3, 4, 19, 59, 59, 999_999), True),
        (PEAK, datetime(2026, 3, 4, 20, 0), False),  # end is exclusive
        (PEAK, datetime(2026, 3, 4, 7, 59, 59), False),
        (PEAK, datetime(2026, 3, 7, 12, 0), False),  # Saturday
        (NIGHT, datetime(2026, 3, 4, 22, 0), True),
        (NIGHT, datetime(2026, 3, 4, 23, 59, 59), True),
        (NIGHT, datetime(2026, 3, 5, 0, 0), True),  # wraps past midnight
        (NIGHT, datetime(2026, 3, 5, 5, 59, 59), True),
        (NIGHT, datetime(2026, 3, 5, 6, 0), False),
        (NIGHT, datetime(2026, 3, 5, 12, 0), False),
        (LocalTimeWindow(days=frozenset({SUN}), start=time(0), end=time(0)), datetime(2026, 3, 8, 13), True),
    ],
)
def test_local_time_window(window: LocalTimeWindow, local: datetime, expected: bool) -> None:
    assert in_window(window, local) is expected


def test_a_wrapping_window_checks_the_weekday_of_the_event_itself() -> None:
    friday_night = LocalTimeWindow(days=frozenset({FRI}), start=time(22), end=time(6))
    assert in_window(friday_night, datetime(2026, 3, 6, 23, 0))  # Friday 23:00
    # Saturday 02:00 is in the clock range but Saturday is not listed.
    assert not in_window(friday_night, datetime(2026, 3, 7, 2, 0))


def test_local_time_follows_the_account_zone_across_a_dst_change() -> None:
    # New York off-peak 22:00-07:00. 11:30 UTC is 06:30 EST on Saturday 7 March 2026 (UTC-5),
    # but 07:30 EDT on Sunday 8 March (UTC-4, clocks went forward at 02:00 that night).
    off_peak = flat("voice-off-peak", meter="voice", local_time=LocalTimeWindow(None, time(22), time(7)))
    plan = Plan(id="p", currency="USD", rounding="half_up", charges=(off_peak,))
    saturday = datetime(2026, 3, 7, 11, 30, tzinfo=UTC)
    sunday = datetime(2026, 3, 8, 11, 30, tzinfo=UTC)
    assert select_charge(plan, usage_event(meter="voice", event_time=saturday), saturday.astimezone(NEW_YORK))
    assert (
        select_charge(plan, usage_event(meter="voice", event_time=sunday), sunday.astimezone(NEW_YORK))
        is None
    )


# --------------------------------------------------------------------------- one selection, two stages

REGIONS = ("eu-west", "us-east", "ap")
HOURS = list(range(24))


@settings(max_examples=200, deadline=None)
@given(
    regions=st.lists(st.sets(st.sampled_from(REGIONS), min_size=1), min_size=0, max_size=3),
    windows=st.lists(st.one_of(st.none(), st.tuples(st.sampled_from(HOURS), st.sampled_from(HOURS)))),
    region=st.sampled_from((*REGIONS, None)),
    hour=st.sampled_from(HOURS),
)
def test_mediation_rejects_exactly_what_rating_cannot_rate(
    regions: list[set[str]], windows: list[tuple[int, int] | None], region: str | None, hour: int
) -> None:
    # no_matching_charge is decided in mediation, with the selection rating prices with: an
    # event mediation accepts is rated by the charge rating picks, and one it rejects has none.
    charges = tuple(
        flat(
            f"c{i}",
            attributes={"region": frozenset(allowed)},
            local_time=(
                LocalTimeWindow(None, time(window[0]), time(window[1]))
                if i < len(windows) and (window := windows[i]) is not None
                else None
            ),
        )
        for i, allowed in enumerate(regions)
    )
    catalog = catalog_with([Meter("storage", "GB", "sum")], charges, timezone="America/New_York")
    instant = datetime(2026, 3, 4, hour, 30, tzinfo=UTC)
    raw = UsageEvent("e1", ACCOUNT_ID, "storage", Decimal(1), instant, {"region": region} if region else {})
    account, local = local_time(raw, catalog)
    chosen = select_charge(catalog.plans[PLAN_ID], raw, local)
    try:
        enriched = enrich(raw, catalog, account, local)
    except Rejected as rejection:
        assert (rejection.reason, chosen) == (NO_MATCHING_CHARGE, None)
        with pytest.raises(Rejected, match=NO_MATCHING_CHARGE):  # rating's defensive check agrees
            rate(RatingState(), usage_event(meter="storage", event_time=instant, attributes=raw.attributes),
                 catalog)  # fmt: skip
        return
    assert chosen is not None
    assert rate(RatingState(), enriched, catalog).charge_id == chosen.id
