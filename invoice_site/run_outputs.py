"""The invoice site and documents of a `meterline run` / `meterline demo` output folder."""

from __future__ import annotations

from pathlib import Path

from consolidation import lake
from invoice_site.documents import write_documents
from invoice_site.pdf import PdfError, find_chromium
from invoice_site.render import render_site
from meterline.kernel.catalog import Catalog
from meterline.kernel.config import Settings


def write_site(settings: Settings, catalog: Catalog, out: Path) -> Path:
    """Render the invoice site of the closed store (to `site_dir`, default DIR/site); returns
    its index page."""
    site_dir = Path(settings.site_dir) if settings.site_dir else out / "site"
    db = lake.connect(out, catalog=settings.store_catalog, read_only=True)
    try:
        render_site(db, catalog, site_dir)
    finally:
        db.close()
    return site_dir.absolute() / "index.html"


def write_invoice_documents(settings: Settings, catalog: Catalog, out: Path, site_dir: Path) -> str:
    """The PDF and EN 16931 e-invoice of every final invoice; says what was written, or why
    nothing was (no Chromium to print with, say)."""
    printable = find_chromium() is not None  # the demo installs nothing: it says what to do
    db = lake.connect(out, catalog=settings.store_catalog, read_only=True)
    try:
        written = write_documents(db, catalog, site_dir, pdfs=printable)
    except PdfError as exc:
        return f"not written ({exc}); install chromium, then run meterline site --out {out}"
    finally:
        db.close()
    if not printable:
        hint = f"install the Debian package chromium, then run meterline site --out {out}"
        return f"{len(written)} e-invoice files; PDFs not printed (Chromium not found: {hint})"
    return f"{len(written)} PDF and e-invoice files"
