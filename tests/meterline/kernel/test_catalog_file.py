"""Loading and validating contract catalogs (docs/catalog.md)."""

from __future__ import annotations

import copy
import json
import random
from datetime import date, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterline.kernel.catalog import (
    Account,
    Catalog,
    Charge,
    ChargeFilters,
    Contract,
    EventRounding,
    LocalTimeWindow,
    Meter,
    OneTimeCharge,
    Plan,
    RecurringFee,
    Tier,
)
from meterline.kernel.catalog_file import (
    CatalogError,
    catalog_entities,
    catalog_schema,
    document_from_entities,
    load_catalog,
    parse_catalog,
    read_catalog_document,
)
from meterline.kernel.catalog_read import format_path

DATA = Path(__file__).resolve().parents[2] / "data"
EXAMPLE = DATA / "catalog.yaml"
BAD = sorted((DATA / "bad").glob("*.yaml"))

D = Decimal


def minimal(**account: Any) -> dict[str, Any]:
    """A small valid document; keyword arguments override fields of its one account."""
    return {
        "meters": [{"code": "api_calls", "unit": "call", "aggregation": "sum"}],
        "plans": [
            {
                "id": "p",
                "currency": "EUR",
                "charges": [{"id": "api", "meter": "api_calls", "model": "flat", "unit_price": "0.001"}],
            }
        ],
        "accounts": [
            {
                "id": "acme",
                "timezone": "UTC",
                "contracts": [{"id": "c", "plan": "p", "start": "2026-01-01"}],
                **account,
            }
        ],
    }


def expected_example() -> Catalog:
    meters = [
        Meter("api_calls", "call", "sum"),
        Meter("storage", "GB-hour", "sum", value_property="gb_hours"),
        Meter("voice", "minute", "sum", source_unit="second"),
        Meter("active_users", "user", "unique_count", value_property="user_id"),
        Meter("sms", "message", "count"),
    ]
    plan = Plan(
        id="saas-pro",
        currency="EUR",
        rounding="half_even",
        charges=(
            Charge(
                id="api",
                meter="api_calls",
                model="graduated",
                included=D("1000"),
                tiers=(Tier(D("100000"), D("0.001")), Tier(None, D("0.0005"), flat_fee=D("5"))),
            ),
            Charge(
                id="storage-eu",
                meter="storage",
                model="flat",
                unit_price=D("0.02"),
                filters=ChargeFilters(attributes={"region": frozenset({"eu-west", "eu-central"})}),
            ),
            Charge(id="storage", meter="storage", model="flat", unit_price=D("0.025")),
            Charge(
                id="seats",
                meter="active_users",
                model="volume",
                tiers=(Tier(D("10"), D("8")), Tier(None, D("6"))),
            ),
            Charge(
                id="voice-uk-peak",
                meter="voice",
                model="flat",
                unit_price=D("0.05"),
                filters=ChargeFilters(
                    destination_prefixes=("44",),
                    local_time=LocalTimeWindow(frozenset({0, 1, 2, 3, 4}), time(8, 0), time(20, 0)),
                ),
                rounding=EventRounding(increment=D("1"), minimum=D("1")),
            ),
            Charge(
                id="sms",
                meter="sms",
                model="package",
                included=D("50"),
                package_size=D("100"),
                package_price=D("2"),
            ),
        ),
        recurring=(RecurringFee("platform", D("499.00"), "Platform fee"),),
    )
    account = Account(
        id="acme",
        name="ACME SAS",
        timezone="Europe/Paris",
        tax_rate=D("20"),
        net_terms_days=30,
        contracts=(
            Contract(
                id="acme-2026",
                account_id="acme",
                plan_id="saas-pro",
                start=date(2026, 1, 1),
                end=None,
                discount_percent=D("5"),
                minimum_commitment=D("1000.00"),
                one_time=(OneTimeCharge("router", D("149.00"), date(2026, 11, 15), "Router"),),
            ),
        ),
    )
    return Catalog(
        meters={meter.code: meter for meter in meters},
        plans={plan.id: plan},
        accounts={account.id: account},
    )


