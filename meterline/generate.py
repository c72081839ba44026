"""Deterministic demo and benchmark data: a contract catalog and a month of raw usage.

`generate_catalog` builds a realistic catalog document: SaaS plans (graduated API
calls with included units, region-filtered storage, volume-priced seats counted
as unique active users, SMS packages, a platform fee) and telecom plans (voice per
started minute with peak/off-peak and destination prices, SMS packages), in EUR,
USD, GBP and a few JPY, for accounts across time zones from America/New_York to
Pacific/Auckland, with minimum commitments, discounts, one-time items, contracts
starting mid-month and mid-period plan changes.

`generate_events` streams native-JSON usage lines for one month of any catalog:
it derives, per contract and charge, event templates whose attributes match that
charge's filters, then fills them in a tight loop (pre-rendered fragments, no
per-event JSON encoding) because benchmarks generate millions of events. Exact
duplicates and bad records are mixed in at the requested rates.

Randomness uses floats (`random.Random`), money and quantities never do: they are
written as decimal text. The same arguments always give the same bytes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cache
from typing import Any, Final

import orjson

from meterline import reasons
from meterline.catalog import Catalog, Charge, Meter, Plan, period_bounds, zone
from meterline.catalog_file import parse_catalog
from meterline.currency import minor_units

__all__ = ["BAD_REASONS", "generate_catalog", "generate_events", "planned_counts"]

# Bad records rotate over these, in this order (each record has exactly one defect).
BAD_REASONS: Final = (
    reasons.MALFORMED,
    reasons.MISSING_FIELD,
    reasons.INVALID_TIMESTAMP,
    reasons.INVALID_QUANTITY,
    reasons.UNKNOWN_ACCOUNT,
    reasons.UNKNOWN_METER,
)

# --------------------------------------------------------------------------- catalog

_CURRENCIES: Final = ("EUR", "USD", "GBP", "JPY")
_CURRENCY_WEIGHTS: Final = (45, 30, 20, 5)
# Price levels per currency; prices are written in EUR and scaled exactly.
_PRICE_SCALE: Final = {"EUR": Decimal(1), "USD": Decimal("1.1"), "GBP": Decimal("0.9"), "JPY": Decimal(150)}
# USD plans round half-up to show both modes; one currency keeps one mode, so a
# plan change within a currency never mixes modes in a period.
_ROUNDING: Final = {"EUR": "half_even", "USD": "half_up", "GBP": "half_even", "JPY": "half_even"}
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
# Calling codes: a telecom plan's domestic destinations, and the international ones.
_DOMESTIC_PREFIXES: Final = {"EUR": ("33", "49", "34"), "USD": ("1",), "GBP": ("44",), "JPY": ("81",)}
_ALL_PREFIXES: Final = ("1", "33", "34", "44", "49", "61", "64", "81")

_NAME_WORDS: Final = (
    ("Acme", "Blue", "Nordic", "Quantum", "Silver", "Atlas", "Pioneer", "Harbor", "Summit", "Vertex"),
    ("Analytics", "Logistics", "Telecom", "Labs", "Systems", "Retail", "Media", "Health", "Energy", "Foods"),
    ("SAS", "GmbH", "Ltd", "Inc", "KK", "SL", "LLC", "BV"),
)


def _price(eur_text: str, currency: str) -> str:
    """A unit price written in EUR, scaled exactly to the currency's level."""
    return format((Decimal(eur_text) * _PRICE_SCALE[currency]).normalize(), "f")


def _amount(eur_text: str, currency: str) -> str:
    """A money amount scaled to the currency and rounded to its minor units."""
    minor = Decimal(1).scaleb(-minor_units(currency))
    return format((Decimal(eur_text) * _PRICE_SCALE[currency]).quantize(minor, ROUND_HALF_EVEN), "f")


def _meters() -> list[dict[str, Any]]:
    return [
        {"code": "api_calls", "unit": "call", "aggregation": "sum"},
        {"code": "storage", "unit": "GB-hour", "aggregation": "sum", "value_property": "gb_hours"},
        {"code": "active_users", "unit": "user", "aggregation": "unique_count", "value_property": "user_id"},
        {"code": "sms", "unit": "message", "aggregation": "count"},
        {"code": "voice", "unit": "minute", "aggregation": "sum", "source_unit": "second"},
    ]


