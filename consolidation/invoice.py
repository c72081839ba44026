"""Invoice assembly: one account, one period, its usage totals -> an itemised draft.

Pure (no Kafka, no DuckDB, no clock): the same catalog, period and usage
totals always give the same draft, so a consolidation worker can rebuild a
draft after every batch or after a crash and get an identical result. The
rules are in docs/catalog.md ("Invoice lines"); the output shape is docs/outputs.md's
`invoice_drafts` / `invoice_lines` tables.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import (
    Clamped,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
    localcontext,
)
from typing import Final, Literal

from consolidation.currency import minor_units, round_money, round_money_ratio
from meterline.kernel.catalog import Account, Catalog, Charge, Contract, Plan, RoundingMode, period_bounds
from meterline.kernel.records import invoice_id_for

__all__ = [
    "INVOICE_STATUSES",
    "InvoiceAssemblyError",
    "InvoiceDraft",
    "InvoiceLine",
    "LineKind",
    "UsageTotal",
    "assemble_invoice",
]

LineKind = Literal["usage", "minimum_commitment", "recurring", "one_time", "discount", "tax"]
INVOICE_STATUSES: Final = frozenset({"open", "final"})

_Rounder = Callable[[Decimal], Decimal]

_PERIOD = re.compile(r"\d{4}-(0[1-9]|1[0-2])")

# Every intermediate (sums of lines, amount × days, S × percent) must be exact:
# the default context silently rounds at 28 digits. With these traps an
# operation that would lose a digit raises instead of producing a wrong cent.
_EXACT: Final = Context(
    prec=1000,
    traps=[InvalidOperation, DivisionByZero, Overflow, Inexact, Rounded, Clamped],
)


class InvoiceAssemblyError(ValueError):
    """The inputs cannot make a correct invoice (usage that fits no contract, mixed currencies, ...)."""


@dataclass(frozen=True, slots=True)
class UsageTotal:
    """Running total of one charge for one account and period (a `usage_totals` row).

    `aggregate` is the charge's aggregate A of the events rated under
    `contract_id` in the period and `amount_exact` = price(A), the exact sum of
    their rated amounts.
    """

    account_id: str
    period: str
    contract_id: str
    charge_id: str
    meter: str
    aggregate: Decimal
    amount_exact: Decimal
    event_count: int


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    line_no: int
    kind: LineKind
    charge_id: str | None  # charge id (usage), fee id (recurring, one_time), else None
    description: str
    quantity: Decimal | None
    unit: str | None
    unit_price: Decimal | None
    amount: Decimal  # rounded to the currency's minor units


@dataclass(frozen=True, slots=True)
class InvoiceDraft:
    invoice_id: str
    account_id: str
    period: str  # YYYY-MM in the account's zone
    period_start: date  # first day
    period_end: date  # last day (inclusive)
    currency: str
    subtotal: Decimal  # S: usage + minimum + recurring + one-time
    discount: Decimal  # <= 0
    tax: Decimal
    total: Decimal  # sum of all lines
    status: str  # open | final
    issue_date: date
    due_date: date
    event_count: int
    lines: tuple[InvoiceLine, ...]


@dataclass(frozen=True, slots=True)
class _Line:
    """A line before numbering."""

    kind: LineKind
    charge_id: str | None
    description: str
    amount: Decimal
    quantity: Decimal | None = None
    unit: str | None = None
    unit_price: Decimal | None = None


def assemble_invoice(
    account: Account,
    catalog: Catalog,
    period: str,
    usage: Sequence[UsageTotal],
    status: str,
) -> InvoiceDraft | None:
    """The invoice draft of `account` for `period` (docs/catalog.md), or None when there is nothing to bill.

    `usage` holds the account's usage totals for the period, at most one per
    contract and charge. A draft exists when the account has rated usage, a one-time charge
    dated in the period, or a contract in effect on some day of the period.
    Raises InvoiceAssemblyError on inputs that cannot give a correct invoice and
    UnknownCurrencyError for a currency without ISO 4217 minor units.
    """
    if status not in INVOICE_STATUSES:
        raise InvoiceAssemblyError(
            f"invoice status must be one of {sorted(INVOICE_STATUSES)}, got {status!r}"
        )
    if not _PERIOD.fullmatch(period):
        raise InvoiceAssemblyError(f"period must be YYYY-MM, got {period!r}")
    first, following = period_bounds(period)
    days_in_period = (following - first).days

    with localcontext(_EXACT):
        active_usage = _active_usage(account, period, usage)
        contracts = sorted(account.contracts, key=lambda c: c.start)
        in_effect = [c for c in contracts if _active_days(c, first, following) > 0]
        one_time = [(c, item) for c in contracts for item in c.one_time if first <= item.date < following]
        if not active_usage and not one_time and not in_effect:
            return None

        plans = {c.id: _plan_of(c, catalog) for c in (*in_effect, *(c for c, _ in one_time))}
        currency, mode = _currency_and_rounding(account, period, list(plans.values()))

        def money(amount: Decimal) -> Decimal:
            return round_money(amount, currency, mode)

        # Minimum and discount come from the contract in effect on the period's
        # last day, else the latest one touching the period (§6).
        candidates = in_effect or sorted({c.id: c for c, _ in one_time}.values(), key=lambda c: c.start)
        last_day = following - timedelta(days=1)
        terms = next((c for c in candidates if c.in_effect_on(last_day)), candidates[-1])

        lines = _usage_lines(account, catalog, in_effect, plans, active_usage, money)
        usage_sum = sum((line.amount for line in lines), money(Decimal(0)))

        if terms.minimum_commitment is not None and terms.minimum_commitment > usage_sum:
            shortfall = money(terms.minimum_commitment - usage_sum)
            if shortfall:
                description = f"Minimum commitment {terms.minimum_commitment} {currency}"
                lines.append(_Line("minimum_commitment", None, description, shortfall))

        for contract in in_effect:
            active_days = _active_days(contract, first, following)
            for fee in plans[contract.id].recurring:
                # Prorated on the exact ratio, rounded once.
                amount = round_money_ratio(fee.amount * active_days, days_in_period, currency, mode)
                description = fee.description
                if active_days < days_in_period:
                    description = f"{description} ({active_days}/{days_in_period} days)"
                lines.append(_Line("recurring", fee.id, description, amount))

        for _, item in one_time:
            lines.append(_Line("one_time", item.id, item.description, money(item.amount)))

        subtotal = sum((line.amount for line in lines), money(Decimal(0)))

        discount = money(Decimal(0))
        if terms.discount_percent is not None:
            discount = -round_money_ratio(subtotal * terms.discount_percent, 100, currency, mode)
            if discount:
                lines.append(_Line("discount", None, f"Discount {terms.discount_percent}%", discount))

        tax = money(Decimal(0))
        if account.tax_rate is not None:
            tax = round_money_ratio((subtotal + discount) * account.tax_rate, 100, currency, mode)
            if tax:
                lines.append(_Line("tax", None, f"Tax {account.tax_rate}%", tax))

        total = sum((line.amount for line in lines), money(Decimal(0)))

    return InvoiceDraft(
        invoice_id=invoice_id_for(account.id, period),
        account_id=account.id,
        period=period,
        period_start=first,
        period_end=last_day,
        currency=currency,
        subtotal=subtotal,
        discount=discount,
        tax=tax,
        total=total,
        status=status,
        issue_date=following,
        due_date=following + timedelta(days=account.net_terms_days),
        event_count=sum(u.event_count for u in active_usage),
        lines=tuple(
            InvoiceLine(
                line_no=number,
                kind=line.kind,
                charge_id=line.charge_id,
                description=line.description,
                quantity=line.quantity,
                unit=line.unit,
                unit_price=line.unit_price,
                amount=line.amount,
            )
            for number, line in enumerate(lines, start=1)
        ),
    )


def _active_days(contract: Contract, first: date, following: date) -> int:
    """Days of [first, following) on which the contract is in effect (start inclusive, end exclusive)."""
    start = max(contract.start, first)
    end = following if contract.end is None else min(contract.end, following)
    return max((end - start).days, 0)


def _active_usage(account: Account, period: str, usage: Sequence[UsageTotal]) -> list[UsageTotal]:
    """The totals with rated events, checked to belong to this invoice, one per contract and charge."""
    seen: set[tuple[str, str]] = set()
    active: list[UsageTotal] = []
    for total in usage:
        if total.account_id != account.id or total.period != period:
            raise InvoiceAssemblyError(
                f"usage total of {total.account_id}/{total.period} given for {account.id}/{period}"
            )
        key = (total.contract_id, total.charge_id)
        if key in seen:
            # Two totals of one aggregate cannot be merged: price() is not additive.
            raise InvoiceAssemblyError(
                f"two usage totals for charge {total.charge_id!r} under contract {total.contract_id!r}"
            )
        seen.add(key)
        if total.event_count < 0:
            raise InvoiceAssemblyError(f"negative event count for charge {total.charge_id!r}")
        if total.event_count == 0:
            # A placeholder row carries no activity, but it must not carry money either.
            if total.aggregate or total.amount_exact:
                raise InvoiceAssemblyError(
                    f"usage total for charge {total.charge_id!r} has no events but a value"
                )
            continue
        active.append(total)
    return active


def _plan_of(contract: Contract, catalog: Catalog) -> Plan:
    try:
        return catalog.plans[contract.plan_id]
    except KeyError:
        raise InvoiceAssemblyError(
            f"contract {contract.id!r} uses unknown plan {contract.plan_id!r}"
        ) from None


def _currency_and_rounding(account: Account, period: str, plans: list[Plan]) -> tuple[str, RoundingMode]:
    """The one currency and rounding mode of the plans billed together (the catalog guarantees one)."""
    pairs = {(plan.currency, plan.rounding) for plan in plans}
    if len(pairs) != 1:
        raise InvoiceAssemblyError(
            f"contracts of {account.id} in {period} mix currencies or rounding modes: {sorted(pairs)}"
        )
    ((currency, mode),) = pairs
    minor_units(currency)  # fail before any line on a currency we cannot round
    return currency, mode


def _usage_lines(
    account: Account,
    catalog: Catalog,
    in_effect: Sequence[Contract],
    plans: dict[str, Plan],
    usage: Sequence[UsageTotal],
    money: _Rounder,
) -> list[_Line]:
    """One line per charge with activity: contracts in start order, each in its plan's charge order.

    A total is placed under the contract it was rated under, so when one plan
    spans a contract change its charge can appear once per contract.
    """
    by_key = {(total.contract_id, total.charge_id): total for total in usage}
    lines: list[_Line] = []
    for contract in in_effect:
        for charge in plans[contract.id].charges:
            total = by_key.pop((contract.id, charge.id), None)
            if total is not None:
                lines.append(_usage_line(total, charge, catalog, money))
    if by_key:
        raise InvoiceAssemblyError(
            f"usage of {account.id} under (contract, charge) {sorted(by_key)} matches no contract "
            "in effect in the period whose plan has that charge"
        )
    return lines


def _usage_line(total: UsageTotal, charge: Charge, catalog: Catalog, money: _Rounder) -> _Line:
    if total.meter != charge.meter:
        raise InvoiceAssemblyError(
            f"usage total for charge {charge.id!r} has meter {total.meter!r}, not {charge.meter!r}"
        )
    meter = catalog.meters.get(total.meter)
    if meter is None:
        raise InvoiceAssemblyError(f"usage total for charge {charge.id!r} has unknown meter {total.meter!r}")
    return _Line(
        kind="usage",
        charge_id=charge.id,
        description=charge.description or f"{meter.code} usage",
        amount=money(total.amount_exact),
        quantity=total.aggregate,
        unit=meter.unit,
        unit_price=charge.unit_price if charge.model == "flat" else None,
    )
