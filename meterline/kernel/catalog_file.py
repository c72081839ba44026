"""Reading, validating and building the contract catalog (docs/catalog.md).

A catalog document (YAML or JSON) is checked in two passes: the JSON Schema
`schemas/catalog.schema.json` (shape, types, decimal text), then the rules that
span objects (references, uniqueness, tier order, overlapping contracts, one
currency per billing period...). Every problem is a :class:`CatalogError`
naming the file, the path inside the document and the problem, so a user can
fix the catalog from one line of output.

Numbers are never floats: the YAML and JSON readers keep every number as its
decimal text, and `Decimal` values are built from that text.

Reading files is meterline.kernel.catalog_read, the schema pass meterline.kernel.catalog_validate,
values meterline.kernel.catalog_values, accounts and contracts meterline.kernel.catalog_accounts,
and the keyed entities of the contracts topic meterline.kernel.catalog_entities; this
module builds the meters and plans, then the Catalog, and keeps the public names
importable from one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, cast

from meterline.kernel.catalog import (
    ZERO,
    Aggregation,
    Catalog,
    Charge,
    ChargeFilters,
    EventRounding,
    LocalTimeWindow,
    Meter,
    Plan,
    PricingModel,
    RecurringFee,
    RoundingMode,
    Tier,
)
from meterline.kernel.catalog_accounts import AccountBuilder
from meterline.kernel.catalog_entities import (
    ENTITY_VERSION,
    SECTIONS,
    catalog_entities,
    document_from_entities,
)
from meterline.kernel.catalog_read import CatalogError, DocPath, format_path, read_catalog_document
from meterline.kernel.catalog_validate import catalog_schema, validate_document
from meterline.kernel.catalog_values import ValueReader
from meterline.kernel.currency import is_currency

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


class _CatalogBuilder(ValueReader):
    """Builds the dataclasses from a schema-valid document, checking the rules the schema cannot."""

    def __init__(self, source: str) -> None:
        super().__init__(source)
        self.meters: dict[str, Meter] = {}
        self.plans: dict[str, Plan] = {}
        # Catalog-wide charge ids, id -> path of its first definition.
        self.charge_paths: dict[str, DocPath] = {}

    def build(self, document: Mapping[str, Any]) -> Catalog:
        for index, spec in enumerate(document["meters"]):
            meter = self.meter(("meters", index), spec)
            self.meters[meter.code] = meter
        for index, spec in enumerate(document["plans"]):
            plan = self.plan(("plans", index), spec)
            self.plans[plan.id] = plan
        builder = AccountBuilder(self.source, self.plans, document.get("sellers", ()))
        accounts = builder.build(document["accounts"])
        return Catalog(meters=self.meters, plans=self.plans, accounts=accounts, sellers=builder.sellers)

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


def _is_convertible(source_unit: str, unit: str) -> bool:
    # Imported here: mediation depends on the catalog, not the other way round.
    from meterline.kernel.units import is_convertible

    return bool(is_convertible(source_unit, unit))