# --------------------------------------------------------------------------- the example


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(catalog_schema())


def test_example_loads_expected_catalog() -> None:
    catalog = load_catalog(EXAMPLE)
    assert catalog == expected_example()
    # Charge order is the rating order: the first matching charge wins.
    assert [charge.id for charge in catalog.plans["saas-pro"].charges] == [
        "api",
        "storage-eu",
        "storage",
        "seats",
        "voice-uk-peak",
        "sms",
    ]


def test_example_as_json_gives_the_same_catalog(tmp_path: Path) -> None:
    as_json = tmp_path / "catalog.json"
    as_json.write_text(json.dumps(read_catalog_document(EXAMPLE)))
    assert load_catalog(as_json) == expected_example()


# --------------------------------------------------------------------------- exact numbers


def test_yaml_numbers_are_read_as_their_text(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "meters: [{code: m, unit: u, aggregation: sum}]\n"
        "plans:\n"
        "  - id: p\n"
        "    currency: EUR\n"
        "    charges:\n"
        "      - {id: a, meter: m, model: flat, unit_price: 0.1, included: 1.10}\n"
        "      - {id: b, meter: m, model: flat, unit_price: 123456789012345678.000000000000000001}\n"
        "accounts: [{id: x, timezone: UTC, net_terms_days: 45, contracts: []}]\n"
    )
    document = read_catalog_document(path)
    charge_a = document["plans"][0]["charges"][0]
    assert charge_a["unit_price"] == "0.1"
    assert charge_a["included"] == "1.10"
    catalog = parse_catalog(document)
    a, b = catalog.plans["p"].charges
    assert a.unit_price == D("0.1")
    assert str(a.included) == "1.10"  # the exact text, not a float's neighbour
    assert b.unit_price == D("123456789012345678.000000000000000001")
    assert catalog.accounts["x"].net_terms_days == 45


