"""Rendering the site: which pages, where, and writing them atomically.

Layout under the site folder: `index.html` (accounts), `accounts/<account>/index.html`
and `accounts/<account>/<invoice_id>.html`. A page is written to a temporary file in its
folder and renamed over the old one, so a reader sees the old page or the new one, never
half of one; a page whose text did not change is not rewritten (its mtime stays).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import duckdb

from invoice_site.index_pages import account_index, top_index
from invoice_site.invoice_page import invoice_document
from invoice_site.model import AccountSite
from invoice_site.store_read import read_accounts
from meterline.kernel.catalog import Catalog

__all__ = [
    "account_folder",
    "invoice_file",
    "invoice_page_html",
    "page_name",
    "render_site",
    "write_atomically",
]

ACCOUNTS_DIR: Final = "accounts"
_PLAIN: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# Invoice ids as meterline makes them (one account's never differ by case only).
_INVOICE_ID: Final = re.compile(r"INV-[0-9]{6}-[0-9A-F]{1,40}")
_UNSAFE: Final = re.compile(r"[^a-z0-9._-]+")


def page_name(identifier: str) -> str:
    """A file name for an id: the id itself when it is plain lower-case text, else a
    readable part plus a hash (ids may hold `/`, `..`, capitals that collide on
    case-insensitive file systems, or markup)."""
    if _PLAIN.fullmatch(identifier) and not identifier.endswith("."):
        return identifier
    readable = _UNSAFE.sub("_", identifier.lower()).strip("._")[:40]
    digest = hashlib.sha256(identifier.encode("utf-8")).hexdigest()[:12]
    return f"{readable}-{digest}" if readable else digest


def invoice_file(invoice_id: str) -> str:
    name = invoice_id if _INVOICE_ID.fullmatch(invoice_id) else page_name(invoice_id)
    return f"{name}.html"


def account_folder(site_dir: Path, account_id: str) -> Path:
    return site_dir / ACCOUNTS_DIR / page_name(account_id)


def write_atomically(path: Path, text: str) -> bool:
    """Write `text` to `path` unless it holds it already; True when written."""
    return write_bytes_atomically(path, text.encode("utf-8"))


def write_bytes_atomically(path: Path, data: bytes) -> bool:
    """Write `data` to `path` unless it holds it already (temporary file, fsync, rename): a
    reader never sees half a file; True when written."""
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return True


def _invoice_counts(db: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return {
        account_id: int(count)
        for account_id, count in db.execute(
            "SELECT account_id, count(DISTINCT invoice_id) FROM invoice_drafts GROUP BY account_id"
        ).fetchall()
    }


def _read(
    db: duckdb.DuckDBPyConnection, catalog: Catalog, accounts: Collection[str] | None
) -> tuple[dict[str, int], dict[str, AccountSite]]:
    """Everything in one read transaction: one snapshot of the store."""
    zones = {account.id: account.timezone for account in catalog.accounts.values()}
    db.execute("BEGIN TRANSACTION")
    try:
        return _invoice_counts(db), read_accounts(db, accounts, zones)
    finally:
        db.execute("ROLLBACK")


def render_site(
    store_db: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    site_dir: str | Path,
    accounts: set[str] | None = None,
    now: datetime | None = None,
) -> list[Path]:
    """Render the invoice site into `site_dir`; returns the pages written (changed).

    `store_db` is a connection to the billing store (consolidation.lake.connect, read-only
    is enough) outside any transaction. `accounts`: None renders every account of the
    store and the catalog; a set renders only those accounts' pages, plus the top index.
    `now` is the time the top index says it was rendered (default: the clock).
    """
    site = Path(site_dir)
    moment = now if now is not None else datetime.now(UTC)
    selected = None if accounts is None else set(accounts)
    counts, sites = _read(store_db, catalog, selected)
    everyone = sorted(set(counts) | set(catalog.accounts))
    written: list[Path] = []
    for account_id in everyone if selected is None else sorted(selected):
        account_site = sites.get(account_id, AccountSite(account_id))
        written += _write_account(site, catalog, account_site)
    entries = [(account_id, counts.get(account_id, 0)) for account_id in everyone]
    index = top_index(
        entries, catalog.accounts, lambda a: f"{ACCOUNTS_DIR}/{page_name(a)}/index.html", moment
    )
    if write_atomically(site / "index.html", index):
        written.append(site / "index.html")
    return written


def _write_account(site: Path, catalog: Catalog, account_site: AccountSite) -> list[Path]:
    folder = account_folder(site, account_site.account_id)
    account = catalog.accounts.get(account_site.account_id)
    written: list[Path] = []
    crumbs = '<a href="../../index.html">All accounts</a> › <a href="index.html">Account invoices</a>'
    for invoice in account_site.invoices:
        path = folder / invoice_file(invoice.draft.invoice_id)
        if write_atomically(path, invoice_document(invoice, account, catalog, crumbs)):
            written.append(path)
    index = account_index(account_site, account, invoice_file)
    if write_atomically(folder / "index.html", index):
        written.append(folder / "index.html")
    return written


def invoice_page_html(store_db: duckdb.DuckDBPyConnection, catalog: Catalog, invoice_id: str) -> str:
    """One invoice's page as a standalone HTML document (inline style, no links needed):
    what a PDF renderer prints. Raises KeyError for an invoice the store does not hold."""
    db = store_db
    db.execute("BEGIN TRANSACTION")
    try:
        row = db.execute(
            "SELECT account_id FROM invoice_drafts WHERE invoice_id = $1 LIMIT 1", [invoice_id]
        ).fetchone()
        if row is None:
            raise KeyError(invoice_id)
        zones = {a.id: a.timezone for a in catalog.accounts.values()}
        sites = read_accounts(db, {row[0]}, zones)
    finally:
        db.execute("ROLLBACK")
    for invoice in sites[row[0]].invoices:
        if invoice.draft.invoice_id == invoice_id:
            return invoice_document(invoice, catalog.accounts.get(row[0]), catalog)
    raise KeyError(invoice_id)
