"""The EN 16931 e-invoice of a final invoice: Factur-X / ZUGFeRD CII XML, profile EN16931.

Built with drafthorse from the stored draft and lines and the catalog's seller and buyer
details. Every amount is the stored one: amounts are only quantized to the currency's
minor units, which the store already rounded to (a value that would change is an error);
quantities and unit prices keep all their decimals. `blockers` says why an invoice gets
no e-invoice; `documents_html` is what the invoice page says about its PDF and XML.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from invoice_site.layout import e
from invoice_site.model import Draft, Line
from meterline.kernel.catalog import Account, Address, Catalog, Seller
from meterline.kernel.currency import minor_units

__all__ = [
    "EINVOICE_LEVEL",
    "EInvoiceError",
    "TaxCategory",
    "blockers",
    "cii_xml",
    "documents_html",
    "tax_category",
]

EINVOICE_LEVEL: Final = "en16931"
_GUIDELINE: Final = "urn:cen.eu:en16931:2017"
_COMMERCIAL_INVOICE: Final = "380"
_SEPA_CREDIT_TRANSFER: Final = "58"
_CREDIT_TRANSFER: Final = "30"
# UN/ECE Recommendation 20 unit codes of common meter units; any other unit is C62 ("one").
_UNIT_CODES: Final = {
    "second": "SEC",
    "s": "SEC",
    "minute": "MIN",
    "min": "MIN",
    "hour": "HUR",
    "h": "HUR",
    "day": "DAY",
    "GB": "E34",
    "MB": "4L",
    "kWh": "KWH",
}
_ONE: Final = "C62"
# Lines that are not invoice lines in CII: the discount is a document-level allowance,
# the tax the VAT breakdown.
_DOCUMENT_LEVEL: Final = frozenset({"discount", "tax"})


class EInvoiceError(ValueError):
    """The store's figures cannot be written as an EN 16931 invoice as they are."""


@dataclass(frozen=True, slots=True)
class TaxCategory:
    """The VAT category of every line (EN 16931 BT-151 / BT-118)."""

    code: str  # S standard rate, Z zero rated, O not subject to VAT
    rate: Decimal | None  # percent; None for O
    exemption_reason: str | None = None


def tax_category(account: Account) -> TaxCategory:
    rate = account.tax_rate
    if rate is None:
        return TaxCategory("O", None, "Not subject to VAT")
    return TaxCategory("Z" if rate == 0 else "S", rate)


def blockers(draft: Draft, lines: Sequence[Line], account: Account | None, catalog: Catalog) -> list[str]:
    """Why this invoice gets no e-invoice; empty when it gets one."""
    if draft.status != "final":
        return ["the invoice is not final yet"]
    if account is None:
        return ["the account is no longer in the catalog"]
    reasons = []
    if account.seller_id is None or account.seller_id not in catalog.sellers:
        reasons.append("the catalog names no seller for this account (seller details: legal name, address, "
                       "VAT id, IBAN)")  # fmt: skip
    if account.buyer is None:
        reasons.append("the catalog has no buyer details for this account (legal name and address)")
    try:
        digits = minor_units(draft.currency)
    except (KeyError, ValueError):
        digits = -1
    if not 0 <= digits <= 2:
        reasons.append(f"EN 16931 amounts have at most 2 decimals; {draft.currency} amounts have {digits}")
    else:
        reasons += _figure_problems(draft, lines, tax_category(account), digits)
    return reasons


def _figure_problems(draft: Draft, lines: Sequence[Line], category: TaxCategory, digits: int) -> list[str]:
    items = sum((line.amount for line in lines if line.kind not in _DOCUMENT_LEVEL), Decimal(0))
    discount = sum((line.amount for line in lines if line.kind == "discount"), Decimal(0))
    problems = []
    if items != draft.subtotal or discount != draft.discount:
        problems.append("the invoice lines do not add up to the stored subtotal and discount")
    basis = draft.subtotal + draft.discount
    if category.rate is None:
        if draft.tax != 0:
            problems.append("the invoice was taxed but the account has no tax rate in the catalog now")
    elif abs(basis * category.rate / 100 - draft.tax) >= Decimal(1).scaleb(-digits):
        # The tax is the rounded rate times the base; a catalog rate changed since does not match.
        problems.append(f"the stored tax is not {category.rate}% (the catalog's tax rate) of the tax base")
    if draft.subtotal + draft.discount + draft.tax != draft.total:
        problems.append("the stored total is not the subtotal less the discount plus the tax")
    return problems


