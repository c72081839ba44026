"""Sellers and buyer details in the catalog (e-invoices): built, checked (ISO country
codes, IBAN check digits, VAT id prefixes, non-empty names, known sellers) and carried
through the contracts topic's entities."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from meterline.kernel.catalog import Address, Buyer, Seller
from meterline.kernel.catalog_file import (
    CatalogError,
    catalog_entities,
    document_from_entities,
    parse_catalog,
)


def document() -> dict[str, Any]:
    return {
        "meters": [{"code": "api", "unit": "call", "aggregation": "sum"}],
        "plans": [
            {
                "id": "p",
                "currency": "EUR",
                "charges": [{"id": "c", "meter": "api", "model": "flat", "unit_price": "1"}],
            }
        ],
        "sellers": [
            {
                "id": "eu",
                "legal_name": " Meterline Europe SAS ",
                "address": {
                    "lines": ["10 rue de la Paix"],
                    "city": "Paris",
                    "postcode": "75002",
                    "country": "FR",
                },
                "vat_id": "FR32123456789",
                "iban": "DE89370400440532013000",
            }
        ],
        "accounts": [
            {
                "id": "a",
                "timezone": "Europe/Athens",
                "seller": "eu",
                "buyer": {
                    "legal_name": "Alpha AE",
                    "address": {"lines": ["Odos 1", "Floor 2"], "city": "Athens", "country": "GR"},
                    "vat_id": "EL123456789",
                },
                "contracts": [{"id": "a1", "plan": "p", "start": "2026-01-01"}],
            },
            {"id": "b", "timezone": "UTC", "contracts": [{"id": "b1", "plan": "p", "start": "2026-01-01"}]},
        ],
    }


def test_sellers_and_buyers_are_built() -> None:
    catalog = parse_catalog(document())
    assert catalog.sellers == {
        "eu": Seller(
            id="eu",
            legal_name="Meterline Europe SAS",
            address=Address(("10 rue de la Paix",), "Paris", "FR", "75002"),
            vat_id="FR32123456789",
            iban="DE89370400440532013000",
        )
    }
    alpha, beta = catalog.accounts["a"], catalog.accounts["b"]
    assert alpha.seller_id == "eu"
    assert alpha.buyer == Buyer("Alpha AE", Address(("Odos 1", "Floor 2"), "Athens", "GR"), "EL123456789")
    assert (beta.seller_id, beta.buyer) == (None, None)  # optional: no e-invoice for b


def test_sellers_travel_as_entities_of_the_contracts_topic() -> None:
    entities = catalog_entities(document())
    assert [key for key, _ in entities] == ["meter/api", "plan/p", "seller/eu", "account/a", "account/b"]
    assert parse_catalog(document_from_entities([value for _, value in entities])) == parse_catalog(
        document()
    )
    # catalogs without sellers still read (and publish) as before
    plain = document()
    del plain["sellers"]
    for account in plain["accounts"]:
        account.pop("seller", None)
    assert "seller/" not in str([key for key, _ in catalog_entities(plain)])
    assert parse_catalog(document_from_entities([v for _, v in catalog_entities(plain)])).sellers == {}


def _seller(doc: dict[str, Any]) -> dict[str, Any]:
    seller: dict[str, Any] = doc["sellers"][0]
    return seller


def _buyer(doc: dict[str, Any]) -> dict[str, Any]:
    buyer: dict[str, Any] = doc["accounts"][0]["buyer"]
    return buyer


S, B = _seller, _buyer


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: S(d).update(iban="DE89370400440532013001"), "has wrong check digits"),
        (lambda d: S(d).update(iban="DE89 3704 0044 0532 0130 00"), "sellers[0].iban: must be an IBAN"),
        (lambda d: S(d).update(iban="QQ89370400440532013000"), 'sellers[0].iban: unknown country code "QQ"'),
        (lambda d: S(d)["address"].update(country="ZZ"), 'address.country: unknown country code "ZZ"'),
        (lambda d: S(d)["address"].update(country="France"), "address.country: must be an ISO 3166-1"),
        (lambda d: S(d).update(legal_name=" "), "sellers[0].legal_name: must be a non-empty text"),
        (lambda d: S(d)["address"].update(lines=[]), "sellers[0].address.lines"),
        (lambda d: S(d).pop("vat_id"), "sellers[0].vat_id: required field is missing"),
        (lambda d: S(d).update(vat_id="fr 32 123"), "sellers[0].vat_id: must be a VAT identifier"),
        (lambda d: S(d).update(vat_id="XX123456789"), 'sellers[0].vat_id: unknown country code "XX"'),
        (lambda d: d["sellers"].append(copy.deepcopy(S(d))), "sellers[1].id: duplicate seller id 'eu'"),
        (lambda d: d["accounts"][0].update(seller="us"), "accounts[0].seller: unknown seller 'us'"),
        (lambda d: B(d).update(legal_name=""), "accounts[0].buyer.legal_name: must be a non-empty text"),
        (lambda d: B(d)["address"].pop("city"), "buyer.address.city: required field is missing"),
        (lambda d: B(d)["address"].update(country="EU"), "buyer.address.country: unknown country"),
    ],
)  # fmt: skip
def test_bad_party_details_are_refused(change: Callable[[dict[str, Any]], object], message: str) -> None:
    doc = document()
    change(doc)
    with pytest.raises(CatalogError, match=r"^<catalog>: ") as error:
        parse_catalog(doc)
    assert message in str(error.value)