def _saas_pro(currency: str) -> dict[str, Any]:
    c, suffix = currency, currency.lower()
    return {
        "id": f"saas-pro-{suffix}",
        "currency": c,
        "rounding": _ROUNDING[c],
        "charges": [
            {
                "id": f"api-pro-{suffix}",
                "meter": "api_calls",
                "model": "graduated",
                "included": "1000",
                "tiers": [
                    {"up_to": "100000", "unit_price": _price("0.001", c)},
                    {"unit_price": _price("0.0005", c), "flat_fee": _price("5", c)},
                ],
            },
            {
                "id": f"storage-eu-pro-{suffix}",
                "meter": "storage",
                "model": "flat",
                "unit_price": _price("0.02", c),
                "filters": {"attributes": {"region": ["eu-west", "eu-central"]}},
            },
            {
                "id": f"storage-pro-{suffix}",
                "meter": "storage",
                "model": "flat",
                "unit_price": _price("0.025", c),
            },
            {
                "id": f"seats-pro-{suffix}",
                "meter": "active_users",
                "model": "volume",
                "tiers": [
                    {"up_to": "10", "unit_price": _price("8", c)},
                    {"up_to": "50", "unit_price": _price("7", c)},
                    {"unit_price": _price("6", c)},
                ],
            },
            {
                "id": f"sms-pro-{suffix}",
                "meter": "sms",
                "model": "package",
                "package_size": "100",
                "package_price": _price("2", c),
                "included": "50",
            },
        ],
        "recurring": [
            {"id": f"platform-pro-{suffix}", "amount": _amount("499", c), "description": "Platform fee"}
        ],
    }


def _saas_starter(currency: str) -> dict[str, Any]:
    c, suffix = currency, currency.lower()
    return {
        "id": f"saas-starter-{suffix}",
        "currency": c,
        "rounding": _ROUNDING[c],
        "charges": [
            {
                "id": f"api-starter-{suffix}",
                "meter": "api_calls",
                "model": "graduated",
                "included": "500",
                "tiers": [
                    {"up_to": "10000", "unit_price": _price("0.002", c)},
                    {"unit_price": _price("0.001", c)},
                ],
            },
            {
                "id": f"storage-starter-{suffix}",
                "meter": "storage",
                "model": "flat",
                "unit_price": _price("0.03", c),
            },
            {
                "id": f"seats-starter-{suffix}",
                "meter": "active_users",
                "model": "flat",
                "unit_price": _price("9", c),
            },
            {
                "id": f"sms-starter-{suffix}",
                "meter": "sms",
                "model": "package",
                "package_size": "100",
                "package_price": _price("2.5", c),
            },
        ],
        "recurring": [
            {"id": f"platform-starter-{suffix}", "amount": _amount("49", c), "description": "Platform fee"}
        ],
    }


