"""Enrichment: attach the contract in effect, its plan, currency and billing period (pure)."""

from __future__ import annotations

from dataclasses import replace

from meterline.catalog import Catalog
from meterline.reasons import NO_CONTRACT_IN_EFFECT, UNKNOWN_ACCOUNT, UNKNOWN_METER, Rejected
from meterline.records import UsageEvent


def enrich(event: UsageEvent, catalog: Catalog) -> UsageEvent:
    """The event with contract, plan, currency and period; raises Rejected otherwise.

    Precedence follows DESIGN.md §4: unknown_account, no_contract_in_effect, unknown_meter.
    """
    account = catalog.accounts.get(event.account_id)
    if account is None or not account.contracts:
        raise Rejected(UNKNOWN_ACCOUNT, f"account {event.account_id!r} is not in the catalog")
    local = event.event_time.astimezone(account.zone)
    contract = account.contract_on(local.date())
    if contract is None:
        raise Rejected(NO_CONTRACT_IN_EFFECT, f"no contract of {account.id!r} in effect on {local.date()}")
    if event.meter not in catalog.meters:
        raise Rejected(UNKNOWN_METER, f"meter {event.meter!r} is not in the catalog")
    plan = catalog.plans[contract.plan_id]
    return replace(
        event,
        contract_id=contract.id,
        plan_id=plan.id,
        currency=plan.currency,
        period=f"{local.year:04d}-{local.month:02d}",
    )


def dedup_bucket(event: UsageEvent, catalog: Catalog) -> str:
    """The period a dedup key is remembered under (account zone; UTC if the account is unknown)."""
    account = catalog.accounts.get(event.account_id)
    if account is None:
        t = event.event_time
        return f"{t.year:04d}-{t.month:02d}"
    return account.period_of(event.event_time)
