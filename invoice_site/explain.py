"""Each invoice line explained in the customer's terms, from the line and the catalog.

The rules are consolidation's invoice assembly (docs/catalog.md, "Invoice drafts"): a
usage line is round(price(A)) of its charge's aggregate, the minimum commitment tops the
usage lines up, recurring fees are prorated by active days, the discount is a percentage
of the subtotal S and the tax a percentage of S minus the discount. An explanation is
only given when recomputing it from today's catalog gives the stored amount (a catalog
changed since the invoice was made explains nothing rather than something wrong).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Final

from consolidation.currency import round_money
from invoice_site.model import Draft, Line
from invoice_site.money import Formatter
from meterline.kernel.catalog import Account, Catalog, Charge, Plan, Tier, period_bounds
from rating.pricing import price

__all__ = ["Explanation", "TierRow", "charge_index", "explain_line", "time_band_windows"]

_PRORATED: Final = re.compile(r"\((\d+)/(\d+) days\)$")
_MINIMUM: Final = re.compile(r"^Minimum commitment (\S+) [A-Z]{3}$")
_PERCENT: Final = re.compile(r"^(?:Discount|Tax) (\S+)%$")
_WEEKDAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True, slots=True)
class TierRow:
    """One tier's share of a usage line: quantity × unit price (+ its flat fee) = amount."""

    label: str
    quantity: str
    unit_price: str
    flat_fee: str | None
    amount: str


@dataclass(slots=True)
class Explanation:
    """Plain-text sentences (escaped when written) and, for tiered charges, the tier table."""

    sentences: list[str] = field(default_factory=list)
    tiers: list[TierRow] = field(default_factory=list)


def charge_index(catalog: Catalog) -> dict[str, tuple[Plan, Charge]]:
    """Charge ids are unique across a catalog."""
    return {charge.id: (plan, charge) for plan in catalog.plans.values() for charge in plan.charges}


def explain_line(
    line: Line,
    draft: Draft,
    lines: list[Line],
    account: Account | None,
    catalog: Catalog,
    charges: dict[str, tuple[Plan, Charge]],
    fmt: Formatter,
) -> Explanation:
    with localcontext() as context:
        context.prec = 200  # products of 18-place values, exact
        if line.kind == "usage":
            return _usage(line, draft, charges, fmt)
        if line.kind == "minimum_commitment":
            return _minimum(line, lines, fmt)
        if line.kind == "recurring":
            return _recurring(line, draft, account, catalog, fmt)
        if line.kind == "one_time":
            return _one_time(line, draft, account, fmt)
        if line.kind == "discount":
            return _discount(line, draft, fmt)
        if line.kind == "tax":
            return _tax(line, draft, fmt)
    return Explanation()


def _usage(line: Line, draft: Draft, charges: dict[str, tuple[Plan, Charge]], fmt: Formatter) -> Explanation:
    found = charges.get(line.charge_id or "")
    quantity = line.quantity
    if found is None or quantity is None:
        return Explanation()
    plan, charge = found
    unit = line.unit or ""
    exact = price(charge, quantity)
    if plan.currency != draft.currency or round_money(exact, draft.currency, plan.rounding) != line.amount:
        return Explanation(["Priced under the charge's terms when the usage was rated."])
    explanation = Explanation()
    said = explanation.sentences
    applies = _applies_to(charge)
    if applies:
        said.append(f"Applies to {applies}.")
    if charge.rounding is not None:
        minimum = charge.rounding.minimum
        said.append(
            f"Each event is rounded up to a multiple of {fmt.number(charge.rounding.increment)} {unit}"
            + (f", at least {fmt.number(minimum)} {unit}." if minimum else ".")
        )
    billable = max(quantity - charge.included, Decimal(0))
    if charge.included:
        said.append(
            f"{fmt.number(quantity)} {unit} used, {fmt.number(charge.included)} {unit} included: "
            f"{fmt.number(billable)} {unit} billable."
        )
    if charge.model == "flat" and charge.unit_price is not None:
        said.append(f"{fmt.number(billable)} {unit} × {fmt.exact(charge.unit_price)} = {fmt.exact(exact)}.")
    elif charge.model == "package" and charge.package_size and charge.package_price is not None:
        packages, remainder = divmod(billable, charge.package_size)  # billable >= 0: no sign trouble
        if remainder:
            packages += 1
        said.append(
            f"{fmt.number(billable)} {unit} in packages of {fmt.number(charge.package_size)}: "
            f"{fmt.number(packages)} × {fmt.exact(charge.package_price)} = {fmt.exact(exact)}."
        )
    elif charge.model == "graduated":
        explanation.tiers = _graduated(charge.tiers, billable, unit, fmt)
        said.append(f"Graduated: each {unit} at the price of its tier, {fmt.exact(exact)} in all.")
    elif charge.model == "volume":
        explanation.tiers = _volume(charge.tiers, billable, unit, fmt)
        said.append(f"Volume: all {fmt.number(billable)} {unit} at the price of the tier they reach.")
    if exact != line.amount:
        said.append(f"{fmt.exact(exact)} rounded to {fmt.money(line.amount)}.")
    return explanation


def _tier_label(lower: Decimal, upper: Decimal | None, unit: str, fmt: Formatter) -> str:
    """Tiers cover (lower, upper] of the billable quantity."""
    if upper is None:
        return f"above {fmt.number(lower)} {unit}"
    if not lower:
        return f"up to {fmt.number(upper)} {unit}"
    return f"above {fmt.number(lower)} up to {fmt.number(upper)} {unit}"