def test_json_numbers_are_read_as_their_text(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    doc = minimal(tax_rate="TAX")
    doc["plans"][0]["charges"][0]["unit_price"] = "PRICE"
    text = json.dumps(doc).replace('"PRICE"', "0.1").replace('"TAX"', "19.6")
    path.write_text(text)
    document = read_catalog_document(path)
    assert document["plans"][0]["charges"][0]["unit_price"] == "0.1"
    catalog = parse_catalog(document)
    assert catalog.plans["p"].charges[0].unit_price == D("0.1")
    assert catalog.accounts["acme"].tax_rate == D("19.6")


def test_yaml_scalars_that_look_like_other_types_stay_text(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    # YAML 1.1 would read `no` as false, 2026-01-01 as a date and 20:00 as the number 1200.
    path.write_text(
        "meters: [{code: m, unit: u, aggregation: sum}]\n"
        "plans:\n"
        "  - id: p\n"
        "    currency: EUR\n"
        "    charges:\n"
        "      - {id: a, meter: m, model: flat, unit_price: 1,\n"
        "         filters: {attributes: {country: [no, se]}, local_time: {from: 20:00, to: 08:00}}}\n"
        "accounts: [{id: x, timezone: UTC, contracts: [{id: c, plan: p, start: 2026-01-01}]}]\n"
    )
    catalog = load_catalog(path)
    charge = catalog.plans["p"].charges[0]
    assert charge.filters.attributes == {"country": frozenset({"no", "se"})}
    assert charge.filters.local_time == LocalTimeWindow(None, time(20, 0), time(8, 0))
    assert catalog.accounts["x"].contracts[0].start == date(2026, 1, 1)


def test_python_documents_with_numbers_and_dates_are_accepted() -> None:
    doc = minimal(tax_rate=D("20"), net_terms_days=14)
    doc["plans"][0]["charges"][0]["unit_price"] = 0.1  # a float literal is taken as its text
    doc["accounts"][0]["contracts"][0]["start"] = date(2026, 2, 1)
    catalog = parse_catalog(doc)
    assert catalog.plans["p"].charges[0].unit_price == D("0.1")
    assert catalog.accounts["acme"].tax_rate == D("20")
    assert catalog.accounts["acme"].net_terms_days == 14
    assert catalog.accounts["acme"].contracts[0].start == date(2026, 2, 1)


# --------------------------------------------------------------------------- defaults and shape


def test_defaults() -> None:
    doc = minimal()
    doc["plans"][0]["recurring"] = [{"id": "fee", "amount": "10"}]
    catalog = parse_catalog(doc)
    meter = catalog.meters["api_calls"]
    assert meter.value_property == "quantity"
    assert meter.source_unit is None
    plan = catalog.plans["p"]
    assert plan.rounding == "half_even"
    assert plan.charges[0].included == 0
    assert plan.charges[0].filters.empty
    assert plan.charges[0].rounding is None
    assert plan.recurring[0].description == "fee"
    account = catalog.accounts["acme"]
    assert account.name == "acme"
    assert account.net_terms_days == 30
    assert account.tax_rate is None
    assert account.contracts[0].end is None
    assert account.contracts[0].discount_percent is None


def test_contracts_are_sorted_by_start_and_may_touch() -> None:
    doc = minimal(
        contracts=[
            {"id": "c3", "plan": "p", "start": "2026-07-01"},
            {"id": "c1", "plan": "p", "start": "2026-01-01", "end": "2026-03-15"},
            {"id": "c2", "plan": "p", "start": "2026-03-15", "end": "2026-07-01"},
        ]
    )
    account = parse_catalog(doc).accounts["acme"]
    assert [contract.id for contract in account.contracts] == ["c1", "c2", "c3"]
    assert account.contract_on(date(2026, 3, 14)).id == "c1"  # type: ignore[union-attr]
    assert account.contract_on(date(2026, 3, 15)).id == "c2"  # type: ignore[union-attr]


def test_currency_may_change_between_periods() -> None:
    doc = minimal(
        contracts=[
            {"id": "eur", "plan": "p", "start": "2026-01-01", "end": "2026-03-01"},
            {"id": "usd", "plan": "p-usd", "start": "2026-03-01"},
        ]
    )
    doc["plans"].append({"id": "p-usd", "currency": "USD", "rounding": "half_up", "charges": []})
    account = parse_catalog(doc).accounts["acme"]
    assert [contract.plan_id for contract in account.contracts] == ["p", "p-usd"]


def test_an_account_without_contracts_is_valid() -> None:
    assert parse_catalog(minimal(contracts=[])).accounts["acme"].contracts == ()


# --------------------------------------------------------------------------- invalid catalogs


def _expectation(path: Path) -> tuple[str, str]:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} lacks its '# expect: PATH: PROBLEM' line"
    where, problem = first.removeprefix("# expect: ").split(": ", 1)
    return where, problem


def test_there_are_bad_catalogs() -> None:
    assert len(BAD) >= 20


@pytest.mark.parametrize("bad", BAD, ids=[path.stem for path in BAD])
def test_bad_catalog_is_rejected_with_path_and_problem(bad: Path) -> None:
    where, problem = _expectation(bad)
    with pytest.raises(CatalogError) as caught:
        load_catalog(bad)
    error = caught.value
    assert error.source == bad.name
    assert error.path == where
    assert error.problem.startswith(problem), error.problem
    assert str(error) == f"{bad.name}: {error.path}: {error.problem}"
    assert "\n" not in str(error)


def test_catalog_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"^inline: accounts\[0\]\.timezone: unknown IANA time zone"):
        parse_catalog(minimal(timezone="Mars/Olympus"), source="inline")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"^absent\.yaml: \$: cannot read the file"):
        load_catalog(tmp_path / "absent.yaml")


def test_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text('{"meters": [],\n "plans": [}')
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    assert caught.value.path == "line 2, column 12"
    assert caught.value.problem.startswith("invalid JSON")