def _telecom(currency: str) -> dict[str, Any]:
    c, suffix = currency, currency.lower()
    domestic = list(_DOMESTIC_PREFIXES[c])
    international = [prefix for prefix in _ALL_PREFIXES if prefix not in domestic]
    per_started_minute = {"increment": "1", "minimum": "1"}
    return {
        "id": f"telecom-{suffix}",
        "currency": c,
        "rounding": _ROUNDING[c],
        "charges": [
            {
                "id": f"voice-peak-{suffix}",
                "meter": "voice",
                "model": "flat",
                "unit_price": _price("0.05", c),
                "filters": {
                    "destination_prefix": domestic,
                    "local_time": {
                        "days": ["mon", "tue", "wed", "thu", "fri"],
                        "from": "08:00",
                        "to": "20:00",
                    },
                },
                "rounding": per_started_minute,
            },
            {
                "id": f"voice-offpeak-{suffix}",
                "meter": "voice",
                "model": "flat",
                "unit_price": _price("0.02", c),
                "filters": {"destination_prefix": domestic},
                "rounding": per_started_minute,
            },
            {
                "id": f"voice-intl-{suffix}",
                "meter": "voice",
                "model": "flat",
                "unit_price": _price("0.15", c),
                "filters": {"destination_prefix": international},
                "rounding": per_started_minute,
            },
            {
                "id": f"sms-telecom-{suffix}",
                "meter": "sms",
                "model": "package",
                "package_size": "250",
                "package_price": _price("4", c),
                "included": "100",
            },
        ],
        "recurring": [{"id": f"line-{suffix}", "amount": _amount("15", c), "description": "Line rental"}],
    }


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
    plans: list[dict[str, Any]] = []
    for currency in _CURRENCIES:
        plans += [_saas_starter(currency), _saas_pro(currency), _telecom(currency)]
    first, following = period_bounds(month)
    days_in_month = (following - first).days
    documents: list[dict[str, Any]] = []
    for index in range(accounts):
        if index < len(_SHOWCASE):
            shape = _SHOWCASE[index]
        else:
            currency = rng.choices(_CURRENCIES, _CURRENCY_WEIGHTS)[0]
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
        documents.append(account)
    return {"meters": _meters(), "plans": plans, "accounts": documents}


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
            doc["minimum_commitment"] = _amount(rng.choice(("100", "250", "1000")), c)
        return doc

    if shape.pattern == "starts_mid_month":
        contracts = [contract(1, plan, mid_month, None)]
    elif shape.pattern == "changes_mid_month":
        contracts = [contract(1, plan, earlier, mid_month), contract(2, other_plan, mid_month, None)]
    elif shape.pattern == "renewed_at_month_start":
        # The old contract ends before the month, so it may even bill in another currency.
        old_currency = rng.choice([cur for cur in _CURRENCIES if cur != c]).lower()
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
                "amount": _amount(price, c),
                "date": day.isoformat(),
                "description": item,
            }
        ]
    return contracts


# --------------------------------------------------------------------------- events

_GOOD, _DUPLICATE, _BAD = 0, 1, 2
_RING: Final = 8192  # duplicates re-send one of the last _RING good events
_PICK_TABLE: Final = 1 << 16  # at least; always a power of two
_QUANTITIES: Final = 256  # size of every quantity pool (indexed by 8 random bits)
_MAX_ATTRIBUTES: Final = 256  # attribute pools are powers of two up to this (8 random bits)
_METER_WEIGHTS: Final = {"api_calls": 5.0, "voice": 6.0, "storage": 2.0, "active_users": 3.0, "sms": 2.0}
# Values for attributes a filter lists, when an event must match none of them.
_OTHER_VALUES: Final = {"region": ("us-east", "us-west", "ap-south")}


@dataclass(frozen=True, slots=True)
class _Template:
    """Pre-rendered parts of the events one charge of one contract receives."""

    head: str  # `"account_id":"…","meter":"…"`
    meter: str
    start: int  # epoch seconds, inclusive: when the contract is in effect in the month
    span: int
    quantities: Sequence[str]  # _QUANTITIES `,"quantity":…` fragments (empty when omitted)
    attributes: Sequence[str]  # `,"attributes":{…}` fragments (empty when none), a power of two of them
    has_quantity: bool


def planned_counts(events: int, duplicate_rate: float = 0.05, bad_rate: float = 0.01) -> dict[str, int]:
    """What `generate_events` emits for these arguments: total, duplicates, bad records by reason.

    `valid` events are unique and well-formed; for a catalog from `generate_catalog`
    every one of them is rated.
    """
    duplicates, bad = _split(events, duplicate_rate, bad_rate)
    counts = {"events_in": events, "valid": events - duplicates - bad, "duplicates": duplicates}
    for position, reason in enumerate(BAD_REASONS):
        counts[f"rejected.{reason}"] = bad // len(BAD_REASONS) + (
            1 if position < bad % len(BAD_REASONS) else 0
        )
    return counts


def _split(events: int, duplicate_rate: float, bad_rate: float) -> tuple[int, int]:
    if events < 0 or not 0 <= duplicate_rate <= 1 or not 0 <= bad_rate <= 1:
        raise ValueError("events must be >= 0 and rates between 0 and 1")
    duplicates, bad = round(events * duplicate_rate), round(events * bad_rate)
    if duplicates + bad > events:
        raise ValueError("duplicate_rate + bad_rate must not exceed 1")
    return duplicates, bad