def _money(value: Decimal, digits: int) -> Decimal:
    """The stored amount with exactly the currency's decimals (it is already rounded to them)."""
    quantized = value.quantize(Decimal(1).scaleb(-digits))
    if quantized != value:
        raise EInvoiceError(f"amount {value} is not rounded to {digits} decimals")
    return quantized


def _plain(value: Decimal) -> Decimal:
    """All the value's digits, without trailing zeros or an exponent (xs:decimal text)."""
    return Decimal(format(value.normalize(), "f"))


def cii_xml(draft: Draft, lines: Sequence[Line], account: Account, catalog: Catalog) -> bytes:
    """The invoice as Factur-X EN16931 CII XML, validated against the EN16931 XSD.

    Call only when `blockers` is empty; raises EInvoiceError otherwise.
    """
    problems = blockers(draft, lines, account, catalog)
    if problems:
        raise EInvoiceError(f"{draft.invoice_id}: no e-invoice: {'; '.join(problems)}")
    # Imported here: only final invoices with seller and buyer details need them.
    from drafthorse.models.accounting import ApplicableTradeTax
    from drafthorse.models.document import Document
    from drafthorse.models.payment import PaymentMeans, PaymentTerms

    seller = catalog.sellers[str(account.seller_id)]
    buyer = account.buyer
    assert buyer is not None  # blockers() checked it
    digits = minor_units(draft.currency)
    category = tax_category(account)

    doc: Any = Document()
    doc.context.guideline_parameter.id = _GUIDELINE
    doc.header.id = draft.invoice_id
    doc.header.type_code = _COMMERCIAL_INVOICE
    doc.header.issue_date_time = draft.issue_date

    agreement = doc.trade.agreement
    _party(agreement.seller, seller.id, seller.legal_name, seller.address)
    _party(agreement.buyer, account.id, buyer.legal_name, buyer.address)
    if category.code != "O":  # BR-O-02: no VAT ids on an invoice outside the scope of VAT
        _vat_id(agreement.seller, seller.vat_id)
        if buyer.vat_id is not None:
            _vat_id(agreement.buyer, buyer.vat_id)

    # The services were supplied through the period's last day (BT-72).
    doc.trade.delivery.event.occurrence = draft.period_end
    for line in lines:
        if line.kind not in _DOCUMENT_LEVEL:
            doc.trade.items.add(_line_item(line, category, digits))

    settlement = doc.trade.settlement
    settlement.currency_code = draft.currency
    settlement.payment_reference = draft.invoice_id
    settlement.period.start = draft.period_start
    settlement.period.end = draft.period_end
    settlement.payment_means.add(_payment_means(PaymentMeans(), seller, draft.currency))
    terms = PaymentTerms()
    terms.description = f"Due on {draft.due_date.isoformat()}"
    terms.due = draft.due_date
    settlement.terms.add(terms)
    if draft.discount:
        settlement.allowance_charge.add(_discount(lines, -draft.discount, category, digits))

    tax = ApplicableTradeTax()
    tax.calculated_amount = _money(draft.tax, digits)
    tax.type_code = "VAT"
    if category.exemption_reason is not None:
        tax.exemption_reason = category.exemption_reason
    tax.basis_amount = _money(draft.subtotal + draft.discount, digits)
    tax.category_code = category.code
    if category.rate is not None:
        tax.rate_applicable_percent = _plain(category.rate)
    settlement.trade_tax.add(tax)

    totals = settlement.monetary_summation
    totals.line_total = _money(draft.subtotal, digits)
    totals.charge_total = _money(Decimal(0), digits)
    totals.allowance_total = _money(-draft.discount, digits)
    totals.tax_basis_total = _money(draft.subtotal + draft.discount, digits)
    totals.tax_total = (_money(draft.tax, digits), draft.currency)
    totals.grand_total = _money(draft.total, digits)
    totals.due_amount = _money(draft.total, digits)
    # serialize() validates against the Factur-X EN16931 XSD and raises on a violation.
    return bytes(doc.serialize(schema="FACTUR-X_EN16931"))