def test_json_nan_is_not_a_number(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text('{"meters": [], "plans": [], "accounts": [], "x": NaN}')
    with pytest.raises(CatalogError, match="NaN is not a valid number"):
        load_catalog(path)


@pytest.mark.parametrize(
    ("change", "where", "problem"),
    [
        (
            lambda d: d["plans"][0]["charges"][0].update(model="tiered"),
            "plans[0].charges[0].model",
            "must be one of",
        ),
        (lambda d: d["plans"][0].update(currency="eur"), "plans[0].currency", "must be an ISO 4217 code"),
        (lambda d: d["plans"][0].update(rounding="up"), "plans[0].rounding", "must be half_even or half_up"),
        (lambda d: d["meters"][0].update(aggregation="avg"), "meters[0].aggregation", "must be one of"),
        (lambda d: d["accounts"][0].update(net_terms_days="30.5"), "accounts[0].net_terms_days", "must be a"),
        (lambda d: d.pop("accounts"), "accounts", "required field is missing"),
        (
            lambda d: d["accounts"][0].update(net_terms_days="36500"),
            "accounts[0].net_terms_days",
            "must be at most 3650 days",
        ),
        (lambda d: d.update(extra=[]), "extra", "unknown field"),
        (
            lambda d: d["meters"][0].update(code="api calls"),
            "meters[0].code",
            "must be a non-empty identifier",
        ),
        (
            lambda d: d["plans"][0]["charges"][0].update(rounding={"increment": "0"}),
            "plans[0].charges[0].rounding.increment",
            "must be greater than 0",
        ),
        (
            lambda d: d["plans"][0]["charges"][0].update(
                filters={"local_time": {"from": "08:00", "to": "08:00"}}
            ),
            "plans[0].charges[0].filters.local_time.to",
            "must differ from 'from'",
        ),
        (
            lambda d: d["plans"][0].update(recurring=[{"id": "api", "amount": "1"}]),
            "plans[0].recurring[0].id",
            "duplicate id 'api'",
        ),
        (
            lambda d: d["accounts"].append(dict(d["accounts"][0], contracts=[])),
            "accounts[1].id",
            "duplicate account id 'acme'",
        ),
        (
            lambda d: d["accounts"].append(dict(d["accounts"][0], id="other")),
            "accounts[1].contracts[0].id",
            "duplicate contract id 'c'",
        ),
        (
            lambda d: d["meters"].append(
                {"code": "users", "unit": "u", "aggregation": "count", "source_unit": "s"}
            ),
            "meters[1].source_unit",
            "count meters do not read quantities",
        ),
    ],
)
def test_invalid_documents(change: Any, where: str, problem: str) -> None:
    doc = minimal()
    change(doc)
    with pytest.raises(CatalogError) as caught:
        parse_catalog(doc, source="doc")
    assert (caught.value.path, caught.value.problem[: len(problem)]) == (where, problem)


def test_first_problem_in_document_order_is_reported() -> None:
    doc = minimal()
    doc["plans"][0]["charges"][0]["unit_price"] = "x"
    doc["meters"][0]["aggregation"] = "avg"
    doc["accounts"][0]["tax_rate"] = "lots"  # "accounts" sorts first, but comes last
    with pytest.raises(CatalogError) as caught:
        parse_catalog(doc)
    assert caught.value.path == "meters[0].aggregation"


# --------------------------------------------------------------------------- entities


def test_entities_are_keyed_and_json_serializable() -> None:
    entities = catalog_entities(read_catalog_document(EXAMPLE))
    keys = [key for key, _ in entities]
    assert keys == [
        "meter/api_calls",
        "meter/storage",
        "meter/voice",
        "meter/active_users",
        "meter/sms",
        "plan/saas-pro",
        "account/acme",
    ]
    for _, value in entities:
        assert json.loads(json.dumps(value)) == value
    plan = dict(entities)["plan/saas-pro"]
    assert plan["kind"] == "plan"
    assert plan["spec"]["charges"][0]["tiers"][0]["unit_price"] == "0.001"


def test_entities_round_trip_in_any_order() -> None:
    entities = catalog_entities(read_catalog_document(EXAMPLE))
    values = [json.loads(json.dumps(value)) for _, value in entities]  # as they travel on the topic
    random.Random(7).shuffle(values)
    assert parse_catalog(document_from_entities(values)) == expected_example()


def test_entities_of_python_documents_are_text() -> None:
    doc = minimal(tax_rate=D("20"), net_terms_days=14)
    entities = dict(catalog_entities(doc))
    assert entities["account/acme"]["spec"]["tax_rate"] == "20"
    assert entities["account/acme"]["spec"]["net_terms_days"] == "14"
    assert json.dumps(entities)


def test_later_entity_values_win_and_tombstones_are_skipped() -> None:
    entities = dict(catalog_entities(minimal()))
    renamed = json.loads(json.dumps(entities["account/acme"]))
    renamed["spec"]["name"] = "ACME renamed"
    values = [*entities.values(), None, renamed]
    catalog = parse_catalog(document_from_entities(values))
    assert catalog.accounts["acme"].name == "ACME renamed"


def test_entities_of_a_malformed_document_are_refused() -> None:
    with pytest.raises(CatalogError, match=r"^<catalog>: meters\[0\]\.unit: required field is missing"):
        catalog_entities({"meters": [{"code": "x", "aggregation": "sum"}], "plans": [], "accounts": []})


def test_unknown_entities_are_refused() -> None:
    with pytest.raises(ValueError, match="not a catalog entity"):
        document_from_entities([{"kind": "invoice", "id": "x", "version": 1, "spec": {}}])
    with pytest.raises(ValueError, match="unsupported catalog entity version"):
        document_from_entities([{"kind": "meter", "id": "x", "version": 99, "spec": {}}])


# --------------------------------------------------------------------------- robustness

_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.sampled_from(["", "0", "-1", "1e3"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


_EXAMPLE_DOC = read_catalog_document(EXAMPLE)
_EXAMPLE_PATHS = _paths(_EXAMPLE_DOC)


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(_EXAMPLE_PATHS), replacement=_JSON_VALUES, delete=st.booleans())
def test_any_damage_is_a_catalog_error_or_a_valid_catalog(
    path: tuple[Any, ...], replacement: Any, delete: bool
) -> None:
    doc = copy.deepcopy(_EXAMPLE_DOC)
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    try:
        parse_catalog(doc, source="fuzz")
    except CatalogError as error:
        assert str(error).startswith("fuzz: ") and "\n" not in str(error)


# --------------------------------------------------------------------------- currencies


@pytest.mark.parametrize("currency", ["XAU", "XDR", "XTS", "ABC", "EUX"])
def test_currency_outside_iso_4217_is_rejected_at_its_path(currency: str, tmp_path: Path) -> None:
    # Reproduced defect: XAU validated, then consolidation raised UnknownCurrencyError
    # while assembling the draft.
    path = tmp_path / "catalog.yaml"
    path.write_text(EXAMPLE.read_text().replace("currency: EUR", f"currency: {currency}", 1))
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)
    error = caught.value
    assert error.source == "catalog.yaml"
    assert error.path == "plans[0].currency"
    assert f"'{currency}' is not an ISO 4217 currency" in error.problem


@pytest.mark.parametrize("currency", ["EUR", "USD", "JPY", "BHD", "CLF", "CHF"])
def test_iso_4217_currencies_validate(currency: str) -> None:
    document = minimal()
    document["plans"][0]["currency"] = currency
    assert parse_catalog(document).plans["p"].currency == currency


def test_a_path_through_an_odd_key_stays_one_readable_line() -> None:
    assert format_path(("meters", 0, "code")) == "meters[0].code"
    assert format_path(("meters", 0, "a\nb")) == 'meters[0]["a\\nb"]'
    assert format_path(("plans", "x.y", "")) == 'plans["x.y"][""]'