def generate_events(
    catalog_doc: Mapping[str, Any],
    events: int,
    seed: int,
    month: str = "2026-10",
    duplicate_rate: float = 0.05,
    bad_rate: float = 0.01,
) -> Iterator[bytes]:
    """`events` native-JSON lines (bytes, no newline) of usage in `month` for a catalog.

    Good events fall while a contract is in effect and carry the attributes its
    charges' filters need. `round(events * duplicate_rate)` lines are exact re-sends
    of earlier good events; `round(events * bad_rate)` are bad records rotating over
    BAD_REASONS. See :func:`planned_counts`.
    """
    duplicates, bad = _split(events, duplicate_rate, bad_rate)
    rng = random.Random(seed)
    catalog = parse_catalog(catalog_doc, source="generated catalog")
    templates, weights = _templates(catalog, month, rng)
    if not templates:
        raise ValueError(f"no account has a contract in effect in {month}")
    size = _PICK_TABLE
    while size < 4 * len(templates):
        size *= 2
    table = rng.choices(templates, weights, k=size)
    kinds = bytearray(events)  # all _GOOD; then distinct random positions for the others
    if 2 * (duplicates + bad) > events:
        special = rng.sample(range(events), duplicates + bad)
        kinds_of_special = [_BAD] * bad + [_DUPLICATE] * duplicates
        for position, kind in zip(special, kinds_of_special, strict=True):
            kinds[position] = kind
    else:
        # Faster than random.sample for the usual few percent: retry the rare collisions.
        for kind, count in ((_BAD, bad), (_DUPLICATE, duplicates)):
            while count:
                position = int(rng.random() * events)
                if not kinds[position]:
                    kinds[position] = kind
                    count -= 1
    return _stream(catalog, month, rng, table, kinds, f"ev{seed & 0xFFFFFFFF:x}-")


def _stream(
    catalog: Catalog,
    month: str,
    rng: random.Random,
    templates: list[_Template],
    kinds: bytearray,
    id_prefix: str,
) -> Iterator[bytes]:
    # Timestamps are rendered from a day table and an hh:mm:ss table: no datetime per event.
    first, _ = period_bounds(month)
    base_day = first - timedelta(days=2)
    base = int(datetime(base_day.year, base_day.month, base_day.day, tzinfo=UTC).timestamp())
    days = [f"{base_day + timedelta(days=offset):%Y-%m-%d}T" for offset in range(36)]
    clock = _clock_table()
    bad_maker = _BadRecords(catalog, templates, rng)

    # Hot loop: one 64-bit draw picks the template (low bits), the instant (32 bits
    # scaled to the contract's span), the quantity (8 bits) and the attributes (8 bits).
    draw = rng.getrandbits
    # Plain tuples: unpacking one is cheaper than reading dataclass attributes.
    table = [(t.head, t.start, t.span, t.quantities, t.attributes, len(t.attributes) - 1) for t in templates]
    table_mask = len(table) - 1
    ring_mask = _RING - 1
    ring: list[bytes] = [b""] * _RING
    good = 0  # good events emitted so far (the ring holds the latest of them)
    owed = 0  # duplicates postponed because no good event had been sent yet
    serial = 0
    bad_count = 0
    for kind in kinds:
        if kind == _DUPLICATE or (owed and good and kind == _GOOD):
            if good:
                if kind == _GOOD:
                    owed -= 1
                yield ring[draw(32) % min(good, _RING)]
                continue
            owed += 1  # nothing to re-send yet: send a good event now, the duplicate later
        bits = draw(64)
        head, start, span, quantities, attributes, attributes_mask = table[bits & table_mask]
        day, second = divmod(start + (((bits >> 16) & 0xFFFFFFFF) * span >> 32) - base, 86400)
        serial += 1
        line = (
            f'{{"event_id":"{id_prefix}{serial}",{head}{quantities[(bits >> 48) & 255]}'
            f',"timestamp":"{days[day]}{clock[second]}"{attributes[(bits >> 56) & attributes_mask]}}}'
        ).encode()
        if kind == _BAD:
            yield bad_maker.spoil(line, BAD_REASONS[bad_count % len(BAD_REASONS)], bad_count)
            bad_count += 1
            continue
        ring[good & ring_mask] = line
        good += 1
        yield line


