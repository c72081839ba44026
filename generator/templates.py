"""Event templates: the pre-rendered parts of the events each charge of each contract
in effect in the month receives (account and meter, the contract's span, quantity and
attribute fragments that make an event match that charge's filters), weighted for a
realistic mix of heavy and light accounts.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final

import orjson

from meterline.kernel.catalog import Catalog, Charge, Meter, Plan, period_bounds, zone

__all__ = ["Template", "event_templates"]

_QUANTITIES: Final = 256  # size of every quantity pool (indexed by 8 random bits)
_MAX_ATTRIBUTES: Final = 256  # attribute pools are powers of two up to this (8 random bits)
_METER_WEIGHTS: Final = {"api_calls": 5.0, "voice": 6.0, "storage": 2.0, "active_users": 3.0, "sms": 2.0}
# Values for attributes a filter lists, when an event must match none of them.
_OTHER_VALUES: Final = {"region": ("us-east", "us-west", "ap-south")}


@dataclass(frozen=True, slots=True)
class Template:
    """Pre-rendered parts of the events one charge of one contract receives."""

    head: str  # `"account_id":"…","meter":"…"`
    meter: str
    start: int  # epoch seconds, inclusive: when the contract is in effect in the month
    span: int
    quantities: Sequence[str]  # _QUANTITIES `,"quantity":…` fragments (empty when omitted)
    attributes: Sequence[str]  # `,"attributes":{…}` fragments (empty when none), a power of two of them
    has_quantity: bool


def event_templates(catalog: Catalog, month: str, rng: random.Random) -> tuple[list[Template], list[float]]:
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

    templates: list[Template] = []
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
                    Template(
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
