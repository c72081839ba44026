"""Enrichment: attach the contract in effect, its plan, currency and billing period, once a
charge of the plan is known to rate the event (pure)."""

from __future__ import annotations

from datetime import datetime

from meterline.kernel.catalog import Account, Catalog
from meterline.kernel.reasons import (
    INVALID_TIMESTAMP,
    NO_CONTRACT_IN_EFFECT,
    UNKNOWN_ACCOUNT,
    UNKNOWN_METER,
    Rejected,
)
from meterline.kernel.records import UsageEvent
from rating.charges import MeterCharges, no_matching_charge

# The candidate charges per (plan, meter), built once per batch by the caller.
ChargeCache = dict[tuple[str, str], MeterCharges]


def local_time(event: UsageEvent, catalog: Catalog) -> tuple[Account | None, datetime]:
    """The event's account and its instant in the account's zone (UTC for an unknown account).

    Validation keeps instants within 1970-01-01T00:00:00Z .. 9999-12-31T23:59:59Z, so a
    zone west of UTC always has a local time. East of UTC, the last hours of the range
    fall in year 10000, which no datetime holds: such an event is `invalid_timestamp`
    (only a processing clock in year 9999 lets one past the future-timestamp check).
    """
    account = catalog.accounts.get(event.account_id)
    if account is None:
        return None, event.event_time
    try:
        return account, event.event_time.astimezone(account.zone)
    except OverflowError:
        raise Rejected(
            INVALID_TIMESTAMP,
            f"{event.event_time.isoformat()} has no local time in {account.timezone} before year 10000",
        ) from None


# Periods by year * 16 + month: formatting "YYYY-MM" costs more than the rest of enrichment,
# and an event stream names few months.
_PERIODS: dict[int, str] = {}


def period_of(local: datetime) -> str:
    """The billing period (YYYY-MM) of an event's local time."""
    key = local.year * 16 + local.month
    period = _PERIODS.get(key)
    if period is None:
        period = _PERIODS[key] = f"{local.year:04d}-{local.month:02d}"
    return period


def enrich(
    event: UsageEvent,
    catalog: Catalog,
    account: Account | None,
    local: datetime,
    charges: ChargeCache | None = None,
) -> UsageEvent:
    """The event with contract, plan, currency and period; raises Rejected otherwise.

    `account` and `local` come from `local_time` (computed once per event, shared with dedup).
    Precedence: unknown_account, no_contract_in_effect, unknown_meter, no_matching_charge
    (decided here with the charge selection rating uses, so that only an event some charge
    rates is accepted, and holds its dedup key).
    """
    if account is None or not account.contracts:
        raise Rejected(UNKNOWN_ACCOUNT, f"account {event.account_id!r} is not in the catalog")
    contract = account.contract_on(local.date())
    if contract is None:
        raise Rejected(NO_CONTRACT_IN_EFFECT, f"no contract of {account.id!r} in effect on {local.date()}")
    if event.meter not in catalog.meters:
        raise Rejected(UNKNOWN_METER, f"meter {event.meter!r} is not in the catalog")
    plan = catalog.plans[contract.plan_id]
    if charges is None:
        charges = {}
    candidates = charges.get((plan.id, event.meter))
    if candidates is None:
        candidates = charges[(plan.id, event.meter)] = MeterCharges(plan, event.meter)
    if candidates.first_match(event, local) < 0:
        raise no_matching_charge(plan.id, event)
    # Built directly rather than with dataclasses.replace, which costs several times more per event.
    return UsageEvent(
        event.event_id,
        event.account_id,
        event.meter,
        event.quantity,
        event.event_time,
        event.attributes,
        event.value,
        event.source_format,
        contract.id,
        plan.id,
        plan.currency,
        period_of(local),
    )