@cache
def _clock_table() -> list[str]:
    """`hh:mm:ssZ` for every second of a day."""
    minutes = [f"{h:02d}:{m:02d}:" for h in range(24) for m in range(60)]
    seconds = [f"{s:02d}Z" for s in range(60)]
    return [minute + second for minute in minutes for second in seconds]


class _BadRecords:
    """Turns a good line into a record with exactly one defect (this path is rare, so it may be slow)."""

    def __init__(self, catalog: Catalog, table: Sequence[_Template], rng: random.Random) -> None:
        self.rng = rng
        self.unknown_meter = "bandwidth"
        while self.unknown_meter in catalog.meters:
            self.unknown_meter += "_x"
        # invalid_quantity needs a meter that reads a quantity (count meters may ignore it).
        self.quantity_meters = sorted({template.meter for template in table if template.has_quantity})

    def spoil(self, line: bytes, reason: str, number: int) -> bytes:
        event: dict[str, Any] = json.loads(line)
        variant = number // len(BAD_REASONS)
        if reason == reasons.MALFORMED:
            return line[: len(line) // 2] if variant % 3 else b'{"event_id": "' + line[:20]
        if reason == reasons.MISSING_FIELD:
            field = ("account_id", "meter", "event_id", "timestamp")[variant % 4]
            if variant % 2:
                event[field] = ""  # empty counts as missing
            else:
                del event[field]
        elif reason == reasons.INVALID_TIMESTAMP:
            stamp: str = event["timestamp"]
            event["timestamp"] = (stamp.removesuffix("Z"), stamp.replace("T", "T99:"), "yesterday")[
                variant % 3
            ]
        elif reason == reasons.INVALID_QUANTITY:
            if self.quantity_meters and event["meter"] not in self.quantity_meters:
                event["meter"] = self.quantity_meters[0]
            event["quantity"] = ("-5", "abc", "NaN", -2, "Infinity")[variant % 5]
        elif reason == reasons.UNKNOWN_ACCOUNT:
            event["account_id"] = f"acct-unknown-{number}"
        elif reason == reasons.UNKNOWN_METER:
            event["meter"] = self.unknown_meter
        return json.dumps(event, separators=(",", ":")).encode()


def _templates(catalog: Catalog, month: str, rng: random.Random) -> tuple[list[_Template], list[float]]:
    """One template per (contract in effect in the month, charge), weighted for a realistic mix."""
    first, following = period_bounds(month)
    month_days = (following - first).days
    quantity_pools = _QuantityPools(rng)
    shared: dict[tuple[str, str], list[str]] = {}

    def attribute_pools(plan: Plan, charge: Charge, meter: Meter, users: Sequence[str]) -> list[str]:
        # Only unique_count values belong to one account; other pools are shared per charge.
        if meter.aggregation == "unique_count":
            return _attribute_fragments(rng, plan, charge, meter, users)
        key = (plan.id, charge.id)
        if key not in shared:
            shared[key] = _attribute_fragments(rng, plan, charge, meter, users)
        return shared[key]

    templates: list[_Template] = []
    weights: list[float] = []
    for account in catalog.accounts.values():
        # Heavy-tailed activity: a few accounts send most of the traffic.
        activity = min(rng.paretovariate(1.5), 20.0)
        users = [f"u-{rng.getrandbits(24):06x}" for _ in range(rng.choice((3, 8, 12, 40, 80)))]
        for contract in account.contracts:
            start = max(contract.start, first)
            end = min(contract.end, following) if contract.end else following
            if start >= end:
                continue
            lo, hi = _local_midnight(start, account.timezone), _local_midnight(end, account.timezone)
            plan = catalog.plans[contract.plan_id]
            share = (end - start).days / month_days
            per_meter: dict[str, int] = {}
            for charge in plan.charges:
                per_meter[charge.meter] = per_meter.get(charge.meter, 0) + 1
            for charge in plan.charges:
                meter = catalog.meters[charge.meter]
                head = f'"account_id":{json.dumps(account.id)},"meter":{json.dumps(meter.code)}'
                templates.append(
                    _Template(
                        head=head,
                        meter=meter.code,
                        start=lo,
                        span=hi - lo,
                        quantities=quantity_pools.for_meter(meter),
                        attributes=attribute_pools(plan, charge, meter, users),
                        has_quantity=meter.aggregation in ("sum", "max"),
                    )
                )
                weight = _METER_WEIGHTS.get(meter.code, 1.0) / per_meter[charge.meter]
                weights.append(activity * share * weight)
    return templates, weights


def _local_midnight(day: date, timezone: str) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=zone(timezone)).timestamp())