def _party(party: Any, identifier: str, name: str, address: Address) -> None:
    party.id = identifier
    party.name = name
    if address.postcode is not None:
        party.address.postcode = address.postcode
    fields = ("line_one", "line_two", "line_three")
    for field_name, text in zip(fields, address.lines, strict=False):
        setattr(party.address, field_name, text)
    party.address.city_name = address.city
    party.address.country_id = address.country


def _vat_id(party: Any, vat_id: str) -> None:
    from drafthorse.models.party import TaxRegistration

    registration = TaxRegistration()
    registration.id = ("VA", vat_id)
    party.tax_registrations.add(registration)


def _payment_means(means: Any, seller: Seller, currency: str) -> Any:
    # SEPA credit transfers are in euro; other currencies are plain credit transfers.
    means.type_code = _SEPA_CREDIT_TRANSFER if currency == "EUR" else _CREDIT_TRANSFER
    means.payee_account.iban = seller.iban
    return means


def _line_item(line: Line, category: TaxCategory, digits: int) -> Any:
    """An invoice line whose quantity × net price / price base quantity is its stored amount."""
    from drafthorse.models.tradelines import LineItem

    item: Any = LineItem()
    item.document.line_id = str(line.line_no)
    item.product.name = line.description
    if line.charge_id is not None:
        item.product.seller_assigned_id = line.charge_id
    quantity, unit = line.quantity, _UNIT_CODES.get(line.unit or "", _ONE)
    if quantity is not None and line.unit_price is not None and quantity * line.unit_price == line.amount:
        item.agreement.net.amount = _plain(line.unit_price)
        item.delivery.billed_quantity = (_plain(quantity), unit)
    elif quantity is not None and quantity > 0:
        # Tiers, packages, rounding: the line's amount is the price of its whole quantity.
        item.agreement.net.amount = _money(line.amount, digits)
        item.agreement.net.basis_quantity = (_plain(quantity), unit)
        item.delivery.billed_quantity = (_plain(quantity), unit)
    else:
        item.agreement.net.amount = _money(line.amount, digits)
        item.delivery.billed_quantity = (Decimal(1), _ONE)
    tax = item.settlement.trade_tax
    tax.type_code = "VAT"
    tax.category_code = category.code
    if category.rate is not None:
        tax.rate_applicable_percent = _plain(category.rate)
    item.settlement.monetary_summation.total_amount = _money(line.amount, digits)
    return item


def _discount(lines: Sequence[Line], amount: Decimal, category: TaxCategory, digits: int) -> Any:
    from drafthorse.models.accounting import CategoryTradeTax, TradeAllowanceCharge

    allowance: Any = TradeAllowanceCharge()
    allowance.indicator = False
    allowance.actual_amount = _money(amount, digits)
    allowance.reason = next((line.description for line in lines if line.kind == "discount"), "Discount")
    tax: Any = CategoryTradeTax()
    tax.type_code = "VAT"
    tax.category_code = category.code
    if category.rate is not None:
        tax.rate_applicable_percent = _plain(category.rate)
    allowance.trade_tax.add(tax)
    return allowance


def documents_html(draft: Draft, lines: Sequence[Line], account: Account | None, catalog: Catalog) -> str:
    """What an invoice page says about its documents: links to the PDF and the e-invoice of a
    final invoice, or why it has no e-invoice; nothing for an open draft."""
    if draft.status != "final":
        return ""
    from invoice_site.render import invoice_file  # here: render imports the page modules

    stem = invoice_file(draft.invoice_id).removesuffix(".html")
    links = [f'<a href="{e(stem)}.pdf" type="application/pdf">PDF</a>']
    reasons = blockers(draft, lines, account, catalog)
    if reasons:
        links.append(f"no e-invoice: {e('; '.join(reasons))}")
    else:
        links.append(
            f'<a href="{e(stem)}.xml" type="application/xml">e-invoice (EN 16931, Factur-X CII XML)</a>, '
            "also embedded in the PDF"
        )
    items = "".join(f"<li>{link}</li>" for link in links)
    return (
        '<section class="documents no-print" aria-labelledby="documents-h">'
        f'<h2 id="documents-h">Documents</h2><ul>{items}</ul></section>'
    )
