"""Reading, validating and building the contract catalog (docs/catalog.md).

A catalog document (YAML or JSON) is checked in two passes: the JSON Schema
`schemas/catalog.schema.json` (shape, types, decimal text), then the rules that
span objects (references, uniqueness, tier order, overlapping contracts, one
currency per billing period...). Every problem is a :class:`CatalogError`
naming the file, the path inside the document and the problem, so a user can
fix the catalog from one line of output.

Numbers are never floats: the YAML and JSON readers keep every number as its
decimal text, and `Decimal` values are built from that text.

Reading files is meterline.catalog_read, the schema pass meterline.catalog_validate,
and the keyed entities of the contracts topic meterline.catalog_entities; this
module builds the Catalog and keeps all their names importable from one place.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from datetime import date, time
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, NoReturn, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from meterline.catalog import (
    ZERO,
    Account,
    Aggregation,
    Catalog,
    Charge,
    ChargeFilters,
    Contract,
    EventRounding,
    LocalTimeWindow,
    Meter,
    OneTimeCharge,
    Plan,
    PricingModel,
    RecurringFee,
    RoundingMode,
    Tier,
)
from meterline.catalog_entities import ENTITY_VERSION, SECTIONS, catalog_entities, document_from_entities
from meterline.catalog_read import CatalogError, DocPath, format_path, read_catalog_document
from meterline.catalog_validate import catalog_schema, validate_document
from meterline.currency import is_currency

# Reading (catalog_read), the schema pass (catalog_validate) and the topic entities
# (catalog_entities) live in their own modules; their names stay importable from here.
__all__ = [
    "ENTITY_VERSION",
    "SECTIONS",
    "CatalogError",
    "catalog_entities",
    "catalog_schema",
    "document_from_entities",
    "format_path",
    "load_catalog",
    "parse_catalog",
    "read_catalog_document",
    "validate_document",
]

WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_INTEGER_DIGITS: Final = 20
_PLACES: Final = 18
_MAX_NET_TERMS_DAYS: Final = 3650

# Fields each pricing model needs, and the ones that would be silently ignored.
_MODEL_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "flat": ("unit_price",),
    "graduated": ("tiers",),
    "volume": ("tiers",),
    "package": ("package_size", "package_price"),
}
_PRICE_FIELDS: Final = ("unit_price", "tiers", "package_size", "package_price")


def load_catalog(path: str | Path) -> Catalog:
    """Read, validate and build a catalog file."""
    return parse_catalog(read_catalog_document(path), source=Path(path).name)


# --------------------------------------------------------------------------- building


def parse_catalog(document: Mapping[str, Any], source: str = "<catalog>") -> Catalog:
    """Validate a catalog document (schema, then cross-object rules) and build the Catalog."""
    return _CatalogBuilder(source).build(validate_document(document, source))


def _decimal_places(value: Decimal) -> int:
    """Significant decimal places: "1.500" has 1 (trailing zeros do not count)."""
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # the schema admits finite numbers only
    if not value:
        return 0
    places = -exponent
    for digit in reversed(digits):
        if places <= 0 or digit != 0:
            break
        places -= 1
    return max(places, 0)


def _month_index(day: date) -> int:
    return day.year * 12 + day.month - 1


def _month_text(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def _window_text(contract: Contract) -> str:
    return f"{contract.start.isoformat()} to {contract.end.isoformat() if contract.end else 'open end'}"


class _CatalogBuilder:
    """Builds the dataclasses from a schema-valid document, checking the rules the schema cannot."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.meters: dict[str, Meter] = {}
        self.plans: dict[str, Plan] = {}
        self.accounts: dict[str, Account] = {}
        # Catalog-wide id spaces, id -> path of its first definition.
        self.charge_paths: dict[str, DocPath] = {}
        self.contract_paths: dict[str, DocPath] = {}

    def fail(self, path: DocPath, problem: str) -> NoReturn:
        raise CatalogError(self.source, format_path(path), problem)

    def build(self, document: Mapping[str, Any]) -> Catalog:
        for index, spec in enumerate(document["meters"]):
            meter = self.meter(("meters", index), spec)
            self.meters[meter.code] = meter
        for index, spec in enumerate(document["plans"]):
            plan = self.plan(("plans", index), spec)
            self.plans[plan.id] = plan
        for index, spec in enumerate(document["accounts"]):
            account = self.account(("accounts", index), spec)
            self.accounts[account.id] = account
        return Catalog(meters=self.meters, plans=self.plans, accounts=self.accounts)

    # -- values

    def decimal(
        self, path: DocPath, text: str, *, positive: bool = False, at_most: int | None = None
    ) -> Decimal:
        value = Decimal(text)  # the schema guarantees non-negative decimal text
        # Exact values are stored as DECIMAL(38,18): 20 integer digits, 18 places.
        if value and value.adjusted() >= _INTEGER_DIGITS:
            self.fail(path, f"must be below 10^{_INTEGER_DIGITS}, got {json.dumps(text)}")
        if _decimal_places(value) > _PLACES:
            self.fail(path, f"must have at most {_PLACES} decimal places, got {json.dumps(text)}")
        if positive and value <= 0:
            self.fail(path, f"must be greater than 0, got {json.dumps(text)}")
        if at_most is not None and value > at_most:
            self.fail(path, f"must be between 0 and {at_most}, got {json.dumps(text)}")
        return value

    def optional_decimal(self, path: DocPath, spec: Mapping[str, Any], name: str) -> Decimal | None:
        text = spec.get(name)
        return None if text is None else self.decimal((*path, name), text)

    def date(self, path: DocPath, text: str) -> date:
        try:
            return date.fromisoformat(text)
        except ValueError:
            self.fail(path, f"not a valid calendar date: {json.dumps(text)}")

    def clock_time(self, path: DocPath, text: str) -> time:
        return time(int(text[:2]), int(text[3:5]))  # the schema guarantees HH:MM

    # -- meters

    def meter(self, path: DocPath, spec: Mapping[str, Any]) -> Meter:
        code: str = spec["code"]
        if code in self.meters:
            self.fail((*path, "code"), f"duplicate meter code {code!r}")
        aggregation = cast(Aggregation, spec["aggregation"])
        value_property = spec.get("value_property")
        if aggregation == "unique_count" and value_property is None:
            self.fail((*path, "value_property"), "required for unique_count meters (the counted attribute)")
        source_unit: str | None = spec.get("source_unit")
        unit: str = spec["unit"]
        if source_unit is not None and source_unit != unit:
            if aggregation in ("count", "unique_count"):
                self.fail((*path, "source_unit"), f"{aggregation} meters do not read quantities to convert")
            if not _is_convertible(source_unit, unit):
                self.fail((*path, "source_unit"), f"no known conversion from {source_unit!r} to {unit!r}")
        return Meter(
            code=code,
            unit=unit,
            aggregation=aggregation,
            value_property=value_property or "quantity",
            source_unit=source_unit,
        )

    # -- plans

    def plan(self, path: DocPath, spec: Mapping[str, Any]) -> Plan:
        plan_id: str = spec["id"]
        if plan_id in self.plans:
            self.fail((*path, "id"), f"duplicate plan id {plan_id!r}")
        charges = tuple(
            self.charge((*path, "charges", index), charge) for index, charge in enumerate(spec["charges"])
        )
        # Fee ids become invoice lines' charge_id: keep them apart from the plan's charges.
        line_ids = {charge.id for charge in charges}
        recurring: list[RecurringFee] = []
        for index, fee in enumerate(spec.get("recurring", ())):
            fee_path = (*path, "recurring", index)
            if fee["id"] in line_ids:
                self.fail((*fee_path, "id"), f"duplicate id {fee['id']!r} in plan {plan_id!r}")
            line_ids.add(fee["id"])
            recurring.append(
                RecurringFee(
                    id=fee["id"],
                    amount=self.decimal((*fee_path, "amount"), fee["amount"]),
                    description=fee.get("description") or fee["id"],
                )
            )
        currency: str = spec["currency"]
        if not is_currency(currency):
            self.fail(
                (*path, "currency"),
                f"{currency!r} is not an ISO 4217 currency with minor units (e.g. EUR, USD, JPY)",
            )
        return Plan(
            id=plan_id,
            currency=currency,
            rounding=cast(RoundingMode, spec.get("rounding", "half_even")),
            charges=charges,
            recurring=tuple(recurring),
        )

    def charge(self, path: DocPath, spec: Mapping[str, Any]) -> Charge:
        charge_id: str = spec["id"]
        if charge_id in self.charge_paths:
            first = format_path(self.charge_paths[charge_id])
            self.fail((*path, "id"), f"duplicate charge id {charge_id!r} (first defined at {first})")
        self.charge_paths[charge_id] = path
        if spec["meter"] not in self.meters:
            self.fail((*path, "meter"), f"unknown meter {spec['meter']!r}")
        model = cast(PricingModel, spec["model"])
        needed = _MODEL_FIELDS[model]
        for name in needed:
            if name not in spec:
                self.fail((*path, name), f"required for model {model}")
        for name in _PRICE_FIELDS:
            if name in spec and name not in needed:
                self.fail((*path, name), f"not used by model {model}")
        rounding = spec.get("rounding")
        return Charge(
            id=charge_id,
            meter=spec["meter"],
            model=model,
            included=self.optional_decimal(path, spec, "included") or ZERO,
            unit_price=self.optional_decimal(path, spec, "unit_price"),
            tiers=self.tiers((*path, "tiers"), spec["tiers"]) if "tiers" in spec else (),
            package_size=(
                self.decimal((*path, "package_size"), spec["package_size"], positive=True)
                if "package_size" in spec
                else None
            ),
            package_price=self.optional_decimal(path, spec, "package_price"),
            filters=self.filters((*path, "filters"), spec.get("filters", {})),
            rounding=self.event_rounding((*path, "rounding"), rounding) if rounding is not None else None,
            description=spec.get("description"),
        )

    def tiers(self, path: DocPath, specs: Sequence[Mapping[str, Any]]) -> tuple[Tier, ...]:
        tiers: list[Tier] = []
        lower = ZERO  # tiers cover (previous up_to, up_to]; the first starts above 0
        last = len(specs) - 1
        for index, spec in enumerate(specs):
            tier_path = (*path, index)
            up_to_text = spec.get("up_to")
            up_to: Decimal | None = None
            if index < last:
                if up_to_text is None:
                    self.fail(
                        (*tier_path, "up_to"), "required on every tier but the last (only the last is open)"
                    )
                up_to = self.decimal((*tier_path, "up_to"), up_to_text)
                if up_to <= lower:
                    self.fail(
                        (*tier_path, "up_to"),
                        f"must be greater than the previous bound {lower} (up_to strictly increasing)",
                    )
                lower = up_to
            elif up_to_text is not None:
                self.fail((*tier_path, "up_to"), "the last tier must be open (no up_to)")
            tiers.append(
                Tier(
                    up_to=up_to,
                    unit_price=self.decimal((*tier_path, "unit_price"), spec["unit_price"]),
                    flat_fee=self.optional_decimal(tier_path, spec, "flat_fee") or ZERO,
                )
            )
        return tuple(tiers)

    def filters(self, path: DocPath, spec: Mapping[str, Any]) -> ChargeFilters:
        window = spec.get("local_time")
        local_time: LocalTimeWindow | None = None
        if window is not None:
            start = self.clock_time((*path, "local_time", "from"), window["from"])
            end = self.clock_time((*path, "local_time", "to"), window["to"])
            if start == end:
                self.fail((*path, "local_time", "to"), "must differ from 'from' (the window would be empty)")
            days = window.get("days")
            local_time = LocalTimeWindow(
                days=frozenset(WEEKDAYS.index(day) for day in days) if days is not None else None,
                start=start,
                end=end,
            )
        return ChargeFilters(
            attributes={key: frozenset(values) for key, values in spec.get("attributes", {}).items()},
            destination_prefixes=tuple(spec.get("destination_prefix", ())),
            local_time=local_time,
        )

    def event_rounding(self, path: DocPath, spec: Mapping[str, Any]) -> EventRounding:
        return EventRounding(
            increment=self.decimal((*path, "increment"), spec["increment"], positive=True),
            minimum=self.optional_decimal(path, spec, "minimum") or ZERO,
        )

    # -- accounts

    def account(self, path: DocPath, spec: Mapping[str, Any]) -> Account:
        account_id: str = spec["id"]
        if account_id in self.accounts:
            self.fail((*path, "id"), f"duplicate account id {account_id!r}")
        timezone: str = spec["timezone"]
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            self.fail((*path, "timezone"), f"unknown IANA time zone {timezone!r}")
        tax_rate = spec.get("tax_rate")
        indexed = [
            (index, self.contract((*path, "contracts", index), account_id, contract))
            for index, contract in enumerate(spec["contracts"])
        ]
        indexed.sort(key=lambda item: (item[1].start, item[0]))
        self.check_contract_sequence((*path, "contracts"), indexed)
        return Account(
            id=account_id,
            name=spec.get("name") or account_id,
            timezone=timezone,
            contracts=tuple(contract for _, contract in indexed),
            tax_rate=self.decimal((*path, "tax_rate"), tax_rate, at_most=100)
            if tax_rate is not None
            else None,
            net_terms_days=self.net_terms_days((*path, "net_terms_days"), spec.get("net_terms_days", "30")),
        )

    def net_terms_days(self, path: DocPath, text: str) -> int:
        days = int(text)  # the schema guarantees digits
        if days > _MAX_NET_TERMS_DAYS:
            self.fail(path, f"must be at most {_MAX_NET_TERMS_DAYS} days, got {json.dumps(text)}")
        return days

    def contract(self, path: DocPath, account_id: str, spec: Mapping[str, Any]) -> Contract:
        contract_id: str = spec["id"]
        if contract_id in self.contract_paths:
            first = format_path(self.contract_paths[contract_id])
            self.fail((*path, "id"), f"duplicate contract id {contract_id!r} (first defined at {first})")
        self.contract_paths[contract_id] = path
        if spec["plan"] not in self.plans:
            self.fail((*path, "plan"), f"unknown plan {spec['plan']!r}")
        start = self.date((*path, "start"), spec["start"])
        end = self.date((*path, "end"), spec["end"]) if spec.get("end") is not None else None
        if end is not None and end <= start:
            self.fail((*path, "end"), f"must be after start {start.isoformat()} (end is exclusive)")
        discount = spec.get("discount_percent")
        one_time: list[OneTimeCharge] = []
        seen: set[str] = set()
        for index, item in enumerate(spec.get("one_time", ())):
            item_path = (*path, "one_time", index)
            if item["id"] in seen:
                self.fail((*item_path, "id"), f"duplicate one-time charge id {item['id']!r} in contract")
            seen.add(item["id"])
            day = self.date((*item_path, "date"), item["date"])
            if day < start or (end is not None and day >= end):
                self.fail((*item_path, "date"), f"{day.isoformat()} is outside the contract's dates")
            one_time.append(
                OneTimeCharge(
                    id=item["id"],
                    amount=self.decimal((*item_path, "amount"), item["amount"]),
                    date=day,
                    description=item.get("description") or item["id"],
                )
            )
        return Contract(
            id=contract_id,
            account_id=account_id,
            plan_id=spec["plan"],
            start=start,
            end=end,
            discount_percent=(
                self.decimal((*path, "discount_percent"), discount, at_most=100)
                if discount is not None
                else None
            ),
            minimum_commitment=self.optional_decimal(path, spec, "minimum_commitment"),
            one_time=tuple(one_time),
        )

    def check_contract_sequence(self, path: DocPath, indexed: Sequence[tuple[int, Contract]]) -> None:
        """No overlaps; one currency and rounding mode per billing period (invoices are per period)."""
        for (_, previous), (index, contract) in itertools.pairwise(indexed):
            if previous.end is None or previous.end > contract.start:
                self.fail(
                    (*path, index, "start"),
                    f"contract {contract.id!r} overlaps contract {previous.id!r} ({_window_text(previous)})",
                )
        for position, (_, earlier) in enumerate(indexed):
            earlier_plan = self.plans[earlier.plan_id]
            # Last month the contract touches: the month of its last day (end is exclusive).
            last_month = _month_index(date.fromordinal(earlier.end.toordinal() - 1)) if earlier.end else None
            for index, later in indexed[position + 1 :]:
                first_month = _month_index(later.start)
                if last_month is not None and last_month < first_month:
                    continue
                later_plan = self.plans[later.plan_id]
                shared = _month_text(first_month)
                if later_plan.currency != earlier_plan.currency:
                    self.fail(
                        (*path, index, "plan"),
                        f"plan {later_plan.id!r} bills in {later_plan.currency} but contract {earlier.id!r} "
                        f"(plan {earlier_plan.id!r}, {earlier_plan.currency}) shares billing period {shared}",
                    )
                if later_plan.rounding != earlier_plan.rounding:
                    self.fail(
                        (*path, index, "plan"),
                        f"plan {later_plan.id!r} rounds {later_plan.rounding} but contract {earlier.id!r} "
                        f"(plan {earlier_plan.id!r}, {earlier_plan.rounding}) shares billing period {shared}",
                    )


def _is_convertible(source_unit: str, unit: str) -> bool:
    # Imported here: mediation depends on the catalog, not the other way round.
    from mediation.units import is_convertible

    return bool(is_convertible(source_unit, unit))