class _QuantityPools:
    """Shared pools of `,"quantity":…` fragments, by kind of meter."""

    def __init__(self, rng: random.Random) -> None:
        # Call durations in seconds: mostly short, a long tail, a few unanswered zero-length.
        self.seconds = [
            f',"quantity":{0 if rng.random() < 0.01 else min(int(rng.expovariate(1 / 150)) + 1, 7200)}'
            for _ in range(_QUANTITIES)
        ]
        # Decimal text with thousandths (e.g. GB-hours), built from integers: no float digits.
        self.fractional = [f',"quantity":"{m // 1000}.{m % 1000:03d}"' for m in _ints(rng, 1, 50_000)]
        # Counts: as JSON ints and as decimal strings, both accepted.
        self.whole = [
            f',"quantity":{n}' if i % 2 else f',"quantity":"{n}"'
            for i, n in enumerate(min(int(rng.expovariate(1 / 40)) + 1, 2000) for _ in range(_QUANTITIES))
        ]
        self.none = ([""] * 7 + [',"quantity":1']) * (_QUANTITIES // 8)  # count meters: quantity optional

    def for_meter(self, meter: Meter) -> Sequence[str]:
        if meter.aggregation in ("count", "unique_count"):
            return self.none
        if meter.source_unit in ("second", "millisecond"):
            return self.seconds
        if "GB" in meter.unit or meter.unit.endswith("hour"):
            return self.fractional
        return self.whole


def _ints(rng: random.Random, low: int, high: int) -> list[int]:
    return [rng.randint(low, high) for _ in range(_QUANTITIES)]


def _attribute_fragments(
    rng: random.Random, plan: Plan, charge: Charge, meter: Meter, users: Sequence[str]
) -> list[str]:
    """`,"attributes":{…}` fragments that make an event match `charge` (and not an earlier one by filters).

    A power-of-two pool, so the hot loop picks one with a bit mask.
    """
    siblings = [other for other in plan.charges if other.meter == charge.meter]
    # Values per attribute key some charge of this meter filters on: an event must
    # state each key, with a value the charge lists or, if it lists none, one no sibling lists.
    choices: list[tuple[str, list[str]]] = []
    for key in sorted({key for other in siblings for key in other.filters.attributes}):
        wanted = charge.filters.attributes.get(key)
        if wanted:
            choices.append((key, sorted(wanted)))  # sorted: frozenset order is not stable
        else:
            listed = {value for other in siblings for value in other.filters.attributes.get(key, ())}
            pool = [value for value in _OTHER_VALUES.get(key, ()) if value not in listed]
            choices.append((key, pool or [f"other-{key}"]))
    prefixes = list(charge.filters.destination_prefixes)
    if not prefixes and any(other.filters.destination_prefixes for other in siblings):
        prefixes = [_unlisted_prefix([p for other in siblings for p in other.filters.destination_prefixes])]
    counted = meter.aggregation == "unique_count"
    if not choices and not prefixes and not counted:
        return [""]
    size = _MAX_ATTRIBUTES
    if counted:
        size = 32
        while size < min(len(users), _MAX_ATTRIBUTES):
            size *= 2
    fragments: list[str] = []
    for number in range(size):
        attributes = {key: values[rng.randrange(len(values))] for key, values in choices}
        if prefixes:
            attributes["destination"] = f"{prefixes[rng.randrange(len(prefixes))]}{_digits(rng)}"
        if counted:
            # Every user of the account appears, so seat counts reach the account's size.
            attributes[meter.value_property] = users[number % len(users)]
        fragments.append(f',"attributes":{orjson.dumps(attributes).decode()}')
    return fragments


def _digits(rng: random.Random) -> int:
    """The subscriber part of a phone number (nine digits)."""
    return 100_000_000 + rng.getrandbits(30) % 900_000_000


def _unlisted_prefix(prefixes: Sequence[str]) -> str:
    for candidate in ("999", "888", "777", "0"):
        if not any(candidate.startswith(prefix) for prefix in prefixes):
            return candidate
    return "+"
