"""The generated catalog: accounts across time zones, each with effective-dated
contracts on the plans of generator.plans, at least one in effect in the month.

Contracts start mid-month, change plan mid-period, renew at the month start or end
mid-month; some carry discounts, minimum commitments and one-time items.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Final

from generator.plans import CURRENCIES, CURRENCY_WEIGHTS, amount, meters, plans
from meterline.kernel.catalog import period_bounds

__all__ = ["generate_catalog"]

_TIMEZONES: Final = {
    "EUR": ("Europe/Paris", "Europe/Berlin", "Europe/Madrid"),
    "USD": ("America/New_York", "America/Chicago", "America/Los_Angeles", "Pacific/Auckland"),
    "GBP": ("Europe/London", "Pacific/Auckland"),
    "JPY": ("Asia/Tokyo",),
}
_TAX_RATES: Final = {
    "Europe/Paris": "20",
    "Europe/Berlin": "19",
    "Europe/Madrid": "21",
    "Europe/London": "20",
    "America/New_York": "8.875",
    "America/Chicago": "10.25",
    "America/Los_Angeles": None,
    "Pacific/Auckland": "15",
    "Asia/Tokyo": "10",
}
# The demo's one seller, and where its customers are: a street, city, postcode and
# country per zone, and the VAT id format of the countries that have one.
SELLER: Final = {
    "id": "meterline-demo",
    "legal_name": "Meterline Demo SAS",
    "address": {"lines": ["10 rue de la Paix"], "city": "Paris", "postcode": "75002", "country": "FR"},
    "vat_id": "FR32123456789",
    "iban": "FR7630006000011234567890189",
}
_ADDRESSES: Final = {
    "Europe/Paris": ("Avenue des Champs-Élysées", "Paris", "75008", "FR"),
    "Europe/Berlin": ("Friedrichstraße", "Berlin", "10117", "DE"),
    "Europe/Madrid": ("Calle de Alcalá", "Madrid", "28014", "ES"),
    "Europe/London": ("Baker Street", "London", "NW1 6XE", "GB"),
    "America/New_York": ("Broadway", "New York, NY", "10006", "US"),
    "America/Chicago": ("Michigan Avenue", "Chicago, IL", "60611", "US"),
    "America/Los_Angeles": ("Sunset Boulevard", "Los Angeles, CA", "90028", "US"),
    "Pacific/Auckland": ("Queen Street", "Auckland", "1010", "NZ"),
    "Asia/Tokyo": ("Chiyoda 1-1", "Tokyo", "100-0001", "JP"),
}
_VAT_DIGITS: Final = {"FR": 11, "DE": 9, "ES": 9, "GB": 9}
_NAME_WORDS: Final = (
    ("Acme", "Blue", "Nordic", "Quantum", "Silver", "Atlas", "Pioneer", "Harbor", "Summit", "Vertex"),
    ("Analytics", "Logistics", "Telecom", "Labs", "Systems", "Retail", "Media", "Health", "Energy", "Foods"),
    ("SAS", "GmbH", "Ltd", "Inc", "KK", "SL", "LLC", "BV"),
)


@dataclass(frozen=True, slots=True)
class _AccountShape:
    family: str  # saas | telecom
    currency: str
    timezone: str
    pattern: str  # how its contracts relate to the month, see _contracts


# The first accounts show every feature even in a tiny catalog; the rest are drawn.
_SHOWCASE: Final = (
    _AccountShape("saas", "EUR", "Europe/Paris", "established"),
    _AccountShape("telecom", "GBP", "Pacific/Auckland", "established"),
    _AccountShape("saas", "USD", "America/New_York", "starts_mid_month"),
    _AccountShape("saas", "EUR", "Europe/Berlin", "changes_mid_month"),
    _AccountShape("telecom", "EUR", "Europe/Paris", "renewed_at_month_start"),
    _AccountShape("saas", "JPY", "Asia/Tokyo", "established"),
    _AccountShape("telecom", "USD", "America/New_York", "changes_mid_month"),
    _AccountShape("saas", "GBP", "Europe/London", "started_mid_month_earlier"),
)
_PATTERNS: Final = (
    "established",
    "started_mid_month_earlier",
    "starts_mid_month",
    "changes_mid_month",
    "renewed_at_month_start",
    "ends_mid_month",
)
_PATTERN_WEIGHTS: Final = (66, 10, 8, 8, 5, 3)


def _month_start(month: str, months_back: int) -> date:
    first, _ = period_bounds(month)
    index = first.year * 12 + first.month - 1 - months_back
    return date(index // 12, index % 12 + 1, 1)


def generate_catalog(accounts: int, seed: int, month: str = "2026-10") -> dict[str, Any]:
    """A catalog document with `accounts` accounts, each with a contract in effect in `month`."""
    if accounts < 1:
        raise ValueError("accounts must be at least 1")
    rng = random.Random(seed)
    first, following = period_bounds(month)
    days_in_month = (following - first).days
    documents: list[dict[str, Any]] = []
    for index in range(accounts):
        if index < len(_SHOWCASE):
            shape = _SHOWCASE[index]
        else:
            currency = rng.choices(CURRENCIES, CURRENCY_WEIGHTS)[0]
            shape = _AccountShape(
                family="saas" if rng.random() < 0.6 else "telecom",
                currency=currency,
                timezone=rng.choice(_TIMEZONES[currency]),
                pattern=rng.choices(_PATTERNS, _PATTERN_WEIGHTS)[0],
            )
        account_id = f"acct-{index + 1:05d}"
        name = " ".join(rng.choice(words) for words in _NAME_WORDS)
        account: dict[str, Any] = {
            "id": account_id,
            "name": name,
            "timezone": shape.timezone,
            "net_terms_days": rng.choice((30, 30, 30, 14, 45)),
            "contracts": _contracts(rng, account_id, shape, month, days_in_month),
        }
        tax_rate = _TAX_RATES[shape.timezone]
        if tax_rate is not None:
            account["tax_rate"] = tax_rate
        account["seller"] = SELLER["id"]
        account["buyer"] = _buyer(index, name, shape.timezone)
        documents.append(account)
    return {"meters": meters(), "plans": plans(), "sellers": [SELLER], "accounts": documents}


def _buyer(index: int, name: str, timezone: str) -> dict[str, Any]:
    """Legal details made from the account's number, not the random stream: adding them
    left every other generated value as it was."""
    street, city, postcode, country = _ADDRESSES[timezone]
    address = {"lines": [f"{index + 1} {street}"], "city": city, "postcode": postcode, "country": country}
    buyer: dict[str, Any] = {"legal_name": name, "address": address}
    digits = _VAT_DIGITS.get(country)
    if digits is not None:
        buyer["vat_id"] = f"{country}{index + 1:0{digits}d}"
    return buyer


def _contracts(
    rng: random.Random, account_id: str, shape: _AccountShape, month: str, days_in_month: int
) -> list[dict[str, Any]]:
    """Effective-dated contracts of one account; at least one is in effect during `month`."""
    c, suffix = shape.currency, shape.currency.lower()
    if shape.family == "telecom":
        plan, other_plan = f"telecom-{suffix}", f"telecom-{suffix}"
    else:
        tiers = [f"saas-starter-{suffix}", f"saas-pro-{suffix}"]
        rng.shuffle(tiers)
        plan, other_plan = tiers
    first, following = period_bounds(month)
    mid_month = first + timedelta(days=rng.randint(5, days_in_month - 6))
    earlier = _month_start(month, rng.randint(1, 14))

    def contract(number: int, plan_id: str, start: date, end: date | None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": f"{account_id}-c{number}",
            "plan": plan_id,
            "start": start.isoformat(),
            "end": end.isoformat() if end else None,
        }
        if rng.random() < 0.25:
            doc["discount_percent"] = rng.choice(("5", "10", "12.5"))
        if rng.random() < 0.2:
            doc["minimum_commitment"] = amount(rng.choice(("100", "250", "1000")), c)
        return doc

    if shape.pattern == "starts_mid_month":
        contracts = [contract(1, plan, mid_month, None)]
    elif shape.pattern == "changes_mid_month":
        contracts = [contract(1, plan, earlier, mid_month), contract(2, other_plan, mid_month, None)]
    elif shape.pattern == "renewed_at_month_start":
        # The old contract ends before the month, so it may even bill in another currency.
        old_currency = rng.choice([cur for cur in CURRENCIES if cur != c]).lower()
        old_plan = f"telecom-{old_currency}" if shape.family == "telecom" else f"saas-starter-{old_currency}"
        contracts = [contract(1, old_plan, earlier, first), contract(2, plan, first, None)]
    elif shape.pattern == "started_mid_month_earlier":
        contracts = [contract(1, plan, earlier + timedelta(days=rng.randint(3, 25)), None)]
    elif shape.pattern == "ends_mid_month":
        contracts = [contract(1, plan, earlier, mid_month)]
    else:
        contracts = [contract(1, plan, earlier, None)]
    last = contracts[-1]
    if rng.random() < 0.15 or shape.pattern == "changes_mid_month":
        # A one-time item in the month, while the contract it belongs to is in effect.
        start = max(date.fromisoformat(last["start"]), first)
        end = date.fromisoformat(last["end"]) if last["end"] else following
        day = start + timedelta(days=rng.randrange((end - start).days))
        item, price = rng.choice((("router", "149"), ("onboarding", "500"), ("sim-cards", "25")))
        last["one_time"] = [
            {
                "id": f"{item}-{day:%Y%m%d}",
                "amount": amount(price, c),
                "date": day.isoformat(),
                "description": item,
            }
        ]
    return contracts
