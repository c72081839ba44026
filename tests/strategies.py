"""Hypothesis strategies (and the plain builders they use) shared by the test suite.

Values are drawn the way a catalog and mediation produce them: non-negative
decimals of mixed scale (up to the 18 places of docs/catalog.md), tier tables with
strictly increasing bounds and an open last tier, enriched usage events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import strategies as st

from meterline.kernel.catalog import (
    Account,
    Aggregation,
    Catalog,
    Charge,
    Contract,
    EventRounding,
    Meter,
    Plan,
    PricingModel,
    Tier,
)
from meterline.kernel.records import UsageEvent

MODELS: tuple[PricingModel, ...] = ("flat", "graduated", "volume", "package")
AGGREGATIONS: tuple[Aggregation, ...] = ("sum", "count", "max", "unique_count")

ACCOUNT_ID = "acct-1"
CONTRACT_ID = "acct-1-2026"
PLAN_ID = "plan-1"
PERIOD = "2026-03"
PERIOD_START = datetime(2026, 3, 1, tzinfo=UTC)


def decimals(max_value: int | str = 10_000, max_places: int = 6) -> st.SearchStrategy[Decimal]:
    """Non-negative decimals with 0..max_places decimal places."""
    return st.integers(0, max_places).flatmap(
        lambda places: st.decimals(
            min_value=0, max_value=max_value, places=places, allow_nan=False, allow_infinity=False
        )
    )


def positive_decimals(max_value: int | str = 10_000, max_places: int = 6) -> st.SearchStrategy[Decimal]:
    return decimals(max_value, max_places).filter(lambda value: value > 0)


def quantities() -> st.SearchStrategy[Decimal]:
    """Event quantities: mostly small and short, sometimes a full 18-place conversion result."""
    return st.one_of(decimals(1_000, 3), decimals(100, 18), st.just(Decimal(0)))


def unit_prices() -> st.SearchStrategy[Decimal]:
    return st.one_of(decimals(10, 4), decimals(1, 18))


def flat_fees() -> st.SearchStrategy[Decimal]:
    return st.one_of(st.just(Decimal(0)), decimals(50, 2))


@st.composite
def tier_tables(draw: st.DrawFn, max_tiers: int = 5) -> tuple[Tier, ...]:
    """1..max_tiers tiers with strictly increasing `up_to` and an open last tier."""
    bounds = sorted(set(draw(st.lists(positive_decimals(5_000, 2), max_size=max_tiers - 1))))
    uppers: list[Decimal | None] = [*bounds, None]
    return tuple(
        Tier(up_to=upper, unit_price=draw(unit_prices()), flat_fee=draw(flat_fees())) for upper in uppers
    )


def event_roundings() -> st.SearchStrategy[EventRounding | None]:
    """No rounding, or a telecom rule such as per started minute (increment 1, minimum 1)."""
    increments = st.sampled_from([Decimal(1), Decimal(60), Decimal("0.5"), Decimal("0.001"), Decimal(6)])
    rules = st.builds(
        lambda increment, minimum_steps: EventRounding(
            increment=increment, minimum=increment * minimum_steps
        ),
        increments,
        st.integers(0, 3),
    )
    return st.one_of(st.none(), rules)


@st.composite
def charges(
    draw: st.DrawFn,
    models: Sequence[PricingModel] = MODELS,
    meter: str = "m",
    charge_id: str = "c",
) -> Charge:
    """A charge of one of `models`, with optional included units and per-event rounding."""
    model = draw(st.sampled_from(models))
    included = draw(st.one_of(st.just(Decimal(0)), decimals(500, 2)))
    rounding = draw(event_roundings())
    if model == "flat":
        return Charge(
            charge_id, meter, model, included=included, unit_price=draw(unit_prices()), rounding=rounding
        )
    if model == "package":
        return Charge(
            charge_id,
            meter,
            model,
            included=included,
            package_size=draw(positive_decimals(500, 2)),
            package_price=draw(decimals(100, 4)),
            rounding=rounding,
        )
    return Charge(charge_id, meter, model, included=included, tiers=draw(tier_tables()), rounding=rounding)


def usage_event(
    event_id: str = "e1",
    quantity: Decimal | int | str = 1,
    *,
    meter: str = "m",
    event_time: datetime = PERIOD_START,
    attributes: Mapping[str, str] | None = None,
    value: str | None = None,
    account_id: str = ACCOUNT_ID,
    contract_id: str = CONTRACT_ID,
    plan_id: str = PLAN_ID,
    period: str = PERIOD,
    currency: str = "EUR",
) -> UsageEvent:
    """An event as mediation emits it: validated and enriched."""
    return UsageEvent(
        event_id=event_id,
        account_id=account_id,
        meter=meter,
        quantity=Decimal(quantity),
        event_time=event_time,
        attributes=dict(attributes or {}),
        value=value,
        contract_id=contract_id,
        plan_id=plan_id,
        currency=currency,
        period=period,
    )


def catalog_with(
    meters: Sequence[Meter],
    charges: Sequence[Charge],
    *,
    timezone: str = "UTC",
    account_id: str = ACCOUNT_ID,
) -> Catalog:
    """A one-account, one-plan catalog around the given meters and charges."""
    plan = Plan(id=PLAN_ID, currency="EUR", rounding="half_even", charges=tuple(charges))
    contract = Contract(
        id=CONTRACT_ID, account_id=account_id, plan_id=PLAN_ID, start=PERIOD_START.date(), end=None
    )
    account = Account(id=account_id, name=account_id, timezone=timezone, contracts=(contract,))
    return Catalog(
        meters={meter.code: meter for meter in meters},
        plans={PLAN_ID: plan},
        accounts={account_id: account},
    )


@dataclass(frozen=True, slots=True)
class RatingScenario:
    """One meter, one charge, and the events of one account/contract/period for it."""

    meter: Meter
    charge: Charge
    catalog: Catalog
    events: tuple[UsageEvent, ...]


@st.composite
def rating_scenarios(
    draw: st.DrawFn,
    models: Sequence[PricingModel] = MODELS,
    aggregations: Sequence[Aggregation] = AGGREGATIONS,
    max_events: int = 25,
) -> RatingScenario:
    aggregation = draw(st.sampled_from(aggregations))
    meter = Meter(
        code="m",
        unit="unit",
        aggregation=aggregation,
        value_property="user_id" if aggregation == "unique_count" else "quantity",
    )
    charge = draw(charges(models))
    count = draw(st.integers(1, max_events))
    events = []
    for index in range(count):
        offset = timedelta(seconds=draw(st.integers(0, 27 * 86_400)))
        # A small pool of values, so unique_count meets values it has already seen.
        value = (
            draw(st.sampled_from([f"user-{n}" for n in range(8)])) if aggregation == "unique_count" else None
        )
        quantity = Decimal(1) if aggregation in ("count", "unique_count") else draw(quantities())
        events.append(usage_event(f"e{index}", quantity, event_time=PERIOD_START + offset, value=value))
    return RatingScenario(meter, charge, catalog_with([meter], [charge]), tuple(events))