def _graduated(tiers: tuple[Tier, ...], billable: Decimal, unit: str, fmt: Formatter) -> list[TierRow]:
    rows: list[TierRow] = []
    lower = Decimal(0)
    for index, tier in enumerate(tiers):
        upper = tier.up_to if index < len(tiers) - 1 else None
        if billable <= lower:
            break
        in_tier = (billable if upper is None else min(billable, upper)) - lower
        amount = in_tier * tier.unit_price + tier.flat_fee
        rows.append(
            TierRow(
                label=_tier_label(lower, upper, unit, fmt),
                quantity=f"{fmt.number(in_tier)} {unit}",
                unit_price=fmt.exact(tier.unit_price),
                flat_fee=fmt.exact(tier.flat_fee) if tier.flat_fee else None,
                amount=fmt.exact(amount),
            )
        )
        if upper is None:
            break
        lower = upper
    return rows


def _volume(tiers: tuple[Tier, ...], billable: Decimal, unit: str, fmt: Formatter) -> list[TierRow]:
    if billable <= 0:
        return []
    lower = Decimal(0)
    for index, tier in enumerate(tiers):
        upper = tier.up_to if index < len(tiers) - 1 else None
        if upper is None or billable <= upper:
            amount = billable * tier.unit_price + tier.flat_fee
            return [
                TierRow(
                    label=_tier_label(lower, upper, unit, fmt),
                    quantity=f"{fmt.number(billable)} {unit}",
                    unit_price=fmt.exact(tier.unit_price),
                    flat_fee=fmt.exact(tier.flat_fee) if tier.flat_fee else None,
                    amount=fmt.exact(amount),
                )
            ]
        lower = upper
    return []


def _applies_to(charge: Charge) -> str:
    filters = charge.filters
    parts: list[str] = []
    if filters.destination_prefixes:
        parts.append("destinations starting " + ", ".join(filters.destination_prefixes))
    window = filters.local_time
    if window is not None:
        days = "every day" if window.days is None else ", ".join(_WEEKDAYS[d] for d in sorted(window.days))
        parts.append(f"{days} {window.start:%H:%M}–{window.end:%H:%M} local time")
    for key, values in sorted(filters.attributes.items()):
        parts.append(f"{key} in {', '.join(sorted(values))}")
    return "; ".join(parts)


def time_band_windows(charges: dict[str, tuple[Plan, Charge]], charge_id: str) -> list[Charge]:
    """The plan's charges with a daytime window (start before end) that price the same
    calls as `charge_id` (same meter, same destinations): the peak hours its events are
    told against. Empty: its price does not depend on the time of day."""
    found = charges.get(charge_id)
    if found is None:
        return []
    plan, charge = found
    prefixes = set(charge.filters.destination_prefixes)
    return [
        other
        for other in plan.charges
        if other.meter == charge.meter
        and other.filters.local_time is not None
        and other.filters.local_time.start < other.filters.local_time.end
        and (other is charge or set(other.filters.destination_prefixes) == prefixes)
    ]


def _minimum(line: Line, lines: list[Line], fmt: Formatter) -> Explanation:
    usage = sum((other.amount for other in lines if other.kind == "usage"), Decimal(0))
    match = _MINIMUM.match(line.description)
    if match is None:
        return Explanation([f"Usage lines total {fmt.money(usage)}; topped up by {fmt.money(line.amount)}."])
    commitment = Decimal(match.group(1))
    return Explanation(
        [
            f"Minimum commitment {fmt.money(commitment)}; usage lines total {fmt.money(usage)}.",
            f"True-up: {fmt.money(commitment)} − {fmt.money(usage)} = {fmt.money(line.amount)}.",
        ]
    )


def _recurring(
    line: Line, draft: Draft, account: Account | None, catalog: Catalog, fmt: Formatter
) -> Explanation:
    first, following = period_bounds(draft.period)
    days_in_period = (following - first).days
    fee_amount = None
    if account is not None:
        for contract in account.contracts:
            plan = catalog.plans.get(contract.plan_id)
            for fee in plan.recurring if plan is not None else ():
                if fee.id == line.charge_id:
                    fee_amount = fee.amount
    match = _PRORATED.search(line.description)
    if match is None:
        return Explanation([f"Whole period, {days_in_period} days."])
    active, total = int(match.group(1)), int(match.group(2))
    said = [f"Prorated: in effect {active} of {total} days."]
    if fee_amount is not None:
        prorated = f"{fmt.exact(fee_amount)} × {active} / {total}"
        said.append(f"{prorated} = {fmt.money(line.amount)} (rounded once).")
    return Explanation(said)


def _one_time(line: Line, draft: Draft, account: Account | None, fmt: Formatter) -> Explanation:
    first, following = period_bounds(draft.period)
    for contract in account.contracts if account is not None else ():
        for item in contract.one_time:
            if item.id == line.charge_id and first <= item.date < following:
                return Explanation([f"One-time charge dated {fmt.day(item.date)}."])
    return Explanation(["One-time charge."])


def _discount(line: Line, draft: Draft, fmt: Formatter) -> Explanation:
    match = _PERCENT.match(line.description)
    percent = f"{fmt.number(Decimal(match.group(1)))}%" if match else "The discount"
    return Explanation(
        [f"{percent} of the subtotal {fmt.money(draft.subtotal)} = {fmt.money(-line.amount)} off."]
    )


def _tax(line: Line, draft: Draft, fmt: Formatter) -> Explanation:
    match = _PERCENT.match(line.description)
    percent = f"{fmt.number(Decimal(match.group(1)))}%" if match else "Tax"
    base = draft.subtotal + draft.discount
    said = f"{percent} of the tax base {fmt.money(base)}"
    if draft.discount:
        said += f" (subtotal {fmt.money(draft.subtotal)} − discount {fmt.money(-draft.discount)})"
    return Explanation([f"{said} = {fmt.money(line.amount)}."])
