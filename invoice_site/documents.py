"""The documents of final invoices, next to their pages: a PDF of the invoice page and,
where the catalog has seller and buyer details, the EN 16931 e-invoice (CII XML), also
embedded in the PDF as Factur-X.

```
SITE/accounts/<account>/<invoice_id>.pdf    every final invoice
SITE/accounts/<account>/<invoice_id>.xml    final invoices with seller and buyer details
```

Writing is idempotent: a PDF records a digest of the page and XML it was made from (in its
Keywords), and is printed again only when they change; files are written to a temporary
file and renamed over the old one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Final

import duckdb
import structlog

from invoice_site.einvoice import blockers, cii_xml
from invoice_site.invoice_page import invoice_document
from invoice_site.model import Draft, Invoice
from invoice_site.pdf import PdfPrinter, embed_einvoice, install_chromium, pdf_keywords, with_keywords
from invoice_site.render import account_folder, invoice_file, write_bytes_atomically
from invoice_site.store_read import read_accounts
from meterline.kernel.catalog import Catalog

__all__ = ["document_paths", "read_final_invoices", "write_documents"]

log = structlog.get_logger(__name__)

_SOURCE: Final = "meterline-source "


def document_paths(site_dir: str | Path, account_id: str, invoice_id: str) -> tuple[Path, Path]:
    """Where an invoice's PDF and XML are written."""
    stem = invoice_file(invoice_id).removesuffix(".html")
    folder = account_folder(Path(site_dir), account_id)
    return folder / f"{stem}.pdf", folder / f"{stem}.xml"


def write_documents(
    store_db: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    site_dir: str | Path,
    invoice_ids: Collection[str] | None = None,
    accounts: Collection[str] | None = None,
    pdfs: bool = True,
) -> list[Path]:
    """Write the PDF and e-invoice of final invoices; returns the files written (changed).

    `invoice_ids` / `accounts`: None for all; open drafts are never given documents;
    `pdfs` False writes the e-invoices only.
    `store_db` as for `render_site` (read-only is enough, no transaction open). Chromium
    is installed with apt-get when a PDF must be printed and it is missing; raises
    ChromiumMissing when it cannot be, PdfError when Chromium fails, EInvoiceError when
    stored figures cannot make an EN 16931 invoice.
    """
    site = Path(site_dir)
    written: list[Path] = []
    with ExitStack() as stack:
        printer: PdfPrinter | None = None
        for invoice in read_final_invoices(store_db, catalog, invoice_ids, accounts):
            draft = invoice.draft
            account = catalog.accounts.get(draft.account_id)
            pdf_path, xml_path = document_paths(site, draft.account_id, draft.invoice_id)
            xml: bytes | None = None
            if account is not None and not blockers(draft, invoice.lines, account, catalog):
                xml = cii_xml(draft, invoice.lines, account, catalog)
                if write_bytes_atomically(xml_path, xml):
                    written.append(xml_path)
            elif xml_path.exists():
                xml_path.unlink()  # the catalog lost the details it was made from
                log.info("einvoice_removed", invoice_id=draft.invoice_id, path=str(xml_path))
            if not pdfs:  # e-invoices only: they need no browser
                continue
            # The page as invoice_page_html gives it: standalone, no navigation.
            html = invoice_document(invoice, account, catalog)
            source = hashlib.sha256(html.encode("utf-8") + b"\0" + (xml or b"")).hexdigest()
            keywords = f"invoice {draft.invoice_id}; {_SOURCE}{source}"
            if _SOURCE + source in (pdf_keywords(pdf_path) or ""):
                continue
            if printer is None:
                printer = stack.enter_context(PdfPrinter(install_chromium()))
            pdf = printer.print_html(html)
            metadata = _metadata(draft, account, catalog, keywords)
            pdf = embed_einvoice(pdf, xml, metadata) if xml is not None else with_keywords(pdf, metadata)
            if write_bytes_atomically(pdf_path, pdf):
                written.append(pdf_path)
    return written


def _metadata(draft: Draft, account: Any, catalog: Catalog, keywords: str) -> dict[str, str]:
    seller = catalog.sellers.get(account.seller_id) if account is not None and account.seller_id else None
    name = account.name if account is not None else draft.account_id
    return {
        "author": seller.legal_name if seller is not None else "meterline",
        "title": f"Invoice {draft.invoice_id} — {name}",
        "subject": f"Invoice {draft.invoice_id}, period {draft.period}, {draft.total} {draft.currency}",
        "keywords": keywords,
    }


def read_final_invoices(
    db: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    invoice_ids: Collection[str] | None,
    accounts: Collection[str] | None,
) -> list[Invoice]:
    """The final invoices asked for, with all their page shows, in one snapshot."""
    conditions = ["status = 'final'"]
    params: list[Any] = []
    for column, values in (("invoice_id", invoice_ids), ("account_id", accounts)):
        if values is not None:
            params.append(sorted(values))
            conditions.append(f"{column} IN (SELECT unnest(${len(params)}::VARCHAR[]))")
    zones = {account.id: account.timezone for account in catalog.accounts.values()}
    db.execute("BEGIN TRANSACTION")
    try:
        wanted = dict(
            db.execute(
                f"SELECT invoice_id, account_id FROM invoice_drafts WHERE {' AND '.join(conditions)}", params
            ).fetchall()
        )
        sites = read_accounts(db, set(wanted.values()), zones) if wanted else {}
    finally:
        db.execute("ROLLBACK")
    return [
        invoice
        for account_id in sorted(sites)
        for invoice in sites[account_id].invoices
        if invoice.draft.invoice_id in wanted and invoice.draft.status == "final"
    ]
